"""Random-weight Stable Diffusion pipelines built from configs: for tests, and for checking code paths offline.

Two architectures:

``tiny``
    The smallest pipeline that keeps SD's structure: a ``UNet2DConditionModel`` with a cross-attention down block, a
    plain down block, a cross-attention mid block and the mirrored up blocks (as SD's 3× CrossAttn + 1× plain, cut
    to two resolutions), 32/64 channels, 2 heads, on a 16×16 latent; an ``AutoencoderKL`` that downsamples once
    (32×32 images); a 2-layer, 32-wide ``CLIPTextModel``. One classifier-free-guidance UNet step takes milliseconds
    on a CPU.

``sd21``
    The exact UNet of ``stabilityai/stable-diffusion-2-1-base`` (865 910 724 parameters, ~3.5 GB in fp32): same
    block types, channels, heads (head dim 64), linear projections and cross-attention width 1024, so attention
    processor names, layer counts and resolutions match the real model. Only the UNet is exact: the VAE is a narrow
    four-level (×8, as SD's) ``AutoencoderKL`` and the text encoder a 1-layer ``CLIPTextModel`` that is 1024 wide —
    the width SD 2's OpenCLIP ViT-H text encoder feeds the cross-attention. Building it takes ~10 s and ~4 GB of RAM
    on a CPU, so tests build it on the ``meta`` device (``device="meta"``: shapes only, no memory); GPU checks build
    it for real. ``sample_size`` (the latent side, 64 in SD 2.1-base) changes no weight, only the default image size.

Both use SD's real CLIP BPE tokenizer (:mod:`dfusion_bench.models.clip_tokenizer`), so multi-token words split as in SD,
SD's DDIM schedule and no safety checker. All weights are random, drawn from a private generator seeded by ``seed``
(the caller's global RNG state is left untouched): the same arguments give the same weights.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dfusion_bench.errors import UserError
from dfusion_bench.models.clip_tokenizer import EOS, clip_tokenizer
from dfusion_bench.models.loading import hf_quiet
from dfusion_bench.models.sd_parts import DDIM_SETTINGS, NOISE_SCHEDULE, assemble

ARCHS = ("tiny", "sd21")
#: Provenance file written into a saved tiny pipeline (diffusers ignores it).
TINY_MARKER = "dfusion_tiny.json"

#: Stable Diffusion's noise schedule, as in SD 1.x/2.x ``scheduler/scheduler_config.json``.
SD_SCHEDULE: dict[str, Any] = {**NOISE_SCHEDULE, **DDIM_SETTINGS}

#: ``unet/config.json`` of stabilityai/stable-diffusion-2-1-base (values that differ from diffusers' defaults are
#: written out; the rest — act_fn silu, norm_num_groups 32, flip_sin_to_cos, downsample_padding 1, … — are defaults).
SD21_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=(5, 10, 20, 20),  # diffusers' legacy name: the number of heads (head dim 64)
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=False,
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
    mid_block_scale_factor=1,
    dual_cross_attention=False,
    only_cross_attention=False,
)

TINY_UNET: dict[str, Any] = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    attention_head_dim=2,  # number of heads
    cross_attention_dim=32,
    norm_num_groups=32,
)

# VAEs: ``tiny`` downsamples once (latent 16 → image 32); ``sd21`` three times, like SD's (latent 64 → image 512).
_VAE_BLOCKS = {"tiny": (32, 64), "sd21": (32, 32, 64, 64)}
# Text encoders: width must equal the UNet's cross_attention_dim.
_TEXT = {
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
    "sd21": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=1, num_attention_heads=16),
}
# SD 1.x pads prompts with <|endoftext|>, SD 2.x with "!".
_PAD = {"tiny": EOS, "sd21": "!"}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise UserError(f"unknown tiny-pipeline architecture {arch!r}; choose one of: {', '.join(ARCHS)}")


def unet_config(arch: str = "tiny", sample_size: int | None = None) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` keyword arguments of ``arch``, with the latent side overridden if given."""
    _check_arch(arch)
    cfg = dict(TINY_UNET if arch == "tiny" else SD21_UNET)
    if sample_size is not None:
        levels = len(cfg["block_out_channels"]) - 1
        if sample_size < 2**levels or sample_size % 2**levels:
            raise UserError(f"--sample-size {sample_size} must be a positive multiple of {2**levels} for {arch}")
        cfg["sample_size"] = sample_size
    return cfg


def make_vae(arch: str, image_size: int) -> AutoencoderKL:
    """A narrow ``AutoencoderKL`` with SD's latent format (4 channels, scaling factor 0.18215)."""
    blocks = _VAE_BLOCKS[arch]
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(blocks),
        up_block_types=("UpDecoderBlock2D",) * len(blocks),
        block_out_channels=blocks,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=image_size,
    )


def make_text_encoder(arch: str, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A ``CLIPTextModel`` over CLIP's full 49 408-token vocabulary, as wide as the UNet's cross-attention."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act="quick_gelu" if arch == "tiny" else "gelu",  # OpenAI CLIP (SD 1) / OpenCLIP ViT-H (SD 2)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_TEXT[arch],
    )
    return CLIPTextModel(config)


def build_tiny_pipeline(
    arch: str = "tiny", seed: int = 0, sample_size: int | None = None, device: str | torch.device = "cpu"
) -> StableDiffusionPipeline:
    """A random-weight ``StableDiffusionPipeline`` of architecture ``arch`` (see the module docstring).

    ``sample_size`` overrides the latent side (default 16 for ``tiny``, 64 for ``sd21``). ``device="meta"`` builds
    every module without allocating weights (for checking structure and shapes of the full-size ``sd21``); any other
    device builds on the CPU and then moves there.
    """
    cfg = unet_config(arch, sample_size)
    tokenizer = clip_tokenizer(pad_token=_PAD[arch])
    meta = torch.device(device).type == "meta"
    if meta:
        from accelerate import init_empty_weights

        building: contextlib.AbstractContextManager[Any] = init_empty_weights()
    else:
        building = contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), building:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**cfg)
        vae = make_vae(arch, cfg["sample_size"] * 2 ** (len(_VAE_BLOCKS[arch]) - 1))
        text_encoder = make_text_encoder(arch, tokenizer)
    pipe = assemble(vae, text_encoder, tokenizer, unet)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    if not meta:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(
    out: Path, arch: str = "tiny", seed: int = 0, sample_size: int | None = None, with_clip: bool = False
) -> Path:
    """Build a tiny pipeline and save it as a standard diffusers folder at ``out`` (safetensors); return ``out``.
    ``with_clip``: also write a tiny open_clip config and weights to ``out/clip/`` (:mod:`.tiny_clip`).

    ``out`` must not exist or be an empty folder. The folder is written beside ``out`` and renamed into place, so an
    interrupted save leaves no half-written pipeline. Load it with ``StableDiffusionPipeline.from_pretrained(out)``
    or :func:`dfusion_bench.models.load_pipeline`.
    """
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder; remove it or choose another --out")
    pipe = build_tiny_pipeline(arch, seed=seed, sample_size=sample_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with hf_quiet():
            pipe.save_pretrained(tmp, safe_serialization=True)
        info = {"arch": arch, "seed": seed, "sample_size": pipe.unet.config.sample_size, "weights": "random"}
        (tmp / TINY_MARKER).write_text(json.dumps(info, indent=2) + "\n")
        if with_clip:
            from dfusion_bench.models.tiny_clip import save_tiny_clip

            save_tiny_clip(tmp / "clip", seed=seed)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
