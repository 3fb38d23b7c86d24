"""``dfusion report``: alignment curves, tables and an offline HTML page from train, eval and fuse folders.

Modules, one job each: :mod:`.collect` reads the folders, :mod:`.stats` holds the statistics, :mod:`.tables` builds
and writes the tables, :mod:`.curves` draws the figures, :mod:`.html` renders ``index.html``, and :mod:`.build`
orchestrates them. Import cost is kept low: matplotlib is only imported by :func:`build_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def build_report(
    inputs: Sequence[str | Path], out: str | Path = "results/report", *, x: str = "epoch", max_triples: int = 6
) -> Path:
    """Build the report of ``inputs`` in ``out`` and return the path of its ``index.html`` (see :mod:`.build`).

    ``inputs``: run, eval and fuse folders, or folders holding them; ``x``: the curves' x axis (``epoch`` or
    ``samples_seen``); ``max_triples``: D-Fusion triple images shown per fuse folder.
    """
    from dfusion_bench.report.build import build_report as build

    return build(inputs, out, x=x, max_triples=max_triples)


def load_report_tables(out: str | Path) -> dict[str, pd.DataFrame]:
    """Every table of a built report as a DataFrame, keyed by name (``final``, ``fusion_gain``, ...)."""
    from dfusion_bench.report.table_io import load_report_tables as load

    return load(out)


__all__ = ["build_report", "load_report_tables"]
