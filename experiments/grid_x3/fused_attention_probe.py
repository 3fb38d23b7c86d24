"""What does a fused target's self-attention look like, next to the unfused model's on the same latents? The
companion of attention_probe (same measures and prompts; 48 seeds per prompt, the final evaluations', where
attention_probe uses the first 24, because a triple needs a reference that scores above its base and most samples
of these prompts tie).

For each of the grid's 8 train prompts: sample the base model on the fixed evaluation seeds, verify, pick D-Fusion's
triples by training's rule (top quarter = references, each used twice, on the bottom half), and fuse them with the
grid's settings (16x16 masks). While fusing, a recorder under each fused self-attention layer keeps the target
pass's attention over the blended keys (the attention that made the transitions dpo + fusion trains on). Then the
base model, unfused, is run on the same target latents at the same steps: the attention the policy has there.
Both are measured on the target's own two shapes (attention_probe's R0, R1), for the targets with two shapes of
which the first named one is matched.

Usage (what made results/grid-x3/fused_attention_probe_SUITE.txt; the seed argument, as in attention_probe, only
labels the output here, since only the base model is used):
    OMP_NUM_THREADS=1 python -m experiments.grid_x3.fused_attention_probe shapes-objects 1 48
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch

from dfusion_bench.fusion.attention import AttentionRecorder, recording
from dfusion_bench.fusion.config import FusionConfig
from dfusion_bench.fusion.engine import fuse_triples
from dfusion_bench.fusion.layers import attention_layers
from dfusion_bench.fusion.triples import select_triples
from dfusion_bench.guidance import encode_text
from dfusion_bench.sampling import sample
from dfusion_bench.scorers.verifier import to_hwc_numpy
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.verify import verify
from experiments.grid_x3.measures import (
    CONFIG,
    NAMES,
    PROMPTS,
    difference,
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

FUSED_BANDS = {"steps 2-9": range(2, 10), "steps 10-16": range(10, 17)}  # fusion starts at step 2
#: The grid's fusion settings (GRID_CONFIG --mask-resolution 16).
FUSION = FusionConfig(mask_resolution=16)


class FusedLog(AttentionRecorder):
    """Recorder that also appends, per call with blended keys (a fused target pass), the conditional half of its
    probabilities to ``log[name]``: one entry per fused step."""

    def __init__(self, inner, store, name, log: dict[str, list[torch.Tensor]]):
        super().__init__(inner, store, name)
        self.log = log

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kw)
        if encoder_hidden_states is not None and ".attn1." in self.name:  # only fusion hands attn1 a context
            probs = self.store[self.name]
            self.log.setdefault(self.name, []).append(probs[probs.shape[0] // 2 :])
        return out


def differences(fused, own) -> list[str]:
    """Fused minus own, image by image, per band and grid side, for the self-attention measures."""
    lines = [" fused minus own, image by image (mean ± twice its standard error):"]
    for band in FUSED_BANDS:
        for side in sorted({k[1] for k in own}, reverse=True):
            cells = []
            for name in NAMES[:3]:
                a, b = fused[(band, side, name, "all")], own[(band, side, name, "all")]
                cells.append(f"{name} {difference(a, b)}")
            lines.append(f"   {band:24s} {side:2d}x{side:<2d} " + ", ".join(cells))
    return lines


def probe(suite: str, seed: int, per_prompt: int, model: Path | None = None, n_prompts: int = PROMPTS) -> Iterator[str]:
    """The output's lines: the fused passes' attention, the base model's own on the same latents, the difference."""
    entries, seeds = prompts_and_seeds(suite, n_prompts, per_prompt)
    torch.manual_seed(0)
    pipe = load("base", suite, seed, model=model)
    unet, side = pipe.unet, pipe.unet.config.sample_size
    layers = [la for la in attention_layers(unet) if la.kind == "self" and not la.name.startswith("down_blocks")]
    fused, own, outcomes = new_values(), new_values(), {}
    for entry, row in zip(entries, seeds, strict=True):
        prompts = [entry.prompt] * len(row)
        traj = sample(pipe, prompts, list(row), CONFIG, batch_size=len(row))
        spec = parse(entry.prompt)
        scores = np.array([verify(spec, im).score for im in to_hwc_numpy(traj.images)])
        triples = select_triples([list(range(len(row)))], scores, FUSION.reference_fraction, FUSION.reference_uses)
        if not triples:
            continue
        log: dict[str, list[torch.Tensor]] = {}
        with recording(unet, [la.name for la in layers], recorder=partial(FusedLog, log=log)) as store:
            result = fuse_triples(pipe, traj, triples, {entry.prompt: entry}, FUSION, batch_size=len(triples))
            targets = result.targets
            verdicts = [verify(spec, im) for im in to_hwc_numpy(targets.images)]
            keep = kept(spec, verdicts)
            idx = [i for i, _ in keep]
            fused_steps = sorted({step for step, _ in result.events})
            if keep:
                text = encode_text(pipe, [entry.prompt] * len(idx)).cond
                for band, steps in FUSED_BANDS.items():
                    for j in steps:
                        for layer in layers:  # the fused pass of step j, this image's rows
                            store[layer.name] = log[layer.name][fused_steps.index(j)][idx]
                        record(fused, store, layers, side, keep, verdicts, [], band, entry.prompt)
                        unfused_pass(unet, targets, idx, text, j)
                        record(own, store, layers, side, keep, verdicts, [], band, entry.prompt)
        for k, n in outcome_counts(verdicts, keep).items():
            outcomes[k] = outcomes.get(k, 0) + n
    n = sum(outcomes.values())
    head = f"{suite} s{seed} fused targets of the base model: {n} with two shapes, the first named one matched"
    yield from report(f"{head}; {outcomes}\n fused attention (the target pass, blended keys):", fused, FUSED_BANDS)
    yield from report(" the base model's own attention on the same latents:", own, FUSED_BANDS)
    yield from differences(fused, own)


def main(argv: list[str] | None = None) -> None:
    parser = probe_arguments("python -m experiments.grid_x3.fused_attention_probe", __doc__.split("\n")[0], False)
    args = parser.parse_args(argv)
    for line in probe(args.suite, args.seed, args.per_prompt, args.model, args.prompts):
        print(line, flush=True)


if __name__ == "__main__":
    main()
