"""Final alignment per configuration (the ``final`` table) and the same pivoted to the paper's layout (``overview``).

Every metric leads with the fully aligned rate, then each fact rate the scorer records (``<fact>_rate``: relation,
object0, object1, count, ...), then the mean score. A configuration's value is the mean over seeds of each run's value
at its last evaluated epoch (``metrics.jsonl``); its 95% interval (``<metric>_low``, ``<metric>_high``) is the
hierarchical percentile bootstrap of :mod:`.bootstrap` over those runs' per-image CSVs: seeds resampled when there are
3 or more, prompts and images always (with 1 or 2 seeds the interval speaks for these runs, not for a new seed), none
where a CSV is missing. The base model (epoch 0) leads each group; runs that share a seed share their base model, and
epoch-0 evaluations identical across seeds (the usual case: same base model, same evaluation seeds) are one
measurement, so they enter its interval once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dfusion_bench.report.bootstrap import EMPTY, N_BOOT, Interval, bootstrap_mean
from dfusion_bench.report.collect import Run, method_label, warn
from dfusion_bench.report.facts import metric_label
from dfusion_bench.report.frames import CONFIG_COLUMNS, metric_columns, metrics_frame
from dfusion_bench.report.images import runs_images
from dfusion_bench.report.table_io import fmt, key_cells
from dfusion_bench.rl.config import METHODS

BASE_LABEL = "base (epoch 0)"
_LEAD = [*CONFIG_COLUMNS, "epoch", "epoch_min", "n_seeds", "seeds", "n_images", "resampled"]


def final_rows(runs: Sequence[Run]) -> pd.DataFrame:
    """Each run's metrics at its last evaluated epoch, one row per run x split."""
    metrics = metrics_frame(runs)
    if metrics.empty:
        return metrics
    last = metrics.groupby(["run", "split"])["epoch"].transform("max")
    return metrics[metrics["epoch"] == last].reset_index(drop=True)


def base_rows(runs: Sequence[Run]) -> pd.DataFrame:
    """The base model's metrics (epoch 0), one row per template x scorer x split x seed (runs sharing a seed share
    their base model and evaluation seeds, so their epoch-0 rows are averaged, not counted twice)."""
    metrics = metrics_frame(runs)
    zero = metrics[metrics["epoch"] == 0]
    if zero.empty:
        return zero
    keys = ["template", "scorer", "split", "seed"]
    return zero.groupby(keys, as_index=False)[metric_columns(zero)].mean()


def base_images(runs: Sequence[Run], split: str) -> pd.DataFrame | None:
    """The epoch-0 images of ``runs`` (one template and scorer), one run per seed, identical evaluations once
    (:func:`~.images.runs_images` with ``distinct``); None when a seed lacks its CSV."""
    first = {run.seed: run for run in reversed(runs)}  # the first run of each seed
    return runs_images([(first[seed], 0) for seed in sorted(first)], split, distinct=True)


def _summarise(group: pd.DataFrame, images: pd.DataFrame | None, metrics: list[str], n_boot: int) -> dict:
    """Mean over the group's seeds and bootstrap interval over ``images`` of each metric."""
    row: dict[str, object] = {
        "n_seeds": int(group["seed"].nunique()),
        "seeds": ",".join(str(s) for s in sorted(group["seed"].unique())),
        "n_images": len(images) if images is not None else 0,
        "resampled": "",
    }
    for metric in metrics:
        values = group[metric].to_numpy(dtype=float) if metric in group else np.array([])
        values = values[np.isfinite(values)]
        band: Interval = bootstrap_mean(images, metric, n_boot=n_boot) if images is not None else EMPTY
        row["resampled"] = row["resampled"] or band.resampled
        row[metric] = float(values.mean()) if values.size else float("nan")
        row[f"{metric}_low"], row[f"{metric}_high"], row[f"{metric}_n"] = band.low, band.high, int(values.size)
    return row


