"""D-Fusion: masks, token positions, pairing, and the fused sampler's guarantees."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from dfusion_bench.errors import UserError
from dfusion_bench.fusion import FusionConfig, FusionPlan, Triple, fuse_triples, select_triples
from dfusion_bench.fusion.cache import choose, recording
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


def test_a_numeric_threshold_takes_exact_ties_and_auto_keeps_its_own_rule() -> None:
    """As in the paper's code, a cell whose value equals a numeric threshold is in the mask (>=, not >)."""
    tie = torch.tensor([0.25, 0.5, 0.125], dtype=torch.float32).reshape(1, 1, 3)  # exactly representable
    assert binarize(tie, [0.25]).tolist() == [[[True, True, False]]]
    assert binarize(tie, [0.5]).tolist() == [[[False, True, False]]]
    two_levels = torch.tensor([[[0.1, 0.1], [0.3, 0.3]]])
    cut = otsu_threshold(two_levels)
    assert cut == pytest.approx(0.1) and binarize(two_levels, [None]).tolist() == [[[False, False], [True, True]]]
    assert binarize(two_levels, [cut]).all()  # the same cut as a number takes the tie


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


def test_zero_mask_target_is_the_base(tiny_pipe, samples) -> None:
    """With an empty mask fusion changes nothing: the target continues its base bit for bit, though the base came from
    a batch of 4 and the target runs alone (on a CPU a sample does not depend on its batch)."""
    result = fuse_triples(tiny_pipe, samples, [Triple(0, 2)], _items((2.0, 2.0)), FusionConfig(skip_first_steps=1))
    assert not result.masks.any() and {s for s, _ in result.events} == {1, 2, 3, 4, 5}  # fused, an empty mask
    assert torch.equal(result.targets.latents[0], samples.latents[2])
    assert torch.equal(result.targets.log_probs[0], samples.log_probs[2])
    assert torch.equal(result.fused_log_probs[0], samples.log_probs[2])


def test_fusion_touches_only_configured_layers_and_steps(tiny_pipe, samples) -> None:
    config = FusionConfig(fuse_layers=("up_blocks.1",), skip_first_steps=3, threshold="0")
    before = samples.latents.clone()
    result = fuse_triples(tiny_pipe, samples, [Triple(0, 2), Triple(1, 3)], _items((None, None)), config)
    layers = set(select_self_attention(tiny_pipe.unet, ("up_blocks.1",)))
    assert layers and all(name.startswith("up_blocks.1.") and ".attn1." in name for name in layers)
    assert {(s, n) for s, n in result.events} == {(s, n) for s in range(3, 6) for n in layers}
    assert len(result.events) == 3 * len(layers)  # one call per fused layer and step (one batch of targets)
    assert torch.equal(samples.latents, before)  # references and bases are never modified
    assert torch.equal(result.targets.latents[:, :4], samples.latents[[2, 3], :4])  # unfused steps: the base's
    assert not torch.allclose(result.targets.latents[:, -1], samples.latents[[2, 3], -1])  # fusion did something


def test_targets_carry_policy_log_probs_and_replay_costs_a_reference_per_fused_step(tiny_pipe, samples) -> None:
    result = fuse_triples(tiny_pipe, samples, [Triple(0, 2), Triple(0, 3)], _items((0.0, None)), FusionConfig())
    policy = recompute_log_probs(tiny_pipe, result.targets)
    assert torch.equal(result.targets.log_probs, policy)  # the base's at unfused steps, recomputed at fused ones
    assert not torch.allclose(result.targets.log_probs[:, 2:], result.fused_log_probs[:, 2:])
    # replay: one reference for both targets on the 4 fused steps of 6; the 2 unfused steps are the bases'
    assert result.unet_evals == {"reference": 4, "target": 8, "policy_log_probs": 8}
    assert result.evals_per_target_step() == pytest.approx(12 / 12)
    assert result.reference_cache["mode"] == "replay"
    assert result.masks[:, :2].sum() == 0 and result.masks[:, 2:].all()  # threshold 0 on "woolen": whole image
    config = FusionConfig(policy_log_probs=False)  # for methods whose loss never reads them (dpo, pg)
    lean = fuse_triples(tiny_pipe, samples, [Triple(0, 2), Triple(0, 3)], _items((0.0, None)), config)
    assert torch.equal(lean.targets.latents, result.targets.latents) and lean.unet_evals["policy_log_probs"] == 0
    assert torch.equal(lean.targets.log_probs[:, :2], policy[:, :2]) and lean.targets.log_probs[:, 2:].isnan().all()


