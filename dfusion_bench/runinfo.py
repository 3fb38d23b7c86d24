"""Run folders: refuse to clobber, and record what reproduces the run (configuration, versions, seeds, command)."""

from __future__ import annotations

import glob
import hashlib
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from dfusion_bench import atomic, runlock
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


def _unwritable(out: Path) -> Path | None:
    """The folder that keeps this process from making or filling ``out``, or None.

    Checked: the nearest existing parent (where ``out`` and staging folders are made) and ``out`` itself if it
    exists (where a run writes)."""
    parent = next((p for p in out.parents if p.exists()), None)
    for folder in (parent, out if out.exists() else None):
        if folder is not None and not os.access(folder, os.W_OK | os.X_OK):
            return folder
    return None


def check_out_dir(out: Path, overwrite: bool) -> Path:
    """Refuse an output folder that is a file, not empty without ``overwrite`` (a run's lock file alone does not
    count), or in a place this process cannot write. Call before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder path")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():  # e.g. --out some/file.txt/run
        raise UserError(f"--out {out}: {parent} is a file; give a folder path")
    if out.exists() and any(p.name != runlock.LOCK_NAME for p in out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} is not empty; choose another folder or pass --overwrite")
    blocked = _unwritable(out)
    if blocked is not None:
        raise UserError(f"--out {out}: cannot write in {blocked} (read-only or no permission); choose another folder")
    return out


@contextmanager
def staged_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write into; moved into place only if the block succeeds.

    A crash or an interrupt leaves ``out`` as it was (no partial output); the staging folder is removed. A staging
    folder is locked while it lives, so the ones that processes killed outright left behind are swept here.
    """
    out = check_out_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}."
    runlock.sweep_stale(out.parent, f"{glob.escape(prefix)}*.partial")
    stage, fd = runlock.locked_dir(out.parent, prefix, ".partial")
    try:
        atomic.as_umask_allows(stage, directory=True)
        yield stage
        check_out_dir(out, overwrite)  # another writer may have filled --out meanwhile
        atomic.replace_dir(stage, out)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if exc.filename and Path(exc.filename).is_relative_to(stage):  # name the file the user asked for
            raise OSError(exc.errno, exc.strerror, str(out / Path(exc.filename).relative_to(stage))) from exc
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        runlock.release(fd)


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
