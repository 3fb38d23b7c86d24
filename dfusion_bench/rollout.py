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
from dfusion_bench.fusion.cache import ReferenceCache, recording
from dfusion_bench.fusion.config import FusionConfig
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
    references: ReferenceCache | None = None  # what sampling recorded for fusion (build_pairs consumes it)

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
    fusion: FusionConfig | None = None,
) -> ScoredSamples:
    """``seeds[p][k]`` is the seed of sample k of entry p; with several processes each samples its share.

    ``fusion``: the settings of the fusion that will follow, so that sampling records the references' data for it
    (the reference cache; it never changes the samples)."""
    work = [(e.prompt, s) for e, row in zip(entries, seeds, strict=True) for s in row]
    local = dist.shard(work)
    advance = advance_callback(progress, label, len(local))
    prompts, items = [w[0] for w in local], {e.prompt: e for e in entries}
    t0 = time.perf_counter()
    records: list[tuple[Trajectories, Scores]] = []  # a process whose share is empty samples nothing
    with recording(pipe, unet, fusion, items, prompts, sampler.num_steps, dist.world) as rec:
        if local:
            traj = sample(pipe, prompts, [w[1] for w in local], sampler, batch_size, unet=unet, on_batch=advance,
                          before_call=rec.before_call)  # fmt: skip
    t1 = time.perf_counter()
    if local:
        records = _split(traj, score_trajectories(scorer, traj))
    timing = {"sampling_s": t1 - t0, "scoring_s": time.perf_counter() - t1}
    traj, scores = _join(dist.gather(records))
    groups, start = [], 0
    for row in seeds:
        groups.append(list(range(start, start + len(row))))
        start += len(row)
    return ScoredSamples(entries, traj, scores, groups, timing, rec.cache)
