"""The report's tables: each a numeric DataFrame (saved as CSV and parquet) and a formatted one (Markdown, LaTeX, HTML).

Metrics lead with the fully aligned rate, then each fact rate the scorer records (relation, object0, object1, count),
then the mean score. Every interval over training runs is a hierarchical percentile bootstrap over seeds (when 3 or
more), prompts and images (:mod:`.bootstrap`), never a t-interval over two seeds. Tables:

* ``overview``     the final table pivoted: one row per template x scorer x split, one column per configuration
                   (base first, then each method without and with D-Fusion), the paper's table layout;
* ``fusion_minus_plain``  the headline: (with D-Fusion) − (plain) at the final epoch per template x scorer x split x
                   method x metric, paired image bootstrap interval and the minimum detectable effect
                   (:mod:`.fusion_vs_plain`);
* ``final``        final alignment (last evaluated epoch of each run): mean over seeds and bootstrap interval, per
                   template x scorer x split x method x fusion, with the base model (epoch 0) as the first row
                   (:mod:`.final`);
* ``summary``      per run and split: the aligned rate before (epoch 0) and after (last epoch), the rise and its paired
                   bootstrap interval (:mod:`.summary`); ``summary_facts`` the same per fact;
* ``rise``         (final) - (base model) per configuration and metric, bootstrap interval and a paired test
                   (:mod:`.rise`);
* ``fusion_gain``  (with D-Fusion) - (without) per template x scorer x split x method x metric, with a paired test;
* ``paired``       ``dfusion eval`` folders of trained models against the base model's, image by image (:mod:`.paired`);
* ``facts``        the same pairs, one row per fact the scorer checks (the verifier's objects, relation, count);
* ``runs``         one row per run folder read (with its evaluation points);
* ``training``     per configuration: mean over seeds of the training log (loss, target-beats-base, seconds/epoch);
* ``evals``        one row per eval folder x scorer;
* ``fuse``         one row per fuse folder (triples, target-beats-base rate, gains, UNet cost);
* ``fuse_facts``   per fuse folder and fact, how often reference, base and target hold it, and how often the target
                   repairs or breaks its base's fact;
* ``curves``       the points (mean over seeds, bootstrap band, seeds, images, evaluation points) behind every curve.

``load_report_tables(out)`` reads them back.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dfusion_bench.report import stats
from dfusion_bench.report.bookkeeping import evals_table, fuse_facts_table, fuse_table, training_table
from dfusion_bench.report.bootstrap import EMPTY, N_BOOT, Interval, bootstrap_mean
from dfusion_bench.report.collect import Evaluation, Fuse, Run, warn
from dfusion_bench.report.facts import metric_label
from dfusion_bench.report.final import BASE_LABEL, display_final, final_rows, final_table, fmt_interval, overview_table
from dfusion_bench.report.frames import metric_columns, prompt_test, runs_frame
from dfusion_bench.report.fusion_vs_plain import display_fusion_minus_plain, final_pairs, fusion_minus_plain
from dfusion_bench.report.paired import display_paired, paired_tables
from dfusion_bench.report.rise import display_rise, rise_table
from dfusion_bench.report.summary import facts_summary_table, rise_by_run, summary_table
from dfusion_bench.report.table_io import Table, display_numbers, fmt, fmt_p, key_cells

__all__ = ["BASE_LABEL", "build_tables", "final_table", "gain_table", "overview_table"]


# ---- fusion gain ---------------------------------------------------------------------------------------------------


def gain_table(runs: Sequence[Run], n_boot: int = N_BOOT) -> pd.DataFrame:
    """(with D-Fusion) - (without) per template x scorer x split x method x metric, with a paired test.

    Pairs are seeds present on both sides (paired t-test). With exactly one shared seed the pairs are that seed's
    prompts, matched by ``prompt_index`` at each run's final epoch (Wilcoxon signed-rank). With no shared seed the
    difference of means is shown untested. The interval (``gain_low``, ``gain_high``) is the paired image bootstrap
    of the ``fusion_minus_plain`` table (shared seeds only; none without one).
    """
    finals = final_rows(runs)
    metrics = metric_columns(finals)
    by_run = {str(run.path): run for run in runs}
    rows: list[dict[str, object]] = []
    for (template, scorer, split, method), group in finals.groupby(["template", "scorer", "split", "method"]):
        with_f = group[group["fusion"]].set_index("seed")
        without = group[~group["fusion"]].set_index("seed")
        if with_f.empty or without.empty:
            continue
        shared = sorted(set(with_f.index) & set(without.index))
        sides = [{s: by_run[frame.loc[s, "run"]] for s in shared} for frame in (with_f, without)]
        pairs = final_pairs(sides[0], sides[1], shared, str(split)) if shared else None
        for metric in metrics:
            if with_f[metric].isna().all() or without[metric].isna().all():
                continue
            base = {"template": template, "scorer": scorer, "split": split, "method": method, "metric": metric}
            band = bootstrap_mean(pairs, metric, n_boot=n_boot) if pairs is not None else EMPTY
            if len(shared) >= 2:
                a, b = with_f.loc[shared, metric].to_numpy(float), without.loc[shared, metric].to_numpy(float)
                test = stats.paired_t(a, b)
                row = _gain_row(base, np.nanmean(a), np.nanmean(b), test.mean_difference, test, band, "seeds", shared)
            elif len(shared) == 1:
                seed = shared[0]
                ends = [(run, run.last_epoch(split)) for run in (sides[0][seed], sides[1][seed])]
                test = prompt_test(ends[0], ends[1], split, metric, "gain")
                a, b = float(with_f.loc[seed, metric]), float(without.loc[seed, metric])
                row = _gain_row(base, a, b, a - b, test, band, "prompts" if test.n else "seeds", shared)
            else:
                warn(f"{template}/{split}/{method}: no seed run both with and without D-Fusion; gain untested")
                a, b = float(with_f[metric].mean()), float(without[metric].mean())
                untested = stats.PairedTest(a - b, float("nan"), float("nan"), stats.NO_TEST, 0)
                row = _gain_row(base, a, b, a - b, untested, band, "seeds", shared)
            rows.append(row)
    return pd.DataFrame.from_records(rows, columns=_GAIN_COLUMNS)


_GAIN_COLUMNS = [
    "template",
    "scorer",
    "split",
    "method",
    "metric",
    "with_fusion",
    "without_fusion",
    "gain",
    "gain_low",
    "gain_high",
    "test",
    "unit",
    "n",
    "seeds",
    "p_value",
]


def _gain_row(
    base: dict[str, object],
    with_value: float,
    without_value: float,
    gain: float,
    test: stats.PairedTest,
    band: Interval,
    unit: str,
    seeds: Sequence[int],
) -> dict[str, object]:
    return {
        **base,
        "with_fusion": float(with_value),
        "without_fusion": float(without_value),
        "gain": float(gain),
        "gain_low": band.low,
        "gain_high": band.high,
        "test": test.test,
        "unit": unit,
        "n": test.n,
        "seeds": ",".join(str(s) for s in seeds),
        "p_value": test.p_value,
    }


# ---- formatting specific to these tables ------------------------------------------------------------------------


def display_gain(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            {
                **key_cells(r, "Method"),
                "Metric": metric_label(r["metric"]),
                "With D-Fusion": fmt(r["with_fusion"]),
                "Without": fmt(r["without_fusion"]),
                "Gain [95% CI]": fmt_interval(r["gain"], r["gain_low"], r["gain_high"]),
                "Test": r["test"] + (f" (seed {r['seeds']})" if r["unit"] == "prompts" else ""),
                "n": f"{r['n']} {r['unit']}",
                "p": fmt_p(r["p_value"]),
            }
        )
    return pd.DataFrame.from_records(rows)


# ---- building all tables -------------------------------------------------------------------------------------------


def _run_tables(runs: Sequence[Run], n_boot: int) -> list[tuple[str, str, str, pd.DataFrame, pd.DataFrame]]:
    """(name, title, description, data, display) of the tables of training runs, headline first."""
    final = final_table(runs, n_boot)
    overview, overview_display = overview_table(final)
    headline = fusion_minus_plain(runs, n_boot)
    by_run = rise_by_run(runs, n_boot=n_boot)
    summary, summary_facts = summary_table(by_run), facts_summary_table(by_run)
    rise, gain = rise_table(runs, n_boot), gain_table(runs, n_boot)
    interval = "95% percentile bootstrap over seeds (when 3 or more), prompts and images"
    return [
        (
            "overview",
            "Overview",
            "The final table at a glance: fully aligned rate (mean score) at each configuration's last evaluated "
            "epoch, mean over seeds.",
            overview,
            overview_display,
        ),
        (
            "fusion_minus_plain",
            "D-Fusion minus plain",
            "(with D-Fusion) − (plain) at each run's last evaluated epoch, mean over the seeds run both ways; "
            f"interval: {interval}, of the image pairs (same seed, prompt and image seed). MDE: the smallest true "
            "difference this paired design detects at power 0.8, two-sided alpha 0.05 ((z_0.975 + z_0.8) × SE).",
            headline,
            display_fusion_minus_plain(headline),
        ),
        (
            "final",
            "Final alignment",
            f"Each run's last evaluated epoch, mean over seeds; interval: {interval} (with 1 or 2 seeds it covers "
            f"prompts and images, not a new seed). '{BASE_LABEL}' is the model before any update.",
            final,
            display_final(final),
        ),
        (
            "summary",
            "Rise per run",
            "Fully aligned rate before (epoch 0) and after (last evaluated epoch) each run's training; interval: "
            "paired bootstrap over the run's prompts and images (same prompt and image seed before and after).",
            summary,
            display_numbers(summary),
        ),
        (
            "summary_facts",
            "Rise per run, per fact",
            "The same for each fact the verifier checks (relation, objects, count).",
            summary_facts,
            display_numbers(summary_facts),
        ),
        (
            "rise",
            "Rise over the base model",
            f"(last evaluated epoch) − (epoch 0), same runs; interval: {interval}, of the image pairs; p from the "
            "named two-sided paired test. With one seed the test's pairs are that run's prompts, which tests that run, "
            "not the method.",
            rise,
            display_rise(rise),
        ),
        (
            "fusion_gain",
            "D-Fusion gain",
            "(with D-Fusion) − (without), same method and seed; interval as in D-Fusion minus plain; p from the named "
            "two-sided paired test. With one shared seed the test's pairs are that seed's prompts, which tests those "
            "two runs, not the method.",
            gain,
            display_gain(gain),
        ),
    ]


def build_tables(
    runs: Sequence[Run],
    evals: Sequence[Evaluation],
    fuses: Sequence[Fuse],
    curves: pd.DataFrame | None = None,
    n_boot: int = N_BOOT,
) -> dict[str, Table]:
    """Every non-empty table of the report, in display order; ``n_boot`` bootstrap replicates per interval."""
    tables: dict[str, Table] = {}

    def add(name: str, title: str, description: str, data: pd.DataFrame, display: pd.DataFrame | None = None) -> None:
        if not data.empty:
            data = data.reset_index(drop=True)
            tables[name] = Table(name, title, description, data, display if display is not None else data)

    for table in _run_tables(runs, n_boot) if runs else []:
        add(*table)
    paired, facts = paired_tables(evals)
    add(
        "paired",
        "Against the base model, image by image",
        "dfusion eval folders of trained models against the base model's on the same prompts and seeds (same "
        "initial noise); p from a two-sided Wilcoxon signed-rank test over the image pairs.",
        paired,
        display_paired(paired),
    )
    add(
        "facts",
        "Facts against the base model, image by image",
        "The same pairs, one row per fact the scorer checks (the verifier's objects, relation and count): the rate "
        "at which it holds. Which facts training changed; p as above.",
        facts,
        display_paired(facts, metric_header="Fact"),
    )
    if runs:
        training = training_table(runs)
        add(
            "training",
            "Training",
            "Mean over seeds of each run's training log: final loss, fused pairs per epoch, the fraction of targets "
            "that beat their base, and seconds per epoch by phase.",
            training,
            display_numbers(training),
        )
        inventory = runs_frame(runs)
        add(
            "runs",
            "Runs",
            "Every training run folder read; eval_points: the epochs it was evaluated at (a curve needs 6).",
            inventory,
            display_numbers(inventory),
        )
    evals_frame = evals_table(evals)
    add(
        "evals", "Evaluations", "One row per dfusion eval folder and scorer.", evals_frame, display_numbers(evals_frame)
    )
    fuse_frame = fuse_table(fuses)
    add("fuse", "D-Fusion triples", "One row per dfusion fuse folder.", fuse_frame, display_numbers(fuse_frame))
    fuse_facts = fuse_facts_table(fuses)
    add(
        "fuse_facts",
        "What fusion carries, per fact",
        "Per dfusion fuse folder and fact the scorer checks: the fraction of triples whose reference, base and "
        "target hold it; repaired: of the triples whose base lacks it, the fraction whose target holds it; broken: "
        "of those whose base holds it, the fraction whose target lacks it.",
        fuse_facts,
        display_numbers(fuse_facts),
    )
    if curves is not None:
        add(
            "curves",
            "Curve points",
            "Mean over seeds and 95% bootstrap band (seeds when 3 or more, prompts, images) behind every curve.",
            curves,
            display_numbers(curves),
        )
    return tables
