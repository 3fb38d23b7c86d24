"""``dfusion regression``: fuse + DPO with and without fusion on a short fixed protocol; fails on a regression."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def _run_command(args: list[str]) -> None:
    """Run one ``dfusion`` command in this process; a failure stops the check with the command that failed."""
    from dfusion_bench.cli import main

    try:
        main(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise SystemExit(f"regression: `dfusion {' '.join(args)}` failed with exit code {exc.code}") from None


def regression(
    out: Annotated[Path, typer.Option(help="Working folder: the fuse folder, both runs and regression.json.")] = Path(
        "results/regression"
    ),
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N. Default: accelerate's choice.")] = None,
) -> None:
    """With DFUSION_SD_MODEL and DFUSION_CLIP_CHECKPOINT set: SD + CLIPScore (a GPU runner); without: the embedded
    model and its verifier on CPU. Compares with the committed baseline; exit 1 on a regression."""
    from dfusion_bench.studies.regression import run_regression

    result = run_regression(out, device, _run_command)
    typer.echo(json.dumps(result, indent=2))
    if result["failures"]:
        typer.echo("REGRESSION FAILED: " + "; ".join(result["failures"]))
        raise typer.Exit(1)
    typer.echo("regression passed")
