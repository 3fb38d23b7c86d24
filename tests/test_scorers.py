"""Scorer registry, the ``clip`` scorer (on a tiny random open_clip model) and the ``verifier`` scorer."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tiny_clip import make_tiny_clip

import dfusion_bench.scorers as scorers
from dfusion_bench.errors import UserError
from dfusion_bench.scorers import Scorer, Scores, available_scorers, get_scorer, register_scorer
from dfusion_bench.scorers.clip import tensor_preprocess
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.render import render

PROMPTS = [
    "a big red circle",
    "a small blue square",
    "a green triangle above a yellow circle",
    "the purple square on the left of the cyan triangle",
    "a red square and a blue circle",
]


def rendered(prompts: list[str], seed: int = 0) -> torch.Tensor:
    """(B, 3, 32, 32) float tensor of one random rendering per prompt."""
    rng = np.random.default_rng(seed)
    images = [torch.from_numpy(render(parse(p), rng).image).permute(2, 0, 1) for p in prompts]
    return torch.stack(images)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """uint8 PIL images of a (B, 3, H, W) tensor whose values are multiples of 1/255 (so the conversion is exact)."""
    arrays = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in arrays]


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that opens a connection or asks open_clip / the HF hub for a download."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", refuse)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", refuse)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


# --- registry -----------------------------------------------------------------------------------------------------


def test_builtin_scorers_are_registered() -> None:
    assert {"clip", "verifier"} <= set(available_scorers())
    assert available_scorers() == sorted(available_scorers())


def test_unknown_scorer_is_a_one_line_user_error_naming_the_known_ones() -> None:
    with pytest.raises(UserError, match="unknown scorer 'blip'") as err:
        get_scorer("blip")
    message = str(err.value)
    assert "\n" not in message and "clip" in message and "verifier" in message


def test_register_scorer_makes_a_factory_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scorers, "_FACTORIES", dict(scorers._FACTORIES))

    class Constant:
        name = "constant"

        def __init__(self, value: float = 0.5) -> None:
            self.value = value

        def __call__(self, images: torch.Tensor, prompts: list[str], metadata: list[dict] | None = None) -> Scores:
            n = len(prompts)
            return Scores(scores=np.full(n, self.value), details=[{} for _ in range(n)])

    register_scorer("constant")(Constant)
    scorer = get_scorer("constant", value=0.25)
    assert isinstance(scorer, Scorer) and "constant" in available_scorers()
    assert scorer(torch.zeros(2, 3, 8, 8), ["x", "y"]).scores.tolist() == [0.25, 0.25]
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("constant")(Constant)


def test_scores_reject_inconsistent_fields() -> None:
    with pytest.raises(ValueError, match="details"):
        Scores(scores=np.zeros(2), details=[{}])
    with pytest.raises(ValueError, match="aligned"):
        Scores(scores=np.zeros(2), aligned=np.ones(3, dtype=bool), details=[{}, {}])
    with pytest.raises(ValueError, match="scores"):
        Scores(scores=np.zeros((2, 1)), details=[{}, {}])


def test_scores_give_facts_as_json_and_rates() -> None:
    details = [{"facts": {"a": True, "b": False}}, {"facts": {"a": False, "n": 3}}, {}]
    scores = Scores(scores=np.zeros(3), details=details)
    assert json.loads(scores.facts_json(1)) == {"a": False, "n": 3} and scores.facts_json(2) == ""
    assert scores.fact_rates() == {"a": 0.5, "b": 0.0}  # "b" over the one image that checks it; "n" is no fact
    assert scores.fact_rates([0]) == {"a": 1.0, "b": 0.0} and scores.fact_rates([2]) == {}


# --- verifier -----------------------------------------------------------------------------------------------------


def test_verifier_gives_full_marks_to_renders_of_the_prompt() -> None:
    scorer = get_scorer("verifier")
    assert isinstance(scorer, Scorer) and scorer.name == "verifier"
    result = scorer(rendered(PROMPTS), PROMPTS, metadata=[{} for _ in PROMPTS])
    assert result.scores.tolist() == [1.0] * len(PROMPTS)
    assert result.aligned is not None and result.aligned.tolist() == [True] * len(PROMPTS)
    assert [sorted(d["facts"]) for d in result.details] == [sorted(parse(p).facts()) for p in PROMPTS]
    assert all(all(d["facts"].values()) for d in result.details)
    json.dumps(result.details)


@pytest.mark.parametrize(
    ("drawn", "asked", "expected", "failed"),
    [
        ("a big red circle", "a big blue circle", 0.5, "object0"),
        ("a big red circle", "a small red circle", 0.5, "object0"),
        ("a red circle above a blue square", "a red circle below a blue square", 0.75, "relation"),
        ("a red circle and a blue square", "a red circle", 0.5, "count"),
    ],
)
def test_verifier_marks_down_mismatching_prompts(drawn: str, asked: str, expected: float, failed: str) -> None:
    result = get_scorer("verifier")(rendered([drawn]), [asked])
    assert result.scores[0] == pytest.approx(expected)
    assert result.aligned is not None and not result.aligned[0]
    assert result.details[0]["facts"][failed] is False


def test_verifier_scores_blank_images_zero() -> None:
    result = get_scorer("verifier")(torch.zeros(2, 3, 32, 32), PROMPTS[:2])
    assert result.scores.tolist() == [0.0, 0.0]
    assert result.aligned is not None and not result.aligned.any()


def test_verifier_rejects_prompts_outside_the_grammar() -> None:
    with pytest.raises(UserError, match="'dog'"):
        get_scorer("verifier")(torch.zeros(1, 3, 32, 32), ["a red dog"])


def test_scorers_reject_mismatched_batches() -> None:
    scorer = get_scorer("verifier")
    with pytest.raises(ValueError, match="prompts"):
        scorer(torch.zeros(2, 3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        scorer(torch.zeros(3, 32, 32), ["a red circle"])
    with pytest.raises(ValueError, match="metadata"):
        scorer(torch.zeros(1, 3, 32, 32), ["a red circle"], metadata=[{}, {}])


# --- clip ---------------------------------------------------------------------------------------------------------


def reference_clip_scores(name: str, checkpoint: Path, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """CLIPScore computed directly with open_clip's own PIL preprocessing and ``F.cosine_similarity``."""
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(checkpoint))
    model.eval()
    pixels = torch.stack([preprocess(im) for im in to_pil(images)])
    tokens = open_clip.get_tokenizer(name)(prompts)
    with torch.no_grad():
        return F.cosine_similarity(model.encode_image(pixels), model.encode_text(tokens), dim=-1)


