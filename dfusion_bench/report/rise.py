"""Did training raise alignment? Each configuration's final score against its own base model, with a paired test.

A run's base is its epoch-0 evaluation: the same model and evaluation seeds as every other run of that seed, before
any update. The rise is (last evaluated epoch) - (epoch 0), per template x scorer x split x method x fusion:

* with two or more seeds, the pairs are the seeds (paired t-test of final against base);
* with one seed, the pairs are that run's prompts, matched by ``prompt_index`` (Wilcoxon signed-rank over the
  per-prompt means at epoch 0 and at the last epoch), which tests that one run, not the method across seeds.

The table says which test it used and on how many pairs, as the fusion-gain table does.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dfusion_bench.report import stats
from dfusion_bench.report.collect import SPLITS, Run, method_label
from dfusion_bench.report.frames import CONFIG_COLUMNS, METRIC_NAMES, METRICS, prompt_test
from dfusion_bench.report.table_io import fmt, fmt_ci, fmt_p, key_cells

RISE_COLUMNS = [
    *CONFIG_COLUMNS,
    "metric",
    "base",
    "final",
    "rise",
    "rise_ci95",
    "test",
    "unit",
    "n",
    "seeds",
    "p_value",
]


def _endpoints(run: Run, split: str, metric: str) -> tuple[float, float] | None:
    """(epoch 0, last epoch) of ``metric`` on ``split``; None when either is missing or the run never trained."""
    rows = run.metrics[run.metrics["split"] == split]
    last = run.last_epoch(split)
    if metric not in rows or not last:
        return None
    first = rows[rows["epoch"] == 0][metric]
    if first.empty:
        return None
    return float(first.iloc[-1]), float(rows[rows["epoch"] == last][metric].iloc[-1])


def rise_table(runs: Sequence[Run]) -> pd.DataFrame:
    """(last evaluated epoch) - (epoch 0) per template x scorer x split x method x fusion x metric, tested."""
    rows: list[dict[str, object]] = []
    groups: dict[tuple[str, str, str, bool], dict[int, Run]] = {}
    for run in runs:
        groups.setdefault((run.template, run.scorer, run.method, run.fusion), {})[run.seed] = run
    for (template, scorer, method, fusion), by_seed in sorted(groups.items()):
        for split in SPLITS:
            for metric in METRICS:
                points = {seed: _endpoints(run, split, metric) for seed, run in by_seed.items()}
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
                        "rise_ci95": test.half_width,
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
                "Metric": METRIC_NAMES.get(r["metric"], r["metric"]),
                "Base": fmt(r["base"]),
                "Final": fmt(r["final"]),
                "Rise ± 95% CI": fmt_ci(r["rise"], r["rise_ci95"]),
                "Test": r["test"] + (f" (seed {r['seeds']})" if r["unit"] == "prompts" else ""),
                "n": f"{r['n']} {r['unit']}",
                "p": fmt_p(r["p_value"]),
            }
        )
    return pd.DataFrame.from_records(rows)
