"""The headline of a D-Fusion study: (with D-Fusion) − (plain) at the final epoch, image by image.

Per template x scorer x split x method and metric (the fully aligned rate first, then each fact rate, then the mean
score): the mean over seeds of each configuration's value at its runs' last evaluated epochs, their difference, and a
95% interval from the paired hierarchical bootstrap of :mod:`.bootstrap`. The pairs are images that share the run seed,
``prompt_index`` and image seed (the same initial noise, rendered by the fused and the plain policy); the bootstrap
resamples seeds (as blocks, when 3 or more are shared), prompts and images. ``mde`` is the minimum detectable effect of
this paired design at power 0.8, two-sided alpha 0.05: ``(z_0.975 + z_0.8) * SE = 2.80 * SE`` with SE the bootstrap
standard error: a true difference smaller than it would mostly go unseen, so an interval that holds 0 says little
when the MDE is large. Only seeds run both with and without D-Fusion are used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from dfusion_bench.report.bootstrap import EMPTY, N_BOOT, Interval, bootstrap_mean, paired_values
from dfusion_bench.report.collect import SPLITS, Run
from dfusion_bench.report.facts import metric_label
from dfusion_bench.report.final import final_rows, fmt_interval
from dfusion_bench.report.frames import metric_columns, metrics_frame
from dfusion_bench.report.images import RUN_KEYS, runs_images
from dfusion_bench.report.table_io import fmt, key_cells

COLUMNS = [
    *("template", "scorer", "split", "method", "metric", "fusion", "plain", "difference", "ci_low", "ci_high"),
    *("mde", "n_seeds", "seeds", "n_images", "resampled"),
]


def final_values(runs: Sequence[Run]) -> dict[tuple[str, str], pd.Series]:
    """{(run folder, split): that run's metrics at its last evaluated epoch on the split}."""
    return {(str(row["run"]), str(row["split"])): row for _, row in final_rows(runs).iterrows()}


def _value(finals: Mapping[tuple[str, str], pd.Series], run: Run, split: str, metric: str) -> float:
    row = finals.get((str(run.path), split))
    return float(row[metric]) if row is not None and metric in row else float("nan")


def final_pairs(
    fused: Mapping[int, Run], plain: Mapping[int, Run], seeds: Sequence[int], split: str
) -> pd.DataFrame | None:
    """Per image of the ``seeds`` (shared by both mappings), fused − plain of every metric at each run's last
    evaluated epoch, paired on run seed, prompt_index and image seed; None when a run lacks its CSV or epoch."""
    sides = []
    for runs in (fused, plain):
        ends = [(runs[s], runs[s].last_epoch(split)) for s in seeds]
        if any(epoch is None for _, epoch in ends):
            return None
        sides.append(runs_images([(run, int(epoch)) for run, epoch in ends], split))  # type: ignore[arg-type]
    if sides[0] is None or sides[1] is None:
        return None
    return paired_values(sides[0], sides[1], RUN_KEYS)


def by_seed(runs: Sequence[Run]) -> dict[tuple[str, str, str], dict[bool, dict[int, Run]]]:
    """Runs as {(template, scorer, method): {fusion: {seed: run}}}."""
    groups: dict[tuple[str, str, str], dict[bool, dict[int, Run]]] = {}
    for run in runs:
        groups.setdefault((run.template, run.scorer, run.method), {True: {}, False: {}})[run.fusion][run.seed] = run
    return groups


def fusion_minus_plain(runs: Sequence[Run], n_boot: int = N_BOOT) -> pd.DataFrame:
    """The headline table (see the module): one row per template x scorer x split x method x metric."""
    rows: list[dict[str, object]] = []
    metrics = metric_columns(metrics_frame(runs))
    finals = final_values(runs)
    for (template, scorer, method), sides in sorted(by_seed(runs).items()):
        seeds = sorted(set(sides[True]) & set(sides[False]))
        if not seeds:
            continue
        for split in SPLITS:
            pairs = final_pairs(sides[True], sides[False], seeds, split)
            for metric in metrics:
                fused = np.array([_value(finals, sides[True][s], split, metric) for s in seeds])
                plain = np.array([_value(finals, sides[False][s], split, metric) for s in seeds])
                if not (np.isfinite(fused) & np.isfinite(plain)).any():
                    continue
                keep = np.isfinite(fused) & np.isfinite(plain)
                band: Interval = bootstrap_mean(pairs, metric, n_boot=n_boot) if pairs is not None else EMPTY
                rows.append(
                    {
                        "template": template,
                        "scorer": scorer,
                        "split": split,
                        "method": method,
                        "metric": metric,
                        "fusion": float(fused[keep].mean()),
                        "plain": float(plain[keep].mean()),
                        "difference": float((fused[keep] - plain[keep]).mean()),
                        "ci_low": band.low,
                        "ci_high": band.high,
                        "mde": band.mde,
                        "n_seeds": int(keep.sum()),
                        "seeds": ",".join(str(s) for s, k in zip(seeds, keep, strict=True) if k),
                        "n_images": band.n_images,
                        "resampled": band.resampled,
                    }
                )
    frame = pd.DataFrame.from_records(rows, columns=COLUMNS)
    order = {m: i for i, m in enumerate(metrics)}
    return frame.sort_values(
        ["template", "scorer", "split", "metric", "method"],
        key=lambda c: c.map(order) if c.name == "metric" else c,
        kind="stable",
    ).reset_index(drop=True)


def display_fusion_minus_plain(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            {
                **key_cells(r, "Method"),
                "Metric": metric_label(r["metric"]),
                "D-Fusion": fmt(r["fusion"]),
                "Plain": fmt(r["plain"]),
                "D-Fusion − plain [95% CI]": fmt_interval(r["difference"], r["ci_low"], r["ci_high"]),
                "MDE (power 0.8)": fmt(r["mde"]),
                "Seeds (n)": f"{r['seeds']} ({r['n_seeds']})",
                "Image pairs": str(r["n_images"]),
            }
        )
    return pd.DataFrame.from_records(rows)
