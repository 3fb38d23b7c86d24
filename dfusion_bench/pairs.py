"""From prompts to preference data: sample, score, rank, and (optionally) fuse.

This is the one data path that ``dfusion fuse`` writes out and ``dfusion train`` consumes every epoch:
prompts → trajectories → scores → triples → fused targets (and their scores).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from rich.progress import Progress

from dfusion_bench.fusion import FusionConfig, FusionResult, Triple, fuse_triples, select_triples
from dfusion_bench.progress import advance_callback
from dfusion_bench.sampling import sample
from dfusion_bench.scorers.base import Scorer, Scores
from dfusion_bench.templates import PromptEntry
from dfusion_bench.trajectories import SamplerConfig, Trajectories


@dataclass
class ScoredSamples:
    """Samples of several prompts, in prompt-major order, with their scores."""

    entries: list[PromptEntry]
    trajectories: Trajectories
    scores: Scores
    groups: list[list[int]]  # sample indices of each entry

    def prompt_index(self) -> np.ndarray:
        out = np.zeros(len(self.trajectories), dtype=int)
        for p, group in enumerate(self.groups):
            out[group] = p
        return out


@dataclass
class Pairs:
    """Everything one round of preference data holds."""

    samples: ScoredSamples
    triples: list[Triple]
    fusion: FusionResult | None = None
    target_scores: Scores | None = None


def score_trajectories(scorer: Scorer, traj: Trajectories, batch_size: int = 64) -> Scores:
    """Score decoded images in batches."""
    parts = [
        scorer(traj.images[s : s + batch_size], traj.prompts[s : s + batch_size])
        for s in range(0, len(traj), batch_size)
    ]
    return Scores.concat(parts)


def sample_and_score(
    pipe: StableDiffusionPipeline,
    scorer: Scorer,
    entries: list[PromptEntry],
    seeds: list[list[int]],
    sampler: SamplerConfig,
    batch_size: int = 16,
    unet: UNet2DConditionModel | None = None,
    progress: Progress | None = None,
    label: str = "sampling",
) -> ScoredSamples:
    """``seeds[p][k]`` is the seed of sample k of entry p."""
    prompts = [e.prompt for e, row in zip(entries, seeds, strict=True) for _ in row]
    flat = [s for row in seeds for s in row]
    advance = advance_callback(progress, label, len(flat))
    traj = sample(pipe, prompts, flat, sampler, batch_size=batch_size, unet=unet, on_batch=advance)
    groups, start = [], 0
    for row in seeds:
        groups.append(list(range(start, start + len(row))))
        start += len(row)
    return ScoredSamples(entries, traj, score_trajectories(scorer, traj), groups)


def build_pairs(
    pipe: StableDiffusionPipeline,
    scorer: Scorer,
    samples: ScoredSamples,
    fusion: FusionConfig,
    fuse: bool,
    batch_size: int = 16,
    unet: UNet2DConditionModel | None = None,
    progress: Progress | None = None,
) -> Pairs:
    """Rank and pair the samples; with ``fuse``, also denoise and score a D-Fusion target per triple."""
    triples = select_triples(samples.groups, samples.scores.scores, fusion.reference_fraction, fusion.reference_uses)
    if not fuse or not triples:
        return Pairs(samples, triples)
    items = {e.prompt: e for e in samples.entries}
    advance = advance_callback(progress, "fusing targets", len(triples))
    result = fuse_triples(
        pipe, samples.trajectories, triples, items, fusion, batch_size=batch_size, unet=unet, on_batch=advance
    )
    return Pairs(samples, triples, result, score_trajectories(scorer, result.targets))
