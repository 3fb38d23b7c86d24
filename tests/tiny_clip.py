"""Test helper: a tiny open_clip model that stands in for ViT-H-14 without any download.

:func:`make_tiny_clip` registers a small ViT config with open_clip (exactly as a user could add a custom config) and
saves random weights to a local checkpoint file, so tests load it through the ``clip`` scorer the way a user loads the
real ViT-H-14 weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch

TINY_CLIP_NAME = "dfusion-test-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def register_tiny_clip(directory: Path) -> str:
    """Register the tiny config with open_clip (idempotent) and return its model name."""
    if TINY_CLIP_NAME not in open_clip.list_models():
        config_file = directory / f"{TINY_CLIP_NAME}.json"
        config_file.write_text(json.dumps(TINY_CLIP_CONFIG))
        open_clip.add_model_config(config_file)
    return TINY_CLIP_NAME


def make_tiny_clip(directory: Path, seed: int = 0) -> tuple[str, Path]:
    """Model name and path of a checkpoint with seeded random weights for the tiny config."""
    name = register_tiny_clip(directory)
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    checkpoint = directory / f"tiny-clip-{seed}.pt"
    torch.save(model.state_dict(), checkpoint)
    return name, checkpoint
