"""D-Fusion as diffusers attention processors: a shared controller, and a processor that wraps the stock one.

Fused self-attention replaces the target's keys and values inside the mask by the reference's:
K' = M K_ref + (1 - M) K_tgt, and V' likewise, with the target's own queries. Keys and values are affine maps of the
layer's input (``to_k``/``to_v``, LoRA included), and an affine map commutes with a convex combination, so this is
exactly self-attention whose key/value input is the blended hidden states M h_ref + (1 - M) h_tgt. The processor
therefore never re-implements attention: it hands the blended states to the layer's original processor as
``encoder_hidden_states``, and with an all-zero mask the computation is the unmodified one, bit for bit.

One :class:`FusionController` is consulted by every wrapped processor, keyed by the processor's name (never by call
order). It runs in one of three modes:

- ``record`` (the reference pass; batch ``[uncond refs; cond refs]``): fused layers keep the references' input
  hidden states; mask layers accumulate the conditional half's cross-attention probabilities of each item's tokens;
- ``fuse`` (the target pass; batch ``[uncond targets; cond targets]``): fused layers blend in the reference states,
  for both CFG halves, with each target's mask resized (nearest) to the layer's grid;
- ``off``: every processor behaves exactly as the original.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel

from dfusion_bench.fusion.masks import resize_mask


def layer_grid(n_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a layer with ``n_tokens`` query positions, for a latent of shape ``latent_hw``."""
    factor = math.sqrt(latent_hw[0] * latent_hw[1] / n_tokens)
    return round(latent_hw[0] / factor), round(latent_hw[1] / factor)


class FusionController:
    """Shared state of one fused denoising run."""

    def __init__(self, fuse_layers: list[str], mask_layers: list[str], latent_hw: tuple[int, int]):
        self.fuse_layers = frozenset(fuse_layers)
        self.mask_layers = frozenset(mask_layers)
        self.latent_hw = latent_hw
        self.mode = "off"
        self.step = -1
        self.events: list[tuple[int, str]] = []  # (step, layer) of every fused call
        self._saved: dict[str, torch.Tensor] = {}
        self._tokens: list[list[list[int]]] = []
        self._map_sum: torch.Tensor | None = None
        self._map_layers: set[str] = set()
        self._masks: torch.Tensor | None = None
        self._target_ref: torch.Tensor | None = None

    # ---- reference pass -------------------------------------------------------------------------------------
    def begin_record(self, step: int, item_tokens: list[list[list[int]]]) -> None:
        """Record the references of the next UNet call; ``item_tokens[r][i]`` = token positions of item i of ref r."""
        self.mode, self.step = "record", step
        self._saved, self._tokens, self._map_sum, self._map_layers = {}, item_tokens, None, set()

    def finish_record(self) -> torch.Tensor:
        """Cross-attention maps (R, max_items, h, w) averaged over the mask layers; unused item slots are zero."""
        if self._map_sum is None:
            raise RuntimeError("no cross-attention mask layer ran during the reference pass")
        maps = self._map_sum / len(self._map_layers)
        self.mode = "off"
        return maps

    def _record_cross(self, name: str, attn, hidden: torch.Tensor, context: torch.Tensor) -> None:
        n_refs = len(self._tokens)
        hidden, context = hidden[n_refs:], context[n_refs:]  # conditional half
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden))
        key = attn.head_to_batch_dim(attn.to_k(context))
        probs = attn.get_attention_scores(query, key, None).float()  # (R * heads, N, L)
        probs = probs.reshape(n_refs, attn.heads, *probs.shape[1:]).mean(dim=1)  # (R, N, L)
        h, w = layer_grid(probs.shape[1], self.latent_hw)
        max_items = max(len(items) for items in self._tokens)
        maps = torch.zeros(n_refs, max_items, h, w, device=probs.device)
        for r, items in enumerate(self._tokens):
            for i, positions in enumerate(items):
                maps[r, i] = probs[r, :, positions].sum(dim=-1).reshape(h, w)
        if self._map_sum is None:
            self._map_sum = maps
        elif self._map_sum.shape == maps.shape:
            self._map_sum = self._map_sum + maps
        else:
            raise RuntimeError(f"mask layer {name} runs at {h}x{w}, unlike the other mask layers")
        self._map_layers.add(name)

    # ---- target pass ----------------------------------------------------------------------------------------
    def begin_fuse(self, step: int, masks: torch.Tensor, target_ref: torch.Tensor) -> None:
        """Fuse the next UNet call: target g takes reference ``target_ref[g]``'s states inside ``masks[g]`` (h, w)."""
        self.mode, self.step = "fuse", step
        self._masks, self._target_ref = masks, target_ref

    def _blend(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        ref_states = self._saved[name]
        n_refs, n_targets = ref_states.shape[0] // 2, hidden.shape[0] // 2
        ref_of = self._target_ref.to(hidden.device)
        rows = torch.cat([ref_of, ref_of + n_refs])  # same CFG half of the target's reference
        h, w = layer_grid(hidden.shape[1], self.latent_hw)
        mask = resize_mask(self._masks.to(hidden.device), h, w).reshape(n_targets, h * w, 1)
        mask = torch.cat([mask, mask]).to(hidden.dtype)
        self.events.append((self.step, name))
        return mask * ref_states[rows] + (1 - mask) * hidden

    def off(self) -> None:
        self.mode = "off"
        self._saved, self._masks = {}, None


class DFusionAttnProcessor:
    """Wraps a layer's original processor; records or fuses as its controller says, and otherwise defers."""

    def __init__(self, inner, controller: FusionController, name: str):
        self.inner, self.controller, self.name = inner, controller, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        c, name = self.controller, self.name
        if c.mode == "record":
            if name in c.fuse_layers:
                c._saved[name] = hidden_states.detach()
            if name in c.mask_layers and encoder_hidden_states is not None:
                c._record_cross(name, attn, hidden_states, encoder_hidden_states)
        elif c.mode == "fuse" and name in c.fuse_layers:
            if hidden_states.ndim != 3:
                raise RuntimeError(f"{name}: fusion expects (batch, tokens, channels) hidden states")
            encoder_hidden_states = c._blend(name, hidden_states)
        return self.inner(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )


@contextmanager
def fusion_processors(unet: UNet2DConditionModel, controller: FusionController) -> Iterator[FusionController]:
    """Install D-Fusion processors on the controller's layers for the duration of the block, then restore."""
    original = dict(unet.attn_processors)
    wanted = controller.fuse_layers | controller.mask_layers
    missing = wanted - set(original)
    if missing:
        raise ValueError(f"unknown attention layers: {sorted(missing)}")
    unet.set_attn_processor(
        {
            name: DFusionAttnProcessor(proc, controller, name) if name in wanted else proc
            for name, proc in original.items()
        }
    )
    try:
        yield controller
    finally:
        controller.off()
        unet.set_attn_processor(original)
