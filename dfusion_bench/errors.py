"""The exceptions that reach users as a single line, and the exit code each one ends with.

* :class:`UserError` — bad input or a bad environment that the user can fix, found before (or instead of) the work:
  exit code 2, like a usage error.
* :class:`WriteFailed` — the environment failed the work while it ran (disk full, file-size limit, a read-only
  place): exit code 1. Built from the :class:`OSError` by :func:`write_failure`.
* :class:`Interrupted` — Ctrl-C (SIGINT): exit code 130, with where the work stopped and how to go on.

Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class UserError(Exception):
    """Bad input the user can fix. The message names the problem and the fix."""

    exit_code = EXIT_USAGE


class WriteFailed(Exception):
    """Writing failed for a reason outside the program; the message names the path and the fix."""

    exit_code = EXIT_FAILED


class Interrupted(Exception):
    """A Ctrl-C, reported as "interrupted …; <what was kept and how to go on>".

    Raised only at a command's outermost level, where the state of its output is known, never inside library code:
    a KeyboardInterrupt travels up untouched by ``except Exception`` clauses and becomes this at the top.
    """

    exit_code = EXIT_INTERRUPTED


#: Write errors the user can fix, and how.
_WRITE_FIXES = {
    errno.ENOSPC: "free some space or choose another --out",
    errno.EDQUOT: "free some space (disk quota) or choose another --out",
    errno.EFBIG: "raise the file-size limit (ulimit -f) or choose another --out",
    errno.EROFS: "choose a folder on a writable file system",
    errno.EACCES: "choose a folder you may write to",
    errno.EPERM: "choose a folder you may write to",
}


def write_failure(exc: OSError, after: str = "") -> WriteFailed | None:
    """The one-line :class:`WriteFailed` for a write error the user can fix (``after`` adds what was kept and how
    to go on), or None for any other OSError (a bug, or nothing the user can do: the traceback stays)."""
    fix = _WRITE_FIXES.get(exc.errno)
    if fix is None:
        return None
    path = exc.filename or exc.filename2
    where = f"cannot write {path}" if path else "a write failed"
    reason = exc.strerror or errno.errorcode.get(exc.errno, str(exc.errno))
    tail = f"; {after}" if after else ""
    return WriteFailed(f"{where}: {reason}; {fix}{tail}")
