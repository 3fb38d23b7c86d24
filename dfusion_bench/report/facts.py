"""The scorers' per-image facts as the package's CSVs store them (the ``facts`` columns of ``dfusion eval``'s and
``dfusion fuse``'s tables: one JSON object per image, e.g. the verifier's ``{"object0": true, "relation": false}``)."""

from __future__ import annotations

import json

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
