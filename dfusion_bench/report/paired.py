"""Trained models against the base model on the same images: ``dfusion eval`` folders paired sample by sample.

A training run's own evaluations use few seeds per prompt (its curves need many points), which cannot resolve
differences of a point or two. ``dfusion eval --run RUN --samples-per-prompt 48`` re-evaluates a final policy on
more fixed seeds, and ``dfusion eval --model BASE`` the base model on the same ones. Because evaluation seeds are fixed
per (prompt, k), the two folders hold the same prompts with the same initial noise, so each trained-model image has
a base-model twin. This table pairs them on (prompt_index, prompt, seed) and tests the per-image differences with a
two-sided Wilcoxon signed-rank test (zero differences dropped, scipy's default). The ``facts`` table does the same
for each fact the scorer records per image (the verifier's ``object<i>``, ``relation``, ``count``): which of them
training changed.

A trained model's evaluation is paired with the base evaluation of the same template, split and scorer, from the same
base weights (``model_digest`` in ``run.json``) and sampler, that shares the most images with it. Where base
evaluations are given, an evaluation with no such base is left out with a warning.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pandas as pd

from dfusion_bench.report import stats
from dfusion_bench.report.collect import Evaluation, method_label, warn
from dfusion_bench.report.facts import fact_columns
from dfusion_bench.report.frames import CONFIG_COLUMNS, METRIC_NAMES, METRICS
from dfusion_bench.report.table_io import fmt, fmt_ci, fmt_p, key_cells
from dfusion_bench.rl.config import METHODS

PAIR_KEYS = ["prompt_index", "prompt", "seed"]
FACTS = "facts"  # samples.csv column: the scorer's per-image facts, JSON
SAMPLE_METRICS = {"score": "mean_score", "aligned": "aligned_rate"}  # samples.csv column -> metric name

PAIRED_COLUMNS = [
    *CONFIG_COLUMNS,
    "seed",
    "epoch",
    "metric",
    "base",
    "model_value",
    "difference",
    "difference_ci95",
    "test",
    "n",
    "p_value",
    "folder",
    "base_folder",
]


def _is_base(ev: Evaluation) -> bool:
    source = ev.summary.get("source")
    return not (isinstance(source, dict) and source.get("run")) and not ev.summary.get("method")


def _compatible(ev: Evaluation, base: Evaluation) -> bool:
    """Same template and split, and the same base weights and sampler where both folders record them."""
    if any(ev.summary.get(key) != base.summary.get(key) for key in ("template", "split")):
        return False
    for key in ("model_weights", "sampler"):
        a, b = getattr(ev, key), getattr(base, key)
        if a is not None and b is not None and a != b:
            return False
    return True


def _scored(ev: Evaluation, scorer: str) -> pd.DataFrame:
    samples = ev.samples
    if samples is None or not set(PAIR_KEYS) <= set(samples.columns):
        return pd.DataFrame(columns=[*PAIR_KEYS, *SAMPLE_METRICS])
    if "scorer" in samples:
        samples = samples[samples["scorer"].astype(str) == scorer]
    return samples[[*PAIR_KEYS, *(c for c in (*SAMPLE_METRICS, FACTS) if c in samples)]]


def _pairings(evals: Sequence[Evaluation]) -> Iterator[tuple[Evaluation, str, pd.DataFrame, Evaluation]]:
    """(trained-model evaluation, scorer, its samples merged with the base's on the same images — base columns
    suffixed ``_base`` — and that base evaluation), for every trained-model evaluation and scorer with a base."""
    bases = [ev for ev in evals if _is_base(ev)]
    if not bases:  # nothing to pair with: no table, and nothing to warn about
        return
    for ev in (ev for ev in evals if not _is_base(ev)):
        for scorer in sorted(ev.summary["scorers"]):
            mine = _scored(ev, scorer)
            candidates = [
                (mine.merge(_scored(b, scorer), on=PAIR_KEYS, suffixes=("", "_base")), b)
                for b in bases
                if _compatible(ev, b)
            ]
            # the base sharing the most images (on a tie, the last one read)
            pairs, base = max(reversed(candidates), key=lambda c: len(c[0]), default=(None, None))
            if pairs is None or base is None or pairs.empty:
                warn(f"{ev.path}: no base-model evaluation shares its {scorer} images; left out of the paired table")
                continue
            yield ev, scorer, pairs, base


def _compare(ev: Evaluation, scorer: str, base: Evaluation, metric: str, both: pd.DataFrame) -> dict[str, object]:
    """The row of ``metric`` for ``ev`` against ``base``: ``both`` holds the model's values (first column) and the
    base's (second) on the same images."""
    s = ev.summary
    source = s.get("source") if isinstance(s.get("source"), dict) else {}
    model, base_values = (both[c].to_numpy(float) for c in both.columns)
    test = stats.wilcoxon(model, base_values, stats.IMAGE_TEST)
    return {
        "template": str(s.get("template") or ""),
        "scorer": scorer,
        "split": str(s.get("split") or ""),
        "model": method_label(s.get("method"), s.get("fusion")),
        "method": s.get("method"),
        "fusion": bool(s.get("fusion")),
        "seed": s.get("seed"),
        "epoch": source.get("epoch"),
        "metric": metric,
        "base": float(base_values.mean()),
        "model_value": float(model.mean()),
        "difference": test.mean_difference,
        "difference_ci95": test.half_width,
        "test": test.test,
        "n": test.n,
        "p_value": test.p_value,
        "folder": str(ev.path),
        "base_folder": str(base.path),
    }


