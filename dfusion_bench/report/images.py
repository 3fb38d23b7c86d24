"""A training run's per-image evaluation CSVs (``eval/epoch-NNNN/<split>.csv``) as frames of metric values.

One row per image: ``prompt_index``, the image ``seed`` (its initial noise), and one column per metric: the fully
aligned rate (1.0 aligned, 0.0 not), each boolean fact of the verifier as ``<fact>_rate`` (1.0 held, 0.0 not, NaN where
the prompt does not check it) and the mean score. Every run of a suite is evaluated on the same seeds per
(prompt_index, k), so rows pair across epochs and runs on (prompt_index, seed). Files are read once per report
(cached on path, size and modification time).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import pandas as pd

from dfusion_bench.report.collect import Run, read_samples_csv
from dfusion_bench.report.facts import ALIGNED, SCORE, fact_columns, fact_metric, order_metrics

KEYS = ["prompt_index", "seed"]  # an image within a run's evaluation
RUN_KEYS = ["run_seed", *KEYS]  # an image within a configuration's runs


@lru_cache(maxsize=2048)
def _read(path: str, size: int, mtime_ns: int, scorer: str) -> pd.DataFrame | None:
    samples = read_samples_csv(Path(path))
    if samples is None:
        return None
    if "scorer" in samples:
        samples = samples[samples["scorer"].astype(str) == scorer]
    if samples.empty:
        return None
    frame = pd.DataFrame({"prompt_index": samples["prompt_index"].to_numpy()})
    frame["seed"] = samples["seed"].to_numpy() if "seed" in samples else range(len(samples))
    if "aligned" in samples and samples["aligned"].notna().any():
        frame[ALIGNED] = samples["aligned"].to_numpy(dtype=float)
    if "facts" in samples:
        facts = fact_columns(samples["facts"])
        for fact in facts.columns:
            if fact_metric(fact) not in (ALIGNED, SCORE):
                frame[fact_metric(fact)] = facts[fact].to_numpy(dtype=float)
    frame[SCORE] = samples["score"].to_numpy(dtype=float)
    return frame[[*KEYS, *order_metrics(c for c in frame.columns if c not in KEYS)]]


def image_frame(run: Run, epoch: int, split: str) -> pd.DataFrame | None:
    """``run``'s images at ``epoch`` on ``split`` (a fresh copy; see the module), or None without a readable CSV."""
    path = run.eval_csv(epoch, split)
    if path is None:
        return None
    stat = path.stat()
    frame = _read(str(path), stat.st_size, stat.st_mtime_ns, run.scorer)
    return None if frame is None else frame.copy()


def runs_images(ends: Sequence[tuple[Run, int]], split: str, distinct: bool = False) -> pd.DataFrame | None:
    """The images of each (run, epoch) in ``ends`` in one frame with a ``run_seed`` column; None when any of them
    lacks its CSV (a band drawn from some seeds' images around a mean over all seeds would mislead). With
    ``distinct``, a run whose images equal an earlier one's (same prompts, image seeds and values: runs of every seed
    share the base model, so their epoch-0 evaluations are the same images) is one measurement and enters once."""
    frames: list[pd.DataFrame] = []
    for run, epoch in ends:
        frame = image_frame(run, epoch, split)
        if frame is None:
            return None
        if distinct and any(frame.equals(seen.drop(columns="run_seed")) for seen in frames):
            continue
        frame.insert(0, "run_seed", run.seed)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else None
