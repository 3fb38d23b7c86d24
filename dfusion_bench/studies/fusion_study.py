"""Measuring D-Fusion on the embedded model, where the exact verifier knows the truth.

For one suite: sample every prompt (train and test) N times, score with the verifier, pair as the paper does, then
fuse once per variant (layers, steps, thresholds, mask resolution) and measure, per triple:

- alignment: does the target beat its base, and by how much (verifier score);
- visual consistency: PSNR and SSIM of target vs base, next to reference vs base (the paper's claim: the target is
  as aligned as the reference yet looks like the base);
- mask quality: IoU of each item's cross-attention mask (on the reference) with the verifier's detected mask of
  that object, for fixed thresholds and for ``auto`` — computed from the recorded maps, so any threshold can be
  scored without re-running fusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from diffusers import StableDiffusionPipeline
from rich.progress import Progress
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dfusion_bench.fusion import FusionConfig, FusionResult, Triple, fuse_triples, select_triples
from dfusion_bench.fusion.masks import binarize, resize_mask
from dfusion_bench.progress import advance_callback
from dfusion_bench.rollout import ScoredSamples, sample_and_score, score_trajectories
from dfusion_bench.scorers import get_scorer
from dfusion_bench.seeding import sample_seeds
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import PromptEntry
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.verify import verify


@dataclass(frozen=True)
class Variant:
    name: str
    config: FusionConfig


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).float().numpy()


def consistency(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two (3, H, W) images in [0, 1]."""
    x, y = _hwc(a), _hwc(b)
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0) if not np.array_equal(x, y) else float("inf")
    return float(psnr), float(structural_similarity(x, y, channel_axis=-1, data_range=1.0))


def sample_suite(
    pipe: StableDiffusionPipeline,
    entries: list[PromptEntry],
    per_prompt: int,
    seed: int,
    sampler: SamplerConfig,
    batch_size: int,
    progress: Progress | None,
) -> ScoredSamples:
    seeds = sample_seeds(seed, 0, len(entries), per_prompt)
    return sample_and_score(pipe, get_scorer("verifier"), entries, seeds, sampler, batch_size, progress=progress)


def triple_rows(
    samples: ScoredSamples, triples: list[Triple], result: FusionResult, split_of: dict[str, str]
) -> pd.DataFrame:
    """Per-triple alignment and consistency of one fusion variant."""
    target_scores = score_trajectories(get_scorer("verifier"), result.targets)
    imgs, scores = samples.trajectories.images, samples.scores
    rows = []
    for g, t in enumerate(triples):
        psnr_tb, ssim_tb = consistency(result.targets.images[g], imgs[t.base])
        psnr_rb, ssim_rb = consistency(imgs[t.reference], imgs[t.base])
        prompt = samples.trajectories.prompts[t.base]
        rows.append(
            {
                "triple": g,
                "prompt": prompt,
                "split": split_of[prompt],
                "reference_score": float(scores.scores[t.reference]),
                "base_score": float(scores.scores[t.base]),
                "target_score": float(target_scores.scores[g]),
                "target_aligned": bool(target_scores.aligned[g]),
                "reference_aligned": bool(scores.aligned[t.reference]),
                "base_aligned": bool(scores.aligned[t.base]),
                "psnr_target_base": psnr_tb,
                "psnr_reference_base": psnr_rb,
                "ssim_target_base": ssim_tb,
                "ssim_reference_base": ssim_rb,
                "mask_area": float(result.masks[g, list(result.plan.fused_steps)].float().mean()),
            }
        )
    return pd.DataFrame(rows)


def summarize(rows: pd.DataFrame) -> dict[str, float]:
    finite = rows.replace([np.inf], np.nan)
    return {
        "triples": len(rows),
        "target_beats_base": float((rows.target_score > rows.base_score).mean()),
        "target_ties_base": float((rows.target_score == rows.base_score).mean()),
        "mean_gain_target_vs_base": float((rows.target_score - rows.base_score).mean()),
        "mean_gain_reference_vs_base": float((rows.reference_score - rows.base_score).mean()),
        "target_aligned": float(rows.target_aligned.mean()),
        "reference_aligned": float(rows.reference_aligned.mean()),
        "base_aligned": float(rows.base_aligned.mean()),
        "psnr_target_base": float(finite.psnr_target_base.mean()),
        "psnr_reference_base": float(finite.psnr_reference_base.mean()),
        "ssim_target_base": float(rows.ssim_target_base.mean()),
        "ssim_reference_base": float(rows.ssim_reference_base.mean()),
        "mask_area": float(rows.mask_area.mean()),
    }


