"""Alignment curves against epoch or samples seen, one line per method x fusion: the fully aligned rate first, then
each fact rate the scorer records (relation, object0, object1, count, ...), then the mean score.

One figure per template x scorer x split x metric, written as PNG and SVG. The line is the mean over seeds of each
run's value (``metrics.jsonl``). The band is the 95% hierarchical percentile bootstrap of :mod:`.bootstrap` over the
per-image CSVs of every seed at that epoch: seeds resampled when there are 3 or more, prompts and images always. With
one or two seeds the band still covers prompts and images (the evaluation's sampling error) but says nothing of
seed-to-seed spread; the legend gives each line's seeds and evaluation points. Where a seed's CSV is missing at an
epoch there is no band there (never a t-interval from two seeds); seeds whose evaluations are the same images (at
epoch 0 every seed renders the same base model) enter the band once. A run with fewer than 6 evaluation points costs a
:class:`~.collect.ReportWarning`. Figures are drawn on matplotlib's Agg canvas directly, so building a report never
touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dfusion_bench import atomic
from dfusion_bench.report.bootstrap import EMPTY, N_BOOT, bootstrap_mean
from dfusion_bench.report.collect import Run, warn
from dfusion_bench.report.facts import SCORE, metric_label
from dfusion_bench.report.frames import MIN_POINTS, eval_points, metric_columns, metrics_frame
from dfusion_bench.report.images import runs_images

CURVES_DIR = "curves"
X_AXES = {"epoch": "epoch", "samples_seen": "samples seen"}
BAND = "band: 95% bootstrap over prompts and images (and seeds, when 3 or more)"
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_CURVE_COLUMNS = ["template", "scorer", "split", "model", "method", "fusion", "metric", "epoch", "samples_seen"]
_POINT_COLUMNS = [*_CURVE_COLUMNS, "mean", "low", "high", "n", "n_images", "resampled", "points"]


@dataclass(frozen=True)
class CurveFile:
    """One written figure: what it shows, its PNG/SVG paths relative to the report folder, and a caption note."""

    template: str
    scorer: str
    split: str
    metric: str
    png: str
    svg: str
    note: str = ""


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``-``, ``_``, ``.``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned or "x"


def warn_few_points(runs: Sequence[Run], minimum: int = MIN_POINTS) -> list[tuple[Run, int]]:
    """The runs evaluated at fewer than ``minimum`` epochs (with their counts), reported in one warning."""
    short = [(run, n) for run in runs if (n := eval_points(run)) < minimum]
    if short:
        listed = ", ".join(f"{run.path.name} ({n})" for run, n in short[:6]) + (", ..." if len(short) > 6 else "")
        warn(
            f"{len(short)} of {len(runs)} runs have fewer than {minimum} evaluation points, too few for a curve "
            f"(evaluate more often: --eval-every): {listed}"
        )
    return short


def curve_points(runs: Sequence[Run], n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per template x scorer x split x configuration x metric x epoch: the mean over seeds (``n``), the bootstrap
    band (``low``, ``high``; NaN where a seed's per-image CSV is missing) over ``n_images`` images, the levels it
    resampled, and the fewest evaluation points of the configuration's runs (``points``)."""
    warn_few_points(runs)
    metrics = metrics_frame(runs)
    by_path = {str(run.path): run for run in runs}
    points = {str(run.path): eval_points(run) for run in runs}
    names = metric_columns(metrics)
    rows = []
    keys = ["template", "scorer", "split", "label", "method", "fusion", "epoch"]
    for (template, scorer, split, label, method, fusion, epoch), group in metrics.groupby(keys, sort=True):
        images = runs_images([(by_path[path], int(epoch)) for path in group["run"]], str(split), distinct=True)
        for metric in names:
            values = group[metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                continue
            band = bootstrap_mean(images, metric, n_boot=n_boot) if images is not None else EMPTY
            rows.append(
                {
                    "template": template,
                    "scorer": scorer,
                    "split": split,
                    "model": label,
                    "method": method,
                    "fusion": bool(fusion),
                    "metric": metric,
                    "epoch": int(epoch),
                    "samples_seen": float(group["samples_seen"].mean()),
                    "mean": float(values.mean()),
                    "low": band.low,
                    "high": band.high,
                    "n": int(values.size),
                    "n_images": band.n_images,
                    "resampled": band.resampled,
                    "points": min(points[path] for path in group["run"]),
                }
            )
    return pd.DataFrame.from_records(rows, columns=_POINT_COLUMNS)


def _colors(points: pd.DataFrame) -> dict[str, str]:
    methods = sorted(points["method"].unique()) if not points.empty else []
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}


