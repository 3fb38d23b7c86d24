"""Loading a Stable Diffusion 1.x/2.x pipeline from a local folder, safely: offline, checked before loading, no
safety checker, ready for inference.

Everything a user can get wrong about the folder — a wrong path, a single checkpoint file instead of a diffusers
folder, another kind of pipeline, a UNet without cross-attention (nothing for prompt alignment to act on), missing
or corrupt weights — becomes a one-line :class:`~dfusion_bench.errors.UserError` naming the path, the problem and
the fix. The configs are checked before any weight is read, so a wrong folder fails in milliseconds.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from safetensors import SafetensorError

from dfusion_bench.errors import UserError

#: Where the trained embedded (shapes-world) pipeline ships inside the package.
EMBEDDED_MODEL: Path = Path(__file__).parent.parent / "world" / "pipeline"

#: Components a Stable Diffusion pipeline needs, with the classes this toolkit accepts for each (None: any).
REQUIRED: dict[str, tuple[str, ...] | None] = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,
}
_WEIGHT_FILES = {
    "unet": ("diffusion_pytorch_model", ".safetensors", ".bin"),
    "vae": ("diffusion_pytorch_model", ".safetensors", ".bin"),
    "text_encoder": ("model", ".safetensors", ".bin"),
}
_INCOMPLETE = "the pipeline folder is incomplete; copy or re-save it completely"
_TINY_HINT = "create a test pipeline with `dfusion model tiny --out DIR`"


def resolve_model(path: Path | None) -> Path:
    """``path`` (user-expanded), or the embedded model when ``path`` is None.

    Raises :class:`UserError` if the embedded model is asked for but not installed.
    """
    if path is not None:
        return Path(path).expanduser()
    if not (EMBEDDED_MODEL / "model_index.json").is_file():
        raise UserError(
            f"the embedded model is not installed ({EMBEDDED_MODEL} is missing); create it with "
            f"`dfusion world pretrain --out RUN` (it writes RUN/pipeline; copy that to {EMBEDDED_MODEL}), "
            "or pass the path of a Stable Diffusion pipeline folder"
        )
    return EMBEDDED_MODEL


def is_world_model(path: Path) -> bool:
    """True for a pipeline exported by ``dfusion world pretrain`` (it holds the world's marker file)."""
    from dfusion_bench.world.pretrain import MARKER

    return (Path(path) / MARKER).is_file()


def _read_json(file: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{file}: cannot read the {what} ({_one_line(exc)}); restore the file or re-save the pipeline"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"{file}: the {what} is not a JSON object; restore the file or re-save the pipeline")
    return data


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _weights_variant(path: Path) -> str | None:
    """None if every weighted component has standard weight files, the variant name (e.g. ``fp16``) if every one
    has only that variant; otherwise a :class:`UserError` naming the component without weights."""
    variants: dict[str, set[str | None]] = {}
    for name, (stem, *exts) in _WEIGHT_FILES.items():
        found: set[str | None] = set()
        for file in (path / name).iterdir() if (path / name).is_dir() else ():
            if not file.name.startswith(stem + ".") or not file.is_file():
                continue
            middle = file.name[len(stem) + 1 :]
            for ext in exts:
                for suffix in (ext, ext + ".index.json"):
                    if middle == suffix[1:]:
                        found.add(None)
                    elif middle.endswith(suffix):
                        found.add(middle[: -len(suffix)])
        if not found:
            raise UserError(f"{path}: no weights in {name}/ (expected {stem}.safetensors); {_INCOMPLETE}")
        variants[name] = found
    common = set.intersection(*variants.values())
    if None in common:
        return None
    if common:
        return sorted(common, key=str)[0]
    saved = "; ".join(f"{n}: {', '.join(sorted(v or 'standard' for v in vs))}" for n, vs in variants.items())
    raise UserError(f"{path}: the components' weights are saved in different variants ({saved}); re-save the pipeline")


def _has_cross_attention(unet_config: dict[str, Any]) -> bool:
    """Whether a ``UNet2DConditionModel`` config has a cross-attention block (keys it omits take diffusers' defaults,
    as loading would)."""
    from diffusers import UNet2DConditionModel

    defaults = inspect.signature(UNet2DConditionModel.__init__).parameters
    blocks: list[Any] = []
    for key in ("down_block_types", "mid_block_type", "up_block_types"):
        value = unet_config[key] if key in unet_config else defaults[key].default
        blocks += value if isinstance(value, list | tuple) else [value]
    return any("CrossAttn" in str(block) for block in blocks)


def _no_cross_attention(path: Path, unet_class: str) -> str:
    return (
        f"{path}: its UNet ({unet_class}) has no cross-attention, so prompts cannot steer it; use a text-conditioned "
        "Stable Diffusion 1.x/2.x model"
    )


def check_pipeline_folder(path: Path) -> str | None:
    """Check that ``path`` is a loadable SD 1.x/2.x pipeline folder with cross-attention, reading only configs.

    Returns the weights variant to load (None for standard weights). Raises :class:`UserError` otherwise.
    """
    if not path.exists():
        raise UserError(f"{path}: no such model folder; pass a diffusers Stable Diffusion folder ({_TINY_HINT})")
    if not path.is_dir():
        hint = (
            "a single-file checkpoint is not supported; convert it with "
            "StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR) and pass DIR"
            if path.suffix in (".safetensors", ".ckpt", ".pt", ".bin")
            else f"pass the folder that holds model_index.json ({_TINY_HINT})"
        )
        raise UserError(f"{path}: is a file, not a diffusers pipeline folder; {hint}")
    index_file = path / "model_index.json"
    if not index_file.is_file():
        parent = " (its parent folder is one: pass that)" if (path.parent / "model_index.json").is_file() else ""
        raise UserError(
            f"{path}: not a diffusers pipeline folder (no model_index.json){parent}; pass a folder saved with "
            f"save_pretrained ({_TINY_HINT})"
        )
    index = _read_json(index_file, "pipeline index model_index.json")
    kind = index.get("_class_name", "unknown pipeline")
    entries = {name: index.get(name) for name in REQUIRED}
    missing = [name for name, e in entries.items() if not (isinstance(e, list) and len(e) == 2 and e[1])]
    if missing:
        raise UserError(
            f"{path}: a {kind}, not a Stable Diffusion pipeline (it has no {', '.join(missing)}); this toolkit needs "
            f"SD 1.x/2.x with unet, vae, text_encoder, tokenizer and scheduler ({_TINY_HINT})"
        )
    if index.get("text_encoder_2") or index.get("tokenizer_2"):
        raise UserError(f"{path}: a {kind} with two text encoders (SDXL-like), unsupported; use an SD 1.x/2.x model")
    for name, classes in REQUIRED.items():
        cls = entries[name][1]
        if name == "unet" and classes is not None and cls not in classes:
            raise UserError(_no_cross_attention(path, cls))
        if classes is not None and cls not in classes:
            raise UserError(
                f"{path}: a {kind} whose {name} is a {cls}, not a {' or '.join(classes)}; this toolkit supports "
                "Stable Diffusion 1.x/2.x pipelines only"
            )
        if not (path / name).is_dir():
            raise UserError(f"{path}: no {name}/ folder; {_INCOMPLETE}")
    tok = path / "tokenizer"
    if not ((tok / "tokenizer.json").is_file() or ((tok / "vocab.json").is_file() and (tok / "merges.txt").is_file())):
        raise UserError(f"{path}: tokenizer/ holds neither tokenizer.json nor vocab.json + merges.txt; {_INCOMPLETE}")
    unet_cfg_file = path / "unet" / "config.json"
    if not unet_cfg_file.is_file():
        raise UserError(f"{path}: no unet/config.json; {_INCOMPLETE}")
    unet = _read_json(unet_cfg_file, "UNet config")
    if unet.get("_class_name") != "UNet2DConditionModel" or not _has_cross_attention(unet):
        raise UserError(_no_cross_attention(path, unet.get("_class_name", "unknown class")))
    text_file = path / "text_encoder" / "config.json"
    if not text_file.is_file():
        raise UserError(f"{path}: no text_encoder/config.json; {_INCOMPLETE}")
    text = _read_json(text_file, "text encoder config")
    width = text.get("hidden_size", text.get("text_config", {}).get("hidden_size"))
    if width is not None and unet.get("cross_attention_dim") not in (None, width):
        raise UserError(
            f"{path}: the text encoder is {width} wide but the UNet's cross-attention expects "
            f"{unet.get('cross_attention_dim')}; the folder mixes parts of different models"
        )
    return _weights_variant(path)


@contextlib.contextmanager
def hf_quiet() -> Iterator[None]:
    """Silence diffusers' and transformers' progress bars and warnings for the duration, then restore them.

    Loading and saving print bars ("Loading pipeline components", "Writing model shards") and notices such as
    "you have disabled the safety checker" — deliberate here — that would clutter the toolkit's own output.
    """
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled()) for lib in (dlog, tlog)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, level, bar in saved:
            lib.set_verbosity(level)
            if bar:
                lib.enable_progress_bar()


def ddim_scheduler(scheduler) -> DDIMScheduler:
    """The toolkit's sampler is DDIM with eta > 0; SD folders ship other schedulers (SD 1.5: PNDM).

    Keeps the folder's noise schedule and prediction type, and sets ``set_alpha_to_one=False`` (SD's released DDIM
    setting): with the final alpha forced to one, the last step has zero variance and no log-probability.
    """
    return DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=False)


