"""From prompts to preference data: sample, score, rank, and (optionally) fuse.

This is the one data path that ``dfusion fuse`` writes out and ``dfusion train`` consumes every epoch:
prompts → trajectories → scores → triples → fused targets (and their scores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from rich.progress import Progress

from dfusion_bench.distributed import SINGLE, Distributor
from dfusion_bench.fusion import FusionConfig, FusionResult, Triple, fuse_triples, select_triples
from dfusion_bench.progress import advance_callback
from dfusion_bench.sampling import sample
from dfusion_bench.scorers.base import Scorer, Scores
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.templates import PromptEntry
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


@dataclass
class Pairs:
    """Everything one round of preference data holds."""

    samples: ScoredSamples
    triples: list[Triple]
    fusion: FusionResult | None = None
    target_scores: Scores | None = None
    timing: dict[str, float] = field(default_factory=dict)  # fusion_s (targets + policy log-probs), scoring_s

    def fact_rates(self) -> dict[str, dict[str, float]]:
        """Per role (reference, base, target), the fraction of the triples whose image holds each fact the scorer
        checks: which facts fusion carried from the reference into the target, and which the target lost from its
        base. Empty when the scorer checks no facts."""
        scores = self.samples.scores
        rates = {
            "reference": scores.fact_rates([t.reference for t in self.triples]),
            "base": scores.fact_rates([t.base for t in self.triples]),
        }
        if self.target_scores is not None:
            rates["target"] = self.target_scores.fact_rates()
        return rates if any(rates.values()) else {}


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
    traj = sample(pipe, [w[0] for w in local], [w[1] for w in local], sampler, batch_size, unet=unet, on_batch=advance)
    t1 = time.perf_counter()
    local_scores = score_trajectories(scorer, traj)
    timing = {"sampling_s": t1 - t0, "scoring_s": time.perf_counter() - t1}
    traj, scores = _join(dist.gather(_split(traj, local_scores)))
    groups, start = [], 0
    for row in seeds:
        groups.append(list(range(start, start + len(row))))
        start += len(row)
    return ScoredSamples(entries, traj, scores, groups, timing)


def build_pairs(
    pipe: StableDiffusionPipeline,
    scorer: Scorer,
    samples: ScoredSamples,
    fusion: FusionConfig,
    fuse: bool,
    batch_size: int = 16,
    unet: UNet2DConditionModel | None = None,
    progress: Progress | None = None,
    dist: Distributor = SINGLE,
) -> Pairs:
    """Rank and pair the samples; with ``fuse``, also denoise and score a D-Fusion target per triple."""
    triples = select_triples(samples.groups, samples.scores.scores, fusion.reference_fraction, fusion.reference_uses)
    if not fuse or not triples:
        return Pairs(samples, triples)
    items = {e.prompt: e for e in samples.entries}
    local = dist.shard(triples)
    advance = advance_callback(progress, "fusing targets", len(local))
    max_items = max(len(items[samples.trajectories.prompts[t.reference]].items) for t in triples)
    t0 = time.perf_counter()
    result = (
        fuse_triples(
            pipe, samples.trajectories, local, items, fusion, batch_size, unet=unet, on_batch=advance,
            max_items=max_items,
        )
        if local
        else None
    )  # fmt: skip
    t1 = time.perf_counter()
    local_scores = score_trajectories(scorer, result.targets) if result is not None else None
    timing = {"fusion_s": t1 - t0, "scoring_s": time.perf_counter() - t1}
    if dist.world == 1:
        return Pairs(samples, triples, result, local_scores, timing)
    parts = dist.gather([(result, local_scores)])
    return _gathered_pairs(samples, triples, parts, dist, timing)


def _gathered_pairs(
    samples: ScoredSamples,
    triples: list[Triple],
    parts: list[tuple[FusionResult | None, Scores | None]],
    dist: Distributor,
    timing: dict[str, float],
) -> Pairs:
    """Reassemble per-process fusion results (rank r fused triples r, r + world, ...) in triple order."""
    records = []
    for i in range(len(triples)):
        result, scores = parts[i % dist.world]
        records.append((result.select([i // dist.world]), scores.select([i // dist.world])))
    fused = FusionResult.cat([r[0] for r in records], evals=[p[0].unet_evals for p in parts if p[0] is not None])
    return Pairs(samples, triples, fused, Scores.concat([r[1] for r in records]), timing)
