"""Helpers for tests that run the installed ``dfusion`` entry point, and that need places they cannot write to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def dfusion_command() -> list[str]:
    """The installed console script (the one beside this interpreter, else the one on PATH); ``python -m
    dfusion_bench`` only where no script is installed."""
    beside = Path(sys.executable).with_name("dfusion")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("dfusion")
    return [found] if found else [sys.executable, "-m", "dfusion_bench"]


def entry_env(**extra: str) -> dict[str, str]:
    """The test's environment for a child: one torch thread, no hub access."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def run_dfusion(argv: list[str], timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*dfusion_command(), *argv], capture_output=True, text=True, timeout=timeout, env=entry_env(), **kwargs
    )


def _writable(folder: Path) -> bool:
    probe = folder / ".probe"
    try:
        probe.write_text("x")
    except OSError:
        return False
    probe.unlink()
    return True


def make_read_only(folder: Path) -> Callable[[], None] | None:
    """Make ``folder`` unwritable for this user and return how to undo it, or None where that is impossible here.

    A plain user: chmod. Root ignores permissions, so there the folder is made immutable (``chattr +i``), which
    binds root too (and needs CAP_LINUX_IMMUTABLE).
    """
    if os.geteuid() != 0:
        folder.chmod(0o555)

        def undo() -> None:
            folder.chmod(0o755)

    else:
        if shutil.which("chattr") is None:
            return None
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            return None

        def undo() -> None:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)

    if _writable(folder):
        undo()
        return None
    return undo
