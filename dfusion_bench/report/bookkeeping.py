"""The report's bookkeeping tables: training logs per configuration, eval folders, fuse folders."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from dfusion_bench.report.collect import Evaluation, Fuse, Run, method_label
from dfusion_bench.report.facts import fact_columns

PHASES = ("sampling_s", "fusion_s", "scoring_s", "update_s", "eval_s")
ROLES = ("reference", "base", "target")  # triples.csv has a <role>_facts column for each


def training_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per template x scorer x configuration, the mean over seeds of each run's training-log summary."""
    per_run = []
    for run in runs:
        log = run.train_log
        if log.empty:
            continue
        row: dict[str, object] = {
            "template": run.template,
            "scorer": run.scorer,
            "model": run.label,
            "method": run.method,
            "fusion": run.fusion,
            "seed": run.seed,
            "epochs": int(log["epoch"].max()),
            "final_loss": _last(log, "loss"),
            "mean_pairs": _mean(log, "n_pairs"),
            "target_beats_base": _mean(log, "target_beats_base"),
        }
        for phase in PHASES:
            row[phase] = _mean(log, phase)
        row["epoch_s"] = float(np.nansum([row[p] for p in PHASES]))
        per_run.append(row)
    columns = ["template", "scorer", "model", "method", "fusion", "n_seeds", "epochs", "final_loss", "mean_pairs"]
    columns += ["target_beats_base", *PHASES, "epoch_s"]
    if not per_run:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame.from_records(per_run)
    keys = ["template", "scorer", "model", "method", "fusion"]
    values = [c for c in columns if c not in keys and c != "n_seeds"]
    grouped = frame.groupby(keys, as_index=False)
    summary = grouped[values].mean()
    summary["epochs"] = grouped["epochs"].max()["epochs"].astype(int)
    summary["n_seeds"] = grouped["seed"].nunique()["seed"].astype(int)
    return summary[columns]


def _mean(frame: pd.DataFrame, column: str) -> float:
    if column not in frame:
        return float("nan")
    values = pd.to_numeric(frame[column], errors="coerce")
    return float(values.mean()) if values.notna().any() else float("nan")


def _last(frame: pd.DataFrame, column: str) -> float:
    if column not in frame:
        return float("nan")
    values = pd.to_numeric(frame[column], errors="coerce").dropna()
    return float(values.iloc[-1]) if not values.empty else float("nan")


def evals_table(evals: Sequence[Evaluation]) -> pd.DataFrame:
    """One row per eval folder x scorer, straight from ``summary.json``."""
    rows = []
    for ev in evals:
        s = ev.summary
        source = s.get("source") if isinstance(s.get("source"), dict) else {}
        for scorer, values in s["scorers"].items():
            values = values if isinstance(values, dict) else {}
            rows.append(
                {
                    "folder": str(ev.path),
                    "template": str(s.get("template") or ""),
                    "split": str(s.get("split") or ""),
                    "model": method_label(s.get("method"), s.get("fusion")),
                    "seed": s.get("seed"),
                    "source_run": str(source.get("run") or ""),
                    "source_epoch": source.get("epoch"),
                    "source_model": str(source.get("model") or ""),
                    "scorer": str(scorer),
                    "mean_score": _number(values.get("mean_score")),
                    "aligned_rate": _number(values.get("aligned_rate")),
                    "n": values.get("n"),
                }
            )
    frame = pd.DataFrame.from_records(rows)
    for column in ("seed", "source_epoch", "n"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    return frame


def fuse_table(fuses: Sequence[Fuse]) -> pd.DataFrame:
    """One row per fuse folder: what was fused and how well targets beat their bases."""
    rows = []
    for fuse in fuses:
        m, c = fuse.manifest, fuse.config
        rows.append(
            {
                "folder": str(fuse.path),
                "template": str(c.get("template") or m.get("template") or ""),
                "split": str(m.get("split") or c.get("split") or ""),
                "scorer": str(m.get("scorer") or c.get("scorer") or ""),
                "n_samples": _count(m.get("n_samples")),
                "n_triples": _count(m.get("n_triples")),
                "target_beats_base_rate": _number(m.get("target_beats_base_rate")),
                "mean_gain_target_vs_base": _number(m.get("mean_gain_target_vs_base")),
                "mean_gain_reference_vs_base": _number(m.get("mean_gain_reference_vs_base")),
                "unet_evals_per_target_step": _number(m.get("unet_evals_per_target_step")),
            }
        )
    frame = pd.DataFrame.from_records(rows)
    for column in ("n_samples", "n_triples"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


def fuse_facts_table(fuses: Sequence[Fuse]) -> pd.DataFrame:
    """One row per fuse folder x fact its scorer checks (the verifier's objects, relation, count), from the per-triple
    facts in ``triples.csv``: the fraction of triples whose reference, base and target hold it, and per triple what
    fusion did to the base's fact — ``repaired``: of the triples whose base lacks it, the fraction whose target holds
    it; ``broken``: of those whose base holds it, the fraction whose target lacks it."""
    rows = []
    for fuse in fuses:
        t = fuse.triples
        if t is None or not all(f"{role}_facts" in t for role in ROLES):
            continue  # no triples table, or one written before facts were recorded
        reference, base, target = (fact_columns(t[f"{role}_facts"]) for role in ROLES)
        for fact in (f for f in target.columns if f in base.columns and f in reference.columns):
            both = pd.concat([base[fact].rename("base"), target[fact].rename("target")], axis=1).dropna()
            lacked, held = both[both.base == 0.0], both[both.base == 1.0]
            rows.append(
                {
                    "folder": str(fuse.path),
                    "template": str(fuse.config.get("template") or ""),
                    "n_triples": len(both),
                    "fact": str(fact),
                    "reference": float(reference[fact].mean()),
                    "base": float(both.base.mean()),
                    "target": float(both.target.mean()),
                    "target_minus_base": float(both.target.mean() - both.base.mean()),
                    "repaired": float(lacked.target.mean()) if len(lacked) else float("nan"),
                    "broken": float(1.0 - held.target.mean()) if len(held) else float("nan"),
                }
            )
    return pd.DataFrame.from_records(rows)


def _count(value: object) -> int | None:
    number = _number(value)
    return int(number) if math.isfinite(number) else None


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")
