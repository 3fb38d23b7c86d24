"""The ``clip`` scorer: CLIPScore as the D-Fusion paper uses it.

The score of an image and its prompt is the plain cosine similarity of the L2-normalised open_clip image and text
embeddings (no ×100 scaling, no clipping at 0), so it lies in [-1, 1]. The paper uses ViT-H-14 with the
laion2B-s32B-b79K weights.

Weights always come from a LOCAL file (``checkpoint`` option, else ``$DFUSION_CLIP_CHECKPOINT``): this module never
asks open_clip for a pretrained *tag*, because a tag means a download. The model loads lazily, once per scorer object,
on the first call. Images arrive as tensors, so open_clip's own eval preprocessing (resize, center crop, normalise with
the model's configured size and mean/std) is applied to tensors instead of PIL images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, ResizeKeepRatio, image_transform_v2, merge_preprocess_dict
from torchvision.transforms import Compose, Normalize

from dfusion_bench.errors import UserError
from dfusion_bench.scorers import DEFAULT_CLIP_MODEL
from dfusion_bench.scorers.base import Scores, check_batch

DEFAULT_MODEL = DEFAULT_CLIP_MODEL
CHECKPOINT_ENV = "DFUSION_CLIP_CHECKPOINT"
_HOW_TO_FIX = f"pass --clip-checkpoint PATH or set {CHECKPOINT_ENV} to a local open_clip weights file"
_REMOTE_PREFIXES = ("hf-hub:", "local-dir:")

Preprocess = Callable[[torch.Tensor], torch.Tensor]


class ClipModel(Protocol):
    """The part of an open_clip model this scorer uses."""

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...


def resolve_checkpoint(checkpoint: str | os.PathLike[str] | None) -> Path:
    """The local checkpoint file to load: ``checkpoint``, else ``$DFUSION_CLIP_CHECKPOINT``.

    Unset or missing files are a :class:`UserError` naming the fix, checked eagerly so that a long run fails at start.
    """
    source = "" if checkpoint is not None else f" (from ${CHECKPOINT_ENV})"
    value = os.fspath(checkpoint) if checkpoint is not None else os.environ.get(CHECKPOINT_ENV, "")
    if not value.strip():
        raise UserError(f"no CLIP checkpoint given: {_HOW_TO_FIX} (ViT-H-14: laion2B-s32B-b79K)")
    path = Path(value).expanduser()
    if not path.is_file():
        raise UserError(f"CLIP checkpoint {value}{source} is not a file: {_HOW_TO_FIX}")
    return path.resolve()  # absolute, so open_clip can never mistake it for a pretrained tag


def check_model_name(model_name: str) -> str:
    """The open_clip config name to build: a name open_clip knows (``/`` read as ``-``, as open_clip does; built in
    or added with ``open_clip.add_model_config``), or the path of a local open_clip model config (``.json``), which
    is registered under its file name.

    Hub and directory references are refused because they download or bypass the checkpoint option, and so are
    configs whose towers or tokenizer come from the Hugging Face hub or timm.
    """
    if model_name.startswith(_REMOTE_PREFIXES):
        raise UserError(
            f"CLIP model {model_name!r}: use an open_clip config name such as {DEFAULT_MODEL!r} or a local config "
            f".json, and a local weights file ({_HOW_TO_FIX}), not a hub or directory reference"
        )
    if model_name.endswith(".json") or Path(model_name).expanduser().is_file():
        name = _register_config_file(Path(model_name).expanduser())
    else:
        name = model_name.replace("/", "-")
    config = open_clip.get_model_config(name)
    if config is None:
        raise UserError(
            f"unknown open_clip model {model_name!r}; open_clip.list_models() names the known ones, or give the path "
            "of an open_clip model config .json"
        )
    towers = [config.get("text_cfg", {}), config.get("vision_cfg", {})]
    if any(t.get("hf_model_name") or t.get("hf_tokenizer_name") or t.get("timm_model_name") for t in towers):
        raise UserError(
            f"CLIP model {model_name!r} builds a tower or tokenizer from the Hugging Face hub or timm, which would "
            f"download; use a plain open_clip config such as {DEFAULT_MODEL!r}"
        )
    return name


def _register_config_file(path: Path) -> str:
    """Register a local open_clip model config with open_clip; its name is the file's stem."""
    if not path.is_file():
        raise UserError(f"CLIP model config {path} is not a file; give an open_clip config name or a config .json")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"CLIP model config {path} is not readable JSON ({_one_line(exc)})") from None
    if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
        raise UserError(f"CLIP model config {path} is not an open_clip model config (embed_dim, vision_cfg, text_cfg)")
    open_clip.add_model_config(path)
    return path.stem


