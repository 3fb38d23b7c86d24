"""Tests of the CLIP tokenizer, the random-weight test pipelines and safe pipeline loading.

The full-size SD 2.1 UNet (865 M parameters) is checked on the ``meta`` device: structure, names and activation
shapes without allocating weights. ``DFUSION_HEAVY_TESTS=1`` also runs it with real random weights (~4 GB; on a GPU
when one is present).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DModel

from dfusion_bench.errors import UserError
from dfusion_bench.models import loading as models
from dfusion_bench.models.clip_tokenizer import VOCAB_SIZE, bytes_to_unicode, clip_tokenizer
from dfusion_bench.models.loading import check_pipeline_folder, is_world_model, load_pipeline, resolve_model
from dfusion_bench.models.tiny import SD21_UNET, SD_SCHEDULE, TINY_MARKER, build_tiny_pipeline, save_tiny_pipeline

PROMPTS = ["a black and woolen bus", "a photo of a computer", "A Cat, riding   a horse.", "naïve café 123", ""]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a small, busy machine two threads contend and make tiny models ~100× slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny pipeline (seed 0), shared read-only by the tests; copy it with :func:`_copy` to alter it."""
    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny")


def _copy(src: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(src, tmp_path / name))


def _edit_json(file: Path, **changes: object) -> None:
    data = json.loads(file.read_text())
    data.update(changes)
    file.write_text(json.dumps(data))


def _refusal(path: Path | None) -> str:
    """The message of the UserError that loading ``path`` raises; it must be one line."""
    with pytest.raises(UserError) as info:
        load_pipeline(path)
    message = str(info.value)
    assert "\n" not in message
    return message


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- CLIP tokenizer ------------------------------------------------------------------------------------------------


