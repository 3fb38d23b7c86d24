"""The model a command uses: a local pipeline folder (or the embedded one), checked before anything is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from dfusion_bench.models.loading import check_pipeline_folder, is_world_model, load_pipeline, resolve_model


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
