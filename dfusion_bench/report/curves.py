"""Alignment curves: mean score (and aligned rate) against epoch or samples seen, one line per method x fusion.

One figure per template x scorer x split x metric, written as PNG and SVG. The line is the mean over seeds, the band
its 95% t-interval (drawn only where at least two seeds reached that epoch). Figures are drawn on matplotlib's Agg
canvas directly, so building a report never touches pyplot's global state or needs a display.
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
from dfusion_bench.report import stats
from dfusion_bench.report.collect import Run
from dfusion_bench.report.frames import METRIC_NAMES, METRICS, metrics_frame

CURVES_DIR = "curves"
X_AXES = {"epoch": "epoch", "samples_seen": "samples seen"}
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")
_CURVE_COLUMNS = ["template", "scorer", "split", "model", "method", "fusion", "metric", "epoch", "samples_seen"]


@dataclass(frozen=True)
class CurveFile:
    """One written figure: what it shows and its PNG/SVG paths relative to the report folder."""

    template: str
    scorer: str
    split: str
    metric: str
    png: str
    svg: str


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (letters, digits, ``-``, ``_``, ``.``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned or "x"


def curve_points(runs: Sequence[Run]) -> pd.DataFrame:
    """Mean, 95% CI half-width and seed count per template x scorer x split x configuration x metric x epoch."""
    metrics = metrics_frame(runs)
    rows = []
    keys = ["template", "scorer", "split", "label", "method", "fusion", "epoch"]
    for (template, scorer, split, label, method, fusion, epoch), group in metrics.groupby(keys, sort=True):
        for metric in METRICS:
            ci = stats.mean_ci(group[metric].to_numpy(dtype=float))
            if ci.n == 0:
                continue
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
                    "mean": ci.mean,
                    "ci95": ci.half_width,
                    "n": ci.n,
                }
            )
    return pd.DataFrame.from_records(rows, columns=[*_CURVE_COLUMNS, "mean", "ci95", "n"])


def _colors(points: pd.DataFrame) -> dict[str, str]:
    methods = sorted(points["method"].unique()) if not points.empty else []
    return {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(methods)}


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
        half = line["ci95"].to_numpy(dtype=float)
        color = colors.get(method, _PALETTE[0])
        style = "-" if fusion else "--"
        ax.plot(xs, mean, style, color=color, marker="o", markersize=3, linewidth=1.6, label=line["model"].iloc[0])
        if np.isfinite(half).any():
            ax.fill_between(xs, mean - half, mean + half, color=color, alpha=0.18, linewidth=0)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(X_AXES[x])
    ax.set_ylabel(METRIC_NAMES.get(metric, metric))
    if x == "epoch":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if metric == "aligned_rate":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
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
        files.append(CurveFile(template, scorer, split, metric, f"{CURVES_DIR}/{png.name}", f"{CURVES_DIR}/{svg.name}"))
    return files
