"""What the grid-x3 attention probes measure, and the setting they share (prompts, seeds, sampler, models).

With the verifier's masks of an image's two shapes pooled to an attention layer's grid (R0: the first named object's
match, R1: the other shape):

    enrichment(1 -> 0) = [mean over queries in R1 of the attention mass on keys in R0] / [R0's share of the grid]

(1 = attention as if uniform over the grid), likewise 1 -> 1 (the shape attending to itself), and per image the
selectivity 1 -> 1 / 1 -> 0. From the cross-attention layers: "color0 share", the second shape's attention mass on
the first object's color word over its mass on both objects' color words (0.5: it cannot tell them apart). Values
are kept per (band, grid side, measure, object1 outcome) and per image, over the band's steps and the grid's layers;
each figure is the mean over images (each image's mean) ± twice its standard error over images.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.rl.checkpoint import load_policy
from dfusion_bench.seeding import eval_seeds
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import load_suite
from experiments import RESULTS

#: The grid's exported runs (their final LoRA adapters are committed), by name METHOD-fusion|plain-SUITE-sSEED.
RUNS = RESULTS / "grid-x3"
#: The grid's final epoch: the probes read each run's final policy.
FINAL_EPOCH = 8
#: The grid's evaluation sampler: 20 DDIM steps, eta 1, guidance 5.
CONFIG = SamplerConfig(num_steps=20, eta=1.0, guidance_scale=5.0)
#: The grid's train prompts: the first 8 of the suite's train split.
PROMPTS = 8
NAMES = ("1->0", "1->1", "1->1 / 1->0", "color0 share")


def probe_arguments(prog: str, description: str, labels: bool = True) -> argparse.ArgumentParser:
    """The probes' common arguments: SUITE SEED PER_PROMPT [LABEL...], and where the runs and the base model are."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("suite", help="the grid's suite, e.g. shapes-objects")
    parser.add_argument("seed", type=int, help="the grid's seed of the runs read (only a label for the base model)")
    parser.add_argument("per_prompt", type=int, help="fixed evaluation seeds per prompt")
    if labels:
        parser.add_argument(
            "labels", nargs="*", help="runs besides the base model: METHOD-fusion|plain, e.g. dpo-fusion"
        )
        parser.add_argument(
            "--runs", type=Path, default=RUNS, help="folder of the grid's runs (default results/grid-x3)"
        )
    parser.add_argument("--model", type=Path, default=None, help="the base model (default: the embedded one)")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="the suite's first K train prompts (default 8)")
    return parser


def prompts_and_seeds(suite: str, n_prompts: int, per_prompt: int) -> tuple[list, list[list[int]]]:
    """The suite's first ``n_prompts`` train entries and their fixed evaluation seeds (those of every run's
    evaluation; the first 24 of 48 are the grid's final evaluation's first half)."""
    entries = list(load_suite(suite).split("train"))[:n_prompts]
    return entries, eval_seeds(len(entries), per_prompt)


def load(label: str, suite: str, seed: int, runs: Path = RUNS, model: Path | None = None):
    """The pipeline of ``label``: ``base`` (the model ``model``, None: the embedded one) or a grid run's final
    policy, ``runs/LABEL-SUITE-sSEED`` at the grid's last epoch."""
    if label == "base":
        return ModelChoice.check(model).load(torch.device("cpu"), torch.float32)
    return load_policy(runs / f"{label}-{suite}-s{seed}", FINAL_EPOCH, torch.device("cpu"), torch.float32)[0]


def regions(spec, verdict):
    """(R0, R1) masks of the image: the first named object's match and the other shape; None unless exactly two
    shapes were detected."""
    if len(verdict.detections) != 2 or verdict.masks[0] is None:
        return None
    other = [d.mask for d in verdict.detections if not (d.mask == verdict.masks[0]).all()]
    return (verdict.masks[0], other[0]) if len(other) == 1 else None