def test_mask_layers_default_to_quarter_resolution(tiny_pipe) -> None:
    unet = tiny_pipe.unet
    side = default_mask_resolution(unet)
    names = select_cross_attention(unet, side)
    assert names and all(".attn2." in n for n in names)
    with pytest.raises(UserError, match="no cross-attention layer runs at 3x3"):
        select_cross_attention(unet, 3)


@pytest.mark.slow
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
    assert torch.equal(result.targets.latents[0, :2], samples.latents[1, :2])  # step 0 is unfused: the base's step


# ---- the reference cache -----------------------------------------------------------------------------------------
SIX = [PROMPT] * 6, [31, 32, 33, 34, 35, 36]
CACHE_TRIPLES = [Triple(0, 3), Triple(0, 4), Triple(1, 5)]


def _recorded(pipe, config: FusionConfig, entries: dict[str, Entry], batch_size: int):
    prompts, seeds = SIX
    with recording(pipe, None, config, entries, prompts, CFG.num_steps) as rec:
        traj = sample(pipe, prompts, seeds, CFG, batch_size=batch_size, before_call=rec.before_call)
    return traj, rec.cache


def test_cache_equals_replay_bit_for_bit(tiny_pipe) -> None:
    """References recorded while sampling (in batches of 5 and 1) fuse exactly as references replayed two at a time,
    and recording leaves the samples as they are."""
    entries, config = _items((None, 0.05)), FusionConfig(skip_first_steps=2, reference_cache="on")
    plain = sample(tiny_pipe, *SIX, CFG, batch_size=2)
    traj, cache = _recorded(tiny_pipe, config, entries, batch_size=5)
    for name in ("latents", "log_probs", "images"):
        assert torch.equal(getattr(traj, name), getattr(plain, name)), name
    assert cache.choice.mode == "cache" and cache.records.samples() == set(range(6))
    cache.keep({t.reference for t in CACHE_TRIPLES})
    assert cache.records.samples() == {0, 1} and cache.sizes["kept_bytes"] == cache.sizes["recorded_bytes"] // 3
    cached = fuse_triples(tiny_pipe, traj, CACHE_TRIPLES, entries, config, references=cache)
    replayed = fuse_triples(tiny_pipe, traj, CACHE_TRIPLES, entries, dataclasses.replace(config, reference_cache="off"))
    for name in ("latents", "log_probs", "images"):
        assert torch.equal(getattr(cached.targets, name), getattr(replayed.targets, name)), name
    for name in ("fused_log_probs", "maps", "masks"):
        assert torch.equal(getattr(cached, name), getattr(replayed, name)), name
    assert cached.events == replayed.events and cached.masks[:, 2:].any() and not cached.masks[:, 2:].all()
    assert not torch.allclose(cached.targets.latents[:, -1], traj.latents[[3, 4, 5], -1])  # fusion did something
    assert cached.unet_evals == {"reference": 0, "target": 12, "policy_log_probs": 12}  # 3 targets x 4 fused steps
    assert replayed.unet_evals["reference"] == 8  # 2 references x 4 fused steps
    assert cached.evals_per_target_step() == pytest.approx(12 / 18)  # 4 of 6 steps fused: the target pass only
    assert cached.reference_cache["mode"] == "cache" and replayed.reference_cache["mode"] == "replay"