def test_clip_tokenizer_matches_open_clip() -> None:
    import open_clip

    assert bytes_to_unicode() == open_clip.tokenizer.bytes_to_unicode()
    sd1 = clip_tokenizer()  # SD 1.x pads with <|endoftext|>
    assert len(sd1) == VOCAB_SIZE and (sd1.bos_token_id, sd1.eos_token_id, sd1.pad_token_id) == (49406, 49407, 49407)
    long = " ".join(["cat"] * 100)
    prompts = [*PROMPTS, "A Cat, riding   a horse!!", long]
    for prompt, ref in zip(prompts, open_clip.tokenize(prompts).tolist(), strict=True):
        ids = sd1(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        n = ref.index(49407) + 1
        assert ids[:n] == ref[:n] and set(ids[n:]) <= {49407}, prompt

    sd2 = clip_tokenizer(pad_token="!")  # SD 2.x / open_clip pad with "!" (id 0): every id agrees...
    for prompt, ref in zip(PROMPTS, open_clip.tokenize(PROMPTS).tolist(), strict=True):
        assert sd2(prompt, padding="max_length", max_length=77, truncation=True).input_ids == ref, prompt
    assert sd2("wow!!").input_ids == [49406, 2781, 0, 0, 49407]  # ...but "!" is the pad token, as in SD 2 (#4153)
    assert open_clip.tokenize(["wow!!"])[0, :3].tolist() == [49406, 2781, 748]


def test_clip_tokenizer_splits_rare_words_and_is_cached() -> None:
    tok = clip_tokenizer()
    assert tok is clip_tokenizer()
    pieces = tok.tokenize("a black and woolen bus")
    assert pieces == ["a</w>", "black</w>", "and</w>", "woo", "len</w>", "bus</w>"]
    assert len(tok.tokenize("woolen")) == 2 and len(tok.tokenize("computer")) == 2
    assert len(tok.tokenize("bus")) == 1


# --- tiny pipelines ------------------------------------------------------------------------------------------------


def test_tiny_pipeline_structure() -> None:
    pipe = build_tiny_pipeline()
    unet, text = pipe.unet, pipe.text_encoder
    assert unet.config.sample_size == 16 and pipe.vae_scale_factor == 2 and pipe.vae.config.sample_size == 32
    assert unet.config.cross_attention_dim == text.config.hidden_size == 32
    assert text.config.vocab_size == len(pipe.tokenizer) == VOCAB_SIZE and text.config.max_position_embeddings == 77
    assert [n for n in unet.attn_processors if "attn2" in n], "tiny UNet must have cross-attention"
    assert type(unet.down_blocks[0]).__name__ == "CrossAttnDownBlock2D" and type(unet.mid_block).__name__.endswith(
        "CrossAttn"
    )
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert {k: pipe.scheduler.config[k] for k in SD_SCHEDULE} == SD_SCHEDULE
    assert SD_SCHEDULE["beta_schedule"] == "scaled_linear" and (SD_SCHEDULE["beta_start"], SD_SCHEDULE["beta_end"]) == (
        0.00085,
        0.012,
    )
    assert pipe.tokenizer.tokenize("woolen") == ["woo", "len</w>"]


def test_tiny_pipeline_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_pipeline(seed=0)
    assert torch.equal(torch.rand(3), expected)
    b, c = build_tiny_pipeline(seed=0), build_tiny_pipeline(seed=1)
    for name in ("unet", "vae", "text_encoder"):
        wa, wb, wc = (_weights(getattr(p, name)) for p in (a, b, c))
        assert _same(wa, wb), name
        assert not _same(wa, wc), name


def test_sample_size_and_arch_are_checked() -> None:
    pipe = build_tiny_pipeline(sample_size=8)
    assert pipe.unet.config.sample_size == 8 and pipe.vae.config.sample_size == 16
    with pytest.raises(UserError, match="multiple of 2"):
        build_tiny_pipeline(sample_size=3)
    with pytest.raises(UserError, match="multiple of 8"):
        build_tiny_pipeline("sd21", sample_size=12, device="meta")
    with pytest.raises(UserError, match="choose one of: tiny, sd21"):
        build_tiny_pipeline("sdxl")


def test_save_and_reload_tiny_pipeline(tiny_dir: Path) -> None:
    files = {str(p.relative_to(tiny_dir)) for p in tiny_dir.rglob("*") if p.is_file()}
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"} <= files
    assert not any(f.endswith(".bin") for f in files)
    assert json.loads((tiny_dir / TINY_MARKER).read_text())["arch"] == "tiny"
    assert not list(tiny_dir.parent.glob(".*.tmp")), "temporary save folder left behind"
    built = build_tiny_pipeline(seed=0)

    plain = StableDiffusionPipeline.from_pretrained(tiny_dir, local_files_only=True)  # a standard diffusers folder
    assert _same(_weights(plain.unet), _weights(built.unet))

    pipe = load_pipeline(tiny_dir)
    for name in ("unet", "vae", "text_encoder"):
        assert _same(_weights(getattr(pipe, name)), _weights(getattr(built, name))), name
        assert not getattr(pipe, name).training
    assert not any(p.requires_grad for p in pipe.vae.parameters())
    assert not any(p.requires_grad for p in pipe.text_encoder.parameters())
    assert pipe.safety_checker is None and pipe._progress_bar_config == {"disable": True}
    for prompt in PROMPTS:
        assert pipe.tokenizer(prompt).input_ids == built.tokenizer(prompt).input_ids

    out = pipe(
        "a black and woolen bus", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    ids = pipe.tokenizer(["a red bus", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        emb = pipe.text_encoder(ids)[0]
        eps = pipe.unet(torch.randn(2, 4, 16, 16), 999, emb).sample
        assert emb.shape == (2, 77, 32) and eps.shape == (2, 4, 16, 16) and torch.isfinite(eps).all()
        # Cross-attention is live: a different prompt changes the noise prediction.
        assert not torch.allclose(eps[0], eps[1])

    half = load_pipeline(tiny_dir, dtype=torch.bfloat16)
    assert half.unet.dtype == half.vae.dtype == half.text_encoder.dtype == torch.bfloat16


def test_save_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not an empty folder"):
        save_tiny_pipeline(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (save_tiny_pipeline(empty, sample_size=8) / "model_index.json").is_file()


def test_cli_tiny(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from dfusion_bench.cli import model as cli_model

    root = typer.Typer()
    root.add_typer(cli_model.app, name="model")  # as the main CLI registers it
    out = tmp_path / "cli"
    result = CliRunner().invoke(root, ["model", "tiny", "--out", str(out), "--seed", "1", "--sample-size", "8"])
    assert result.exit_code == 0, result.output
    first, *rest = result.output.strip().splitlines()
    assert first == str(out)  # the model folder first, then how to use the tiny CLIP beside it
    assert "--clip-model" in " ".join(rest) and (out / "clip" / "dfusion-tiny-clip.json").is_file()
    pipe = load_pipeline(out)
    assert pipe.unet.config.sample_size == 8
    assert not _same(_weights(pipe.unet), _weights(build_tiny_pipeline(seed=0, sample_size=8).unet))
    again = CliRunner().invoke(root, ["model", "tiny", "--out", str(out)])
    assert isinstance(again.exception, UserError)


# --- loading: refusals ---------------------------------------------------------------------------------------------


def test_refuses_missing_path_and_files(tmp_path: Path, tiny_dir: Path) -> None:
    missing = tmp_path / "nope"
    message = _refusal(missing)
    assert str(missing) in message and "no such model folder" in message and "dfusion model tiny" in message

    ckpt = tmp_path / "v1-5.safetensors"
    ckpt.write_bytes(b"x")
    assert "single-file checkpoint" in _refusal(ckpt)

    message = _refusal(tmp_path)  # an empty folder
    assert str(tmp_path) in message and "no model_index.json" in message

    assert "its parent folder is one" in _refusal(tiny_dir / "unet")


def test_refuses_other_pipelines(tmp_path: Path, tiny_dir: Path) -> None:
    other = tmp_path / "ddpm"
    other.mkdir()
    (other / "model_index.json").write_text(
        json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"], "scheduler": ["d", "D"]})
    )
    message = _refusal(other)
    assert "a DDPMPipeline, not a Stable Diffusion pipeline" in message and "vae, text_encoder, tokenizer" in message

    xl = _copy(tiny_dir, tmp_path, "xl")
    _edit_json(xl / "model_index.json", text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    assert "two text encoders" in _refusal(xl)

    bad = _copy(tiny_dir, tmp_path, "bad")
    (bad / "model_index.json").write_text("{not json")
    assert "cannot read the pipeline index" in _refusal(bad)


def test_refuses_unet_without_cross_attention(tmp_path: Path, tiny_dir: Path) -> None:
    # A genuine UNet2DModel (unconditional) in an otherwise complete SD folder.
    plain = _copy(tiny_dir, tmp_path, "plain")
    shutil.rmtree(plain / "unet")
    UNet2DModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    ).save_pretrained(plain / "unet")
    _edit_json(plain / "model_index.json", unet=["diffusers", "UNet2DModel"])
    message = _refusal(plain)
    assert "UNet2DModel" in message and "no cross-attention" in message

    # A UNet2DConditionModel config whose blocks have no cross-attention; refused from the config alone, before the
    # (here corrupt) weights are read.
    nocross = _copy(tiny_dir, tmp_path, "nocross")
    _edit_json(
        nocross / "unet" / "config.json",
        down_block_types=["DownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "UpBlock2D"],
        mid_block_type=None,
    )
    (nocross / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"corrupt")
    assert "no cross-attention" in _refusal(nocross)
    # Keys absent from the config take diffusers' defaults (a cross-attention mid block), as loading would.
    _edit_json(nocross / "unet" / "config.json", mid_block_type="UNetMidBlock2DCrossAttn")
    assert check_pipeline_folder(nocross) is None


def test_refuses_broken_components(tmp_path: Path, tiny_dir: Path) -> None:
    truncated = _copy(tiny_dir, tmp_path, "truncated")
    weights = truncated / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    message = _refusal(truncated)
    assert "missing or corrupt" in message and str(truncated) in message

    garbage = _copy(tiny_dir, tmp_path, "garbage")
    (garbage / "text_encoder" / "model.safetensors").write_bytes(b"x" * 100)
    assert "missing or corrupt" in _refusal(garbage)

    no_weights = _copy(tiny_dir, tmp_path, "no_weights")
    (no_weights / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert "no weights in vae/" in _refusal(no_weights)

    # transformers would silently build a 2-token tokenizer from an empty folder
    no_tokenizer = _copy(tiny_dir, tmp_path, "no_tokenizer")
    shutil.rmtree(no_tokenizer / "tokenizer")
    assert "no tokenizer/ folder" in _refusal(no_tokenizer)
    (no_tokenizer / "tokenizer").mkdir()
    assert "neither tokenizer.json" in _refusal(no_tokenizer)

    other_tokenizer = _copy(tiny_dir, tmp_path, "other_tokenizer")  # e.g. the shapes world's 16-token-wide BPE
    shutil.rmtree(other_tokenizer / "tokenizer")
    from dfusion_bench.world.tokenizer import build_tokenizer

    build_tokenizer().save_pretrained(other_tokenizer / "tokenizer")
    assert "but the text encoder 49408" in _refusal(other_tokenizer)

    mixed = _copy(tiny_dir, tmp_path, "mixed")
    _edit_json(mixed / "unet" / "config.json", cross_attention_dim=64)
    assert "text encoder is 32 wide but the UNet's cross-attention expects 64" in _refusal(mixed)


def test_loads_fp16_variant_and_ignores_safety_checker(tmp_path: Path, tiny_dir: Path, monkeypatch) -> None:
    real = _copy(tiny_dir, tmp_path, "real")
    for sub, stem in (
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ):
        (real / sub / f"{stem}.safetensors").rename(real / sub / f"{stem}.fp16.safetensors")
    # Real SD folders list a safety checker; it must not be loaded (here its folder is absent: loading it would fail).
    _edit_json(
        real / "model_index.json",
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
        feature_extractor=["transformers", "CLIPImageProcessor"],
        requires_safety_checker=True,
    )
    seen: dict[str, object] = {}
    original = StableDiffusionPipeline.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(cls, path, **kwargs):
        seen.update(kwargs)
        return original(cls, path, **kwargs)

    # local_files_only is the guard against downloads (huggingface_hub reads HF_HUB_OFFLINE once, at import).
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", classmethod(spy))
    pipe = load_pipeline(real)
    assert pipe.safety_checker is None
    assert seen["local_files_only"] is True and seen["variant"] == "fp16"
    assert _same(_weights(pipe.unet), _weights(build_tiny_pipeline(seed=0).unet))

    (real / "vae" / "diffusion_pytorch_model.fp16.safetensors").rename(
        real / "vae" / "diffusion_pytorch_model.safetensors"
    )
    assert "different variants (unet: fp16; vae: standard; text_encoder: fp16)" in _refusal(real)


def test_embedded_model_resolution(tmp_path: Path, tiny_dir: Path, monkeypatch) -> None:
    assert models.EMBEDDED_MODEL == Path(models.__file__).parent.parent / "world" / "pipeline"
    monkeypatch.setattr(models, "EMBEDDED_MODEL", tmp_path / "world" / "pipeline")
    message = _refusal(None)
    assert "embedded model is not installed" in message and "dfusion world pretrain" in message
    assert resolve_model(tmp_path) == tmp_path

    from dfusion_bench.world.pretrain import MARKER

    world = _copy(tiny_dir, tmp_path / "world", "pipeline")
    assert resolve_model(None) == world and not is_world_model(world)
    (world / MARKER).write_text("{}")
    assert is_world_model(world)
    assert load_pipeline(None).unet.config.sample_size == 16


# --- the SD 2.1-base architecture ----------------------------------------------------------------------------------


def _attention_tokens(unet: torch.nn.Module, side: int) -> dict[str, int]:
    """Tokens (height × width) each attention layer sees for a ``side``×``side`` latent, from a meta-device forward."""
    seen: dict[str, int] = {}
    hooks = [
        module.register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: seen.__setitem__(
                name, (args[0] if args else kwargs["hidden_states"]).shape[1]
            ),
            with_kwargs=True,
        )
        for name, module in unet.named_modules()
        if name.endswith(("attn1", "attn2"))
    ]
    device = next(unet.parameters()).device
    x = torch.zeros(1, 4, side, side, device=device)
    cond = torch.zeros(1, 77, unet.config.cross_attention_dim, device=device)
    with torch.no_grad():
        out = unet(x, torch.tensor(10, device=device), cond).sample
    assert out.shape == x.shape
    for hook in hooks:
        hook.remove()
    return seen


def test_sd21_architecture_on_meta_device() -> None:
    pipe = build_tiny_pipeline("sd21", device="meta")
    unet = pipe.unet
    assert next(unet.parameters()).is_meta
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724  # SD 2.x's UNet
    for key, value in SD21_UNET.items():
        expected = list(value) if isinstance(value, tuple) else value
        got = unet.config[key]
        assert (list(got) if isinstance(got, tuple | list) else got) == expected, key
    assert pipe.text_encoder.config.hidden_size == unet.config.cross_attention_dim == 1024
    assert pipe.text_encoder.config.vocab_size == VOCAB_SIZE and pipe.tokenizer.pad_token_id == 0  # SD 2 pads "!"
    assert pipe.vae_scale_factor == 8 and pipe.vae.config.sample_size == 512

    names = list(unet.attn_processors)
    assert len(names) == 32
    for name in (
        "down_blocks.2.attentions.0.transformer_blocks.0.attn2.processor",
        "mid_block.attentions.0.transformer_blocks.0.attn1.processor",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor",
    ):
        assert name in names
    self_mid_up = [n for n in names if "attn1" in n and n.startswith(("mid_block", "up_blocks"))]
    assert len(self_mid_up) == 10
    assert not any(n.startswith(("down_blocks.3", "up_blocks.0")) for n in names)
    heads = {n: m.heads for n, m in unet.named_modules() if n.endswith("attn2")}
    assert heads["down_blocks.0.attentions.0.transformer_blocks.0.attn2"] == 5
    assert heads["mid_block.attentions.0.transformer_blocks.0.attn2"] == 20

    tokens = _attention_tokens(unet, 64)
    assert len(tokens) == 32
    at_16 = sorted(
        n.removesuffix(".transformer_blocks.0.attn2") for n, t in tokens.items() if "attn2" in n and t == 256
    )
    assert at_16 == [
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
    ]
    assert tokens["mid_block.attentions.0.transformer_blocks.0.attn1"] == 64  # 8×8
    assert tokens["down_blocks.0.attentions.0.transformer_blocks.0.attn1"] == 4096  # 64×64


def test_sd21_reduced_latent_keeps_the_weights() -> None:
    small = build_tiny_pipeline("sd21", sample_size=16, device="meta")
    assert small.unet.config.sample_size == 16 and small.vae.config.sample_size == 128
    shapes = {k: v.shape for k, v in small.unet.state_dict().items()}
    full = {k: v.shape for k, v in build_tiny_pipeline("sd21", device="meta").unet.state_dict().items()}
    assert shapes == full
    assert _attention_tokens(small.unet, 16)["down_blocks.2.attentions.0.transformer_blocks.0.attn2"] == 16  # 4×4


@pytest.mark.gpu
@pytest.mark.skipif(
    os.environ.get("DFUSION_HEAVY_TESTS") != "1", reason="builds 865 M parameters; DFUSION_HEAVY_TESTS=1"
)
def test_heavy_sd21_real_weights() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = build_tiny_pipeline("sd21", sample_size=64 if device == "cuda" else 16, device=device)
    assert sum(p.numel() for p in pipe.unet.parameters()) == 865_910_724
    side = pipe.unet.config.sample_size
    tokens = _attention_tokens(pipe.unet, side)
    assert tokens["up_blocks.1.attentions.2.transformer_blocks.0.attn2"] == (side // 4) ** 2
    image = pipe("a black and woolen bus", num_inference_steps=2, output_type="pt").images
    assert image.shape == (1, 3, 8 * side, 8 * side) and torch.isfinite(image).all()


def test_a_folder_with_another_scheduler_samples_with_ddim(tmp_path) -> None:
    """SD 1.5 ships PNDM; loading swaps in DDIM with the folder's noise schedule (and a finite last step)."""
    from diffusers import DDIMScheduler, PNDMScheduler

    from dfusion_bench.sampling import sample
    from dfusion_bench.settings import SamplerConfig

    folder = save_tiny_pipeline(tmp_path / "pndm")
    pndm = PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, skip_prk_steps=True,
                         set_alpha_to_one=True, steps_offset=1)  # fmt: skip
    pndm.save_pretrained(folder / "scheduler")
    index = json.loads((folder / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "PNDMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = load_pipeline(folder)
    assert isinstance(pipe.scheduler, DDIMScheduler) and not pipe.scheduler.config.set_alpha_to_one
    assert pipe.scheduler.config.beta_end == 0.012
    traj = sample(pipe, ["a dog"], [0], SamplerConfig(num_steps=4))
    assert torch.isfinite(traj.log_probs).all() and len(traj.timesteps) == 4
