"""The report's tables: each a numeric DataFrame (saved as CSV and parquet) and a formatted one (Markdown, LaTeX, HTML).

Tables:

* ``overview``     the final table pivoted: one row per template x scorer x split, one column per configuration
                   (base first, then each method without and with D-Fusion), the paper's table layout;
* ``final``        final alignment (last evaluated epoch of each run): mean and 95% t-interval over seeds, per
                   template x scorer x split x method x fusion, with the base model (epoch 0) as the first row;
* ``rise``         (final) - (base model) per configuration and metric, with a paired test (:mod:`.rise`);
* ``fusion_gain``  (with D-Fusion) - (without) per template x scorer x split x method x metric, with a paired test;
* ``paired``       ``dfusion eval`` folders of trained models against the base model's, image by image (:mod:`.paired`);
* ``facts``        the same pairs, one row per fact the scorer checks (the verifier's objects, relation, count);
* ``runs``         one row per run folder read;
* ``training``     per configuration: mean over seeds of the training log (loss, target-beats-base, seconds/epoch);
* ``evals``        one row per eval folder x scorer;
* ``fuse``         one row per fuse folder (triples, target-beats-base rate, gains, UNet cost);
* ``fuse_facts``   per fuse folder and fact, how often reference, base and target hold it, and how often the target
                   repairs or breaks its base's fact;
* ``curves``       the points (mean, CI, n over seeds) behind every curve.

``load_report_tables(out)`` reads them back.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from dfusion_bench.report import stats
from dfusion_bench.report.bookkeeping import evals_table, fuse_facts_table, fuse_table, training_table
from dfusion_bench.report.collect import Evaluation, Fuse, Run, method_label, warn
from dfusion_bench.report.frames import CONFIG_COLUMNS, METRIC_NAMES, METRICS, metrics_frame, prompt_test, runs_frame
from dfusion_bench.report.paired import display_paired, paired_tables
from dfusion_bench.report.rise import display_rise, rise_table
from dfusion_bench.report.table_io import Table, display_numbers, fmt, fmt_ci, fmt_p, key_cells
from dfusion_bench.rl.config import METHODS

BASE_LABEL = "base (epoch 0)"


# ---- final alignment -----------------------------------------------------------------------------------------------


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
    return zero.groupby(keys, as_index=False)[["mean_score", "aligned_rate"]].mean()


def _summarise(group: pd.DataFrame) -> dict[str, object]:
    row: dict[str, object] = {
        "n_seeds": int(group["seed"].nunique()),
        "seeds": ",".join(str(s) for s in sorted(group["seed"].unique())),
    }
    for metric in METRICS:
        ci = stats.mean_ci(group[metric].to_numpy(dtype=float))
        row[metric] = ci.mean
        row[f"{metric}_ci95"] = ci.half_width
        row[f"{metric}_n"] = ci.n
    return row


def final_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Final alignment per template x scorer x split x configuration: mean and 95% CI half-width over seeds."""
    finals = final_rows(runs)
    rows: list[dict[str, object]] = []
    bases = base_rows(runs)
    for (template, scorer, split), group in bases.groupby(["template", "scorer", "split"], sort=True):
        rows.append(
            {
                "template": template,
                "scorer": scorer,
                "split": split,
                "model": BASE_LABEL,
                "method": "base",
                "fusion": pd.NA,
                "epoch": 0,
                "epoch_min": 0,
                **_summarise(group),
            }
        )
    keys = ["template", "scorer", "split", "method", "fusion"]
    for (template, scorer, split, method, fusion), group in finals.groupby(keys, sort=True):
        epochs = group["epoch"]
        if epochs.nunique() > 1:
            warn(
                f"{template}/{split}: {method_label(method, fusion)} runs end at different epochs "
                f"({', '.join(str(e) for e in sorted(epochs.unique()))}); each run's last epoch is used"
            )
        rows.append(
            {
                "template": template,
                "scorer": scorer,
                "split": split,
                "model": method_label(method, fusion),
                "method": method,
                "fusion": bool(fusion),
                "epoch": int(epochs.max()),
                "epoch_min": int(epochs.min()),
                **_summarise(group),
            }
        )
    frame = pd.DataFrame.from_records(rows, columns=_FINAL_COLUMNS)
    if frame.empty:
        return frame
    frame["fusion"] = frame["fusion"].astype("boolean")
    frame["_order"] = (frame["model"] != BASE_LABEL).astype(int)
    frame = frame.sort_values(["template", "scorer", "split", "_order", "method", "fusion"], kind="stable")
    return frame.drop(columns="_order").reset_index(drop=True)