def mask_iou_rows(
    samples: ScoredSamples,
    triples: list[Triple],
    result: FusionResult,
    items: dict[str, PromptEntry],
    thresholds: dict[str, float | None],
    split_of: dict[str, str],
) -> pd.DataFrame:
    """IoU of each reference item's cross-attention mask with the verifier's mask of that object.

    One row per (reference, item, threshold rule): the IoU averaged over fused steps and at the last fused step.
    References whose object the verifier did not find are skipped (there is nothing to overlap with).
    """
    steps = list(result.plan.fused_steps)
    traj = samples.trajectories
    rows = []
    seen: set[int] = set()
    for g, t in enumerate(triples):
        if t.reference in seen:
            continue
        seen.add(t.reference)
        prompt = traj.prompts[t.reference]
        spec, entry = parse(prompt), items[prompt]
        verdict = verify(spec, _hwc(traj.images[t.reference]))
        side = traj.images.shape[-1]
        for i, word in enumerate(entry.items):
            obj = [k for k, o in enumerate(spec.objects) if o.shape == word]
            truth = verdict.masks[obj[0]] if obj else None
            if truth is None:
                continue
            truth_t = torch.from_numpy(truth)
            for rule, thr in thresholds.items():
                ious = []
                for s in steps:
                    mask = binarize(result.maps[g, s, i : i + 1].float(), [thr])[0]
                    big = resize_mask(mask, side, side)
                    union = (big | truth_t).sum().item()
                    ious.append((big & truth_t).sum().item() / union if union else 0.0)
                rows.append(
                    {
                        "reference": t.reference,
                        "prompt": prompt,
                        "split": split_of[prompt],
                        "item": word,
                        "rule": rule,
                        "iou_mean_over_steps": float(np.mean(ious)),
                        "iou_last_step": float(ious[-1]),
                    }
                )
    return pd.DataFrame(rows)


def run_study(
    pipe: StableDiffusionPipeline,
    train: list[PromptEntry],
    test: list[PromptEntry],
    variants: list[Variant],
    per_prompt: int = 16,
    seed: int = 0,
    sampler: SamplerConfig = SamplerConfig(),
    batch_size: int = 32,
    fixed_grid: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3),
    progress: Progress | None = None,
) -> dict[str, pd.DataFrame]:
    """The whole study of one suite. Returns DataFrames: ``summary``, ``triples``, ``masks``."""
    entries = train + test
    split_of = {e.prompt: "train" for e in train} | {e.prompt: "test" for e in test}
    items = {e.prompt: e for e in entries}
    samples = sample_suite(pipe, entries, per_prompt, seed, sampler, batch_size, progress)
    base_cfg = variants[0].config
    triples = select_triples(
        samples.groups, samples.scores.scores, base_cfg.reference_fraction, base_cfg.reference_uses
    )
    summaries, all_rows, mask_rows, resolutions = [], [], [], set()
    advance = advance_callback(progress, "variants", len(variants))
    for variant in variants:
        result = fuse_triples(pipe, samples.trajectories, triples, items, variant.config, batch_size=batch_size)
        rows = triple_rows(samples, triples, result, split_of).assign(variant=variant.name)
        all_rows.append(rows)
        for split in ("all", "train", "test"):
            part = rows if split == "all" else rows[rows.split == split]
            if len(part):
                summaries.append({"variant": variant.name, "split": split, **summarize(part)})
        if result.plan.mask_resolution not in resolutions:  # maps do not depend on thresholds: score every rule once
            resolutions.add(result.plan.mask_resolution)
            rules: dict[str, float | None] = {"auto": None} | {f"fixed {v:g}": v for v in fixed_grid}
            iou = mask_iou_rows(samples, triples, result, items, rules, split_of)
            mask_rows.append(iou.assign(mask_resolution=result.plan.mask_resolution))
        advance(1)
    return {
        "summary": pd.DataFrame(summaries),
        "triples": pd.concat(all_rows, ignore_index=True),
        "masks": pd.concat(mask_rows, ignore_index=True),
        "samples": pd.DataFrame(
            {
                "prompt": samples.trajectories.prompts,
                "split": [split_of[p] for p in samples.trajectories.prompts],
                "score": samples.scores.scores,
                "aligned": samples.scores.aligned,
            }
        ),
    }
