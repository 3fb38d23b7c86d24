"""Did training raise alignment? Each configuration's final score against its own base model, with a paired test.

A run's base is its epoch-0 evaluation: the same model and evaluation seeds as every other run of that seed, before
any update. The rise is (last evaluated epoch) - (epoch 0), per template x scorer x split x method x fusion and metric
(the fully aligned rate, each fact rate, the mean score). Its 95% interval (``rise_low``, ``rise_high``) is the paired
bootstrap of :mod:`.bootstrap` over the runs' images at the two epochs (pairs: same run, ``prompt_index`` and image
seed), resampling seeds (when 3 or more), prompts and images; none where a CSV is missing. The p-value is a test's:

* with two or more seeds, the pairs are the seeds (paired t-test of final against base);
* with one seed, the pairs are that run's prompts, matched by ``prompt_index`` (Wilcoxon signed-rank over the
  per-prompt means at epoch 0 and at the last epoch), which tests that one run, not the method across seeds.

The table says which test it used and on how many pairs, as the fusion-gain table does.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dfusion_bench.report import stats
from dfusion_bench.report.bootstrap import EMPTY, N_BOOT, bootstrap_mean, paired_values
from dfusion_bench.report.collect import SPLITS, Run, method_label
from dfusion_bench.report.facts import metric_label
from dfusion_bench.report.final import fmt_interval
from dfusion_bench.report.frames import CONFIG_COLUMNS, metric_columns, metrics_frame, prompt_test
from dfusion_bench.report.images import KEYS, image_frame
from dfusion_bench.report.table_io import fmt, fmt_p, key_cells

RISE_COLUMNS = [
    *CONFIG_COLUMNS,
    "metric",
    "base",
    "final",
    "rise",
    "rise_low",
    "rise_high",
    "test",
    "unit",
    "n",
    "seeds",
    "p_value",
]


def _endpoints(metrics: pd.DataFrame, last: int | None, split: str, metric: str) -> tuple[float, float] | None:
    """(epoch 0, last epoch) of ``metric`` on ``split`` in a run's ``metrics`` (:func:`~.frames.metrics_frame`);
    None when either is missing or the run never trained."""
    rows = metrics[metrics["split"] == split]
    if metric not in rows or not last:
        return None
    first, final = rows[rows["epoch"] == 0][metric], rows[rows["epoch"] == last][metric]
    if first.empty or final.empty or first.isna().iloc[-1] or final.isna().iloc[-1]:
        return None
    return float(first.iloc[-1]), float(final.iloc[-1])


def rise_pairs(runs: Sequence[Run], split: str) -> pd.DataFrame | None:
    """Per image of each run: (last evaluated epoch) − (epoch 0) of every metric, paired on prompt_index and image
    seed, with a ``run_seed`` column; None when a run lacks either CSV."""
    frames = []
    for run in runs:
        last = run.last_epoch(split)
        after = image_frame(run, last, split) if last else None
        before = image_frame(run, 0, split)
        if after is None or before is None:
            return None
        pairs = paired_values(after, before, KEYS)
        pairs.insert(0, "run_seed", run.seed)
        frames.append(pairs)
    return pd.concat(frames, ignore_index=True) if frames else None


def rise_table(runs: Sequence[Run], n_boot: int = N_BOOT) -> pd.DataFrame:
    """(last evaluated epoch) - (epoch 0) per template x scorer x split x method x fusion x metric, tested."""
    rows: list[dict[str, object]] = []
    groups: dict[tuple[str, str, str, bool], dict[int, Run]] = {}
    for run in runs:
        groups.setdefault((run.template, run.scorer, run.method, run.fusion), {})[run.seed] = run
    for (template, scorer, method, fusion), by_seed in sorted(groups.items()):
        metrics = {seed: metrics_frame([run]) for seed, run in by_seed.items()}
        for split in SPLITS:
            pairs_of: dict[tuple[int, ...], pd.DataFrame | None] = {}
            for metric in metric_columns(pd.concat(metrics.values())):
                points = {s: _endpoints(m, by_seed[s].last_epoch(split), split, metric) for s, m in metrics.items()}
                seeds = sorted(seed for seed, point in points.items() if point is not None)
                if not seeds:
                    continue
                base = [points[s][0] for s in seeds]  # type: ignore[index]
                final = [points[s][1] for s in seeds]  # type: ignore[index]
                if len(seeds) >= 2:
                    test, unit = stats.paired_t(final, base), "seeds"
                else:
                    run = by_seed[seeds[0]]
                    test = prompt_test((run, run.last_epoch(split)), (run, 0), split, metric, "rise")
                    unit = "prompts" if test.n else "seeds"
                if tuple(seeds) not in pairs_of:
                    pairs_of[tuple(seeds)] = rise_pairs([by_seed[s] for s in seeds], split)
                pairs = pairs_of[tuple(seeds)]
                band = bootstrap_mean(pairs, metric, n_boot=n_boot) if pairs is not None else EMPTY
                mean_base, mean_final = sum(base) / len(base), sum(final) / len(final)
                rows.append(
                    {
                        "template": template,
                        "scorer": scorer,
                        "split": split,
                        "model": method_label(method, fusion),
                        "method": method,
                        "fusion": bool(fusion),
                        "metric": metric,
                        "base": mean_base,
                        "final": mean_final,
                        "rise": mean_final - mean_base,
                        "rise_low": band.low,
                        "rise_high": band.high,
                        "test": test.test,
                        "unit": unit,
                        "n": test.n,
                        "seeds": ",".join(str(s) for s in seeds),
                        "p_value": test.p_value,
                    }
                )
    return pd.DataFrame.from_records(rows, columns=RISE_COLUMNS)


def display_rise(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            {
                **key_cells(r),
                "Metric": metric_label(r["metric"]),
                "Base": fmt(r["base"]),
                "Final": fmt(r["final"]),
                "Rise [95% CI]": fmt_interval(r["rise"], r["rise_low"], r["rise_high"]),
                "Test": r["test"] + (f" (seed {r['seeds']})" if r["unit"] == "prompts" else ""),
                "n": f"{r['n']} {r['unit']}",
                "p": fmt_p(r["p_value"]),
            }
        )
    return pd.DataFrame.from_records(rows)
