"""Training checkpoints: one folder per finished epoch, checksummed, and a pointer to the latest, written last.

``checkpoints/epoch-NNNN/`` holds the LoRA weights (safetensors), the trainer state (optimizer, per-prompt
statistics, counters) and ``checksums.json`` (the SHA-256 of both files); ``checkpoints/latest.json`` names the
newest complete one. An epoch folder is written as ``.epoch-NNNN.partial`` and renamed into place when complete, so
a crash or a full disk never leaves a half-made checkpoint under the real name. Every epoch's work is a pure
function of (configuration, seed, epoch, state), so a run killed at any point and resumed from the latest
checkpoint redoes the interrupted epoch exactly and ends with bit-identical weights on CPU.

Loading verifies the files against ``checksums.json`` and the loaded LoRA weights against the SHA-256 that
``train_log.jsonl`` recorded for that epoch: a checkpoint changed after it was written is refused, never used.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch

from dfusion_bench import atomic
from dfusion_bench.errors import UserError
from dfusion_bench.rl.lora import load_lora, lora_state, save_lora, state_digest

LATEST = "latest.json"
CHECKSUMS = "checksums.json"
TRAIN_LOG = "train_log.jsonl"
FILES = ("lora.safetensors", "trainer_state.pt")


def epoch_dir(run: Path, epoch: int) -> Path:
    return Path(run) / "checkpoints" / f"epoch-{epoch:04d}"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save(run: Path, epoch: int, unet, state: dict[str, Any]) -> None:
    """Write the epoch's checkpoint folder (staged, then renamed into place), then point ``latest.json`` at it."""
    final = epoch_dir(run, epoch)
    stage = final.with_name(f".{final.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        save_lora(unet, stage / FILES[0])
        atomic.write_torch(stage / FILES[1], state)
        atomic.write_json(stage / CHECKSUMS, {name: file_sha256(stage / name) for name in FILES})
        atomic.replace_dir(stage, final)  # a redone epoch replaces the folder an earlier attempt left
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if exc.filename and Path(exc.filename).parent == stage:  # name the file, not the staging folder
            raise OSError(exc.errno, exc.strerror, str(final / Path(exc.filename).name)) from exc
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
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


def resume_hint(run: Path, epoch: int) -> str:
    """What a stopped run kept and how to go on, for the one line that reports it."""
    command = f"dfusion train --out {shlex.quote(str(run))} --resume"
    return f"the last complete checkpoint is epoch {epoch} ({epoch_dir(run, epoch)}); resume with: {command}"


def _damaged(folder: Path, what: str) -> UserError:
    return UserError(f"checkpoint {folder}: {what}; it changed after it was written, so it is not used")


def verify_files(run: Path, epoch: int, names: tuple[str, ...] = FILES) -> None:
    """Check an epoch folder's files against its ``checksums.json`` (folders written before checksums: skipped)."""
    folder = epoch_dir(run, epoch)
    listed = folder / CHECKSUMS
    if not listed.is_file():
        return
    try:
        expected = json.loads(listed.read_text())
        wanted = {name: str(expected[name]) for name in names}
    except (OSError, ValueError, KeyError, TypeError):
        raise _damaged(folder, f"{CHECKSUMS} is unreadable") from None
    for name, sha in wanted.items():
        if file_sha256(folder / name) != sha:
            raise _damaged(folder, f"{name} does not match its SHA-256 in {CHECKSUMS}")


def logged_digest(run: Path, epoch: int) -> str | None:
    """The SHA-256 of the LoRA weights that ``train_log.jsonl`` recorded after ``epoch``'s update, or None."""
    log = Path(run) / TRAIN_LOG
    if epoch < 1 or not log.is_file():
        return None
    found = None
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("epoch") == epoch and row.get("lora_sha256_per_process"):
            found = str(row["lora_sha256_per_process"][0])
    return found


def check_complete(run: Path, epoch: int, names: tuple[str, ...] = FILES) -> None:
    """Refuse an epoch folder that lacks one of ``names`` or whose files do not match their checksums."""
    folder = epoch_dir(run, epoch)
    if not all((folder / name).is_file() for name in names):
        raise UserError(f"checkpoint {folder} is missing or incomplete; resume from another run or start afresh")
    verify_files(run, epoch, names)


def _load_weights(run: Path, epoch: int, unet, names: tuple[str, ...] = FILES) -> None:
    """Verify an epoch's ``names``, load its LoRA weights into ``unet``, and check them against the training log."""
    folder = epoch_dir(run, epoch)
    check_complete(run, epoch, names)
    load_lora(unet, folder / FILES[0])
    expected = logged_digest(run, epoch)
    if expected is not None and state_digest(lora_state(unet)) != expected:
        raise _damaged(folder, f"its LoRA weights do not match the SHA-256 {TRAIN_LOG} recorded for epoch {epoch}")


def load(run: Path, epoch: int, unet) -> dict[str, Any]:
    """Load an epoch's LoRA weights into ``unet`` (verified) and return its trainer state."""
    _load_weights(run, epoch, unet)
    path = epoch_dir(run, epoch) / FILES[1]
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"{path} is corrupt ({exc}); start the run afresh") from None


def load_policy(run: Path, epoch: int | None, device, dtype):
    """The pipeline of a training run with the LoRA weights of ``epoch`` (default: the latest checkpoint), verified.

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
    check_complete(run, epoch, FILES[:1])  # before the model loads; evaluation needs only the weights
    pipe = ModelChoice.check(Path(config.model) if config.model else None).load(device, dtype)
    add_lora(pipe.unet, config.lora, config.seed)
    _load_weights(run, epoch, pipe.unet, FILES[:1])
    pipe.unet.requires_grad_(False)
    return pipe, config, epoch
