"""Does training on fused targets teach the policy to attend from one object to the other? A probe of the final
policies' self-attention on the grid's 8 train prompts (the same fixed evaluation seeds as object_probe.py).

D-Fusion's target, at its fused steps, attends to a *different* image's keys and values inside the reference's
object mask. A policy trained to reproduce those transitions cannot see the reference; one way to come close is to
draw on its own image's objects. If that is what dpo + fusion learns, its self-attention from the second object's
pixels to the first object's should be stronger than the base's and plain dpo's, and the second object would then
take on the first one's attributes (object_probe_shapes-objects.txt: 13 of its 17 second-object failures take the
first object's color).

For every image with exactly two detected shapes of which one matches the first named object, the UNet is run again
(conditional pass) on the image's own trajectory latents at steps 0-16, with a processor on each self-attention
layer that records the attention probabilities (mean over heads) and then calls the stock processor. With the
verifier's masks of the two shapes pooled to the layer's grid (R0: the first named object, R1: the other shape):

    enrichment(1 -> 0) = [mean over queries in R1 of the attention mass on keys in R0] / [R0's share of the grid]

(1 = attention as if uniform over the grid), likewise 1 -> 1 (the shape attending to itself), and per image the
selectivity 1 -> 1 / 1 -> 0 (how much more the second shape attends to itself than to the first object). From the
cross-attention layers, likewise recorded: "color0 share", the second shape's attention mass on the first object's
color word over its mass on both objects' color words (0.5: it cannot tell them apart). Each figure is the mean over
images (each image's mean over the grid's layers and the band's steps) ± twice its standard error over images.

Usage (what made attention_probe_SUITE-sSEED.txt here, for seeds 0 and 1):
    OMP_NUM_THREADS=1 python results/grid-x3/attention_probe.py SUITE SEED 24 dpo-plain dpo-fusion pg-fusion ddpo-fusion
"""

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor

from dfusion_bench.guidance import encode_text
from dfusion_bench.fusion.layers import attention_layers
from dfusion_bench.fusion.tokens import word_token_positions
from dfusion_bench.rl.checkpoint import load_policy
from dfusion_bench.sampling import sample
from dfusion_bench.scorers.verifier import to_hwc_numpy
from dfusion_bench.seeding import eval_seeds
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.suites import load_suite
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.verify import verify

NAMES = ("1->0", "1->1", "1->1 / 1->0", "color0 share")
BANDS = {"steps 0-1 (never fused)": range(0, 2), "steps 2-9": range(2, 10), "steps 10-16": range(10, 17)}


class Recorder:
    """Attention processor: keeps the head-mean attention probabilities of its call (self-attention: over the
    grid's positions; cross-attention: over the prompt's tokens), then runs the stock processor."""

    def __init__(self, store: dict[str, torch.Tensor], name: str):
        self.store, self.name, self.stock = store, name, AttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(query, key, None).float()
        self.store[self.name] = probs.reshape(hidden_states.shape[0], attn.heads, *probs.shape[1:]).mean(1)
        return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def regions(spec, verdict):
    """(R0, R1) 32x32 masks: the first named object's match and the other shape; None unless exactly two shapes."""
    if len(verdict.detections) != 2 or verdict.masks[0] is None:
        return None
    other = [d.mask for d in verdict.detections if not (d.mask == verdict.masks[0]).all()]
    return (verdict.masks[0], other[0]) if len(other) == 1 else None


def pooled(mask: np.ndarray, side: int) -> torch.Tensor:
    """The share of each cell of a side x side grid that the mask covers, flattened."""
    m = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return F.adaptive_avg_pool2d(m, side).flatten()


