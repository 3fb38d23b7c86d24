"""Rollouts: sample prompts with their seeds, score the images, and keep them grouped by prompt.

The one data path that training (each epoch's samples), evaluation (fixed seeds) and ``dfusion fuse`` share:
prompts -> trajectories -> scores. With several processes each samples its share and the full set is gathered in the
original order, so every process holds the same data.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from rich.progress import Progress

from dfusion_bench.distributed import SINGLE, Distributor
from dfusion_bench.progress import advance_callback
from dfusion_bench.sampling import sample
from dfusion_bench.scorers.base import Scorer, Scores
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import PromptEntry
from dfusion_bench.trajectories import Trajectories


@dataclass
class ScoredSamples:
    """Samples of several prompts, in prompt-major order, with their scores."""

    entries: list[PromptEntry]
    trajectories: Trajectories
    scores: Scores
    groups: list[list[int]]  # sample indices of each entry
    timing: dict[str, float] = field(default_factory=dict)  # sampling_s, scoring_s (this process)

    def prompt_index(self) -> np.ndarray:
        out = np.zeros(len(self.trajectories), dtype=int)
        for p, group in enumerate(self.groups):
            out[group] = p
        return out


def score_trajectories(scorer: Scorer, traj: Trajectories, batch_size: int = 64) -> Scores:
    """Score decoded images in batches."""
    parts = [
        scorer(traj.images[s : s + batch_size], traj.prompts[s : s + batch_size])
        for s in range(0, len(traj), batch_size)
    ]
    return Scores.concat(parts)


def _split(traj: Trajectories, scores: Scores) -> list[tuple[Trajectories, Scores]]:
    """One (trajectory, score) record per sample, for gathering across processes."""
    return [(traj.select([i]), scores.select([i])) for i in range(len(traj))]


def _join(records: list[tuple[Trajectories, Scores]]) -> tuple[Trajectories, Scores]:
    return Trajectories.cat([r[0] for r in records]), Scores.concat([r[1] for r in records])


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
    dist: Distributor = SINGLE,
) -> ScoredSamples:
    """``seeds[p][k]`` is the seed of sample k of entry p; with several processes each samples its share."""
    work = [(e.prompt, s) for e, row in zip(entries, seeds, strict=True) for s in row]
    local = dist.shard(work)
    advance = advance_callback(progress, label, len(local))
    t0 = time.perf_counter()
    records: list[tuple[Trajectories, Scores]] = []  # a process whose share is empty samples nothing
    if local:
        prompts, local_seeds = [w[0] for w in local], [w[1] for w in local]
        traj = sample(pipe, prompts, local_seeds, sampler, batch_size, unet=unet, on_batch=advance)
    t1 = time.perf_counter()
    if local:
        records = _split(traj, score_trajectories(scorer, traj))
    timing = {"sampling_s": t1 - t0, "scoring_s": time.perf_counter() - t1}
    traj, scores = _join(dist.gather(records))
    groups, start = [], 0
    for row in seeds:
        groups.append(list(range(start, start + len(row))))
        start += len(row)
    return ScoredSamples(entries, traj, scores, groups, timing)
