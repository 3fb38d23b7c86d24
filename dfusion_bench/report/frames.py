"""Runs as long DataFrames: every metric row with its run's identity, one row per run, per-prompt means."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dfusion_bench.report import stats
from dfusion_bench.report.collect import SPLITS, Run, read_samples_csv, warn

RUN_KEYS = ["template", "scorer", "method", "fusion", "label", "seed"]
#: The leading columns of every per-configuration table (final, rise, paired): where, scored how, and which model.
CONFIG_COLUMNS = ["template", "scorer", "split", "model", "method", "fusion"]
METRICS = ("mean_score", "aligned_rate")
METRIC_NAMES = {"mean_score": "mean score", "aligned_rate": "aligned rate"}


def metrics_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """Every run's metrics in one long frame with the run's identity columns (and ``run``: its folder)."""
    frames = []
    for run in runs:
        frame = run.metrics.drop(columns=["scorer"]).copy()
        frame.insert(0, "run", str(run.path))
        for i, key in enumerate(RUN_KEYS):
            frame.insert(1 + i, key, getattr(run, key))
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run", *RUN_KEYS, "epoch", "split", "mean_score", "aligned_rate"])
    return pd.concat(frames, ignore_index=True)


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
            }
        )
    frame = pd.DataFrame.from_records(rows).rename(columns={"label": "model"})
    for split in SPLITS:
        if f"last_epoch_{split}" in frame:
            frame[f"last_epoch_{split}"] = frame[f"last_epoch_{split}"].astype("Int64")
    return frame


def prompt_means(run: Run, epoch: int, split: str) -> pd.DataFrame | None:
    """Per-prompt mean score and aligned rate of ``run`` at ``epoch`` on ``split``, indexed by prompt_index."""
    csv = run.eval_csv(epoch, split)
    if csv is None:
        return None
    samples = read_samples_csv(csv)
    if samples is None or samples.empty:
        return None
    columns = {"score": "mean_score"}
    if "aligned" in samples:
        columns["aligned"] = "aligned_rate"
    return samples.groupby("prompt_index")[list(columns)].mean().rename(columns=columns)


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
