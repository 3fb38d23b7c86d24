"""The ``dfusion`` command line: one Typer app, one module per command group."""

from __future__ import annotations

import sys

import typer

from dfusion_bench.errors import UserError

app = typer.Typer(
    name="dfusion",
    help="Prompt-image alignment benchmarks for diffusion models: D-Fusion pairs, RL fine-tuning, evaluation, reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    """Attach every command group once (their modules import heavy libraries only inside commands)."""
    from dfusion_bench.cli import eval as eval_cli
    from dfusion_bench.cli import fuse, grid, model, regression, report, templates, train, world

    app.command(name="fuse")(fuse.fuse)
    app.command(name="train")(train.train)
    app.command(name="eval")(eval_cli.eval_command)
    app.command(name="report")(report.report)
    app.command(name="grid", context_settings=grid.CONTEXT)(grid.grid)
    app.command(name="regression")(regression.regression)
    app.add_typer(model.app, name="model")
    app.add_typer(templates.app, name="templates")
    app.add_typer(world.app, name="world")


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a :class:`UserError` becomes one line on stderr and exit code 2."""
    from dfusion_bench.runinfo import record_command_line

    record_command_line(sys.argv if argv is None else ["dfusion", *argv])
    try:
        app(args=argv, standalone_mode=False)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        raise
    except Exception as exc:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("aborted", file=sys.stderr)
            sys.exit(130)
        raise
