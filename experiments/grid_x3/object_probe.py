"""Why do dpo + fusion's final policies lose the second named object? Sample the base and final policies on the
grid's 8 train prompts with the same fixed evaluation seeds, verify, and for each image whose second object fails,
say how: which attributes the nearest unmatched detection gets wrong, or that no unmatched shape is drawn.

Usage (what made results/grid-x3/object_probe_SUITE.txt):
    OMP_NUM_THREADS=1 python -m experiments.grid_x3.object_probe SUITE 1 24 dpo-plain dpo-fusion pg-fusion
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from dfusion_bench.sampling import sample
from dfusion_bench.scorers.verifier import to_hwc_numpy
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.verify import verify
from experiments.grid_x3.measures import CONFIG, PROMPTS, RUNS, load, probe_arguments, prompts_and_seeds


def how(spec, verdict, i: int) -> str:
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


def model_lines(title: str, prompts: list[str], images) -> list[str]:
    """One model's lines: its facts' rates, how many shapes it draws, and how each named object fails."""
    facts, fails, counts = Counter(), {0: Counter(), 1: Counter()}, Counter()
    for prompt, image in zip(prompts, images, strict=True):
        spec = parse(prompt)
        v = verify(spec, image)
        facts.update(k for k, held in v.facts.items() if held)
        counts[len(v.detections)] += 1
        for i in (0, 1):
            if not v.facts[f"object{i}"]:
                fails[i][how(spec, v, i)] += 1
    n = len(prompts)
    lines = [f"{title}: n={n} " + " ".join(f"{k} {facts[k] / n:.3f}" for k in sorted(facts))]
    lines.append(f"   shapes drawn: {dict(sorted(counts.items()))}")
    for i in (0, 1):
        lines.append(f"   object{i} fails {sum(fails[i].values())}: {dict(fails[i].most_common())}")
    return lines


def probe(
    suite: str,
    seed: int,
    per_prompt: int,
    labels: list[str],
    runs: Path = RUNS,
    model: Path | None = None,
    n_prompts: int = PROMPTS,
) -> Iterator[str]:
    """The output's lines, model by model: the base, then each label's final policy of grid seed ``seed``."""
    entries, seeds = prompts_and_seeds(suite, n_prompts, per_prompt)
    prompts = [e.prompt for e, s in zip(entries, seeds, strict=True) for _ in s]
    flat = [x for s in seeds for x in s]
    torch.manual_seed(0)
    for label in ["base", *labels]:
        pipe = load(label, suite, seed, runs, model)
        traj = sample(pipe, prompts, flat, CONFIG)
        yield from model_lines(f"{suite} s{seed} {label}", prompts, to_hwc_numpy(traj.images))


def main(argv: list[str] | None = None) -> None:
    parser = probe_arguments("python -m experiments.grid_x3.object_probe", __doc__.split("\n")[0])
    args = parser.parse_args(argv)
    for line in probe(args.suite, args.seed, args.per_prompt, args.labels, args.runs, args.model, args.prompts):
        print(line, flush=True)


if __name__ == "__main__":
    main()
