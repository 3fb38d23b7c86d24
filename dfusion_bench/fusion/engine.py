"""Fused sampling: re-denoise each base's seed as a target that attends to its reference inside the reference's mask.

Cost per fused step and batch of targets: one UNet evaluation of the distinct references at their *stored* latents
(the reference trajectory is replayed, never changed), which records their self-attention inputs and cross-attention
maps, then one evaluation of the targets with fusion. The base is not simulated at all: the target takes the base's
initial latent and per-step noise from the base's seed. With each reference serving two targets this is
0.5 + 1 UNet evaluations per target-step (a CFG pair counting once), against 3 in the paper's code (reference, base,
target). The target's stored log-probabilities are then recomputed under the *unmodified* policy — the fused network
is not the policy — which costs one more evaluation per target-step, reported separately.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dfusion_bench.fusion.config import FusionConfig
from dfusion_bench.fusion.layers import default_mask_resolution, select_cross_attention, select_self_attention
from dfusion_bench.fusion.masks import binarize, union
from dfusion_bench.fusion.processors import FusionController, fusion_processors
from dfusion_bench.fusion.tokens import word_token_positions
from dfusion_bench.fusion.triples import Triple
from dfusion_bench.guidance import EvalCounter, encode_text, guided_output
from dfusion_bench.sampling import decode, denoise, latent_shape, noise_stream, recompute_log_probs
from dfusion_bench.trajectories import Trajectories


class PromptItems(Protocol):
    """What fusion needs to know of a prompt: its item words and their thresholds (None = auto)."""

    prompt: str
    items: tuple[str, ...]
    thresholds: tuple[float | None, ...]


@dataclass(frozen=True)
class FusionPlan:
    """The resolved layers and steps of a fusion run."""

    fuse_layers: tuple[str, ...]
    mask_layers: tuple[str, ...]
    mask_resolution: int
    fused_steps: tuple[int, ...]

    @staticmethod
    def resolve(unet: UNet2DConditionModel, config: FusionConfig, num_steps: int) -> FusionPlan:
        resolution = config.mask_resolution or default_mask_resolution(unet)
        return FusionPlan(
            fuse_layers=tuple(select_self_attention(unet, config.fuse_layers)),
            mask_layers=tuple(select_cross_attention(unet, resolution)),
            mask_resolution=resolution,
            fused_steps=tuple(range(config.skip_first_steps, num_steps)),
        )


@dataclass
class FusionResult:
    targets: Trajectories  # one per triple: prompt and seed of the base; log_probs under the unmodified policy
    fused_log_probs: torch.Tensor  # (G, T) log-probs under the fused network (diagnostic only)
    maps: torch.Tensor  # (G, T, items, h, w) the reference's cross-attention maps (zero at unfused steps)
    masks: torch.Tensor  # (G, T, h, w) bool: the union mask used at each step
    plan: FusionPlan
    events: list[tuple[int, str]] = field(default_factory=list)  # (step, layer) of every fused call
    unet_evals: dict[str, int] = field(default_factory=dict)  # images evaluated: reference, target, policy_log_probs

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
        )

    def evals_per_target_step(self, include_log_probs: bool = False) -> float:
        n = len(self.targets) * len(self.targets.timesteps)
        used = self.unet_evals["reference"] + self.unet_evals["target"]
        if include_log_probs:
            used += self.unet_evals["policy_log_probs"]
        return used / n if n else 0.0


def _item_tokens(pipe: StableDiffusionPipeline, entry: PromptItems) -> list[list[int]]:
    return [word_token_positions(pipe.tokenizer, entry.prompt, word) for word in entry.items]


class _ReferencePass:
    """Before each fused step of a batch of targets: replay the references at that step, then arm the fusion."""

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        unet: UNet2DConditionModel,
        controller: FusionController,
        plan: FusionPlan,
        refs: Trajectories,
        entries: list[PromptItems],
        config: FusionConfig,
        target_ref: torch.Tensor,
        max_items: int,
    ):
        self.pipe, self.unet, self.controller, self.plan, self.refs = pipe, unet, controller, plan, refs
        self.tokens = [_item_tokens(pipe, e) for e in entries]
        self.thresholds = [config.thresholds_for(e.thresholds) for e in entries]
        self.text = encode_text(pipe, refs.prompts)
        self.target_ref = target_ref
        side, n_steps, n = plan.mask_resolution, len(refs.timesteps), len(target_ref)
        self.maps = torch.zeros(n, n_steps, max_items, side, side)
        self.masks = torch.zeros(n, n_steps, side, side, dtype=torch.bool)

    def __call__(self, i: int) -> None:
        if i not in self.plan.fused_steps:
            self.controller.off()
            return
        self.controller.begin_record(i, self.tokens)
        latents = self.refs.latents[:, i].to(self.pipe.device)
        guided_output(self.unet, latents, int(self.refs.timesteps[i]), self.text, self.refs.config.guidance_scale)
        ref_maps = self.controller.finish_record().cpu()  # (R, items, h, w)
        ref_masks = torch.stack([union(binarize(ref_maps[r, : len(t)], t)) for r, t in enumerate(self.thresholds)])
        self.maps[:, i, : ref_maps.shape[1]] = ref_maps[self.target_ref]
        self.masks[:, i] = ref_masks[self.target_ref]
        self.controller.begin_fuse(i, ref_masks[self.target_ref], self.target_ref)


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
) -> FusionResult:
    """One fused target per triple, denoised from the base's seed with the reference's keys and values.

    ``max_items`` sizes the recorded maps (default: the most items of these triples' prompts); processes that fuse
    shares of one batch pass the batch's maximum so that their results concatenate."""
    if not triples:
        raise ValueError("no triples to fuse")
    unet = unet or pipe.unet
    cfg, timesteps = samples.config, samples.timesteps
    plan = FusionPlan.resolve(unet, config, len(timesteps))
    shape = latent_shape(pipe)
    controller = FusionController(list(plan.fuse_layers), list(plan.mask_layers), shape[1:])
    ref_counter, all_counter = EvalCounter(), EvalCounter()
    max_items = max_items or max(len(items[samples.prompts[t.reference]].items) for t in triples)
    parts, fused_lps, maps, masks = [], [], [], []
    for start in range(0, len(triples), batch_size):
        chunk = list(triples[start : start + batch_size])
        ref_ids = list(dict.fromkeys(t.reference for t in chunk))
        target_ref = torch.tensor([ref_ids.index(t.reference) for t in chunk])
        refs = samples.select(ref_ids)
        entries = [items[p] for p in refs.prompts]
        reference_pass = _ReferencePass(pipe, unet, controller, plan, refs, entries, config, target_ref, max_items)
        prompts = [samples.prompts[t.base] for t in chunk]
        seeds = [samples.seeds[t.base] for t in chunk]
        noises = torch.stack([noise_stream(s, shape, cfg.num_steps) for s in seeds])
        text = encode_text(pipe, prompts)
        with all_counter.watch(unet), fusion_processors(unet, controller):
            with_refs = _counting(reference_pass, ref_counter, unet)
            latents, fused_lp = denoise(pipe, text, noises, timesteps, cfg, unet=unet, before_step=with_refs)
        parts.append(Trajectories(prompts, seeds, timesteps, latents, fused_lp, decode(pipe, latents[:, -1]), cfg))
        fused_lps.append(fused_lp)
        maps.append(reference_pass.maps)
        masks.append(reference_pass.masks)
        if on_batch is not None:
            on_batch(len(chunk))
    targets = Trajectories.cat(parts)
    policy_counter = EvalCounter()
    with policy_counter.watch(unet):
        targets.log_probs = recompute_log_probs(pipe, targets, unet=unet, batch_size=batch_size)
    evals = {
        "reference": ref_counter.images,
        "target": all_counter.images - ref_counter.images,
        "policy_log_probs": policy_counter.images,
    }
    return FusionResult(
        targets=targets,
        fused_log_probs=torch.cat(fused_lps),
        maps=torch.cat(maps),
        masks=torch.cat(masks),
        plan=plan,
        events=list(controller.events),
        unet_evals=evals,
    )


def _counting(hook: Callable[[int], None], counter: EvalCounter, unet: UNet2DConditionModel) -> Callable[[int], None]:
    """``hook`` with the UNet evaluations it makes added to ``counter``."""

    def counted(i: int) -> None:
        with counter.watch(unet):
            hook(i)

    return counted