def _sorted(rows: list[dict[str, object]], order: Sequence[str]) -> pd.DataFrame:
    """The rows by template, scorer, split, then ``metric`` in ``order`` (names not in it last), then model."""
    frame = pd.DataFrame.from_records(rows, columns=PAIRED_COLUMNS)
    rank = {name: i for i, name in enumerate([*order, *METHODS])}
    return frame.sort_values(
        ["template", "scorer", "split", "metric", "method", "fusion", "seed"],
        key=lambda column: (
            column.map(lambda v: rank.get(v, len(rank))) if column.name in ("metric", "method") else column
        ),
        kind="stable",
    ).reset_index(drop=True)


def paired_tables(evals: Sequence[Evaluation]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every trained-model evaluation against its base on the same images, as two tables of the same columns:

    * ``paired``: one row per evaluation x scorer x metric (mean score, aligned rate);
    * ``facts``: one row per evaluation x scorer x fact the scorer checks (the verifier's objects, relation and
      count; ``metric`` names the fact), the rate at which it holds — which facts training changed.

    Each row has the model's value, the base's, the difference with its 95% t-interval and a Wilcoxon signed-rank p
    over the image pairs."""
    metric_rows, fact_rows, fact_order = [], [], []
    for ev, scorer, pairs, base in _pairings(evals):
        for column, metric in SAMPLE_METRICS.items():
            if column not in pairs or f"{column}_base" not in pairs:
                continue
            both = pairs[[column, f"{column}_base"]].apply(pd.to_numeric, errors="coerce").dropna()
            if not both.empty:
                metric_rows.append(_compare(ev, scorer, base, metric, both))
        if FACTS not in pairs or f"{FACTS}_base" not in pairs:
            continue
        model, base_facts = fact_columns(pairs[FACTS]), fact_columns(pairs[f"{FACTS}_base"])
        for fact in (f for f in model.columns if f in base_facts.columns):
            fact_order += [] if fact in fact_order else [fact]
            both = pd.concat([model[fact], base_facts[fact].rename(f"{fact}_base")], axis=1).dropna()
            if not both.empty:
                fact_rows.append(_compare(ev, scorer, base, fact, both))
    return _sorted(metric_rows, METRICS), _sorted(fact_rows, fact_order)


def display_paired(frame: pd.DataFrame, metric_header: str = "Metric") -> pd.DataFrame:
    rows = []
    for _, r in frame.iterrows():
        which = f" (seed {r['seed']}, epoch {r['epoch']})" if pd.notna(r["seed"]) else ""
        rows.append(
            {
                **key_cells(r, name=r["model"] + which),
                metric_header: METRIC_NAMES.get(r["metric"], r["metric"]),
                "Base": fmt(r["base"]),
                "Model value": fmt(r["model_value"]),
                "Difference ± 95% CI": fmt_ci(r["difference"], r["difference_ci95"]),
                "n images": str(r["n"]),
                "p": fmt_p(r["p_value"]),
            }
        )
    return pd.DataFrame.from_records(rows)
