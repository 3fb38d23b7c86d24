"""Fused sampling: re-denoise each base's seed as a target that attends to its reference inside the reference's mask.

The base is not simulated at all: the target takes the base's initial latent and per-step noise from the base's seed,
and until fusion begins (steps < skip_first_steps) it *is* the base — same latent, noise and policy — so its first
steps are the base's stored trajectory, copied (exact on a CPU, where a sample does not depend on its batch). From
the first fused step on, per step and batch of targets: the distinct references' records at that step — read from
the reference cache filled while sampling (:mod:`dfusion_bench.fusion.cache`), or recorded by replaying the
references at their stored latents (one UNet evaluation per reference) — give each target its mask, then one
evaluation of the targets with fusion. With the cache that is 1 UNet evaluation per fused target-step (a CFG pair
counting once) and none at the unfused ones, against 3 in the paper's code (reference, base, target).

The target's log-probabilities under the *unmodified* policy (the fused network is not the policy) are the base's at
the unfused steps and are recomputed at the fused ones: one more evaluation per fused target-step, reported
separately (``FusionConfig.policy_log_probs`` = False skips it: only ddpo's ratio needs them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dfusion_bench.fusion.cache import ReferenceCache, item_tokens
from dfusion_bench.fusion.config import FusionConfig
from dfusion_bench.fusion.masks import binarize, union
from dfusion_bench.fusion.plan import FusionPlan
from dfusion_bench.fusion.processors import FusionController, fusion_processors
from dfusion_bench.fusion.records import ReferenceRecords
from dfusion_bench.fusion.triples import Triple
from dfusion_bench.guidance import encode_text, guided_output
from dfusion_bench.sampling import decode, denoise, latent_shape, noise_stream, recompute_log_probs
from dfusion_bench.trajectories import Trajectories


class PromptItems(Protocol):
    """What fusion needs to know of a prompt: its item words and their thresholds (None = auto)."""

    prompt: str
    items: tuple[str, ...]
    thresholds: tuple[float | None, ...]


@dataclass
class FusionResult:
    targets: Trajectories  # one per triple: prompt and seed of the base; log_probs under the unmodified policy
    fused_log_probs: torch.Tensor  # (G, T) log-probs under the fused network (diagnostic only)
    maps: torch.Tensor  # (G, T, items, h, w) the reference's cross-attention maps (zero at unfused steps)
    masks: torch.Tensor  # (G, T, h, w) bool: the union mask used at each step
    plan: FusionPlan
    events: list[tuple[int, str]] = field(default_factory=list)  # (step, layer) of every fused call
    unet_evals: dict[str, int] = field(default_factory=dict)  # samples evaluated (a CFG pair once, CPU padding not
    # counted): reference (replay), target (fused steps), policy_log_probs
    reference_cache: dict[str, Any] = field(default_factory=dict)  # cache or replay, why, sizes (per run)
    timing: dict[str, float] = field(default_factory=dict)  # targets_s, policy_log_probs_s: wall; *_cpu_s: CPU time

    def select(self, index: list[int]) -> FusionResult:
        """The targets at ``index`` (events and evaluation counts are per run and are kept as they are)."""
        return FusionResult(
            self.targets.select(index),
            self.fused_log_probs[index],
            self.maps[index],
            self.masks[index],
            self.plan,
            self.events,
            self.unet_evals,
            self.reference_cache,
            self.timing,
        )

    @staticmethod
    def cat(parts: list[FusionResult], evals: list[dict[str, int]]) -> FusionResult:
        """Targets of several results in order; evaluation counts summed over ``evals`` (one per process)."""
        return FusionResult(
            Trajectories.cat([p.targets for p in parts]),
            torch.cat([p.fused_log_probs for p in parts]),
            torch.cat([p.maps for p in parts]),
            torch.cat([p.masks for p in parts]),
            parts[0].plan,
            parts[0].events,
            {k: sum(e[k] for e in evals) for k in evals[0]},
            parts[0].reference_cache,
            parts[0].timing,
        )

    def evals_per_target_step(self, include_log_probs: bool = False) -> float:
        n = len(self.targets) * len(self.targets.timesteps)
        used = self.unet_evals["reference"] + self.unet_evals["target"]
        if include_log_probs:
            used += self.unet_evals["policy_log_probs"]
        return used / n if n else 0.0


class _FusedSteps:
    """Hooks of one batch of targets' chain: before each fused step, the references' records at that step (replayed
    when not cached) and each target's mask; before each UNet call, the controller's fuse mode for its targets."""

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        unet: UNet2DConditionModel,
        controller: FusionController,
        plan: FusionPlan,
        samples: Trajectories,
        cached: ReferenceRecords | None,
        target_refs: list[int],
        entries: dict[int, PromptItems],
        config: FusionConfig,
        max_items: int,
    ):
        self.pipe, self.unet, self.controller, self.plan, self.samples = pipe, unet, controller, plan, samples
        self.cached, self.records, self.target_refs = cached, cached, target_refs
        self.ref_ids = list(dict.fromkeys(target_refs))
        self.tokens = {r: item_tokens(pipe, entries[r].prompt, entries[r].items) for r in self.ref_ids}
        self.thresholds = {r: config.thresholds_for(entries[r].thresholds) for r in self.ref_ids}
        self.text = None if cached is not None else encode_text(pipe, [samples.prompts[r] for r in self.ref_ids])
        self.replayed = 0  # reference images evaluated
        side, n_steps, n = plan.mask_resolution, len(samples.timesteps), len(target_refs)
        self.maps = torch.zeros(n, n_steps, max_items, side, side)
        self.masks = torch.zeros(n, n_steps, side, side, dtype=torch.bool)

    def before_step(self, i: int) -> None:
        if i not in self.plan.fused_steps:
            return
        if self.cached is None:
            self.records = self._replay(i)
        for r in self.ref_ids:
            ref_maps = self.records.maps(r, i).cpu()  # (items, h, w)
            ref_mask = union(binarize(ref_maps, self.thresholds[r]))
            for g in (g for g, ref in enumerate(self.target_refs) if ref == r):
                self.maps[g, i, : ref_maps.shape[0]] = ref_maps
                self.masks[g, i] = ref_mask

    def _replay(self, i: int) -> ReferenceRecords:
        """The references' records at step ``i``, from one UNet evaluation of their stored latents."""
        records, refs = ReferenceRecords(), self.ref_ids

        def record(rows: torch.Tensor) -> None:
            self.controller.record(i, records, [refs[r] for r in rows.tolist()], self.tokens)

        latents = self.samples.latents[refs, i].to(self.pipe.device)
        guided_output(self.unet, latents, int(self.samples.timesteps[i]), self.text, self.samples.config.guidance_scale,
                      before_call=record)  # fmt: skip
        self.controller.off()
        self.replayed += len(refs)
        return records

    def before_call(self, i: int, rows: torch.Tensor) -> None:
        if i not in self.plan.fused_steps:
            self.controller.off()
            return
        rows_list = rows.tolist()
        self.controller.fuse(i, self.records, [self.target_refs[g] for g in rows_list], self.masks[rows_list, i])