_FINAL_COLUMNS = [
    *CONFIG_COLUMNS,
    "epoch",
    "epoch_min",
    "n_seeds",
    "seeds",
    *[f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci95", "_n")],
]


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
    each configuration's mean score (column ``<model>``) and aligned rate (``<model> aligned``); the display shows
    ``score (aligned %)`` per configuration."""
    if final.empty:
        return final, final
    keys = ["template", "scorer", "split"]
    order = _column_order(final)
    score = final.pivot(index=keys, columns="model", values="mean_score")[order]
    aligned = final.pivot(index=keys, columns="model", values="aligned_rate")[order]
    numbers = pd.concat([score, aligned.add_suffix(" aligned")], axis=1).reset_index()
    display = score.copy().astype(object)
    for model in order:
        display[model] = [
            fmt(s) + (f" ({a:.0%})" if pd.notna(a) else "") if pd.notna(s) else "–"
            for s, a in zip(score[model], aligned[model], strict=True)
        ]
    display = display.reset_index().rename(columns={"template": "Template", "scorer": "Scorer", "split": "Split"})
    return numbers, display


# ---- fusion gain ---------------------------------------------------------------------------------------------------


def gain_table(runs: Sequence[Run]) -> pd.DataFrame:
    """(with D-Fusion) - (without) per template x scorer x split x method x metric, with a paired test.

    Pairs are seeds present on both sides (paired t-test). With exactly one shared seed the pairs are that seed's
    prompts, matched by ``prompt_index`` at each run's final epoch (Wilcoxon signed-rank). With no shared seed the
    difference of means is shown untested.
    """
    finals = final_rows(runs)
    by_run = {str(run.path): run for run in runs}
    rows: list[dict[str, object]] = []
    for (template, scorer, split, method), group in finals.groupby(["template", "scorer", "split", "method"]):
        with_f = group[group["fusion"]].set_index("seed")
        without = group[~group["fusion"]].set_index("seed")
        if with_f.empty or without.empty:
            continue
        shared = sorted(set(with_f.index) & set(without.index))
        for metric in METRICS:
            if with_f[metric].isna().all() or without[metric].isna().all():
                continue
            base = {"template": template, "scorer": scorer, "split": split, "method": method, "metric": metric}
            if len(shared) >= 2:
                a, b = with_f.loc[shared, metric].to_numpy(float), without.loc[shared, metric].to_numpy(float)
                test = stats.paired_t(a, b)
                row = _gain_row(base, a.mean(), b.mean(), test.mean_difference, test, "seeds", shared)
            elif len(shared) == 1:
                seed = shared[0]
                a_run, b_run = by_run[with_f.loc[seed, "run"]], by_run[without.loc[seed, "run"]]
                ends = [(run, run.last_epoch(split)) for run in (a_run, b_run)]
                test = prompt_test(ends[0], ends[1], split, metric, "gain")
                a, b = float(with_f.loc[seed, metric]), float(without.loc[seed, metric])
                row = _gain_row(base, a, b, a - b, test, "prompts" if test.n else "seeds", shared)
            else:
                warn(f"{template}/{split}/{method}: no seed run both with and without D-Fusion; gain untested")
                a, b = float(with_f[metric].mean()), float(without[metric].mean())
                untested = stats.PairedTest(a - b, float("nan"), float("nan"), stats.NO_TEST, 0)
                row = _gain_row(base, a, b, a - b, untested, "seeds", shared)
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
    "gain_ci95",
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
    unit: str,
    seeds: Sequence[int],
) -> dict[str, object]:
    return {
        **base,
        "with_fusion": float(with_value),
        "without_fusion": float(without_value),
        "gain": float(gain),
        "gain_ci95": test.half_width,
        "test": test.test,
        "unit": unit,
        "n": test.n,
        "seeds": ",".join(str(s) for s in seeds),
        "p_value": test.p_value,
    }


# ---- formatting specific to these tables ------------------------------------------------------------------------


def _epochs(row: pd.Series) -> str:
    lo, hi = int(row["epoch_min"]), int(row["epoch"])
    return str(hi) if lo == hi else f"{lo}–{hi}"


def display_final(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            {
                **key_cells(r),
                "Epoch": _epochs(r),
                "Seeds (n)": f"{r['seeds']} ({r['n_seeds']})",
                "Mean score ± 95% CI": fmt_ci(r["mean_score"], r["mean_score_ci95"]),
                "Aligned rate ± 95% CI": fmt_ci(r["aligned_rate"], r["aligned_rate_ci95"]),
            }
        )
    return pd.DataFrame.from_records(rows)


def display_gain(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            {
                **key_cells(r, "Method"),
                "Metric": METRIC_NAMES.get(r["metric"], r["metric"]),
                "With D-Fusion": fmt(r["with_fusion"]),
                "Without": fmt(r["without_fusion"]),
                "Gain ± 95% CI": fmt_ci(r["gain"], r["gain_ci95"]),
                "Test": r["test"] + (f" (seed {r['seeds']})" if r["unit"] == "prompts" else ""),
                "n": f"{r['n']} {r['unit']}",
                "p": fmt_p(r["p_value"]),
            }
        )
    return pd.DataFrame.from_records(rows)


# ---- building all tables -------------------------------------------------------------------------------------------


def build_tables(
    runs: Sequence[Run], evals: Sequence[Evaluation], fuses: Sequence[Fuse], curves: pd.DataFrame | None = None
) -> dict[str, Table]:
    """Every non-empty table of the report, in display order."""
    tables: dict[str, Table] = {}

    def add(name: str, title: str, description: str, data: pd.DataFrame, display: pd.DataFrame | None = None) -> None:
        if not data.empty:
            data = data.reset_index(drop=True)
            tables[name] = Table(name, title, description, data, display if display is not None else data)

    if runs:
        final = final_table(runs)
        overview, overview_display = overview_table(final)
        add(
            "overview",
            "Overview",
            "The final table at a glance: mean score (fully aligned rate) at each configuration's last evaluated "
            "epoch, mean over seeds.",
            overview,
            overview_display,
        )
        add(
            "final",
            "Final alignment",
            "Each run's last evaluated epoch; mean ± 95% t-interval over seeds (no interval for one seed). "
            f"'{BASE_LABEL}' is the model before any update.",
            final,
            display_final(final),
        )
        rise = rise_table(runs)
        add(
            "rise",
            "Rise over the base model",
            "(last evaluated epoch) − (epoch 0), same runs; p from the named two-sided paired test. With one seed the "
            "pairs are that run's prompts, which tests that run, not the method.",
            rise,
            display_rise(rise),
        )
        gain = gain_table(runs)
        add(
            "fusion_gain",
            "D-Fusion gain",
            "(with D-Fusion) − (without), same method and seed; p from the named two-sided paired test. "
            "With one shared seed the pairs are that seed's prompts, which tests those two runs, not the method.",
            gain,
            display_gain(gain),
        )
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
        add("runs", "Runs", "Every training run folder read.", inventory, display_numbers(inventory))
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
        add("curves", "Curve points", "Mean and 95% CI over seeds behind every curve.", curves, display_numbers(curves))
    return tables
