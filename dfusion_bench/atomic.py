"""Atomic file writes: a reader sees the old file or the new one, never a half-written one.

Every writer here goes through Python's own file objects, so a full disk, a file-size limit or a read-only place
raises an :class:`OSError` that names the destination (not a library's own error type, nor the temporary file), and
the temporary file is removed. Files get the permissions the umask allows (as ``open`` would give them), and JSON
holds no bare ``NaN``: a non-finite number is written as ``null``.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process's umask, read without changing it where the kernel reports it (Linux 4.7+)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def as_umask_allows(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a file made by :mod:`tempfile` (always 0600 / 0700) the mode ``open`` or ``mkdir`` would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary file beside ``path``, then move it into place.

    An OSError that names the temporary file (or nothing) is raised again naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        writer(Path(tmp))
        as_umask_allows(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if exc.errno is not None and (exc.filename is None or exc.filename == tmp or exc.filename2 == tmp):
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_with(path, lambda p: p.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinity (in dicts, lists and tuples) replaced by None, so that it is valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def json_line(obj: Any) -> str:
    """One line of strict JSON (non-finite numbers as null)."""
    return json.dumps(finite(obj), allow_nan=False, default=str)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(finite(obj), indent=2, allow_nan=False, default=str) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk (a JSON-lines log survives a crash up to its last full line)."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line.rstrip("\n") + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def append_json(path: str | os.PathLike, row: Any) -> None:
    """Append ``row`` to a JSON-lines file as one line of strict JSON."""
    append_line(path, json_line(row))


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """A safetensors file's bytes, equal for equal tensors and metadata.

    The library writes the metadata from a hash map, in an order that changes from process to process, so two runs
    with equal tensors would give different bytes. The header is re-encoded with the metadata keys sorted: the same
    keys and values in another order, so it keeps its length (and the data its offsets).
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    if not metadata:
        return data
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > size:  # cannot happen with the library's compact encoding; keep its bytes rather than break them
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size :]


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as a safetensors file, atomically and byte-for-byte reproducibly."""
    return write_bytes(path, safetensors_bytes(tensors, metadata))


def write_torch(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically. Serialised in memory first: torch's own file writer turns a full disk into a
    RuntimeError that no longer says what failed."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_bytes(path, buffer.getvalue())


def replace_dir(staged: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Move a fully written folder into place. An old ``dest`` is renamed aside first and removed only after the new
    one is in place, so a crash never loses both: at worst the old folder survives under a ``.old`` name."""
    staged, dest = Path(staged), Path(dest)
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        old.rmdir()
        dest.rename(old)
    staged.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest
