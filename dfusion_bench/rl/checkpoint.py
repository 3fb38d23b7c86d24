"""Training checkpoints: one folder per finished epoch, and a pointer to the latest, written last.

``checkpoints/epoch-NNNN/`` holds the LoRA weights (safetensors) and the trainer state (optimizer, per-prompt
statistics, counters); ``checkpoints/latest.json`` names the newest complete one. Every epoch's work is a pure
function of (configuration, seed, epoch, state), so a run killed at any point and resumed from the latest
checkpoint redoes the interrupted epoch exactly and ends with bit-identical weights on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from dfusion_bench import atomic
from dfusion_bench.errors import UserError
from dfusion_bench.rl.lora import load_lora, save_lora

LATEST = "latest.json"


def epoch_dir(run: Path, epoch: int) -> Path:
    return Path(run) / "checkpoints" / f"epoch-{epoch:04d}"


def save(run: Path, epoch: int, unet, state: dict[str, Any]) -> None:
    folder = epoch_dir(run, epoch)
    save_lora(unet, folder / "lora.safetensors")
    atomic.write_with(folder / "trainer_state.pt", lambda p: torch.save(state, p))
    atomic.write_json(Path(run) / "checkpoints" / LATEST, {"epoch": epoch})


def latest_epoch(run: Path) -> int | None:
    """The newest complete checkpoint's epoch, or None if the run has none."""
    pointer = Path(run) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    try:
        return int(json.loads(pointer.read_text())["epoch"])
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"{pointer} is corrupt ({exc}); delete it to resume from an earlier epoch folder") from None


def load(run: Path, epoch: int, unet) -> dict[str, Any]:
    """Load an epoch's LoRA weights into ``unet`` and return its trainer state."""
    folder = epoch_dir(run, epoch)
    if not (folder / "lora.safetensors").is_file() or not (folder / "trainer_state.pt").is_file():
        raise UserError(f"checkpoint {folder} is missing or incomplete; resume from another run or start afresh")
    load_lora(unet, folder / "lora.safetensors")
    try:
        return torch.load(folder / "trainer_state.pt", map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{folder / 'trainer_state.pt'} is corrupt ({exc}); start the run afresh") from None
