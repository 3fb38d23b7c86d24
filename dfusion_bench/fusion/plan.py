"""The resolved layers and steps of a fusion run, and what recording a reference at them costs in memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from dfusion_bench.fusion.config import FusionConfig
from dfusion_bench.fusion.layers import (
    attention_layers,
    default_mask_resolution,
    select_cross_attention,
    select_self_attention,
)

MAP_DTYPE = torch.float32  # item maps are kept in float32 whatever the UNet's dtype


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

    def state_elements(self, unet: UNet2DConditionModel) -> int:
        """Numbers in one image's inputs to the fused layers at one step: sum over the layers of tokens x channels,
        tokens = (latent side / the layer's downsampling)^2 and channels = the layer's query width (read from the
        UNet's modules, so a ``meta``-device UNet serves)."""
        side = unet.config.sample_size
        down = {layer.name: layer.downsample for layer in attention_layers(unet)}
        total = 0
        for name in self.fuse_layers:
            channels = unet.get_submodule(name.removesuffix(".processor")).query_dim
            total += (side // down[name]) ** 2 * channels
        return total

    def record_bytes(self, unet: UNet2DConditionModel, n_items: int, dtype: torch.dtype) -> int:
        """Bytes of one sample's record: both CFG halves of every fused layer's input at every fused step, in the
        UNet's ``dtype``, plus the sample's ``n_items`` item maps (mask resolution squared, float32) per fused step.

        = T_f (2 E b + I r^2 4), with T_f fused steps, E = :meth:`state_elements`, b bytes per number, I items."""
        n_steps = len(self.fused_steps)
        states = 2 * self.state_elements(unet) * dtype.itemsize
        maps = n_items * self.mask_resolution**2 * MAP_DTYPE.itemsize
        return n_steps * (states + maps)
