"""D-Fusion: masks, token positions, pairing, and the fused sampler's guarantees."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dfusion_bench.errors import UserError
from dfusion_bench.fusion import FusionConfig, Triple, fuse_triples, select_triples
from dfusion_bench.fusion.layers import default_mask_resolution, select_cross_attention, select_self_attention
from dfusion_bench.fusion.masks import binarize, otsu_threshold, resize_mask, union
from dfusion_bench.fusion.tokens import word_token_positions
from dfusion_bench.sampling import recompute_log_probs, sample
from dfusion_bench.settings import SamplerConfig

PROMPT = "a black and woolen bus"
CFG = SamplerConfig(num_steps=6)


@dataclass(frozen=True)
class Entry:
    prompt: str
    items: tuple[str, ...]
    thresholds: tuple[float | None, ...]


def _items(thresholds: tuple[float | None, ...]) -> dict[str, Entry]:
    return {PROMPT: Entry(PROMPT, ("woolen", "bus"), thresholds)}


# ---- token positions ---------------------------------------------------------------------------------------------
def test_multi_token_words_get_all_their_tokens(tiny_pipe) -> None:
    tok = tiny_pipe.tokenizer
    assert word_token_positions(tok, PROMPT, "woolen") == [4, 5]  # BOS a black and woo len</w> bus
    assert word_token_positions(tok, PROMPT, "bus") == [6]
    assert word_token_positions(tok, "a cat eating a computer", "computer") == [5, 6]
    assert word_token_positions(tok, "a cat eating a computer", "cat") == [2]
    pieces = tok.convert_ids_to_tokens(tok(PROMPT).input_ids)
    assert "".join(pieces[4:6]).replace("</w>", "") == "woolen"


def test_item_that_is_not_a_word_is_refused(tiny_pipe) -> None:
    with pytest.raises(UserError, match="not a word"):
        word_token_positions(tiny_pipe.tokenizer, PROMPT, "wool")


# ---- thresholds, auto rule, union, resize ------------------------------------------------------------------------
def test_fixed_thresholds_and_union() -> None:
    maps = torch.tensor([[[0.1, 0.5], [0.2, 0.0]], [[0.0, 0.0], [0.3, 0.05]]])
    masks = binarize(maps, [0.15, 0.04])
    assert masks.tolist() == [[[False, True], [True, False]], [[False, False], [True, True]]]
    assert union(masks).tolist() == [[False, True], [True, True]]
    assert not binarize(maps, [1.0, 1.0]).any()  # probabilities never exceed 1: an empty mask


def test_auto_threshold_separates_a_bimodal_map() -> None:
    gen = torch.Generator().manual_seed(0)
    low, high = 0.01 + 0.005 * torch.rand(200, generator=gen), 0.2 + 0.05 * torch.rand(56, generator=gen)
    values = torch.cat([low, high])[torch.randperm(256, generator=gen)].reshape(16, 16)
    cut = otsu_threshold(values)
    assert low.max() <= cut < high.min()
    assert binarize(values[None], [None])[0].sum() == 56
    assert not binarize(torch.full((1, 4, 4), 0.3), [None]).any()  # a flat map has no foreground


def test_resize_is_nearest() -> None:
    mask = torch.tensor([[True, False], [False, True]])
    big = resize_mask(mask, 4, 4)
    assert big.tolist() == [[True, True, False, False]] * 2 + [[False, False, True, True]] * 2


# ---- pairing -----------------------------------------------------------------------------------------------------
def test_pairing_follows_the_paper() -> None:
    scores = np.arange(16, dtype=float)[::-1].copy()  # sample i has rank i
    triples = select_triples([list(range(16))], scores)
    assert [t.reference for t in triples] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [t.base for t in triples] == list(range(8, 16))


def test_pairing_drops_pairs_without_preference() -> None:
    scores = np.array([1.0, 1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0])
    triples = select_triples([list(range(8))], scores)
    assert all(scores[t.reference] > scores[t.base] for t in triples)
    assert len(triples) == 4 and {t.reference for t in triples} == {0, 1}


def test_pairing_split_is_configurable() -> None:
    triples = select_triples(
        [list(range(12))], np.arange(12.0)[::-1].copy(), reference_fraction=1 / 6, reference_uses=3
    )
    assert [(t.reference, t.base) for t in triples] == [(0, 6), (0, 7), (0, 8), (1, 9), (1, 10), (1, 11)]


# ---- the fused sampler -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def samples(tiny_pipe):
    return sample(tiny_pipe, [PROMPT] * 4, [21, 22, 23, 24], CFG)


def _max_relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| relative to b's peak magnitude per latent (at least 1): float tolerance across batch sizes."""
    scale = b.abs().amax(dim=(-3, -2, -1), keepdim=True).clamp(min=1.0)
    return ((a - b).abs() / scale).max().item()


