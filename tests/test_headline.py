"""The headline tables: the per-run rise (``summary.csv``, and per fact) and D-Fusion minus plain with its MDE."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import report_fixtures as fx

from dfusion_bench.report import bootstrap as bs
from dfusion_bench.report.collect import collect
from dfusion_bench.report.frames import metric_columns, metrics_frame
from dfusion_bench.report.fusion_vs_plain import fusion_minus_plain
from dfusion_bench.report.summary import SUMMARY_COLUMNS, facts_summary_table, rise_by_run, rise_summary
from dfusion_bench.report.tables import build_tables

SUMMARY = ["method", "fusion", "suite", "seed", "split", "aligned_before", "aligned_after", "rise", "ci_low", "ci_high"]
FACTS = [*SUMMARY[:5], "fact", "before", "after", "rise", "ci_low", "ci_high"]


def _row(frame: pd.DataFrame, **match: object) -> pd.Series:
    rows = frame.loc[(frame[list(match)] == pd.Series(match)).all(axis=1)]
    assert len(rows) == 1, f"{len(rows)} rows match {match}"
    return rows.iloc[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multi-seed runs of the report fixtures, and a pg run whose aligned rate does not move on the whole: half
    the prompts become aligned, the other half stop being aligned."""
    root = tmp_path_factory.mktemp("headline")
    fx.write_multi_seed_runs(root / "runs")
    swap = fx.per_prompt([0.6, 0.6, 0.6, 0.4, 0.4, 0.4], [0.4, 0.4, 0.4, 0.6, 0.6, 0.6])
    fx.write_run(root / "runs" / "swap" / "pg-plain-s0", fx.RunSpec("swap", "pg", False, 0, swap))
    return root / "runs"


def test_summary_columns_and_known_rises(runs: Path) -> None:
    summary = rise_summary([runs])  # run folders, searched as the report does
    assert list(summary.columns) == SUMMARY == SUMMARY_COLUMNS
    assert len(summary) == (len(fx.FINAL_TEST) + 1) * 2  # every run x split
    # dpo + D-Fusion seed 0, test: no image aligned before (scores 0.35-0.45), every image after (0.65-0.75)
    row = _row(summary, method="dpo", fusion=True, suite=fx.TEMPLATE, seed=0, split="test")
    assert (row["aligned_before"], row["aligned_after"], row["rise"]) == (0.0, 1.0, 1.0)
    assert (row["ci_low"], row["ci_high"]) == (1.0, 1.0)  # every image pair rose by 1
    swap = _row(summary, suite="swap", split="test")
    assert (swap["aligned_before"], swap["aligned_after"], swap["rise"]) == (0.5, 0.5, 0.0)
    assert swap["ci_low"] < -0.2 and swap["ci_high"] > 0.2  # half the prompts lost, half gained


def test_fact_rises_per_run(runs: Path) -> None:
    facts = facts_summary_table(rise_by_run(collect([runs]).runs))
    assert list(facts.columns) == FACTS and set(facts["fact"]) == {"ok"}  # the fixtures' one boolean fact
    # the swap run's "ok" (score > 0.5, on each prompt's first image) moves with its aligned rate: 3 prompts up, 3 down
    swap = _row(facts, suite="swap", split="test", fact="ok")
    assert (swap["before"], swap["after"], swap["rise"]) == (0.5, 0.5, 0.0)
    assert swap["ci_low"] < 0 < swap["ci_high"]


