"""What does a fused target's self-attention look like, next to the unfused model's on the same latents? The
companion of attention_probe.py (same measures and prompts; 48 seeds per prompt, the final evaluations', where
attention_probe.py uses the first 24, because a triple needs a reference that scores above its base and most samples
of these prompts tie).

For each of the grid's 8 train prompts: sample the base model on the fixed evaluation seeds, verify, pick D-Fusion's
triples by training's rule (top quarter = references, each used twice, on the bottom half), and fuse them with the
grid's settings (16x16 masks). While fusing, a Recorder under each fused self-attention layer keeps the target
pass's attention over the blended keys (the attention that made the transitions dpo + fusion trains on). Then the
base model, unfused, is run on the same target latents at the same steps: the attention the policy has there.
Both are measured on the target's own two shapes (attention_probe.py's R0, R1), for the targets with two shapes of
which the first named one is matched.

Usage (what made fused_attention_probe_SUITE.txt here; the seed argument, as in attention_probe.py, only labels the
output here, since only the base model is used):
    OMP_NUM_THREADS=1 python results/grid-x3/fused_attention_probe.py shapes-objects 1 48
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from attention_probe import (  # noqa: E402
    CONFIG,
    NAMES,
    Recorder,
    difference,
    kept,
    load,
    new_values,
    outcome_counts,
    probe_setup,
    record,
    recorders,
    report,
    unfused_pass,
)

from dfusion_bench.guidance import encode_text  # noqa: E402
from dfusion_bench.fusion.config import FusionConfig  # noqa: E402
from dfusion_bench.fusion.engine import fuse_triples  # noqa: E402
from dfusion_bench.fusion.layers import attention_layers  # noqa: E402
from dfusion_bench.fusion.triples import select_triples  # noqa: E402
from dfusion_bench.sampling import sample  # noqa: E402
from dfusion_bench.scorers.verifier import to_hwc_numpy  # noqa: E402
from dfusion_bench.world.grammar import parse  # noqa: E402
from dfusion_bench.world.verify import verify  # noqa: E402

FUSED_BANDS = {"steps 2-9": range(2, 10), "steps 10-16": range(10, 17)}  # fusion starts at step 2


class FusedLog(Recorder):
    """Recorder that also appends, per call with blended keys (a fused target pass), the conditional half."""

    def __init__(self, store, name, log):
        super().__init__(store, name)
        self.log = log

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        out = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        if encoder_hidden_states is not None and ".attn1." in self.name:  # only fusion hands attn1 a context
            probs = self.store[self.name]
            self.log.setdefault(self.name, []).append(probs[probs.shape[0] // 2 :])
        return out


def main(argv: list[str]) -> None:
    suite, seed, _, entries, seeds = probe_setup(argv)
    pipe = load("base", suite, seed)
    unet = pipe.unet
    layers = [la for la in attention_layers(unet) if la.kind == "self" and not la.name.startswith("down_blocks")]
    fusion = FusionConfig(mask_resolution=16)  # the grid's (GRID_CONFIG --mask-resolution 16)
    stock = dict(unet.attn_processors)
    fused, own, outcomes = new_values(), new_values(), {}
    for entry, row in zip(entries, seeds, strict=True):
        prompts = [entry.prompt] * len(row)
        traj = sample(pipe, prompts, list(row), CONFIG, batch_size=len(row))
        spec = parse(entry.prompt)
        scores = np.array([verify(spec, im).score for im in to_hwc_numpy(traj.images)])
        triples = select_triples([list(range(len(row)))], scores, fusion.reference_fraction, fusion.reference_uses)
        if not triples:
            continue
        store, log = {}, {}
        unet.set_attn_processor(recorders(stock, store, layers, FusedLog, log=log))
        result = fuse_triples(pipe, traj, triples, {entry.prompt: entry}, fusion, batch_size=len(triples))
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
                    record(fused, store, layers, unet.config.sample_size, keep, verdicts, [], band, entry.prompt)
                    unfused_pass(unet, targets, idx, text, j)
                    record(own, store, layers, unet.config.sample_size, keep, verdicts, [], band, entry.prompt)
        unet.set_attn_processor(dict(stock))
        for k, n in outcome_counts(verdicts, keep).items():
            outcomes[k] = outcomes.get(k, 0) + n
    n = sum(outcomes.values())
    head = f"{suite} s{seed} fused targets of the base model: {n} with two shapes, the first named one matched"
    report(f"{head}; {outcomes}\n fused attention (the target pass, blended keys):", fused, FUSED_BANDS)
    report(" the base model's own attention on the same latents:", own, FUSED_BANDS)
    print(" fused minus own, image by image (mean ± twice its standard error):")
    for band in FUSED_BANDS:
        for side in sorted({k[1] for k in own}, reverse=True):
            cells = []
            for name in NAMES[:3]:
                a, b = fused[(band, side, name, "all")], own[(band, side, name, "all")]
                cells.append(f"{name} {difference(a, b)}")
            print(f"   {band:24s} {side:2d}x{side:<2d} " + ", ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
