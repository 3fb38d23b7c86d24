"""The shapes world: grammar both ways, renderer, and the exact verifier's validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfusion_bench.errors import UserError
from dfusion_bench.world.grammar import ObjectSpec, SceneSpec, format_prompt, parse, vocabulary
from dfusion_bench.world.render import draw, relation_holds, render
from dfusion_bench.world.scenes import random_spec, training_example
from dfusion_bench.world.tokenizer import build_tokenizer
from dfusion_bench.world.verify import verify


def test_prompt_and_spec_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 3))
        spec = random_spec(rng, n, relation=bool(rng.integers(2)), sizes=bool(rng.integers(2)))
        assert parse(format_prompt(spec)) == spec
    assert parse("a big red circle on the left of a small blue square") == SceneSpec(
        (ObjectSpec("circle", "red", "big"), ObjectSpec("square", "blue", "small")), relation="on the left of"
    )


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [
        ("a red hexagon", "unknown word 'hexagon'"),
        ("a red circle near a blue square", "unknown word 'near'"),
        ("red circle", "starts with 'a' or 'the'"),
        ("a circle red", "expected"),
    ],
)
def test_bad_prompts_are_clear_errors(prompt: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle):
        parse(prompt)


def test_every_world_word_is_one_token() -> None:
    tok = build_tokenizer()
    assert all(len(tok.tokenize(w)) == 1 for w in vocabulary())
    assert len(tok("a big red circle on the left of a small blue square").input_ids) <= tok.model_max_length


def test_renders_satisfy_their_spec() -> None:
    rng = np.random.default_rng(1)
    for relation in ("above", "below", "on the left of", "on the right of"):
        spec = parse(f"a red circle {relation} a blue square")
        r = render(spec, rng)
        a, b = r.objects
        assert relation_holds(relation, (a.cx, a.cy), (b.cx, b.cy), dominance=1.5)
        assert not (r.masks[0] & r.masks[1]).any()


def test_verifier_is_exact_on_2000_rendered_scenes() -> None:
    """The documented validation: >= 99.5% of rendered scenes fully correct under their full specification."""
    rng = np.random.default_rng(2026)
    correct = 0
    for _ in range(2000):
        objects, _ = training_example(rng)
        full = SceneSpec(tuple(ObjectSpec(o.shape, o.color, o.size) for o in objects))
        image = draw(objects)
        verdict = verify(full, image.image)
        correct += verdict.aligned
        for found in verdict.masks:  # identical objects may swap: each found mask is some object's exact mask
            assert found is None or any(np.array_equal(found, truth) for truth in image.masks)
    assert correct / 2000 >= 0.995


def test_verifier_scores_noise_and_blank_near_zero() -> None:
    rng = np.random.default_rng(3)
    prompts = ["a red circle", "a big blue square and a small green triangle", "a yellow circle above a cyan square"]
    noise = np.clip(rng.normal(0.5, 0.3, size=(100, 32, 32, 3)), 0, 1)
    for prompt in prompts:
        spec = parse(prompt)
        assert np.mean([verify(spec, x).score for x in noise]) < 0.05
        assert verify(spec, np.zeros((32, 32, 3))).score == 0.0


def test_verifier_breakdown_names_the_failing_fact() -> None:
    rng = np.random.default_rng(4)
    image = render(parse("a red circle above a blue square"), rng).image
    assert verify(parse("a red circle above a blue square"), image).aligned
    flipped = verify(parse("a red circle below a blue square"), image)
    assert flipped.facts == {"object0": True, "object1": True, "relation": False, "count": True}
    wrong_color = verify(parse("a green circle above a blue square"), image)
    assert not wrong_color.facts["object0"] and wrong_color.facts["object1"]
    extra = verify(parse("a red circle"), image)
    assert extra.facts == {"object0": True, "count": False} and extra.score == 0.5


@pytest.mark.slow
def test_pretraining_resumes_to_the_same_weights(tmp_path) -> None:
    from safetensors.torch import load_file

    from dfusion_bench.world.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(
        vae_steps=3, text_steps=3, text_batch_size=8, unet_steps=3, batch_size=4, checkpoint_every=2, warmup_steps=2
    )
    full = pretrain(tmp_path / "full", cfg)
    assert pretrain(tmp_path / "split", cfg, stop_at=4) is None  # stopped inside the text encoder's phase
    with pytest.raises(UserError, match="--resume"):
        pretrain(tmp_path / "split", cfg)
    assert pretrain(tmp_path / "split", cfg, resume=True, stop_at=8) is None  # then inside the UNet's
    resumed = pretrain(tmp_path / "split", cfg, resume=True)
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(full / part)), load_file(str(resumed / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed / "dfusion_world.json").is_file()


def test_training_captions_name_objects_in_order_and_hard_negatives_are_false() -> None:
    """The text encoder's pretraining data: the objects come in caption order (so the layout target is right), and
    every hard negative is a one-word edit that the verifier finds false of the image."""
    from dfusion_bench.world.grammar import RELATIONS
    from dfusion_bench.world.text_pretrain import OFFSET_UNIT, contrastive_batch

    batch = contrastive_batch(0, 3, 0, 64)
    again = contrastive_batch(0, 3, 0, 64)
    assert batch.captions == again.captions and torch.equal(batch.images, again.images)  # a pure function
    kinds = set()
    for i, (text, negative, kind) in enumerate(zip(batch.captions, batch.negatives, batch.kinds, strict=True)):
        spec = parse(text)
        image = ((batch.images[i].permute(1, 2, 0).numpy() + 1) / 2).astype(np.float32)
        assert verify(spec, image).aligned
        if kind != "none":
            kinds.add(kind)
            assert negative != text and len(negative.split()) == len(text.split())
            assert verify(parse(negative), image).score < 1.0
        assert batch.two_objects[i] == (len(spec.objects) == 2)
        if spec.relation is not None:  # the offset from the second object to the first points the relation's way
            ux, uy = RELATIONS[spec.relation]
            dx, dy = (batch.offsets[i] * OFFSET_UNIT).tolist()
            assert dx * ux + dy * uy > 0
    assert "relation: opposite" in kinds and any(k.endswith("color") for k in kinds)
