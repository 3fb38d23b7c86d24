"""Why do dpo + fusion's final policies lose the second named object? Sample the base and final policies on the
grid's 8 train prompts with the same fixed evaluation seeds, verify, and for each image whose second object fails,
say how: which attributes the nearest unmatched detection gets wrong, or that no unmatched shape is drawn.

Usage (what made object_probe_SUITE.txt here):
    OMP_NUM_THREADS=1 python results/grid-x3/object_probe.py SUITE 1 24 dpo-plain dpo-fusion pg-fusion
"""

import sys
from collections import Counter
from pathlib import Path

import torch

from dfusion_bench.rl.checkpoint import load_policy
from dfusion_bench.sampling import sample
from dfusion_bench.scorers.verifier import to_hwc_numpy
from dfusion_bench.seeding import eval_seeds
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.suites import load_suite
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.verify import verify

suite, seed, per_prompt, labels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
entries = list(load_suite(suite).split("train"))[:8]
seeds = eval_seeds(len(entries), per_prompt)
prompts = [e.prompt for e, s in zip(entries, seeds, strict=True) for _ in s]
flat = [x for s in seeds for x in s]
torch.manual_seed(0)


def how(spec, verdict, i):
    """How object i fails: the attributes the nearest unclaimed detection gets wrong, or 'not drawn'."""
    other = [m for j, m in enumerate(verdict.masks) if j != i and m is not None]
    free = [d for d in verdict.detections if not any((d.mask == m).all() for m in other)]
    o = spec.objects[i]
    best = None
    for d in free:
        wrong = tuple(
            a
            for a, want, got in (("shape", o.shape, d.shape), ("color", o.color, d.color), ("size", o.size, d.size))
            if want is not None and want != got
        )
        if wrong == ("color",) and d.color == spec.objects[1 - i].color:
            wrong = ("color=other object's",)
        if best is None or len(wrong) < len(best):
            best = wrong
    return "not drawn" if best is None else "wrong " + "+".join(best)


for label in ["base", *labels]:
    if label == "base":
        pipe = ModelChoice.check(None).load(torch.device("cpu"), torch.float32)
    else:
        pipe, _, _ = load_policy(
            Path(f"results/grid-x3/{label}-{suite}-s{seed}"), 8, torch.device("cpu"), torch.float32
        )
    traj = sample(pipe, prompts, flat, SamplerConfig(num_steps=20, eta=1.0, guidance_scale=5.0))
    facts, fails, counts = Counter(), {0: Counter(), 1: Counter()}, Counter()
    for prompt, image in zip(prompts, to_hwc_numpy(traj.images), strict=True):
        spec = parse(prompt)
        v = verify(spec, image)
        facts.update(k for k, held in v.facts.items() if held)
        counts[len(v.detections)] += 1
        for i in (0, 1):
            if not v.facts[f"object{i}"]:
                fails[i][how(spec, v, i)] += 1
    n = len(prompts)
    print(f"{suite} s{seed} {label}: n={n} " + " ".join(f"{k} {facts[k] / n:.3f}" for k in sorted(facts)))
    print(f"   shapes drawn: {dict(sorted(counts.items()))}")
    for i in (0, 1):
        print(f"   object{i} fails {sum(fails[i].values())}: {dict(fails[i].most_common())}")