def enrichment(probs: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> float:
    """Mean attention mass from the queries in src onto the keys in dst, over dst's share of the grid."""
    mass = (src @ probs @ dst) / src.sum()
    return float(mass / (dst.sum() / dst.numel()))


def summary(per_image: dict[tuple, list[float]]) -> str:
    """Mean over images (each image's mean over steps and layers) ± twice its standard error."""
    x = np.array([np.mean(v) for v in per_image.values()])
    return f"{x.mean():.2f}±{2 * x.std(ddof=1) / np.sqrt(len(x)):.2f}" if len(x) > 1 else "-"


def outcome(verdict) -> str:
    return "object1 held" if verdict.facts["object1"] else "object1 fails"


def difference(a: dict[tuple, list[float]], b: dict[tuple, list[float]]) -> str:
    """summary() of a - b, image by image (each image's mean over steps and layers)."""
    return summary({k: [np.mean(a[k]) - np.mean(b[k])] for k in a})


def record(values, store, layers, sample_size, keep, verdicts, colors, band, prompt) -> None:
    """Add one UNet call's measures (its probabilities in ``store``, batch rows in ``keep``'s order) to ``values``:
    (band, grid side, measure, object1 outcome) -> image -> values over the band's steps and the grid's layers."""
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
    """The conditional UNet call on rows ``idx`` of ``traj`` at step j, with Recorders installed."""
    t = torch.full((len(idx),), int(traj.timesteps[j]), dtype=torch.long)
    with torch.no_grad():
        unet(traj.latents[idx, j], t, encoder_hidden_states=text)


def kept(spec, verdicts) -> list:
    """(index, (R0, R1)) of the images with two shapes, the first named one matched."""
    return [(i, r) for i, v in enumerate(verdicts) if (r := regions(spec, v)) is not None]


def outcome_counts(verdicts, keep) -> dict[str, int]:
    counts = defaultdict(int)
    for i, _ in keep:
        counts[outcome(verdicts[i])] += 1
    return counts


def report(title: str, values, bands) -> None:
    print(title)
    print("   per band and grid, for all these images; for those whose second object fails: " + ", ".join(NAMES))
    for band in bands:
        for side in sorted({k[1] for k in values}, reverse=True):
            cells = []
            for o1 in ("all", "object1 fails"):
                part = [summary(values.get((band, side, name, o1), {})) for name in NAMES]
                cells.append(f"{o1}: " + " ".join(part))
            print(f"   {band:24s} {side:2d}x{side:<2d} " + "; ".join(cells))


def recorders(stock: dict, store: dict, layers, kind=Recorder, **extra) -> dict:
    """The UNet's processors with a recorder on each of ``layers`` (the others as they were)."""
    names = {la.name for la in layers}
    return {n: kind(store, n, **extra) if n in names else p for n, p in stock.items()}


def new_values() -> dict:
    return defaultdict(lambda: defaultdict(list))


def probe_setup(argv: list[str]):
    suite, seed, per_prompt, labels = argv[0], int(argv[1]), int(argv[2]), argv[3:]
    entries = list(load_suite(suite).split("train"))[:8]
    torch.manual_seed(0)
    return suite, seed, labels, entries, eval_seeds(len(entries), per_prompt)


CONFIG = SamplerConfig(num_steps=20, eta=1.0, guidance_scale=5.0)


def load(label: str, suite: str, seed: int):
    if label == "base":
        return ModelChoice.check(None).load(torch.device("cpu"), torch.float32)
    run = Path(f"results/grid-x3/{label}-{suite}-s{seed}")
    return load_policy(run, 8, torch.device("cpu"), torch.float32)[0]


def main(argv: list[str]) -> None:
    suite, seed, labels, entries, seeds = probe_setup(argv)
    for label in ["base", *labels]:
        pipe = load(label, suite, seed)
        unet = pipe.unet
        layers = [la for la in attention_layers(unet) if la.kind in ("self", "cross")]
        store: dict[str, torch.Tensor] = {}
        stock = dict(unet.attn_processors)  # set_attn_processor consumes the dict it is given: pass copies
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
            unet.set_attn_processor(recorders(stock, store, layers))
            for band, steps in BANDS.items():
                for j in steps:
                    unfused_pass(unet, traj, idx, text, j)
                    record(values, store, layers, unet.config.sample_size, keep, verdicts, colors, band, entry.prompt)
            unet.set_attn_processor(dict(stock))
            for k, n in outcome_counts(verdicts, keep).items():
                outcomes[k] += n
        n_used = sum(outcomes.values())
        title = (
            f"{suite} s{seed} {label}: {n_used} images with two shapes, the first named one matched; {dict(outcomes)}"
        )
        report(title, values, BANDS)


if __name__ == "__main__":
    main(sys.argv[1:])
