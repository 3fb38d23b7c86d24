"""The ``dfusion`` command line: one Typer app, one module per command group, one error boundary
(:mod:`dfusion_bench.cli.boundary`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from dfusion_bench.cli.boundary import guard, option, run, staged_note
from dfusion_bench.errors import UserError

app = typer.Typer(
    name="dfusion",
    help="Prompt-image alignment benchmarks for diffusion models: D-Fusion pairs, RL fine-tuning, evaluation, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _report_note(params: dict[str, Any]) -> str:
    return f"the report in {option(params, 'out')} may be incomplete; run dfusion report again"


def _pretrain_note(params: dict[str, Any]) -> str:
    out = shlex.quote(str(option(params, "out")))
    return f"continue from the last checkpoint with: dfusion world pretrain --out {out} --resume"


def _grid_note(params: dict[str, Any]) -> str:
    return f"finished runs in {option(params, 'out')} are kept; run the same dfusion grid again to resume the rest"


def _regression_note(params: dict[str, Any]) -> str:
    return f"{option(params, 'out')} may hold part of the check; run dfusion regression again"


def _train_note(params: dict[str, Any]) -> str:
    """Before training starts, or after it ended (while the report is built); in between, training says itself."""
    from dfusion_bench.rl import checkpoint
    from dfusion_bench.rl.config import run_name

    out = option(params, "out")
    if out is None:  # the default folder, as train names it
        template = Path(str(option(params, "template"))).stem
        out = Path("runs") / run_name(
            option(params, "method"), option(params, "fusion"), template, option(params, "seed")
        )
    try:
        latest = checkpoint.latest_epoch(Path(out))
    except UserError:
        latest = None
    return f"nothing was written to --out {out}" if latest is None else checkpoint.resume_hint(Path(out), latest)


#: What an interrupt leaves of each command's output (commands not listed stage theirs, or write none).
NOTES = {
    "train": _train_note,
    "report": _report_note,
    "world pretrain": _pretrain_note,
    "grid": _grid_note,
    "regression": _regression_note,
}


def _guarded(name: str, callback):
    return guard(callback, NOTES.get(name, staged_note))


def _register() -> None:
    """Attach every command group once (their modules import heavy libraries only inside commands); every command
    is guarded so that Ctrl-C says what became of its output."""
    from dfusion_bench.cli import eval as eval_cli
    from dfusion_bench.cli import fuse, grid, model, regression, report, templates, train, world

    app.command(name="fuse")(_guarded("fuse", fuse.fuse))
    app.command(name="train")(_guarded("train", train.train))
    app.command(name="eval")(_guarded("eval", eval_cli.eval_command))
    app.command(name="report")(_guarded("report", report.report))
    app.command(name="grid", context_settings=grid.CONTEXT)(_guarded("grid", grid.grid))
    app.command(name="regression")(_guarded("regression", regression.regression))
    for name, group in (("model", model.app), ("templates", templates.app), ("world", world.app)):
        for info in group.registered_commands:
            command = info.name or info.callback.__name__.replace("_", "-")
            info.callback = _guarded(f"{name} {command}", info.callback)
        app.add_typer(group, name=name)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Returns on success; otherwise exits with the code the error boundary chose, after one
    line on stderr (2: usage error or bad input, 1: a write the environment refused, 130: Ctrl-C)."""
    from dfusion_bench.runinfo import record_command_line

    record_command_line(sys.argv if argv is None else ["dfusion", *argv])
    code = run(app, argv)
    if code:
        sys.exit(code)
