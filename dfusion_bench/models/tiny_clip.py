"""A tiny open_clip model (config file and random weights) that stands in for ViT-H-14 without any download.

``dfusion model tiny`` writes one beside the tiny Stable Diffusion pipeline, so that the real path —
``--scorer clip --clip-model CONFIG.json --clip-checkpoint WEIGHTS.pt`` — can be tried from the command line in
minutes on a CPU. The config is an ordinary open_clip model config (what ``open_clip.add_model_config`` reads); a
user's own small or custom CLIP is given the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from dfusion_bench import atomic

TINY_CLIP_NAME = "dfusion-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def save_tiny_clip(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``folder/dfusion-tiny-clip.json`` (the model config) and ``folder/dfusion-tiny-clip.pt`` (seeded random
    weights); return (config, checkpoint)."""
    import open_clip
    import torch

    folder = Path(folder)
    config = atomic.write_text(folder / f"{TINY_CLIP_NAME}.json", json.dumps(TINY_CLIP_CONFIG, indent=2) + "\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        open_clip.add_model_config(config)
        model = open_clip.create_model(TINY_CLIP_NAME)
    checkpoint = atomic.write_with(folder / f"{TINY_CLIP_NAME}.pt", lambda p: torch.save(model.state_dict(), p))
    return config, checkpoint
