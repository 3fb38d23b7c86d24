"""The UNet's attention layers, named by their processor names, with their kind and spatial resolution.

Layers are always addressed by the names of ``unet.attn_processors`` (e.g.
``up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor``), never by the order of calls, so the selection
survives gradient checkpointing and any re-ordering of execution. ``attn1`` is self-attention, ``attn2`` is
cross-attention with the prompt.

A layer's resolution follows from its block: in a diffusers ``UNet2DConditionModel`` every down block but the last
halves the grid and every up block but the last doubles it, so ``down_blocks.i`` runs at latent / 2^i, the mid block
at latent / 2^(n-1) and ``up_blocks.i`` at latent / 2^(n-1-i).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import UNet2DConditionModel

from dfusion_bench.errors import UserError


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # processor name
    kind: str  # "self" or "cross"
    block: str  # "down", "mid" or "up"
    downsample: int  # the layer's grid is the latent grid divided by this


def attention_layers(unet: UNet2DConditionModel) -> list[AttentionLayer]:
    """Every attention processor of the UNet, in ``unet.attn_processors`` order."""
    n_down, n_up = len(unet.config.down_block_types), len(unet.config.up_block_types)
    layers = []
    for name in unet.attn_processors:
        parts = name.split(".")
        if parts[0] == "down_blocks":
            block, factor = "down", 2 ** int(parts[1])
        elif parts[0] == "mid_block":
            block, factor = "mid", 2 ** (n_down - 1)
        elif parts[0] == "up_blocks":
            block, factor = "up", 2 ** (n_up - 1 - int(parts[1]))
        else:
            raise UserError(f"unexpected attention processor {name!r}: only UNet2DConditionModel layouts are supported")
        kind = "self" if ".attn1." in name else "cross" if ".attn2." in name else "other"
        layers.append(AttentionLayer(name, kind, block, factor))
    return layers


def select_self_attention(unet: UNet2DConditionModel, prefixes: tuple[str, ...]) -> list[str]:
    """Self-attention processor names under any of ``prefixes`` (e.g. ``mid_block`` and ``up_blocks``)."""
    names = [
        layer.name
        for layer in attention_layers(unet)
        if layer.kind == "self" and any(layer.name == p or layer.name.startswith(p.rstrip(".") + ".") for p in prefixes)
    ]
    if not names:
        raise UserError(
            f"no self-attention layer matches {', '.join(prefixes)}; use prefixes like mid_block, up_blocks.1"
        )
    return names


def cross_attention_resolutions(unet: UNet2DConditionModel) -> list[int]:
    """Grid sides (for a square latent of the UNet's sample size) at which cross-attention runs, largest first."""
    side = unet.config.sample_size
    return sorted({side // layer.downsample for layer in attention_layers(unet) if layer.kind == "cross"}, reverse=True)


def default_mask_resolution(unet: UNet2DConditionModel) -> int:
    """Latent side / 4 (16 for SD at 512 px), or the available cross-attention resolution nearest to it."""
    wanted = unet.config.sample_size // 4
    return min(cross_attention_resolutions(unet), key=lambda side: (abs(side - wanted), -side))


def select_cross_attention(unet: UNet2DConditionModel, resolution: int) -> list[str]:
    """Cross-attention processor names whose grid side is ``resolution``."""
    side = unet.config.sample_size
    names = [
        layer.name
        for layer in attention_layers(unet)
        if layer.kind == "cross" and side // layer.downsample == resolution
    ]
    if not names:
        available = ", ".join(str(s) for s in cross_attention_resolutions(unet))
        raise UserError(f"no cross-attention layer runs at {resolution}x{resolution}; available: {available}")
    return names