def load_pipeline(
    path: Path | None = None, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> StableDiffusionPipeline:
    """Load a Stable Diffusion pipeline (default: the embedded model) for inference, never downloading.

    The folder is checked first (:func:`check_pipeline_folder`); any safety checker it holds is not loaded. The
    result is on ``device`` in ``dtype``, with UNet, VAE and text encoder in eval mode, VAE and text encoder frozen
    (``requires_grad`` False; the UNet is left trainable for fine-tuning) and the progress bar off.
    """
    path = resolve_model(path)
    variant = check_pipeline_folder(path)
    with hf_quiet():
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                str(path.resolve()),
                local_files_only=True,  # the guard against downloads: diffusers and transformers stay on disk
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                variant=variant,
            )
        except (OSError, ValueError, RuntimeError, KeyError, EOFError, SafetensorError) as exc:
            raise UserError(
                f"{path}: cannot load the pipeline, a component's weights or config are missing or corrupt "
                f"({_one_line(exc)}); re-save or re-copy the folder"
            ) from exc
        # SD's UNet and VAE keep no module in fp32, so casting after loading is exact (diffusers warns regardless).
        pipe.to(device=device, dtype=dtype)
    pipe.scheduler = ddim_scheduler(pipe.scheduler)
    if len(pipe.tokenizer) != pipe.text_encoder.config.vocab_size:
        raise UserError(
            f"{path}: the tokenizer has {len(pipe.tokenizer)} tokens but the text encoder "
            f"{pipe.text_encoder.config.vocab_size}; restore the tokenizer/ folder of this model"
        )
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