def _label(line: pd.DataFrame) -> str:
    """``dpo + D-Fusion (2 seeds, 7 points)``: a line's name, seeds and evaluation points (the fewest of its runs)."""
    seeds, points = int(line["n"].max()), int(line["points"].min()) if "points" in line else len(line)
    return f"{line['model'].iloc[0]} ({seeds} seed{'s' * (seeds != 1)}, {points} points)"


def plot_curve(points: pd.DataFrame, title: str, metric: str, x: str = "epoch", colors: dict[str, str] | None = None):
    """A figure of one template x scorer x split x metric's points (rows of :func:`curve_points`)."""
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(X_AXES)}, not {x!r}")
    colors = colors or _colors(points)
    fig = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for (method, fusion), line in points.groupby(["method", "fusion"], sort=True):
        line = line.sort_values("epoch")
        xs = line[x].to_numpy(dtype=float)
        mean = line["mean"].to_numpy(dtype=float)
        low, high = line["low"].to_numpy(dtype=float), line["high"].to_numpy(dtype=float)
        color = colors.get(method, _PALETTE[0])
        style = "-" if fusion else "--"
        ax.plot(xs, mean, style, color=color, marker="o", markersize=3, linewidth=1.6, label=_label(line))
        banded = np.isfinite(low) & np.isfinite(high)
        if banded.any():
            ax.fill_between(xs, low, high, color=color, alpha=0.18, linewidth=0)
            alone = banded & ~np.r_[False, banded[:-1]] & ~np.r_[banded[1:], False]  # no banded neighbour
            if alone.any():  # a band of one point has no width: draw it as a bar
                ax.vlines(xs[alone], low[alone], high[alone], color=color, alpha=0.45, linewidth=3)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(metric_label(metric))
    if x == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric != SCORE:  # a rate
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, title=BAND, title_fontsize=7)
    return fig


def save_figure(fig: Figure, stem: Path) -> tuple[Path, Path]:
    """Write ``stem.png`` and ``stem.svg`` atomically, without timestamps (same data, same bytes)."""
    png = atomic.write_with(
        stem.with_suffix(".png"), lambda p: fig.savefig(p, format="png", metadata={"Software": None})
    )
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "dfusion-report"}):
        svg = atomic.write_with(
            stem.with_suffix(".svg"), lambda p: fig.savefig(p, format="svg", metadata={"Date": None})
        )
    return png, svg


def write_curves(points: pd.DataFrame, out: Path, x: str = "epoch") -> list[CurveFile]:
    """Every curve figure under ``out/curves``; names ``<template>[_<scorer>]_<split>_<metric>[_by_samples]``."""
    files: list[CurveFile] = []
    if points.empty:
        return files
    colors = _colors(points)
    scorers_per_template = points.groupby("template")["scorer"].nunique()
    for (template, scorer, split, metric), group in points.groupby(["template", "scorer", "split", "metric"]):
        if not np.isfinite(group["mean"].to_numpy(dtype=float)).any():
            continue
        name = slug(template) + (f"_{slug(scorer)}" if scorers_per_template[template] > 1 else "")
        name += f"_{split}_{metric}" + ("_by_samples" if x == "samples_seen" else "")
        title = f"{template}: {split} prompts ({scorer})"
        fig = plot_curve(group, title, metric, x=x, colors=colors)
        png, svg = save_figure(fig, out / CURVES_DIR / name)
        lo, hi = int(group["points"].min()), int(group["points"].max())
        note = f"{lo if lo == hi else f'{lo}–{hi}'} evaluation points per run"
        paths = f"{CURVES_DIR}/{png.name}", f"{CURVES_DIR}/{svg.name}"
        files.append(CurveFile(template, scorer, split, metric, *paths, note=note))
    return files
