"""Does training on fused targets teach the policy to attend from one object to the other? A probe of the final
policies' self-attention on the grid's 8 train prompts (the same fixed evaluation seeds as object_probe).

D-Fusion's target, at its fused steps, attends to a *different* image's keys and values inside the reference's
object mask. A policy trained to reproduce those transitions cannot see the reference; one way to come close is to
draw on its own image's objects. If that is what dpo + fusion learns, its self-attention from the second object's
pixels to the first object's should be stronger than the base's and plain dpo's, and the second object would then
take on the first one's attributes (object_probe_shapes-objects.txt: 13 of its 17 second-object failures take the
first object's color).

For every image with exactly two detected shapes of which one matches the first named object, the UNet is run again
(conditional pass) on the image's own trajectory latents at steps 0-16, with every self- and cross-attention layer's
probabilities (mean over heads) recorded (dfusion_bench.fusion.attention), and measured on the verifier's masks of
the two shapes (enrichment 1 -> 0, 1 -> 1, their ratio, and the color0 share: see experiments.grid_x3.measures).

Usage (what made results/grid-x3/attention_probe_SUITE-sSEED.txt, for seeds 0 and 1):
    OMP_NUM_THREADS=1 python -m experiments.grid_x3.attention_probe SUITE SEED 24 dpo-plain dpo-fusion pg-fusion \
        ddpo-fusion
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

from dfusion_bench.fusion.attention import recording
from dfusion_bench.fusion.layers import attention_layers
from dfusion_bench.fusion.tokens import word_token_positions
from dfusion_bench.guidance import encode_text
from dfusion_bench.sampling import sample
from dfusion_bench.scorers.verifier import to_hwc_numpy
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.verify import verify
from experiments.grid_x3.measures import (
    CONFIG,
    PROMPTS,
    RUNS,
    kept,
    load,
    new_values,
    outcome_counts,
    probe_arguments,
    prompts_and_seeds,
    record,
    report,
    unfused_pass,
)

BANDS = {"steps 0-1 (never fused)": range(0, 2), "steps 2-9": range(2, 10), "steps 10-16": range(10, 17)}


def model_values(pipe, entries, seeds) -> tuple[dict, dict[str, int]]:
    """The measures of one model over the prompts ``entries`` and their seeds, and its images' object1 outcomes."""
    unet = pipe.unet
    layers = [la for la in attention_layers(unet) if la.kind in ("self", "cross")]
    values, outcomes = new_values(), defaultdict(int)
    for entry, row in zip(entries, seeds, strict=True):
        prompts = [entry.prompt] * len(row)
        traj = sample(pipe, prompts, list(row), CONFIG, batch_size=len(row))
        spec = parse(entry.prompt)
        verdicts = [verify(spec, im) for im in to_hwc_numpy(traj.images)]
        keep = kept(spec, verdicts)
        if not keep:
            continue
        idx = [i for i, _ in keep]
        text = encode_text(pipe, prompts).cond[idx]
        colors = [word_token_positions(pipe.tokenizer, entry.prompt, o.color) for o in spec.objects]
        with recording(unet, [la.name for la in layers]) as store:
            for band, steps in BANDS.items():
                for j in steps:
                    unfused_pass(unet, traj, idx, text, j)
                    record(values, store, layers, unet.config.sample_size, keep, verdicts, colors, band, entry.prompt)
        for k, n in outcome_counts(verdicts, keep).items():
            outcomes[k] += n
    return values, dict(outcomes)


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
    torch.manual_seed(0)
    for label in ["base", *labels]:
        values, outcomes = model_values(load(label, suite, seed, runs, model), entries, seeds)
        n_used = sum(outcomes.values())
        title = f"{suite} s{seed} {label}: {n_used} images with two shapes, the first named one matched; {outcomes}"
        yield from report(title, values, BANDS)


def main(argv: list[str] | None = None) -> None:
    parser = probe_arguments("python -m experiments.grid_x3.attention_probe", __doc__.split("\n")[0])
    args = parser.parse_args(argv)
    for line in probe(args.suite, args.seed, args.per_prompt, args.labels, args.runs, args.model, args.prompts):
        print(line, flush=True)


if __name__ == "__main__":
    main()
