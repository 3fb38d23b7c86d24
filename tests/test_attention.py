"""dfusion_bench.fusion.attention: probabilities equal a hand computation, and recording changes no output."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from dfusion_bench.fusion.attention import AttentionRecorder, attention_probs, recording
from dfusion_bench.fusion.layers import attention_layers


def _layer(cross_dim: int | None = None, **kwargs) -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=8, cross_attention_dim=cross_dim, heads=2, dim_head=4, **kwargs).eval()


def _by_hand(attn: Attention, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None):
    """softmax(Q K^T / sqrt(d) + mask) per head, from the projection weights."""
    q = hidden @ attn.to_q.weight.T
    k = context @ attn.to_k.weight.T
    b, n, _ = q.shape
    q = q.view(b, n, attn.heads, -1).transpose(1, 2)  # (b, heads, n, d)
    k = k.view(b, k.shape[1], attn.heads, -1).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask[:, None]
    return scores.softmax(-1)


def test_self_attention_probabilities_are_softmax_of_scaled_scores() -> None:
    attn = _layer()
    hidden = torch.randn(3, 5, 8)
    with torch.no_grad():
        probs = attention_probs(attn, hidden)
        expected = _by_hand(attn, hidden, hidden)
    assert probs.shape == (3, 2, 5, 5) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 2, 5))


def test_cross_attention_probabilities_use_the_context_and_the_mask() -> None:
    attn = _layer(cross_dim=6)
    hidden, context = torch.randn(2, 5, 8), torch.randn(2, 3, 6)
    mask = torch.zeros(2, 1, 3)
    mask[1, 0, 2] = -10000.0  # the second item may not look at its third token
    with torch.no_grad():
        probs = attention_probs(attn, hidden, context, attention_mask=mask)
        expected = _by_hand(attn, hidden, context, mask)
    assert probs.shape == (2, 2, 5, 3)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    assert float(probs[1, :, :, 2].max()) < 1e-4 < float(probs[0, :, :, 2].min())
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 5))


@pytest.mark.parametrize("inner", [AttnProcessor, AttnProcessor2_0])
def test_the_recorder_returns_the_wrapped_processors_output_bit_for_bit(inner) -> None:
    attn = _layer(cross_dim=6)
    hidden, context = torch.randn(2, 5, 8), torch.randn(2, 3, 6)
    with torch.no_grad():
        attn.set_processor(inner())
        plain = attn(hidden, encoder_hidden_states=context)
        store: dict[str, torch.Tensor] = {}
        attn.set_processor(AttentionRecorder(inner(), store, "layer"))
        recorded = attn(hidden, encoder_hidden_states=context)
        assert torch.equal(recorded, plain)
        torch.testing.assert_close(store["layer"], attention_probs(attn, hidden, context).mean(1))


def test_a_spatial_layer_with_group_norm_flattens_its_input_like_the_stock_processor() -> None:
    """The VAE's attention: 4-D input, group norm, residual connection."""
    attn = _layer(norm_num_groups=4, residual_connection=True)
    image = torch.randn(2, 8, 3, 4)
    with torch.no_grad():
        attn.set_processor(AttnProcessor())
        plain = attn(image)
        store: dict[str, torch.Tensor] = {}
        attn.set_processor(AttentionRecorder(AttnProcessor(), store, "vae"))
        assert torch.equal(attn(image), plain)
        tokens = attn.group_norm(image.view(2, 8, 12)).transpose(1, 2)
        torch.testing.assert_close(store["vae"], _by_hand(attn, tokens, tokens).mean(1), rtol=1e-5, atol=1e-6)


def test_recording_a_unet_call_changes_nothing_and_restores_the_processors(tiny_pipe) -> None:
    unet = tiny_pipe.unet
    before = dict(unet.attn_processors)
    latents, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 500])
    text = torch.randn(2, 7, unet.config.cross_attention_dim)
    layers = attention_layers(unet)
    with torch.no_grad():
        plain = unet(latents, t, encoder_hidden_states=text).sample
        with recording(unet, [la.name for la in layers]) as store:
            recorded = unet(latents, t, encoder_hidden_states=text).sample
    assert torch.equal(recorded, plain)
    assert set(store) == {la.name for la in layers}
    for la in layers:
        side = unet.config.sample_size // la.downsample
        assert store[la.name].shape == (2, side * side, side * side if la.kind == "self" else 7)
        torch.testing.assert_close(store[la.name].sum(-1), torch.ones(2, side * side))
    assert all(unet.attn_processors[n] is p for n, p in before.items())
    with pytest.raises(ValueError, match="unknown attention layers"):
        with recording(unet, ["no.such.processor"]):
            pass
