"""Did each run's training raise alignment? Per run and split: the fully aligned rate (``summary``) and each fact rate
(``summary_facts``) before training (epoch 0) and after (the run's last evaluated epoch), and the rise after − before.

The values are the run's own (``metrics.jsonl``; fact rates from its per-image CSVs where older metrics lack them).
The 95% interval ``[ci_low, ci_high]`` is the paired percentile bootstrap of :mod:`.bootstrap` over the run's images at
the two epochs, matched by ``prompt_index`` and image seed (the same initial noise before and after): prompts resampled,
then images within each prompt (one run: no seed level). No interval where either epoch's CSV is missing.

``rise_summary(runs)`` gives the ``summary`` table for run folders or :class:`~.collect.Run` objects, so a results
script can write it (e.g. ``results/control/summary.csv``); ``dfusion report RUNS --out DIR`` writes it as
``DIR/tables/summary.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dfusion_bench.report.bootstrap import EMPTY, N_BOOT, bootstrap_mean, paired_values
from dfusion_bench.report.collect import SPLITS, Run, collect
from dfusion_bench.report.facts import ALIGNED, fact_name, is_fact_metric, order_metrics
from dfusion_bench.report.frames import metric_columns, metrics_frame
from dfusion_bench.report.images import KEYS, image_frame

RUN_COLUMNS = ["method", "fusion", "suite", "seed", "split"]
SUMMARY_COLUMNS = [*RUN_COLUMNS, "aligned_before", "aligned_after", "rise", "ci_low", "ci_high"]
FACT_COLUMNS = [*RUN_COLUMNS, "fact", "before", "after", "rise", "ci_low", "ci_high"]


def _as_runs(runs: Sequence[Run | str | Path]) -> list[Run]:
    """Run objects as given; folders read with :func:`~.collect.collect` (folders holding runs are searched)."""
    folders = [Path(r) for r in runs if not isinstance(r, Run)]
    found = collect(folders).runs if folders else []
    return [r for r in runs if isinstance(r, Run)] + found


def rise_by_run(runs: Sequence[Run], facts: bool = True, n_boot: int = N_BOOT) -> pd.DataFrame:
    """One row per run x split x metric (the aligned rate, and with ``facts`` each fact rate): ``before`` (epoch 0),
    ``after`` (last evaluated epoch), ``rise`` and its paired bootstrap interval (see the module)."""
    rows: list[dict[str, object]] = []
    for run in runs:
        metrics = metrics_frame([run])
        wanted = [m for m in metric_columns(metrics) if m == ALIGNED or (facts and is_fact_metric(m))]
        for split in SPLITS:
            mine = metrics[metrics["split"] == split].set_index("epoch")
            last = run.last_epoch(split)
            if not last or 0 not in mine.index:
                continue
            after, before = image_frame(run, last, split), image_frame(run, 0, split)
            pairs = paired_values(after, before, KEYS) if after is not None and before is not None else None
            for metric in wanted:
                first, final = float(mine.loc[0, metric]), float(mine.loc[last, metric])
                if not (np.isfinite(first) and np.isfinite(final)):
                    continue
                band = bootstrap_mean(pairs, metric, n_boot=n_boot) if pairs is not None else EMPTY
                rows.append(
                    {
                        "method": run.method,
                        "fusion": bool(run.fusion),
                        "suite": run.template,
                        "seed": int(run.seed),
                        "split": split,
                        "metric": metric,
                        "before": first,
                        "after": final,
                        "rise": final - first,
                        "ci_low": band.low,
                        "ci_high": band.high,
                    }
                )
    columns = [*RUN_COLUMNS, "metric", "before", "after", "rise", "ci_low", "ci_high"]
    return pd.DataFrame.from_records(rows, columns=columns)


def _sorted(frame: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    return frame.sort_values(["suite", "method", "fusion", "seed", "split", *extra], kind="stable").reset_index(
        drop=True
    )


def summary_table(long: pd.DataFrame) -> pd.DataFrame:
    """The aligned-rate rows of :func:`rise_by_run` with the columns of ``summary.csv`` (:data:`SUMMARY_COLUMNS`)."""
    frame = long[long["metric"] == ALIGNED].rename(columns={"before": "aligned_before", "after": "aligned_after"})
    return _sorted(frame[SUMMARY_COLUMNS])


def facts_summary_table(long: pd.DataFrame) -> pd.DataFrame:
    """The fact-rate rows of :func:`rise_by_run`, one per run x split x fact (:data:`FACT_COLUMNS`)."""
    frame = long.loc[np.array([is_fact_metric(str(m)) for m in long["metric"]], dtype=bool)].copy()
    order = {m: i for i, m in enumerate(order_metrics(frame["metric"]))}
    frame["_rank"] = frame["metric"].map(order)
    frame["fact"] = frame["metric"].map(fact_name)
    return _sorted(frame, ["_rank"])[FACT_COLUMNS]


def rise_summary(runs: Sequence[Run | str | Path], n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per run and split: ``method, fusion, suite, seed, split, aligned_before, aligned_after, rise, ci_low,
    ci_high`` (the fully aligned rate at epoch 0 and at the run's last evaluated epoch, and the paired bootstrap
    interval of the rise; see the module). ``runs``: :class:`~.collect.Run` objects or run folders (or folders
    holding them)."""
    return summary_table(rise_by_run(_as_runs(runs), facts=False, n_boot=n_boot))
