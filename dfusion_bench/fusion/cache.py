"""The reference cache: record what fusion needs of every sample while it is drawn, keep the references' records.

The reference's self-attention inputs at the fused layers and steps and its item cross-attention maps are computed
once already, when the reference is sampled. Recording them then lets the target pass read them, so that fusion costs
exactly the target pass; replaying the reference's stored latents instead costs one more UNet evaluation per distinct
reference and fused step. On a CPU both give the same numbers, bit for bit (a test checks it).

The ranking that picks the references comes after sampling, so every sample is recorded and, once the triples are
known, all but the references' records are dropped: the peak is the records of all samples a process draws. With
``FusionConfig.reference_cache``:

- ``auto`` (default): cache when that peak, estimated from the UNet's layers before sampling
  (:meth:`~dfusion_bench.fusion.plan.FusionPlan.record_bytes`), fits the budget, else replay;
- ``on``: cache whatever the estimate; ``off``: replay.

The budget is ``FusionConfig.reference_cache_gb``, or by default a quarter of the total memory of the device the UNet
runs on (a fixed figure per machine, so a configuration chooses the same way on every run there). With several
processes the cache is not used: a triple's reference may have been drawn by another process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dfusion_bench.fusion.config import FusionConfig
from dfusion_bench.fusion.plan import FusionPlan
from dfusion_bench.fusion.processors import FusionController, fusion_processors
from dfusion_bench.fusion.records import ReferenceRecords
from dfusion_bench.fusion.tokens import word_token_positions
from dfusion_bench.sampling import StepCallHook, latent_shape

GIB = 1024**3


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of ``device``: the GPU's, or the machine's RAM for a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@dataclass(frozen=True)
class CacheChoice:
    """Cache or replay, and why; figures in bytes."""

    mode: str  # "cache" or "replay"
    reason: str
    estimate_bytes: int  # records of every sample drawn (the peak)
    budget_bytes: int
    bytes_per_reference: int  # one sample's record, for the most items of the prompts

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "estimate_gib": self.estimate_bytes / GIB,
            "budget_gib": self.budget_bytes / GIB,
            "bytes_per_reference": self.bytes_per_reference,
        }


def choose(config: FusionConfig, record_bytes: list[int], device: torch.device, processes: int = 1) -> CacheChoice:
    """Cache or replay for samples whose records take ``record_bytes`` each (see the module's rules)."""
    budget = int(config.reference_cache_gb * GIB) if config.reference_cache_gb is not None else None
    budget = budget if budget is not None else device_memory_bytes(device) // 4
    estimate, per_ref = sum(record_bytes), max(record_bytes, default=0)

    def pick(mode: str, reason: str) -> CacheChoice:
        return CacheChoice(mode, reason, estimate, budget, per_ref)

    if processes > 1:
        return pick("replay", f"{processes} processes: a reference may have been drawn by another process")
    if config.reference_cache == "off":
        return pick("replay", "reference_cache off")
    if config.reference_cache == "on":
        return pick("cache", "reference_cache on")
    if estimate <= budget:
        return pick("cache", f"records of all samples {estimate / GIB:.3g} GiB <= budget {budget / GIB:.3g} GiB")
    return pick("replay", f"records of all samples {estimate / GIB:.3g} GiB > budget {budget / GIB:.3g} GiB")


@dataclass
class ReferenceCache:
    """What sampling recorded for fusion: the choice, the plan recorded under, and (when cached) the records."""

    choice: CacheChoice
    plan: FusionPlan
    records: ReferenceRecords | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # recorded_bytes (the peak), kept_bytes

    def keep(self, references: set[int]) -> None:
        """Drop every record but the references' (once the triples are known)."""
        if self.records is not None:
            self.sizes["recorded_bytes"] = self.records.nbytes()
            self.records.keep(references)
            self.sizes["kept_bytes"] = self.records.nbytes()

    def release(self) -> None:
        """Free the records (after fusion); the choice and sizes stay for the manifest."""
        self.records = None

    def summary(self) -> dict[str, Any]:
        return {**self.choice.as_dict(), **{k: v for k, v in self.sizes.items()}}


def item_tokens(pipe: StableDiffusionPipeline, prompt: str, items: tuple[str, ...]) -> list[list[int]]:
    """Token positions of each item word of ``prompt``."""
    return [word_token_positions(pipe.tokenizer, prompt, word) for word in items]


class Recording:
    """Hooks for :func:`~dfusion_bench.sampling.sample` that record every sample when the cache is chosen."""

    def __init__(self, cache: ReferenceCache | None, controller: FusionController | None, tokens: dict):
        self.cache, self.controller, self.tokens = cache, controller, tokens
        recording = cache is not None and cache.records is not None
        self.before_call: StepCallHook | None = self._before_call if recording else None

    def _before_call(self, step: int, samples: torch.Tensor) -> None:
        if step in self.cache.plan.fused_steps:
            self.controller.record(step, self.cache.records, samples.tolist(), self.tokens)
        else:
            self.controller.off()


@contextmanager
def recording(
    pipe: StableDiffusionPipeline,
    unet: UNet2DConditionModel | None,
    config: FusionConfig | None,
    items: dict[str, Any],
    prompts: list[str],
    num_steps: int,
    processes: int = 1,
) -> Iterator[Recording]:
    """Sample inside this block with ``before_call=recording.before_call``; ``recording.cache`` then holds the records
    (None without ``config``: no fusion follows). ``items[prompt]`` has the prompt's ``items`` words."""
    if config is None:
        yield Recording(None, None, {})
        return
    unet = unet or pipe.unet
    plan = FusionPlan.resolve(unet, config, num_steps)
    dtype = next(unet.parameters()).dtype
    sizes = [plan.record_bytes(unet, len(items[p].items), dtype) for p in prompts]
    choice = choose(config, sizes, next(unet.parameters()).device, processes)
    if choice.mode == "replay":
        yield Recording(ReferenceCache(choice, plan), None, {})
        return
    cache = ReferenceCache(choice, plan, ReferenceRecords())
    per_prompt = {p: item_tokens(pipe, p, items[p].items) for p in dict.fromkeys(prompts)}
    tokens = {i: per_prompt[p] for i, p in enumerate(prompts)}
    controller = FusionController(list(plan.fuse_layers), list(plan.mask_layers), latent_shape(pipe)[1:])
    with fusion_processors(unet, controller):
        yield Recording(cache, controller, tokens)
