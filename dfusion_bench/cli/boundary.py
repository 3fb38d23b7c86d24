"""The command line's error boundary: whatever goes wrong that the user can act on ends as one line on stderr.

* usage errors (unknown flag or command, a missing option, a value of the wrong type or out of its range) — exit 2;
* :class:`~dfusion_bench.errors.UserError` (bad input found by a command) — exit 2;
* a write the environment refused (disk full, file-size limit, read-only place) — exit 1;
* Ctrl-C — exit 130, "interrupted …" with what was kept and how to go on.

Usage errors are recognised by what they are, not by their class: typer up to 0.15 raises the ``click`` package's
exceptions, typer 0.16+ its own copy of click (``typer._click``), whose classes are unrelated to click's. Both
carry ``format_message()``, ``exit_code`` and ``ctx``, and are named ``UsageError``, ``BadParameter``, … down their
class hierarchy. The same holds for the ``Abort`` that old typer raised on Ctrl-C (new typer returns 130 instead).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

from dfusion_bench import errors
from dfusion_bench.errors import Interrupted, UserError, WriteFailed

PROG = "dfusion"


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def is_click_error(exc: BaseException) -> bool:
    """A click (or typer-click) exception meant for the user: a usage error or another ``ClickException``."""
    return "ClickException" in _class_names(exc) and callable(getattr(exc, "format_message", None))


def is_abort(exc: BaseException) -> bool:
    return "Abort" in _class_names(exc)


def _caused_by_interrupt(exc: BaseException) -> bool:
    seen = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def _given_value(argv: Sequence[str], opts: Sequence[str]) -> str | None:
    """The value given on the command line for an option spelled any of ``opts`` (the last one given), or None."""
    value = None
    for i, arg in enumerate(argv):
        for opt in opts:
            if arg == opt and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith(opt + "="):
                value = arg[len(opt) + 1 :]
    return value


def command_path(group: Any, argv: Sequence[str]) -> str:
    """``dfusion world study``: the commands named at the start of ``argv``, found in the click ``group``."""
    path, command = [PROG], group
    for arg in argv:
        sub = getattr(command, "commands", {}).get(arg) if not arg.startswith("-") else None
        if sub is None:
            break
        path.append(arg)
        command = sub
    return " ".join(path)


def usage_line(exc: BaseException, argv: Sequence[str], group: Any = None) -> str:
    """``error: <click's message> [(got VALUE)] (see: dfusion CMD --help)`` on one line.

    Click prints "Usage: …", "Try … for help." and "Error: …" on three lines; this keeps the error, the value the
    user gave when click's message does not show it (typer 0.16+'s range messages do not), and where help is
    (from the error's context, or else from ``argv`` and the click ``group``).
    """
    message = one_line(exc.format_message())
    param = getattr(exc, "param", None)
    opts = [o for o in getattr(param, "opts", []) or [] if o.startswith("-")]
    given = _given_value(argv, opts) if opts else None
    if given is not None and given not in message:
        message = f"{message} (got {given!r})"
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or command_path(group, argv)
    return f"error: {message} (see: {command} --help)"


def guard(callback: Callable[..., Any], note: Callable[[dict[str, Any]], str]) -> Callable[..., Any]:
    """``callback`` with a Ctrl-C that escapes it turned into :class:`Interrupted`, whose message is
    ``interrupted; <note(its arguments)>``.

    Done at the command, before typer sees the KeyboardInterrupt (which old typer turns into ``Abort`` and new
    typer into a bare return code 130), so the message can say what became of the command's output.
    """

    @functools.wraps(callback)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt:
            try:
                told = f"interrupted; {note(kwargs)}"
            except Exception:  # the note reads the output folder; it must not turn an interrupt into a traceback
                told = "interrupted"
            raise Interrupted(told) from None

    return guarded


def option(params: dict[str, Any], name: str) -> Any:
    """A command's parsed option by its name, whether the command names it ``out`` or, derived from a section of
    its configuration, ``run__out`` (:mod:`dfusion_bench.cli.derive`)."""
    keys = [k for k in params if k == name or k.endswith(f"__{name}")]
    return params[min(keys, key=lambda k: k.count("__"))] if keys else None  # the outermost: config__seed


def staged_note(params: dict[str, Any]) -> str:
    """For commands that stage their output beside ``--out`` and move it into place only when complete."""
    out = option(params, "out")
    return f"nothing was written to --out {out}" if out is not None else "nothing was written"


def _click_group(app: Any) -> Any:
    """The click command behind a typer app (None if this typer cannot say)."""
    try:
        import typer.main

        return typer.main.get_command(app)
    except Exception:
        return None


def _error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(app: Callable[..., Any], argv: list[str] | None) -> int:
    """Run the typer ``app`` on ``argv`` (default: ``sys.argv[1:]``); return the exit code, having printed at most
    one line on stderr for an error. Anything not listed in the module docstring is a bug and keeps its
    traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, prog_name=PROG, standalone_mode=False)
    except (UserError, WriteFailed, Interrupted) as exc:
        _error(f"error: {one_line(str(exc))}" if not isinstance(exc, Interrupted) else one_line(str(exc)))
        return exc.exit_code
    except KeyboardInterrupt:  # outside any command (old typer converts it to Abort; this is a fallback)
        _error("interrupted; nothing was written")
        return errors.EXIT_INTERRUPTED
    except OSError as exc:
        failure = errors.write_failure(exc)
        if failure is None:
            raise
        _error(f"error: {failure}")
        return errors.EXIT_FAILED
    except Exception as exc:
        if "NoArgsIsHelpError" in _class_names(exc):  # a bare `dfusion` or `dfusion world`: the help is the answer
            exc.show()
            return int(getattr(exc, "exit_code", errors.EXIT_USAGE))
        if is_click_error(exc):
            _error(usage_line(exc, args, _click_group(app)))
            return int(getattr(exc, "exit_code", errors.EXIT_USAGE))
        if is_abort(exc):
            if _caused_by_interrupt(exc):
                _error("interrupted; nothing was written")
                return errors.EXIT_INTERRUPTED
            _error("error: aborted")
            return errors.EXIT_FAILED
        raise
    if code == errors.EXIT_INTERRUPTED:  # typer 0.16+: a Ctrl-C that no command turned into Interrupted
        _error("interrupted; nothing was written")
    return code if isinstance(code, int) else 0