def test_fusion_minus_plain_with_two_seeds(runs: Path) -> None:
    table = fusion_minus_plain(collect([runs]).runs)
    score = _row(table, template=fx.TEMPLATE, split="test", method="dpo", metric="mean_score")
    # fused - plain: 0.10 on every image of seed 0, 0.15 of seed 1; two seeds are kept as they are (not resampled)
    assert (score["fusion"], score["plain"], score["difference"]) == pytest.approx((0.75, 0.625, 0.125), abs=1e-9)
    assert (score["ci_low"], score["ci_high"], score["mde"]) == pytest.approx((0.125, 0.125, 0.0), abs=1e-9)
    assert (score["n_seeds"], score["seeds"], score["n_images"]) == (2, "0,1", 24)
    assert score["resampled"] == "prompts, images"
    aligned = _row(table, template=fx.TEMPLATE, split="test", method="dpo", metric="aligned_rate")
    assert (aligned["fusion"], aligned["plain"], aligned["difference"]) == (1.0, 1.0, 0.0)  # all aligned both ways
    group = table[(table["template"] == fx.TEMPLATE) & (table["split"] == "test") & (table["method"] == "dpo")]
    assert list(group["metric"]) == ["aligned_rate", "ok_rate", "mean_score"]  # the aligned rate leads


def test_fusion_minus_plain_resamples_three_seeds(tmp_path: Path) -> None:
    for seed, (fused, plain) in enumerate(((0.70, 0.60), (0.80, 0.65), (0.75, 0.70))):  # differences .10 .15 .05
        for fusion, final in ((True, fused), (False, plain)):
            spec = fx.RunSpec("t", "ddpo", fusion, seed, fx.linear(0.4, final))
            fx.write_run(tmp_path / fx.run_name("ddpo", fusion, seed), spec)
    row = _row(fusion_minus_plain(collect([tmp_path]).runs), split="test", metric="mean_score")
    assert row["difference"] == pytest.approx(0.10, abs=1e-9)
    # each replicate is the mean of three drawn seeds' differences: P(all .05) = P(all .15) = 1/27 > 2.5%
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.05, 0.15), abs=1e-9)
    assert (row["n_seeds"], row["n_images"], row["resampled"]) == (3, 36, "seeds, prompts, images")
    se = 0.05 * (2 / 3) ** 0.5 / 3**0.5  # sd of the mean of 3 draws from {.05, .10, .15}
    assert row["mde"] == pytest.approx(bs.mde(se), rel=0.1)


def test_fact_rates_come_from_metrics_lines_where_recorded(tmp_path: Path) -> None:
    """Newer runs log {fact: rate} per metrics line; older ones only have the per-image CSVs (the fixtures' "ok")."""
    run = fx.write_run(tmp_path / "run", fx.RunSpec("t", "dpo", False, 0, fx.linear(0.4, 0.7)))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for line in lines[2:]:  # epoch 0 keeps the CSV's rates
        line["facts"] = {"relation": 0.25, "ok": 0.75}
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    frame = metrics_frame(collect([run]).runs)
    assert metric_columns(frame) == ["aligned_rate", "relation_rate", "ok_rate", "mean_score"]
    later = frame[frame["epoch"] > 0]
    assert set(later["relation_rate"]) == {0.25} and set(later["ok_rate"]) == {0.75}
    zero = frame[(frame["epoch"] == 0) & (frame["split"] == "test")].iloc[0]
    assert zero["ok_rate"] == 0.0 and pd.isna(zero["relation_rate"])  # from the CSV: every first image below 0.5


def test_a_scorer_without_facts_or_alignment(tmp_path: Path) -> None:
    """A score-only scorer (compressibility, CLIP): no aligned rate, no facts; the tables keep the mean score."""
    run = fx.write_run(tmp_path / "run", fx.RunSpec("t", "dpo", False, 0, fx.linear(0.4, 0.7), scorer="clip"))
    for csv in run.glob("eval/*/*.csv"):
        pd.read_csv(csv).assign(aligned="", facts="").to_csv(csv, index=False)
    lines = [json.loads(line) | {"aligned_rate": None} for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    runs = collect([run]).runs
    tables = build_tables(runs, [], [])
    assert "summary" not in tables and "summary_facts" not in tables  # no aligned rate, no fact: nothing to say
    assert set(tables["rise"].data["metric"]) == {"mean_score"}
    assert rise_summary(runs).empty and list(rise_summary(runs).columns) == SUMMARY
