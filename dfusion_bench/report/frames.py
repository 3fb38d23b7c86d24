"""Runs as long DataFrames: every metric row with its run's identity, one row per run, per-prompt means."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dfusion_bench.report import stats
from dfusion_bench.report.collect import SPLITS, Run, warn
from dfusion_bench.report.facts import ALIGNED, SCORE, fact_metric, is_fact_metric, metric_label, order_metrics
from dfusion_bench.report.images import image_frame

RUN_KEYS = ["template", "scorer", "method", "fusion", "label", "seed"]
#: The leading columns of every per-configuration table (final, rise, paired): where, scored how, and which model.
CONFIG_COLUMNS = ["template", "scorer", "split", "model", "method", "fusion"]
METRICS = (ALIGNED, SCORE)  # every run has these two; fact rates (``<fact>_rate``) come with the data
METRIC_NAMES = {ALIGNED: metric_label(ALIGNED), SCORE: metric_label(SCORE)}
MIN_POINTS = 6  # evaluation points a run needs for its curve to show a trend


def _fact_rates(run: Run) -> pd.DataFrame:
    """Per metrics row of ``run``: one ``<fact>_rate`` column per fact, from ``metrics.jsonl``'s ``facts`` where the
    line records them, else from that epoch's per-image CSV (runs from before facts were logged)."""
    rows = []
    for epoch, split, facts in zip(run.metrics["epoch"], run.metrics["split"], run.metrics["facts"], strict=True):
        if isinstance(facts, dict) and facts:
            rates = {fact_metric(k): v for k, v in facts.items() if isinstance(v, int | float) and k}
        else:
            images = image_frame(run, int(epoch), str(split))
            columns = [] if images is None else [c for c in images.columns if is_fact_metric(c)]
            rates = {c: images[c].mean() for c in columns}  # type: ignore[index]
        rows.append({k: float(v) for k, v in rates.items() if pd.notna(v)})
    return pd.DataFrame.from_records(rows, index=run.metrics.index)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns present in ``frame`` (aligned rate, fact rates, mean score), in headline order."""
    return order_metrics(c for c in frame.columns if c in METRICS or is_fact_metric(c))


_CACHE: dict[int, tuple[Run, pd.DataFrame, pd.DataFrame]] = {}  # id(run) -> (run, run.metrics, its long frame)


def _run_metrics(run: Run) -> pd.DataFrame:
    """One run's rows of :func:`metrics_frame`, remembered per run (the tables ask for them many times; the cache
    holds the run, so its id is not reused while cached, and a run whose metrics were replaced is read afresh)."""
    cached = _CACHE.get(id(run))
    if cached is None or cached[0] is not run or cached[1] is not run.metrics:
        frame = run.metrics.drop(columns=["scorer", "facts"], errors="ignore").copy()
        frame = frame.join(_fact_rates(run).drop(columns=list(METRICS), errors="ignore"))
        frame.insert(0, "run", str(run.path))
        for i, key in enumerate(RUN_KEYS):
            frame.insert(1 + i, key, getattr(run, key))
        if len(_CACHE) > 4096:
            _CACHE.clear()
        cached = _CACHE[id(run)] = (run, run.metrics, frame)
    return cached[2].copy()


def metrics_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Every run's metrics in one long frame with the run's identity columns (and ``run``: its folder), and one
    ``<fact>_rate`` column per fact any run records (NaN where a run's prompts do not check it)."""
    frames = [_run_metrics(run) for run in runs]
    if not frames:
        return pd.DataFrame(columns=["run", *RUN_KEYS, "epoch", "split", *METRICS])
    return pd.concat(frames, ignore_index=True)


def eval_points(run: Run) -> int:
    """How many epochs ``run`` was evaluated at (on the split evaluated most often)."""
    return int(run.metrics.groupby("split")["epoch"].nunique().max()) if not run.metrics.empty else 0


def runs_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run: identity, last evaluated epoch per split, and where it lives."""
    rows = []
    for run in runs:
        rows.append(
            {
                "run": str(run.path),
                **{key: getattr(run, key) for key in RUN_KEYS},
                "last_epoch_train": run.last_epoch("train"),
                "last_epoch_test": run.last_epoch("test"),
                "eval_epochs": len(run.eval_dirs),
                "eval_points": eval_points(run),
            }
        )
    frame = pd.DataFrame.from_records(rows).rename(columns={"label": "model"})
    for split in SPLITS:
        if f"last_epoch_{split}" in frame:
            frame[f"last_epoch_{split}"] = frame[f"last_epoch_{split}"].astype("Int64")
    return frame


def prompt_means(run: Run, epoch: int, split: str) -> pd.DataFrame | None:
    """Per-prompt means of every metric (aligned rate, fact rates, mean score) of ``run`` at ``epoch`` on ``split``,
    indexed by prompt_index."""
    images = image_frame(run, epoch, split)
    if images is None or images.empty:
        return None
    return images.drop(columns="seed").groupby("prompt_index").mean()


def prompt_test(
    a: tuple[Run, int | None], b: tuple[Run, int | None], split: str, metric: str, what: str
) -> stats.PairedTest:
    """Wilcoxon signed-rank over prompts (matched by ``prompt_index``) of run ``a`` at its epoch against run ``b`` at
    its epoch; untested, with a warning naming ``what`` (the single-seed comparison), when a per-prompt CSV is
    missing or no prompt is shared."""
    untested = stats.PairedTest(float("nan"), float("nan"), float("nan"), stats.NO_TEST, 0)
    means = []
    for run, epoch in (a, b):
        frame = prompt_means(run, epoch, split) if epoch is not None else None
        if frame is None or metric not in frame:
            warn(f"{run.path}: no per-prompt {split} scores at epoch {epoch}; single-seed {what} untested")
            return untested
        means.append(frame[metric])
    joined = pd.concat(means, axis=1, keys=["a", "b"], join="inner").dropna()
    if joined.empty:
        return untested
    return stats.wilcoxon(joined["a"].to_numpy(float), joined["b"].to_numpy(float))
