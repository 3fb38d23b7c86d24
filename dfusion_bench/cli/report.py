"""``dfusion report``: curves, tables and an offline HTML page from train, eval and fuse folders."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import typer

Inputs = Annotated[
    list[Path],
    typer.Argument(
        help="Run, eval or fuse folders, or folders holding them (searched two levels down), e.g. runs/.",
        show_default=False,
        metavar="DIR",
    ),
]
ReportOut = Annotated[
    Path, typer.Option("--out", help="Report folder; rebuilt in place (only the report's own files are replaced).")
]
XAxis = Annotated[str, typer.Option("--x", help="Curves' x axis: epoch or samples_seen.")]


def report(inputs: Inputs, out: ReportOut = Path("results/report"), x: XAxis = "epoch") -> None:
    """Build alignment curves, final-alignment and D-Fusion-gain tables, and an offline index.html."""
    from dfusion_bench.report.build import build_report
    from dfusion_bench.report.collect import ReportWarning

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recording:
            warnings.simplefilter("always", ReportWarning)
            try:
                index = build_report(inputs, out, x=x)
            finally:
                caught = list(recording)
    finally:  # skipped input is worth a line even when nothing usable was left (the UserError follows)
        for w in caught:
            if issubclass(w.category, ReportWarning):
                typer.echo(f"warning: {w.message}", err=True)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    typer.echo(f"report: {index}")
