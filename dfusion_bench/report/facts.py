"""The scorers' per-image facts as the package's CSVs store them (the ``facts`` columns of ``dfusion eval``'s and
``dfusion fuse``'s tables: one JSON object per image, e.g. the verifier's ``{"object0": true, "relation": false}``),
and the names and order of the report's metrics: the fully aligned rate, each fact's rate, the mean score."""

from __future__ import annotations

import json
from collections.abc import Iterable

import pandas as pd


def fact_columns(column: pd.Series) -> pd.DataFrame:
    """A ``facts`` column (JSON objects, e.g. the verifier's ``{"object0": true, "relation": false}``) as one float
    column per fact that holds a bool (1.0 held, 0.0 not; NaN where a row does not name it or is not JSON)."""

    def parse(text: object) -> dict[str, float]:
        try:
            facts = json.loads(text) if isinstance(text, str) and text else {}
        except json.JSONDecodeError:
            return {}
        return {k: float(v) for k, v in facts.items() if isinstance(v, bool)} if isinstance(facts, dict) else {}

    return pd.DataFrame.from_records([parse(text) for text in column], index=column.index)


# ---- metric names: the fully aligned rate leads, each fact's rate follows, the mean score comes last ---------------

ALIGNED = "aligned_rate"
SCORE = "mean_score"
FACT_SUFFIX = "_rate"


def fact_metric(fact: str) -> str:
    """The metric name of a fact's rate: ``relation`` -> ``relation_rate``."""
    return f"{fact}{FACT_SUFFIX}"


def is_fact_metric(metric: str) -> bool:
    """Whether ``metric`` is a fact's rate (``relation_rate``; not the aligned rate)."""
    return metric.endswith(FACT_SUFFIX) and metric != ALIGNED


def fact_name(metric: str) -> str:
    """The fact a metric name stands for (``relation_rate`` -> ``relation``); the name itself otherwise."""
    return metric[: -len(FACT_SUFFIX)] if is_fact_metric(metric) else metric


def _fact_rank(fact: str) -> tuple[int, int, str]:
    """relation first, then object0, object1, ... by index, then count, then any other fact by name."""
    if fact == "relation":
        return (0, 0, fact)
    if fact.startswith("object") and fact[6:].isdigit():
        return (1, int(fact[6:]), fact)
    return (2, 0, fact) if fact == "count" else (3, 0, fact)


def order_metrics(metrics: Iterable[str]) -> list[str]:
    """``metrics`` (unique) in headline order: the aligned rate, each fact rate (:func:`_fact_rank`), the mean score,
    then anything else by name."""

    def rank(metric: str) -> tuple[int, tuple[int, int, str]]:
        if metric == ALIGNED:
            return (0, (0, 0, ""))
        if metric == SCORE:
            return (2, (0, 0, ""))
        if is_fact_metric(metric):
            return (1, _fact_rank(fact_name(metric)))
        return (3, (0, 0, metric))

    return sorted(dict.fromkeys(metrics), key=rank)


def metric_label(metric: str) -> str:
    """A metric's display name: ``aligned rate``, ``relation rate``, ``mean score``."""
    return metric.replace("_", " ")
