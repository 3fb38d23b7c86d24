"""Attention probabilities of a diffusers attention layer, and a processor that records them without changing it.

D-Fusion's masks read the cross-attention probabilities of the reference pass, and the probes in ``experiments/``
read self- and cross-attention of whole UNet calls. Both need the same thing: softmax(Q K^T / sqrt(d)) of a layer,
computed the way diffusers' stock ``AttnProcessor`` computes it (the layer's own ``to_q``/``to_k``, LoRA included,
``head_to_batch_dim``, ``get_attention_scores``), for the inputs the layer is called with. :func:`attention_probs`
is that computation. :class:`AttentionRecorder` wraps whatever processor a layer has (the stock one, or a fusion
processor's inner one): it stores the head-mean probabilities of each call and then hands the call on unchanged, so
the layer's output is the wrapped processor's, bit for bit. :func:`recording` installs recorders on chosen layers
for the length of a block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNet2DConditionModel


def attention_probs(
    attn,
    hidden_states: torch.Tensor,
    context: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temb: torch.Tensor | None = None,
) -> torch.Tensor:
    """The attention probabilities (batch, heads, queries, keys), float32, of diffusers ``Attention`` layer ``attn``
    called on ``hidden_states`` with ``context`` as its ``encoder_hidden_states`` (None: self-attention).

    The steps before the softmax are those of diffusers' ``AttnProcessor`` (spatial norm, 4-D inputs flattened to
    tokens, the mask prepared per head, group norm, the cross-attention norm), so the probabilities are the ones the
    stock processor multiplies the values by; each row sums to 1.
    """
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        batch, channels, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    batch, n_keys = hidden_states.shape[0], (hidden_states if context is None else context).shape[1]
    attention_mask = attn.prepare_attention_mask(attention_mask, n_keys, batch)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    if context is None:
        context = hidden_states
    elif attn.norm_cross:
        context = attn.norm_encoder_hidden_states(context)
    query = attn.head_to_batch_dim(attn.to_q(hidden_states))
    key = attn.head_to_batch_dim(attn.to_k(context))
    probs = attn.get_attention_scores(query, key, attention_mask).float()  # (batch * heads, queries, keys)
    return probs.reshape(batch, attn.heads, *probs.shape[1:])


class AttentionRecorder:
    """Wraps a layer's processor: keeps ``store[name]`` = the head-mean probabilities (batch, queries, keys) of the
    latest call, detached, then returns the wrapped processor's output for the same arguments."""

    def __init__(self, inner, store: dict[str, torch.Tensor], name: str):
        self.inner, self.store, self.name = inner, store, name

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        with torch.no_grad():
            probs = attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        self.store[self.name] = probs.mean(dim=1)
        if temb is not None:  # handed on only when given: not every processor takes it
            kwargs["temb"] = temb
        return self.inner(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )


#: Makes the processor that wraps ``inner`` for layer ``name``: ``(inner, store, name) -> processor``.
RecorderFactory = Callable[[Any, dict[str, torch.Tensor], str], Any]


@contextmanager
def recording(
    unet: UNet2DConditionModel,
    names: Iterable[str],
    store: dict[str, torch.Tensor] | None = None,
    recorder: RecorderFactory = AttentionRecorder,
) -> Iterator[dict[str, torch.Tensor]]:
    """Wrap the processors of the layers ``names`` (processor names, as in ``unet.attn_processors``) in recorders
    writing to ``store`` (a new dict if None), yield the store, and restore the original processors afterwards.

    Processors installed later (e.g. D-Fusion's, which wrap whatever they find) wrap the recorders, so a fused pass
    records the attention over its blended keys.
    """
    original = dict(unet.attn_processors)
    wanted = set(names)
    missing = wanted - set(original)
    if missing:
        raise ValueError(f"unknown attention layers: {sorted(missing)}")
    store = {} if store is None else store
    # set_attn_processor empties the dict it is given: hand it copies
    unet.set_attn_processor({n: recorder(p, store, n) if n in wanted else p for n, p in original.items()})
    try:
        yield store
    finally:
        unet.set_attn_processor(dict(original))
