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
    except (ValueError, KeyError, TypeError, OSError, json.JSONDecodeError) as exc:
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


def load_policy(run: Path, epoch: int | None, device, dtype):
    """The pipeline of a training run with the LoRA weights of ``epoch`` (default: the latest checkpoint).

    Returns ``(pipe, config, epoch)``; the UNet carries the run's adapters, active.
    """
    from dfusion_bench.models.choice import ModelChoice
    from dfusion_bench.rl.config import TrainConfig
    from dfusion_bench.rl.lora import add_lora

    run = Path(run)
    if not (run / "config.json").is_file():
        raise UserError(f"--run {run}: not a training run folder (no config.json); pass a `dfusion train --out` folder")
    config = TrainConfig.load(run / "config.json")
    latest = latest_epoch(run)
    if latest is None:
        raise UserError(f"--run {run}: the run has no checkpoint yet")
    epoch = latest if epoch is None else epoch
    if not epoch_dir(run, epoch).is_dir():
        raise UserError(f"--epoch {epoch}: {run} has no checkpoint of that epoch (latest: {latest})")
    pipe = ModelChoice.check(Path(config.model) if config.model else None).load(device, dtype)
    add_lora(pipe.unet, config.lora, config.seed)
    load_lora(pipe.unet, epoch_dir(run, epoch) / "lora.safetensors")
    pipe.unet.requires_grad_(False)
    return pipe, config, epoch