def test_clip_matches_a_direct_open_clip_computation(tiny_clip: tuple[str, Path]) -> None:
    name, checkpoint = tiny_clip
    images = rendered(PROMPTS)
    images = (images * 255).round() / 255  # exactly representable in uint8, so the PIL reference sees the same pixels
    prompts = PROMPTS[1:] + PROMPTS[:1]  # mismatched pairs too, so scores spread out
    scorer = get_scorer("clip", model_name=name, checkpoint=checkpoint, batch_size=2)
    result = scorer(images, prompts)
    expected = reference_clip_scores(name, checkpoint, images, prompts)
    assert scorer.name == "clip" and isinstance(scorer, Scorer)
    assert result.scores.shape == (len(prompts),) and result.aligned is None and len(result.details) == len(prompts)
    assert np.all(np.abs(result.scores) <= 1.0)
    assert result.scores.std() > 1e-3  # a constant would say nothing
    np.testing.assert_allclose(result.scores, expected.numpy(), atol=1e-5)


def test_clip_resizes_larger_images_like_open_clip(tiny_clip: tuple[str, Path]) -> None:
    name, checkpoint = tiny_clip
    images = F.interpolate(rendered(PROMPTS), scale_factor=3, mode="nearest")  # 96x96, model input is 32x32
    result = get_scorer("clip", model_name=name, checkpoint=checkpoint)(images, PROMPTS)
    expected = reference_clip_scores(name, checkpoint, images, PROMPTS)
    np.testing.assert_allclose(result.scores, expected.numpy(), atol=5e-4)  # tensor vs PIL bicubic resampling


