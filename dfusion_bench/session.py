"""What every command sets up first: the device, the model, and the scorer — checked before any heavy work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from dfusion_bench.errors import UserError
from dfusion_bench.models import check_pipeline_folder, is_world_model, load_pipeline, resolve_model
from dfusion_bench.scorers import available_scorers, get_scorer
from dfusion_bench.scorers.base import Scorer
from dfusion_bench.settings import CLIP_MODEL


def use_cpu(device: str | None) -> bool:
    """Whether accelerate should run on CPU: asked for, or no GPU (then several processes talk over gloo)."""
    return device == "cpu" or (device is None and not torch.cuda.is_available())


def pick_device(device: str | None) -> torch.device:
    """The requested device, or accelerate's choice for this process (its GPU under ``accelerate launch``)."""
    if device is None:
        from accelerate import PartialState

        return PartialState(cpu=use_cpu(device)).device
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return dev


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """fp16 on GPUs (the paper's setting), fp32 on CPU, unless asked otherwise."""
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


@dataclass
class ModelChoice:
    """A checked (not yet loaded) model folder."""

    path: Path
    is_world: bool

    @staticmethod
    def check(model: Path | None) -> ModelChoice:
        path = resolve_model(model)
        check_pipeline_folder(path)
        return ModelChoice(path=path, is_world=is_world_model(path))

    def default_scorer(self) -> str:
        """The exact verifier for the embedded shapes world, CLIPScore for anything else."""
        return "verifier" if self.is_world else "clip"

    def load(self, device: torch.device, dtype: torch.dtype) -> StableDiffusionPipeline:
        return load_pipeline(self.path, device=device, dtype=dtype)


def make_scorer(
    name: str | None,
    model: ModelChoice,
    prompts: list[str],
    device: torch.device,
    clip_model: str = CLIP_MODEL.default,
    clip_checkpoint: Path | None = None,
) -> Scorer:
    """Build and check a scorer before any sampling: unknown names, missing checkpoints and prompts the verifier
    cannot read fail here, in one line."""
    name = name or model.default_scorer()
    if name not in available_scorers():
        raise UserError(f"unknown scorer {name!r}; known scorers: {', '.join(available_scorers())}")
    if name == "clip":
        return get_scorer("clip", model_name=clip_model, checkpoint=clip_checkpoint, device=device)
    if name == "verifier":
        from dfusion_bench.world.grammar import parse

        for prompt in prompts:
            parse(prompt)
    return get_scorer(name)
