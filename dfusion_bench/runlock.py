"""One writer per folder: an exclusive ``flock`` on ``run.lock`` inside a run folder, and on staging folders.

The kernel releases a ``flock`` when its process dies, however it dies, so a lock can never outlive its holder: a
``run.lock`` that still names a process but can be locked was left by a process that died (a stale lock), and is
taken over. The lock file is never replaced while held (the lock belongs to its inode); it is emptied on a clean
release, so a non-empty one that can be locked is recognised as stale. Under ``accelerate launch`` only the main
process takes the lock; every process learns the outcome through one collective call, so a refused start stops all
of them and none waits forever.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dfusion_bench.errors import UserError

LOCK_NAME = "run.lock"


def try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive lock on ``path`` (a file, created if need be, or a folder), or None
    when another process holds it."""
    path = Path(path)
    flags = os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT
    fd = os.open(path, flags, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open at ``fd`` (a releasing holder may have removed it meanwhile)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _holder(fd: int) -> dict[str, Any] | None:
    """What the lock file says about the process that last held it, or None when it is empty or unreadable."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        info = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    return f"process {info.get('pid', '?')} on {info.get('host', '?')} (since {info.get('started', '?')})"


def _write_holder(fd: int) -> None:
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
    }
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def acquire(folder: Path) -> tuple[int, bool]:
    """Lock ``folder`` (created if need be) for this process; return (descriptor, whether we created the folder).

    A folder held by a live process is a :class:`UserError` naming the holder; a stale lock is taken over with a
    warning.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(
                f"{folder} is in use by {_describe(holder)}; wait for it to finish or stop it, or choose another --out"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the previous holder removed the lock file as we opened it: lock the new one
    stale = _holder(fd)
    if stale:
        print(f"warning: {path}: {_describe(stale)} ended without releasing it; taken over", file=sys.stderr)
    _write_holder(fd)
    return fd, created


def discard(folder: Path) -> None:
    """Remove what a run wrote into ``folder``, keeping only the lock (the folder goes on release if we made it)."""
    for child in Path(folder).iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def free(folder: Path, fd: int, created: bool) -> None:
    """Release the lock; a folder we created that holds nothing but the lock is removed with it."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        only_lock = [p.name for p in folder.iterdir()] == [LOCK_NAME]
    except OSError:
        only_lock = False
    if created and only_lock:
        path.unlink(missing_ok=True)  # waiters notice the file is gone (see acquire) and start over
        try:
            folder.rmdir()
        except OSError:
            pass
    else:
        os.ftruncate(fd, 0)  # a clean release: an empty lock file names no holder
    release(fd)


@contextmanager
def hold(folder: Path, dist: Any = None, check: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold ``folder``'s lock for the block; yields whether this process created the folder.

    ``check`` runs once the lock is held (what must hold before the first write; it raises :class:`UserError`).
    ``dist`` (a :class:`~dfusion_bench.distributed.Distributor`): only its main process locks and checks; all
    processes learn the outcome before any of them goes on, so a refusal stops every one of them.
    """
    is_main = dist is None or dist.is_main
    fd, created, refusal = None, False, None
    if is_main:
        try:
            fd, created = acquire(folder)
            if check is not None:
                check()
        except UserError as exc:
            refusal = str(exc)
        except BaseException:
            if fd is not None:
                free(folder, fd, created)
            raise
    if dist is not None and dist.world > 1:
        refusal = next((r for r in dist.gather([refusal]) if r), None)
    if refusal:
        if fd is not None:
            free(folder, fd, created)
        raise UserError(refusal)
    try:
        yield created
    finally:
        if fd is not None:
            free(folder, fd, created)


def locked_dir(parent: Path, prefix: str, suffix: str) -> tuple[Path, int]:
    """A new folder in ``parent`` (as :func:`tempfile.mkdtemp` names it) and a descriptor holding its lock, taken
    before anyone could mistake it for stale: one removed by :func:`sweep_stale` before we locked it is made again."""
    while True:
        path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
        try:
            fd = try_lock(path)
        except FileNotFoundError:
            continue
        if fd is not None and _same_file(fd, path):
            return path, fd
        if fd is not None:
            release(fd)


def sweep_stale(parent: Path, pattern: str) -> list[Path]:
    """Remove the staging folders matching ``pattern`` in ``parent`` that no live process holds; return them.

    A staging folder is locked by the process writing it (:func:`try_lock` on the folder) for as long as it lives,
    so one that can be locked was left by a process that died.
    """
    removed = []
    try:
        candidates = sorted(Path(parent).glob(pattern))
    except OSError:
        return removed
    for path in candidates:
        if not path.is_dir() or path.is_symlink():
            continue
        try:
            fd = try_lock(path)
        except OSError:
            continue
        if fd is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            release(fd)
    return removed


def sweep_held(folder: Path) -> None:
    """Remove what writers killed outright left in a folder we hold the lock of: staging folders (``.*.partial``)
    and temporary files (``.*.tmp``) anywhere below it. Holding the lock, no one else can be writing them."""
    for path in sorted(Path(folder).rglob(".*"), key=lambda p: len(p.parts)):
        if path.name.endswith(".partial") and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.endswith(".tmp") and path.is_file():
            path.unlink(missing_ok=True)