def fuse_triples(
    pipe: StableDiffusionPipeline,
    samples: Trajectories,
    triples: Sequence[Triple],
    items: dict[str, PromptItems],
    config: FusionConfig = FusionConfig(),
    batch_size: int = 16,
    unet: UNet2DConditionModel | None = None,
    on_batch: Callable[[int], None] | None = None,
    max_items: int | None = None,
    references: ReferenceCache | None = None,
) -> FusionResult:
    """One fused target per triple, denoised from the base's seed with the reference's keys and values.

    ``references``: what sampling recorded (:func:`~dfusion_bench.fusion.cache.recording`); its records, when it
    has them, must cover every triple's reference under this plan, and the references are then not replayed.
    ``max_items`` sizes the recorded maps (default: the most items of these triples' prompts); processes that fuse
    shares of one batch pass the batch's maximum so that their results concatenate."""
    if not triples:
        raise ValueError("no triples to fuse")
    unet = unet or pipe.unet
    cfg, timesteps = samples.config, samples.timesteps
    n_steps = len(timesteps)
    plan = FusionPlan.resolve(unet, config, n_steps)
    cached = _cached_records(references, plan, triples)
    first = plan.fused_steps[0] if plan.fused_steps else n_steps  # steps before it are the base's
    shape = latent_shape(pipe)
    controller = FusionController(list(plan.fuse_layers), list(plan.mask_layers), shape[1:])
    max_items = max_items or max(len(items[samples.prompts[t.reference]].items) for t in triples)
    parts, fused_lps, maps, masks, replayed = [], [], [], [], 0
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, len(triples), batch_size):
        chunk = list(triples[start : start + batch_size])
        bases = [t.base for t in chunk]
        entries = {t.reference: items[samples.prompts[t.reference]] for t in chunk}
        steps = _FusedSteps(
            pipe, unet, controller, plan, samples, cached, [t.reference for t in chunk], entries, config, max_items
        )
        prompts = [samples.prompts[b] for b in bases]
        seeds = [samples.seeds[b] for b in bases]
        noises = torch.stack([noise_stream(s, shape, cfg.num_steps) for s in seeds])
        text = encode_text(pipe, prompts)
        with fusion_processors(unet, controller):
            latents, fused_lp = denoise(
                pipe, text, noises, timesteps, cfg, unet=unet, before_step=steps.before_step,
                before_call=steps.before_call, start=(first, samples.latents[bases, first]),
            )  # fmt: skip
        latents = torch.cat([samples.latents[bases, :first], latents], dim=1)
        fused_lp = torch.cat([samples.log_probs[bases, :first], fused_lp], dim=1)
        parts.append(Trajectories(prompts, seeds, timesteps, latents, fused_lp, decode(pipe, latents[:, -1]), cfg))
        fused_lps.append(fused_lp)
        maps.append(steps.maps)
        masks.append(steps.masks)
        replayed += steps.replayed
        if on_batch is not None:
            on_batch(len(chunk))
    targets = Trajectories.cat(parts)
    t1, c1 = time.perf_counter(), time.process_time()
    n_targets, n_fused = len(targets), len(plan.fused_steps)
    if config.policy_log_probs:
        policy = recompute_log_probs(pipe, targets, unet=unet, batch_size=batch_size, steps=list(plan.fused_steps))
    else:
        policy = torch.full((n_targets, n_fused), float("nan"))
    targets.log_probs = torch.cat([targets.log_probs[:, :first], policy], dim=1)
    return FusionResult(
        targets=targets,
        fused_log_probs=torch.cat(fused_lps),
        maps=torch.cat(maps),
        masks=torch.cat(masks),
        plan=plan,
        events=list(controller.events),
        unet_evals={
            "reference": replayed,
            "target": n_targets * n_fused,
            "policy_log_probs": n_targets * n_fused if config.policy_log_probs else 0,
        },
        reference_cache=_cache_summary(references),
        timing={
            "targets_s": t1 - t0,
            "policy_log_probs_s": time.perf_counter() - t1,
            "targets_cpu_s": c1 - c0,
            "policy_log_probs_cpu_s": time.process_time() - c1,
        },
    )


def _cached_records(references: ReferenceCache | None, plan: FusionPlan, triples: Sequence[Triple]):
    """The recorded references' records, or None (replay); refused when they do not fit this run."""
    if references is None or references.records is None:
        return None
    if references.plan != plan:
        raise ValueError("the reference cache was recorded under another fusion plan (layers, mask grid or steps)")
    missing = sorted(
        {
            t.reference
            for t in triples
            if plan.fused_steps and not references.records.has(t.reference, plan.fused_steps[0])
        }
    )
    if missing:
        raise ValueError(f"the reference cache holds no record of references {missing[:5]}")
    return references.records


def _cache_summary(references: ReferenceCache | None) -> dict[str, Any]:
    if references is None:
        return {"mode": "replay", "reason": "no records from sampling"}
    return references.summary()