def test_clip_checkpoint_defaults_to_the_environment(
    tiny_clip: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, checkpoint = tiny_clip
    images, prompts = rendered(PROMPTS[:2]), PROMPTS[:2]
    explicit = get_scorer("clip", model_name=name, checkpoint=checkpoint)(images, prompts)
    monkeypatch.setenv("DFUSION_CLIP_CHECKPOINT", str(checkpoint))
    from_env = get_scorer("clip", model_name=name)(images, prompts)
    np.testing.assert_array_equal(from_env.scores, explicit.scores)


def test_clip_loads_the_model_once(tiny_clip: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    name, checkpoint = tiny_clip
    calls: list[str] = []
    create = open_clip.create_model

    def counting_create(*args: object, **kwargs: object) -> torch.nn.Module:
        calls.append(str(args[0]))
        return create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", counting_create)
    scorer = get_scorer("clip", model_name=name, checkpoint=checkpoint)
    assert calls == []  # lazy: nothing loads before the first call
    first = scorer(rendered(PROMPTS[:2]), PROMPTS[:2])
    second = scorer(rendered(PROMPTS[:2]), PROMPTS[:2])
    assert calls == [name]
    np.testing.assert_array_equal(first.scores, second.scores)


def test_clip_missing_checkpoint_is_a_user_error_naming_the_path(tmp_path: Path, tiny_clip: tuple[str, Path]) -> None:
    missing = tmp_path / "nowhere" / "open_clip_pytorch_model.bin"
    with pytest.raises(UserError) as err:
        get_scorer("clip", model_name=tiny_clip[0], checkpoint=missing)
    message = str(err.value)
    assert str(missing) in message and "--clip-checkpoint" in message and "\n" not in message


def test_clip_missing_environment_checkpoint_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DFUSION_CLIP_CHECKPOINT", str(tmp_path / "gone.pt"))
    with pytest.raises(UserError, match=r"gone\.pt \(from \$DFUSION_CLIP_CHECKPOINT\)"):
        get_scorer("clip")


def test_clip_unset_checkpoint_says_how_to_set_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DFUSION_CLIP_CHECKPOINT", raising=False)
    with pytest.raises(UserError) as err:
        get_scorer("clip")
    message = str(err.value)
    assert "--clip-checkpoint" in message and "DFUSION_CLIP_CHECKPOINT" in message and "\n" not in message


def test_clip_corrupt_checkpoint_is_a_user_error(tmp_path: Path, tiny_clip: tuple[str, Path]) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_text("not a checkpoint")
    scorer = get_scorer("clip", model_name=tiny_clip[0], checkpoint=corrupt)
    with pytest.raises(UserError, match="corrupt.pt does not load") as err:
        scorer(rendered(PROMPTS[:1]), PROMPTS[:1])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("model_name", ["ViT-Q-99", "hf-hub:laion/CLIP-ViT-H-14-laion2B-s32B-b79K"])
def test_clip_refuses_unknown_or_remote_models(model_name: str, tiny_clip: tuple[str, Path]) -> None:
    with pytest.raises(UserError, match="ViT-Q-99|open_clip config name"):
        get_scorer("clip", model_name=model_name, checkpoint=tiny_clip[1])


def test_clip_tensor_preprocess_resizes_crops_and_refuses_pil_only_modes() -> None:
    cfg = {"size": 32, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    pixels = tensor_preprocess(cfg)(torch.ones(2, 3, 48, 80))  # shortest side to 32, then a centered 32x32 crop
    assert pixels.shape == (2, 3, 32, 32)
    torch.testing.assert_close(pixels, torch.full_like(pixels, 2.0))  # (1 - 0.5) / 0.25
    with pytest.raises(UserError, match="not supported for tensor images"):
        tensor_preprocess({**cfg, "resize_mode": "longest"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clip_runs_on_the_images_device_unless_told_otherwise(tiny_clip: tuple[str, Path]) -> None:
    name, checkpoint = tiny_clip
    images = rendered(PROMPTS)
    on_cpu = get_scorer("clip", model_name=name, checkpoint=checkpoint)(images, PROMPTS)
    follows = get_scorer("clip", model_name=name, checkpoint=checkpoint)
    on_gpu = follows(images.cuda(), PROMPTS)
    assert follows.device.type == "cuda"
    np.testing.assert_allclose(on_gpu.scores, on_cpu.scores, atol=1e-4)
    pinned = get_scorer("clip", model_name=name, checkpoint=checkpoint, device="cpu")
    np.testing.assert_allclose(pinned(images.cuda(), PROMPTS).scores, on_cpu.scores, atol=1e-6)
    assert pinned.device.type == "cpu"
