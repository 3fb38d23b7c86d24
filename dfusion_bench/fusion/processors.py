"""D-Fusion as diffusers attention processors: a shared controller, and a processor that wraps the stock one.

Fused self-attention replaces the target's keys and values inside the mask by the reference's:
K' = M K_ref + (1 - M) K_tgt, and V' likewise, with the target's own queries. Keys and values are affine maps of the
layer's input (``to_k``/``to_v``, LoRA included), and an affine map commutes with a convex combination, so this is
exactly self-attention whose key/value input is the blended hidden states M h_ref + (1 - M) h_tgt. The processor
therefore never re-implements attention: it hands the blended states to the layer's original processor as
``encoder_hidden_states``, and with an all-zero mask the computation is the unmodified one, bit for bit.

One :class:`FusionController` is consulted by every wrapped processor, keyed by the processor's name (never by call
order). Before each UNet call it is told what the call is; the call's first k rows of each CFG half are its samples
(on a CPU a call is padded to a fixed size, see :mod:`dfusion_bench.guidance`, and the padding rows are left alone):

- ``record`` (samples: their keys in a :class:`~dfusion_bench.fusion.records.ReferenceRecords`): fused layers add the
  samples' input hidden states of both halves to the records; mask layers add the conditional half's cross-attention
  probabilities of each item's tokens (computed over the whole call, so that the numbers do not depend on k);
- ``fuse`` (samples: targets, each with its reference's key and its mask at this step): fused layers blend in the
  reference's recorded states, for both CFG halves, with the target's mask resized (nearest) to the layer's grid;
- ``off``: every processor behaves exactly as the original.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from diffusers import UNet2DConditionModel

from dfusion_bench.fusion.attention import attention_probs
from dfusion_bench.fusion.masks import resize_mask
from dfusion_bench.fusion.records import ReferenceRecords


def layer_grid(n_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a layer with ``n_tokens`` query positions, for a latent of shape ``latent_hw``."""
    factor = math.sqrt(latent_hw[0] * latent_hw[1] / n_tokens)
    return round(latent_hw[0] / factor), round(latent_hw[1] / factor)


class FusionController:
    """Shared state of fused or recording UNet calls."""

    def __init__(self, fuse_layers: list[str], mask_layers: list[str], latent_hw: tuple[int, int]):
        self.fuse_layers = frozenset(fuse_layers)
        self.mask_layers = frozenset(mask_layers)
        self.latent_hw = latent_hw
        self.mode = "off"
        self.step = -1
        self.events: list[tuple[int, str]] = []  # (step, layer) of every fused call
        self._records: ReferenceRecords | None = None
        self._samples: list[int] = []
        self._tokens: dict[int, list[list[int]]] = {}
        self._masks: torch.Tensor | None = None

    # ---- what the next call is -----------------------------------------------------------------------------
    def record(
        self, step: int, records: ReferenceRecords, samples: list[int], tokens: dict[int, list[list[int]]]
    ) -> None:
        """Record the next UNet call into ``records``; ``tokens[s][i]`` = token positions of item i of sample s."""
        self.mode, self.step, self._records, self._samples, self._tokens = "record", step, records, samples, tokens

    def fuse(self, step: int, records: ReferenceRecords, references: list[int], masks: torch.Tensor) -> None:
        """Fuse the next UNet call: its k-th target takes ``references[k]``'s states inside ``masks[k]`` (h, w)."""
        self.mode, self.step, self._records, self._samples, self._masks = "fuse", step, records, references, masks

    def off(self) -> None:
        self.mode, self._records, self._samples, self._masks = "off", None, [], None

    # ---- record mode ---------------------------------------------------------------------------------------
    def _record_states(self, name: str, hidden: torch.Tensor) -> None:
        half, k = hidden.shape[0] // 2, len(self._samples)
        hidden = hidden.detach()
        self._records.add_states(name, self.step, self._samples, hidden[:k], hidden[half : half + k])

    def _record_cross(self, attn, hidden: torch.Tensor, context: torch.Tensor) -> None:
        half = hidden.shape[0] // 2
        # conditional half, the whole call (padding included); head mean -> (rows, N, L)
        probs = attention_probs(attn, hidden[half:], context[half:]).mean(dim=1)
        h, w = layer_grid(probs.shape[1], self.latent_hw)
        maps = []
        for j, s in enumerate(self._samples):
            items = self._tokens[s]
            per_item = [probs[j, :, positions].sum(dim=-1).reshape(h, w) for positions in items]
            maps.append(torch.stack(per_item) if per_item else probs.new_zeros(0, h, w))
        self._records.add_maps(self.step, self._samples, maps)

    # ---- fuse mode -----------------------------------------------------------------------------------------
    def _blend(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        """The key/value input of a fused call: M h_ref + (1 - M) h_tgt on the targets' rows, h elsewhere."""
        half, k = hidden.shape[0] // 2, len(self._samples)
        ref = self._records.states(name, self.step, self._samples).to(hidden.dtype)  # (k, 2, N, C)
        h, w = layer_grid(hidden.shape[1], self.latent_hw)
        mask = resize_mask(self._masks.to(hidden.device), h, w).reshape(k, h * w, 1).to(hidden.dtype)
        uncond = mask * ref[:, 0] + (1 - mask) * hidden[:k]
        cond = mask * ref[:, 1] + (1 - mask) * hidden[half : half + k]
        self.events.append((self.step, name))
        return torch.cat([uncond, hidden[k:half], cond, hidden[half + k :]])


class DFusionAttnProcessor:
    """Wraps a layer's original processor; records or fuses as its controller says, and otherwise defers."""

    def __init__(self, inner, controller: FusionController, name: str):
        self.inner, self.controller, self.name = inner, controller, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        c, name = self.controller, self.name
        if c.mode == "record":
            if name in c.fuse_layers:
                c._record_states(name, hidden_states)
            if name in c.mask_layers and encoder_hidden_states is not None:
                c._record_cross(attn, hidden_states, encoder_hidden_states)
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