def test_zero_mask_target_is_the_base(tiny_pipe, samples) -> None:
    """With an empty mask fusion changes nothing: bit-identical to the base sampled in a batch of the same size."""
    base_alone = sample(tiny_pipe, [PROMPT], [23], CFG)
    result = fuse_triples(tiny_pipe, samples, [Triple(0, 2)], _items((2.0, 2.0)), FusionConfig(skip_first_steps=1))
    assert not result.masks.any()
    assert torch.equal(result.targets.latents[0], base_alone.latents[0])
    # and within float tolerance of the base as stored from its own (larger) batch
    assert _max_relative_gap(result.targets.latents[0], samples.latents[2]) < 1e-5


def test_fusion_touches_only_configured_layers_and_steps(tiny_pipe, samples) -> None:
    config = FusionConfig(fuse_layers=("up_blocks.1",), skip_first_steps=3, threshold="0")
    before = samples.latents.clone()
    result = fuse_triples(tiny_pipe, samples, [Triple(0, 2), Triple(1, 3)], _items((None, None)), config)
    layers = set(select_self_attention(tiny_pipe.unet, ("up_blocks.1",)))
    assert layers and all(name.startswith("up_blocks.1.") and ".attn1." in name for name in layers)
    assert {(s, n) for s, n in result.events} == {(s, n) for s in range(3, 6) for n in layers}
    assert len(result.events) == 3 * len(layers)  # one call per fused layer and step (one batch of targets)
    assert torch.equal(samples.latents, before)  # references and bases are never modified
    # unfused steps are the base's, within float tolerance: the bases come from a batch of 4, the targets run as a
    # batch of 2, and CPU kernels need not reduce in the same order for both sizes (bit-equal on some CPUs, not all)
    assert _max_relative_gap(result.targets.latents[:, :4], samples.latents[[2, 3], :4]) < 1e-5
    assert not torch.allclose(result.targets.latents[:, -1], samples.latents[[2, 3], -1])  # fusion did something


def test_targets_carry_policy_log_probs_and_cost_at_most_two_evals(tiny_pipe, samples) -> None:
    result = fuse_triples(tiny_pipe, samples, [Triple(0, 2), Triple(0, 3)], _items((0.0, None)), FusionConfig())
    policy = recompute_log_probs(tiny_pipe, result.targets)
    assert torch.allclose(result.targets.log_probs, policy, atol=1e-6)
    assert not torch.allclose(result.targets.log_probs[:, 2:], result.fused_log_probs[:, 2:])
    # one reference serves both targets on the 4 fused steps of 6: (4 * 1 + 12) / 12
    assert result.unet_evals == {"reference": 4, "target": 12, "policy_log_probs": 12}
    assert result.evals_per_target_step() == pytest.approx(16 / 12) and result.evals_per_target_step() <= 2
    assert result.masks[:, :2].sum() == 0 and result.masks[:, 2:].all()  # threshold 0 on "woolen": whole image


def test_mask_layers_default_to_quarter_resolution(tiny_pipe) -> None:
    unet = tiny_pipe.unet
    side = default_mask_resolution(unet)
    names = select_cross_attention(unet, side)
    assert names and all(".attn2." in n for n in names)
    with pytest.raises(UserError, match="no cross-attention layer runs at 3x3"):
        select_cross_attention(unet, 3)


def test_sd21_architecture_runs_a_fused_step() -> None:
    """SD 2.1-base's UNet (its diffusers config, random weights, a 16x16 latent) takes the processors by name."""
    from dfusion_bench.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd21", seed=0, sample_size=16)
    prompt = "a dog driving a car"
    entry = {prompt: Entry(prompt, ("dog", "car"), (None, None))}
    samples = sample(pipe, [prompt, prompt], [1, 2], SamplerConfig(num_steps=2))
    result = fuse_triples(pipe, samples, [Triple(0, 1)], entry, FusionConfig(skip_first_steps=1))
    plan = result.plan
    assert len(plan.fuse_layers) == 10  # mid block (1) + up blocks 1-3 (3 each)
    assert plan.fuse_layers[0] == "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"
    assert "mid_block.attentions.0.transformer_blocks.0.attn1.processor" in plan.fuse_layers
    assert plan.mask_resolution == 4  # latent 16 / 4, as 16x16 is for a 64x64 latent
    assert sorted(plan.mask_layers) == sorted(
        [f"down_blocks.2.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(2)]
        + [f"up_blocks.1.attentions.{i}.transformer_blocks.0.attn2.processor" for i in range(3)]
    )
    assert {name for _, name in result.events} == set(plan.fuse_layers) and {s for s, _ in result.events} == {1}
    assert torch.isfinite(result.targets.latents).all()
    unfused, base = result.targets.latents[0, :2], samples.latents[1, :2]  # step 0 is unfused: the base's step
    assert ((unfused - base).abs().max() / base.abs().max()) < 1e-5
