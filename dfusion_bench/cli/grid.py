"""``dfusion grid``: every method x fusion x suite x seed on the embedded model, then the report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dfusion_bench.errors import UserError
from dfusion_bench.rl.config import METHODS


def _csv(text: str, kind: type = str) -> tuple:
    try:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(f"{text!r}: not a comma-separated list of {kind.__name__}") from None


def grid(
    ctx: typer.Context,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    methods: Annotated[str, typer.Option(help="Comma-separated methods.")] = ",".join(METHODS),
    suites: Annotated[
        str, typer.Option(help="Comma-separated suites.")
    ] = "shapes-objects,shapes-binding,shapes-spatial",
    out: Annotated[Path, typer.Option(help="Folder of the runs (and their logs).")] = Path("runs/grid"),
    report: Annotated[Path, typer.Option(help="Report folder.")] = Path("results/report"),
    jobs: Annotated[int, typer.Option(min=1, help="Runs at a time (each uses one CPU thread).")] = 2,
    export: Annotated[Path | None, typer.Option(help="Copy finished runs here; report on the copies.")] = None,
    final_eval: Annotated[
        int,
        typer.Option(
            min=0,
            help="Then evaluate the base model and every final policy with this many fixed seeds per prompt (0: "
            "none); the report pairs them image by image.",
        ),
    ] = 0,
    final_eval_splits: Annotated[
        str, typer.Option(help="Splits of --final-eval: train, test or train,test.")
    ] = "train",
    also: Annotated[list[Path] | None, typer.Option("--with", help="More report inputs (fuse folders).")] = None,
) -> None:
    """Train every method x fusion x suite x seed (resuming unfinished runs), export, evaluate and report.

    Options after ``--`` are passed to every `dfusion train` (e.g. ``-- --exclude-last-steps 0``)."""
    from rich.console import Console

    from dfusion_bench.studies.grid import GridPlan, run_grid

    plan = GridPlan(
        seeds=_csv(seeds, int),
        methods=_csv(methods),
        suites=_csv(suites),
        out=out,
        report=report,
        jobs=jobs,
        export=export,
        final_eval=final_eval,
        final_eval_splits=_csv(final_eval_splits),
        also=tuple(also or ()),
        extra=tuple(ctx.args),
    )
    unknown = [m for m in plan.methods if m not in METHODS] + [
        s for s in plan.final_eval_splits if s not in ("train", "test")
    ]
    if unknown:
        raise UserError(f"unknown method or split {unknown[0]!r}; methods: {', '.join(METHODS)}; splits: train, test")
    if run_grid(plan, Console()):
        raise typer.Exit(1)


CONTEXT = {"allow_extra_args": True, "ignore_unknown_options": True}
