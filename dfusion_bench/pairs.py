"""From scored samples to preference data: rank, pair, and (optionally) fuse.

``dfusion fuse`` writes this out and ``dfusion train`` consumes it every epoch:
scored samples (:mod:`dfusion_bench.rollout`) -> triples -> fused targets (and their scores).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from rich.progress import Progress

from dfusion_bench.distributed import SINGLE, Distributor
from dfusion_bench.fusion import FusionConfig, FusionResult, Triple, fuse_triples, select_triples
from dfusion_bench.progress import advance_callback
from dfusion_bench.rollout import ScoredSamples, score_trajectories
from dfusion_bench.scorers.base import Scorer, Scores


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
    """Rank and pair the samples; with ``fuse``, also denoise and score a D-Fusion target per triple (reading, then
    freeing, the references' records when sampling cached them)."""
    triples = select_triples(samples.groups, samples.scores.scores, fusion.reference_fraction, fusion.reference_uses)
    cache = samples.references
    if cache is not None:
        cache.keep({t.reference for t in triples} if fuse else set())
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
            max_items=max_items, references=cache,
        )
        if local
        else None
    )  # fmt: skip
    if cache is not None:
        cache.release()
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