def final_table(runs: Sequence[Run], n_boot: int = N_BOOT) -> pd.DataFrame:
    """Final alignment per template x scorer x split x configuration, base model first (see the module)."""
    finals, bases = final_rows(runs), base_rows(runs)
    metrics = metric_columns(metrics_frame(runs))
    by_path = {str(run.path): run for run in runs}
    rows: list[dict[str, object]] = []
    for (template, scorer, split), group in bases.groupby(["template", "scorer", "split"], sort=True):
        mine = [r for r in runs if (r.template, r.scorer) == (template, scorer)]
        head = {"template": template, "scorer": scorer, "split": split, "model": BASE_LABEL, "method": "base"}
        head |= {"fusion": pd.NA, "epoch": 0, "epoch_min": 0}
        rows.append(head | _summarise(group, base_images(mine, split), metrics, n_boot))
    keys = ["template", "scorer", "split", "method", "fusion"]
    for (template, scorer, split, method, fusion), group in finals.groupby(keys, sort=True):
        epochs = group["epoch"]
        if epochs.nunique() > 1:
            warn(
                f"{template}/{split}: {method_label(method, fusion)} runs end at different epochs "
                f"({', '.join(str(e) for e in sorted(epochs.unique()))}); each run's last epoch is used"
            )
        ends = [(by_path[path], int(epoch)) for path, epoch in zip(group["run"], epochs, strict=True)]
        head = {"template": template, "scorer": scorer, "split": split, "model": method_label(method, fusion)}
        head |= {"method": method, "fusion": bool(fusion), "epoch": int(epochs.max()), "epoch_min": int(epochs.min())}
        rows.append(head | _summarise(group, runs_images(ends, str(split), distinct=True), metrics, n_boot))
    columns = [*_LEAD, *[f"{m}{suffix}" for m in metrics for suffix in ("", "_low", "_high", "_n")]]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    if frame.empty:
        return frame
    frame["fusion"] = frame["fusion"].astype("boolean")
    frame["_order"] = (frame["model"] != BASE_LABEL).astype(int)
    frame = frame.sort_values(["template", "scorer", "split", "_order", "method", "fusion"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


def fmt_interval(value: object, low: object, high: object, digits: int = 3) -> str:
    """``value [low, high]`` (just the value when the interval is missing)."""
    text, lo, hi = fmt(value, digits), fmt(low, digits), fmt(high, digits)
    return f"{text} [{lo}, {hi}]" if text and lo and hi else text


def _epochs(row: pd.Series) -> str:
    lo, hi = int(row["epoch_min"]), int(row["epoch"])
    return str(hi) if lo == hi else f"{lo}–{hi}"


def display_final(frame: pd.DataFrame) -> pd.DataFrame:
    metrics = [c for c in frame.columns if f"{c}_low" in frame.columns]
    rows = []
    for _, r in frame.iterrows():
        cells = {**key_cells(r), "Epoch": _epochs(r), "Seeds (n)": f"{r['seeds']} ({r['n_seeds']})"}
        for metric in metrics:
            cells[f"{metric_label(metric).capitalize()} [95% CI]"] = fmt_interval(
                r[metric], r[f"{metric}_low"], r[f"{metric}_high"]
            )
        rows.append(cells)
    return pd.DataFrame.from_records(rows)


# ---- overview: the final table pivoted -------------------------------------------------------------------------------


def _column_order(frame: pd.DataFrame) -> list[str]:
    """Base first, then each method (in METHODS order, unknown ones after) without and with D-Fusion."""
    rank = {m: i for i, m in enumerate(METHODS)}
    models = frame[["model", "method", "fusion"]].drop_duplicates("model")
    key = models.apply(
        lambda r: (
            r["method"] != "base",
            rank.get(r["method"], len(rank)),
            r["method"],
            r["fusion"] is not pd.NA and bool(r["fusion"]),
        ),
        axis=1,
    )
    return list(models.assign(_key=key).sort_values("_key", kind="stable")["model"])


def overview_table(final: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(numbers, display) of the final table pivoted to one row per template x scorer x split: the numbers hold
    each configuration's aligned rate (column ``<model> aligned``, first) and mean score (``<model>``); the display
    shows ``aligned % (score)`` per configuration."""
    if final.empty:
        return final, final
    keys = ["template", "scorer", "split"]
    order = _column_order(final)
    score = final.pivot(index=keys, columns="model", values="mean_score")[order]
    aligned = final.pivot(index=keys, columns="model", values="aligned_rate")[order]
    numbers = pd.concat([aligned.add_suffix(" aligned"), score], axis=1).reset_index()
    display = score.copy().astype(object)
    for model in order:
        display[model] = [
            (f"{a:.0%} ({fmt(s)})" if pd.notna(a) else fmt(s)) if pd.notna(s) else "–"
            for s, a in zip(score[model], aligned[model], strict=True)
        ]
    display = display.reset_index().rename(columns={"template": "Template", "scorer": "Scorer", "split": "Split"})
    return numbers, display
