"""``dfusion report``: alignment curves, tables and an offline HTML page from train, eval and fuse folders.

Modules, one job each: :mod:`.collect` reads the folders, :mod:`.images` a run's per-image CSVs, :mod:`.bootstrap` the
hierarchical bootstrap (seeds, prompts, images) behind every interval over runs, :mod:`.stats` the paired tests,
:mod:`.final`, :mod:`.summary`, :mod:`.rise`, :mod:`.fusion_vs_plain` and :mod:`.tables` build the tables,
:mod:`.curves` draws the figures, :mod:`.html` renders ``index.html``, and :mod:`.build` orchestrates them. The fully
aligned rate and each fact rate lead; the mean score comes second. Import cost is kept low: matplotlib is only
imported by :func:`build_report`.
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


def rise_summary(runs: Sequence[object], n_boot: int = 2000) -> pd.DataFrame:
    """Per run and split, the fully aligned rate before (epoch 0) and after (last evaluated epoch) training, the rise
    and its paired bootstrap interval: columns ``method, fusion, suite, seed, split, aligned_before, aligned_after,
    rise, ci_low, ci_high`` (the report's ``tables/summary.csv``; see :mod:`.summary`). ``runs``: run folders (or
    folders holding them) or :class:`~.collect.Run` objects."""
    from dfusion_bench.report.summary import rise_summary as summary

    return summary(runs, n_boot=n_boot)  # type: ignore[arg-type]


__all__ = ["build_report", "load_report_tables", "rise_summary"]