def tensor_preprocess(preprocess_cfg: dict[str, Any]) -> Preprocess:
    """open_clip's eval transform for a model's ``preprocess_cfg``, made to work on (B, 3, H, W) tensors in [0, 1].

    The PIL pipeline rounds resized pixels to uint8, so a clamp to [0, 1] before normalising stands in for that
    (bicubic resizing overshoots). Resize modes that need a PIL image (``longest``, non-square ``shortest``) are
    refused rather than approximated.
    """
    cfg = PreprocessCfg(**merge_preprocess_dict(PreprocessCfg(), preprocess_cfg))
    steps = list(image_transform_v2(cfg, is_train=False).transforms)
    if any(isinstance(step, ResizeKeepRatio) for step in steps) or not isinstance(steps[-1], Normalize):
        raise UserError(f"open_clip preprocessing {cfg} is not supported for tensor images; use a square image size")
    return Compose([*steps[:-1], _clamp_unit, steps[-1]])


def _clamp_unit(images: torch.Tensor) -> torch.Tensor:
    return images.clamp(0.0, 1.0)


def _one_line(err: BaseException) -> str:
    """An exception's message squeezed onto one short line, for a :class:`UserError`."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


class ClipScorer:
    """CLIPScore (cosine similarity of open_clip image and text embeddings); see the module docstring.

    Options: ``model_name`` (an open_clip config name, default ViT-H-14), ``checkpoint`` (local weights file, default
    ``$DFUSION_CLIP_CHECKPOINT``), ``device`` (default: the device of the first images scored), ``batch_size``.
    """

    name: str = "clip"

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        checkpoint: str | os.PathLike[str] | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"CLIP batch size must be at least 1, got {batch_size}")
        self.model_name = check_model_name(model_name)
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.device = None if device is None else torch.device(device)
        self.batch_size = batch_size
        self._loaded: _LoadedClip | None = None

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None = None
    ) -> Scores:
        n = check_batch(images, prompts, metadata)
        clip = self._load(images.device)
        chunks = [
            clip.score(images[i : i + self.batch_size], prompts[i : i + self.batch_size])
            for i in range(0, n, self.batch_size)
        ]
        scores = np.concatenate(chunks) if chunks else np.zeros(0)
        return Scores(scores=scores.astype(np.float64), aligned=None, details=[{} for _ in range(n)])

    def load(self, device: torch.device | None = None) -> ClipScorer:
        """Build the model now (on ``device``, else the scorer's): a checkpoint that does not fit the model fails here,
        before any sampling, rather than at the first scoring."""
        self._load(torch.device(device) if device is not None else self.device or torch.device("cpu"))
        return self

    def _load(self, images_device: torch.device) -> _LoadedClip:
        """The model, preprocessing and tokenizer, built on first use (on ``device``, else the images' device)."""
        if self._loaded is None:
            if self.device is None:
                self.device = images_device
            self._loaded = _LoadedClip(
                model=load_model(self.model_name, self.checkpoint, self.device),
                tokenizer=open_clip.get_tokenizer(self.model_name),
                device=self.device,
            )
        return self._loaded


def load_model(model_name: str, checkpoint: Path, device: torch.device) -> ClipModel:
    """An open_clip model in eval mode with weights from a local file; a file that does not fit is a UserError."""
    try:
        model = open_clip.create_model(model_name, pretrained=str(checkpoint), device=device)
    except torch.OutOfMemoryError:
        raise
    except Exception as err:  # torch.load / load_state_dict raise many types for a wrong or corrupt file
        reason = _one_line(err)
        raise UserError(f"CLIP checkpoint {checkpoint} does not load into open_clip {model_name}: {reason}") from err
    return cast(ClipModel, model.eval().requires_grad_(False))


class _LoadedClip:
    """A loaded model with its tensor preprocessing and tokenizer."""

    def __init__(self, model: ClipModel, tokenizer: Callable[[list[str]], torch.Tensor], device: torch.device) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.preprocess = tensor_preprocess(open_clip.get_model_preprocess_cfg(model))

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str]) -> np.ndarray:
        """Cosine similarities of one chunk of images and prompts, as a float numpy array."""
        pixels = self.preprocess(images.to(device=self.device, dtype=torch.float32))
        tokens = self.tokenizer(prompts).to(self.device)
        image_emb = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        text_emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
        # The clamp only absorbs float rounding of unit vectors; unlike CLIPScore à la Hessel et al. there is no
        # max(0, .) and no x100, as in D-Fusion.
        return (image_emb * text_emb).sum(dim=-1).clamp(-1.0, 1.0).cpu().numpy()