def kept(spec, verdicts) -> list:
    """(index, (R0, R1)) of the images with two shapes, the first named one matched."""
    return [(i, r) for i, v in enumerate(verdicts) if (r := regions(spec, v)) is not None]


def pooled(mask: np.ndarray, side: int) -> torch.Tensor:
    """The share of each cell of a side x side grid that the mask covers, flattened."""
    m = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return F.adaptive_avg_pool2d(m, side).flatten()


def enrichment(probs: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> float:
    """Mean attention mass from the queries in src onto the keys in dst, over dst's share of the grid."""
    mass = (src @ probs @ dst) / src.sum()
    return float(mass / (dst.sum() / dst.numel()))


def outcome(verdict) -> str:
    return "object1 held" if verdict.facts["object1"] else "object1 fails"


def outcome_counts(verdicts, keep) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for i, _ in keep:
        counts[outcome(verdicts[i])] += 1
    return counts


def new_values() -> dict:
    """(band, grid side, measure, object1 outcome or "all") -> (prompt, image) -> values."""
    return defaultdict(lambda: defaultdict(list))


def record(values, store, layers, sample_size, keep, verdicts, colors, band, prompt) -> None:
    """Add one UNet call's measures (its probabilities in ``store``, batch rows in ``keep``'s order) to ``values``:
    (band, grid side, measure, object1 outcome) -> image -> values over the band's steps and the grid's layers.
    ``colors``: the token positions of each object's color word (for the cross-attention layers)."""
    for layer in layers:
        probs, side = store[layer.name], sample_size // layer.downsample
        for b, (i, (r0, r1)) in enumerate(keep):
            o1 = outcome(verdicts[i])
            w0, w1 = pooled(r0, side), pooled(r1, side)
            if layer.kind == "self":
                e10, e11 = enrichment(probs[b], w1, w0), enrichment(probs[b], w1, w1)
                measures = {"1->0": e10, "1->1": e11, "1->1 / 1->0": e11 / e10}
            else:  # the second shape's attention to the first object's color word, over both colors'
                mass = [float(w1 @ probs[b][:, c].sum(1)) for c in colors]
                measures = {"color0 share": mass[0] / (mass[0] + mass[1])}
            for o1_key in (o1, "all"):
                for name, e in measures.items():
                    values[(band, side, name, o1_key)][(prompt, i)].append(e)


def unfused_pass(unet, traj, idx, text, j) -> None:
    """The conditional UNet call on rows ``idx`` of ``traj`` at step j (the recorders installed keep its
    attention)."""
    t = torch.full((len(idx),), int(traj.timesteps[j]), dtype=torch.long)
    with torch.no_grad():
        unet(traj.latents[idx, j], t, encoder_hidden_states=text)


def summary(per_image: dict[tuple, list[float]]) -> str:
    """Mean over images (each image's mean over steps and layers) ± twice its standard error."""
    x = np.array([np.mean(v) for v in per_image.values()])
    return f"{x.mean():.2f}±{2 * x.std(ddof=1) / np.sqrt(len(x)):.2f}" if len(x) > 1 else "-"


def difference(a: dict[tuple, list[float]], b: dict[tuple, list[float]]) -> str:
    """summary() of a - b, image by image (each image's mean over steps and layers)."""
    return summary({k: [np.mean(a[k]) - np.mean(b[k])] for k in a})


def report(title: str, values, bands) -> list[str]:
    """The lines of one model's (or pass's) table: per band and grid side, every measure for all images and for
    those whose second object fails."""
    lines = [title]
    lines.append("   per band and grid, for all these images; for those whose second object fails: " + ", ".join(NAMES))
    for band in bands:
        for side in sorted({k[1] for k in values}, reverse=True):
            cells = []
            for o1 in ("all", "object1 fails"):
                part = [summary(values.get((band, side, name, o1), {})) for name in NAMES]
                cells.append(f"{o1}: " + " ".join(part))
            lines.append(f"   {band:24s} {side:2d}x{side:<2d} " + "; ".join(cells))
    return lines
