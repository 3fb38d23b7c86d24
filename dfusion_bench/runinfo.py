"""Run folders: refuse to clobber, and record what reproduces the run (configuration, versions, seeds, command)."""

from __future__ import annotations

import hashlib
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from dfusion_bench import atomic
from dfusion_bench.errors import UserError

PACKAGES = (
    "dfusion-bench",
    "torch",
    "torchvision",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "open_clip_torch",
    "numpy",
    "safetensors",
)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


#: Weight files up to this size are hashed whole; larger ones (SD's UNet) by size, head and tail, to stay fast.
_WHOLE_HASH_LIMIT = 64 * 2**20
_PART = 2**20


def model_digest(folder: Path) -> str:
    """A short fingerprint of a pipeline folder's weights, so that a result names the model that made it."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix not in (".safetensors", ".bin") or not path.is_file():
            continue
        size = path.stat().st_size
        digest.update(f"{path.relative_to(folder).as_posix()}:{size}".encode())
        with path.open("rb") as f:
            if size <= _WHOLE_HASH_LIMIT:
                digest.update(f.read())
            else:
                digest.update(f.read(_PART))
                f.seek(size - _PART)
                digest.update(f.read(_PART))
    return digest.hexdigest()[:16]


def check_out_dir(out: Path, overwrite: bool) -> Path:
    """Refuse an output folder that is a file, or not empty without ``overwrite``. Call before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder path")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} is not empty; choose another folder or pass --overwrite")
    return out


@contextmanager
def staged_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write into; moved into place only if the block succeeds.

    A crash or an interrupt leaves ``out`` as it was (no partial output); the staging folder is removed.
    """
    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    atomic.replace_dir(stage, out)


#: The command line of this invocation as the user typed it (set by the CLI's entry point; else ``sys.argv``).
_COMMAND_LINE: list[str] | None = None


def record_command_line(argv: list[str]) -> None:
    """Remember the command line that ``run.json`` records (``dfusion ...`` when the CLI is called in-process)."""
    global _COMMAND_LINE
    _COMMAND_LINE = list(argv)


def write_run_info(
    out: Path, command: str, config: dict[str, Any], seeds: dict[str, Any], model: Path, processes: int = 1
) -> Path:
    """``run.json``: the resolved configuration, package versions, seeds, the command line as typed (relative paths
    as given; the configuration holds them resolved), the number of processes, and the fingerprint of the weights of
    ``model`` (the resolved pipeline folder the run used)."""
    info = {
        "command": command,
        "argv": _COMMAND_LINE if _COMMAND_LINE is not None else sys.argv,
        "cwd": str(Path.cwd()),
        "processes": processes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "seeds": seeds,
        "versions": package_versions(),
        "model_digest": {"folder": str(model), "weights": model_digest(model)},
    }
    return atomic.write_json(Path(out) / "run.json", info)