def test_record_size_estimate_is_what_is_recorded(tiny_pipe) -> None:
    entries, config = _items((None, None)), FusionConfig(reference_cache="on")
    _, cache = _recorded(tiny_pipe, config, entries, batch_size=6)
    per_sample = cache.plan.record_bytes(tiny_pipe.unet, 2, torch.float32)
    assert cache.records.nbytes() == cache.choice.estimate_bytes == 6 * per_sample > 0


def test_auto_caches_within_the_budget_and_replays_beyond_it(tiny_pipe) -> None:
    sizes = [3 * 1024**2] * 4  # 12 MiB of records
    fits, short = FusionConfig(reference_cache_gb=0.02), FusionConfig(reference_cache_gb=0.01)
    assert choose(fits, sizes, torch.device("cpu")).mode == "cache"
    assert choose(short, sizes, torch.device("cpu")).mode == "replay"
    assert choose(dataclasses.replace(short, reference_cache="on"), sizes, torch.device("cpu")).mode == "cache"
    assert choose(dataclasses.replace(fits, reference_cache="off"), sizes, torch.device("cpu")).mode == "replay"
    assert choose(fits, sizes, torch.device("cpu"), processes=2).mode == "replay"
    default = choose(FusionConfig(), sizes, torch.device("cpu"))  # a quarter of this machine's memory
    assert default.mode == "cache" and default.budget_bytes > 0
    traj, cache = _recorded(tiny_pipe, FusionConfig(reference_cache_gb=0.0), _items((None, None)), batch_size=6)
    assert cache.choice.mode == "replay" and cache.records is None and "> budget" in cache.choice.reason
    with pytest.raises(UserError, match="reference-cache"):
        FusionConfig(reference_cache="sometimes")


def test_sd21_reference_record_size_at_512_px_fp16() -> None:
    """SD 2.1-base at 512 px (64x64 latent), defaults (mid block + up blocks' self-attention, 18 fused steps of 20):
    per image and step 8x8x1280 + 3 x (16x16x1280 + 32x32x640 + 64x64x320) = 6 963 200 numbers; x 2 CFG halves x 18
    steps x 2 bytes = 501 350 400 bytes (478 MiB), plus 16x16 float32 maps per item and step (18 KiB per item)."""
    from dfusion_bench.models.tiny import build_tiny_pipeline

    unet = build_tiny_pipeline("sd21", device="meta").unet
    plan = FusionPlan.resolve(unet, FusionConfig(), 20)
    assert len(plan.fused_steps) == 18 and plan.mask_resolution == 16
    assert plan.state_elements(unet) == 8 * 8 * 1280 + 3 * (16 * 16 * 1280 + 32 * 32 * 640 + 64 * 64 * 320)
    assert plan.record_bytes(unet, 0, torch.float16) == 501_350_400
    assert plan.record_bytes(unet, 2, torch.float16) == 501_350_400 + 2 * 18 * 16 * 16 * 4


def test_a_threshold_tie_in_a_fused_run_is_inside_the_mask(tiny_pipe, samples) -> None:
    """A numeric threshold equal to a value of the reference's map puts that cell in the mask (the reference's maps
    do not depend on the threshold, so a first run supplies the value)."""
    probe = fuse_triples(tiny_pipe, samples, [Triple(0, 2)], _items((None, None)), FusionConfig())
    step = 3
    maps = probe.maps[0, step, :2]
    tie = float(maps[0].flatten()[int(maps[0].argmax())])  # the highest cell of "woolen"
    assert (maps[1] < tie).any()
    config = FusionConfig(threshold=repr(tie))
    result = fuse_triples(tiny_pipe, samples, [Triple(0, 2)], _items((None, None)), config)
    assert torch.equal(result.maps[0, step, :2], maps)
    assert torch.equal(result.masks[0, step], (maps >= tie).any(dim=0))
    assert result.masks[0, step].flatten()[int(maps[0].argmax())]  # the tie is in
