"""``dfusion report``: table numbers against hand computations, files, round-trips, re-runs, bad input, Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import report_fixtures as fx
import typer
from PIL import Image
from typer.testing import CliRunner

from dfusion_bench.cli.report import report
from dfusion_bench.errors import UserError
from dfusion_bench.report import build_report, load_report_tables, stats
from dfusion_bench.report import curves as curves_mod
from dfusion_bench.report.bookkeeping import fuse_facts_table
from dfusion_bench.report.collect import ReportWarning, collect
from dfusion_bench.report.frames import runs_frame
from dfusion_bench.report.paired import paired_tables
from dfusion_bench.report.rise import rise_table
from dfusion_bench.report.summary import rise_summary
from dfusion_bench.report.table_io import to_latex, to_markdown
from dfusion_bench.report.tables import final_table, gain_table

CHROMIUM = Path("/usr/bin/chromium")
T_975_DF1 = math.tan(math.pi * 0.475)  # Student t with 1 d.o.f. is Cauchy: its 97.5% quantile is tan(0.475 pi)


TABLES = (  # every table the fixtures' report holds
    *("overview", "fusion_minus_plain", "final", "summary", "summary_facts", "rise", "fusion_gain", "paired"),
    *("facts", "training", "runs", "evals", "fuse", "fuse_facts", "curves"),
)
SPREAD = 0.05 + fx.SAMPLE_SPREAD  # every image of a multi-seed run lies within this of the run's mean


def _row(frame: pd.DataFrame, **match: object) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for key, value in match.items():
        mask &= frame[key] == value
    rows = frame[mask]
    assert len(rows) == 1, f"{len(rows)} rows match {match}"
    return rows.iloc[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every kind of input, and one report built from all of them."""
    root = tmp_path_factory.mktemp("report")
    paths = fx.write_everything(root / "in")
    out = root / "out"
    paths["index"] = build_report([paths["runs"], paths["eval"], paths["base_eval"], paths["fuse"]], out)
    paths["out"] = out
    return paths


@pytest.fixture(scope="module")
def tables(built: dict[str, Path]) -> dict[str, pd.DataFrame]:
    return load_report_tables(built["out"])


# ---- statistics against hand computations -------------------------------------------------------------------------


def test_mean_ci_is_the_student_t_interval() -> None:
    ci = stats.mean_ci([0.70, 0.80])
    assert ci.mean == pytest.approx(0.75)
    assert ci.half_width == pytest.approx(T_975_DF1 * 0.05)  # s / sqrt(2) = |a - b| / 2
    assert ci.n == 2
    single = stats.mean_ci([0.3])
    assert single.mean == pytest.approx(0.3) and math.isnan(single.half_width) and single.n == 1


def test_final_table_mean_and_bootstrap_interval(tables: dict[str, pd.DataFrame]) -> None:
    final = tables["final"]
    row = _row(final, template=fx.TEMPLATE, split="test", model="dpo + D-Fusion")
    assert row["mean_score"] == pytest.approx(0.75, abs=1e-9)
    # no t-interval from two seeds (that was 0.75 +- 0.635): the bootstrap over prompts and images of both seeds
    # moves within the spread of the images (0.75 +- 0.055), and with two seeds the seed level is not resampled
    assert 0.75 - SPREAD <= row["mean_score_low"] < 0.75 < row["mean_score_high"] <= 0.75 + SPREAD
    assert (row["n_seeds"], row["seeds"], row["epoch"], row["n_images"]) == (2, "0,1", fx.EPOCHS, 24)
    assert row["resampled"] == "prompts, images" and "mean_score_ci95" not in final
    assert (row["aligned_rate"], row["aligned_rate_low"], row["aligned_rate_high"]) == (1.0, 1.0, 1.0)
    plain = _row(final, template=fx.TEMPLATE, split="train", model="ddpo")
    assert plain["mean_score"] == pytest.approx((0.52 + 0.58) / 2 + fx.TRAIN_SHIFT, abs=1e-9)
    single = _row(final, template=fx.SINGLE_TEMPLATE, split="test", model="pg")
    mean = sum(fx.SINGLE_WITHOUT) / len(fx.SINGLE_WITHOUT)
    assert single["n_seeds"] == 1 and single["mean_score"] == pytest.approx(mean, abs=1e-9)
    # one seed still has a band: its prompts and images, resampled
    assert min(fx.SINGLE_WITHOUT) <= single["mean_score_low"] < mean < single["mean_score_high"]
    assert single["mean_score_high"] <= max(fx.SINGLE_WITHOUT) + fx.SAMPLE_SPREAD


def test_final_table_metrics_lead_with_the_aligned_rate(tables: dict[str, pd.DataFrame]) -> None:
    metrics = [c for c in tables["final"].columns if f"{c}_low" in tables["final"].columns]
    assert metrics == ["aligned_rate", "ok_rate", "mean_score"]  # the fixture's one boolean fact is "ok"


def test_final_table_has_the_base_model_row_first(tables: dict[str, pd.DataFrame]) -> None:
    final = tables["final"]
    group = final[(final["template"] == fx.TEMPLATE) & (final["split"] == "test")]
    base = group.iloc[0]
    assert base["model"] == "base (epoch 0)" and base["epoch"] == 0 and pd.isna(base["fusion"])
    assert base["mean_score"] == pytest.approx((0.40 + 0.44) / 2, abs=1e-9)
    assert 0.42 - 0.02 - SPREAD <= base["mean_score_low"] < 0.42 < base["mean_score_high"] <= 0.42 + 0.02 + SPREAD
    assert base["n_seeds"] == 2  # eight runs share two seeds: two base-model measurements, not eight
    assert base["n_images"] == 24


def test_identical_base_evaluations_enter_the_interval_once(tmp_path: Path) -> None:
    """Runs of two seeds from the same base model render the same epoch-0 images: one measurement, not two."""
    for seed, final in ((0, 0.7), (1, 0.8)):
        fx.write_run(tmp_path / f"s{seed}", fx.RunSpec("t", "dpo", False, seed, fx.linear(0.4, final)))
    base = _row(final_table(collect([tmp_path]).runs), split="test", model="base (epoch 0)")
    assert (base["n_seeds"], base["n_images"], base["resampled"]) == (2, 12, "prompts, images")


def test_fusion_gain_is_seed_paired_t_test(tables: dict[str, pd.DataFrame]) -> None:
    row = _row(tables["fusion_gain"], template=fx.TEMPLATE, split="test", method="dpo", metric="mean_score")
    # differences 0.10 and 0.15: mean 0.125, sd 0.025 * sqrt(2), t = 0.125 / 0.025 = 5 on 1 d.o.f. (Cauchy)
    assert row["gain"] == pytest.approx(0.125, abs=1e-9)
    assert row["with_fusion"] == pytest.approx(0.75, abs=1e-9)
    assert row["without_fusion"] == pytest.approx(0.625, abs=1e-9)
    assert row["p_value"] == pytest.approx(1 - 2 * math.atan(5) / math.pi, rel=1e-6)
    # every image pair differs by 0.10 (seed 0) or 0.15 (seed 1); two seeds are not resampled, and each replicate
    # draws as many images of each seed, so the interval is the point 0.125 (seed-to-seed spread is not shown)
    assert (row["gain_low"], row["gain_high"]) == pytest.approx((0.125, 0.125), abs=1e-9)
    assert (row["test"], row["unit"], row["n"], row["seeds"]) == (stats.SEED_TEST, "seeds", 2, "0,1")


def test_fusion_gain_with_one_seed_is_wilcoxon_over_prompts(tables: dict[str, pd.DataFrame]) -> None:
    row = _row(tables["fusion_gain"], template=fx.SINGLE_TEMPLATE, split="test", method="pg", metric="mean_score")
    # six prompts, every difference positive: the exact two-sided signed-rank p-value is 2 / 2**6
    assert row["p_value"] == pytest.approx(2 / 2**6)
    assert (row["test"], row["unit"], row["n"], row["seeds"]) == (stats.PROMPT_TEST, "prompts", 6, str(fx.SINGLE_SEED))
    assert row["gain"] == pytest.approx(sum(fx.SINGLE_GAINS) / len(fx.SINGLE_GAINS), abs=1e-9)


def test_fusion_gain_without_a_shared_seed_is_untested(tmp_path: Path) -> None:
    fx.write_run(tmp_path / "a", fx.RunSpec("t", "dpo", True, 0, fx.linear(0.4, 0.7)))
    fx.write_run(tmp_path / "b", fx.RunSpec("t", "dpo", False, 1, fx.linear(0.4, 0.6)))
    with pytest.warns(ReportWarning, match="no seed run both"):
        gain = gain_table(collect([tmp_path]).runs)
    row = _row(gain, split="test", metric="mean_score")
    assert row["test"] == stats.NO_TEST and row["n"] == 0 and math.isnan(row["p_value"])
    assert row["gain"] == pytest.approx(0.1, abs=1e-9)


def test_rise_over_base_is_seed_paired_t_test(tables: dict[str, pd.DataFrame]) -> None:
    row = _row(tables["rise"], template=fx.TEMPLATE, split="test", model="dpo + D-Fusion", metric="mean_score")
    # rises 0.70 - 0.40 = 0.30 and 0.80 - 0.44 = 0.36: mean 0.33, sem 0.03, t = 11 on 1 d.o.f. (Cauchy)
    assert (row["base"], row["final"], row["rise"]) == pytest.approx((0.42, 0.75, 0.33), abs=1e-9)
    assert row["p_value"] == pytest.approx(1 - 2 * math.atan(11) / math.pi, rel=1e-6)
    # each image rises by 0.30 (seed 0) or 0.36 (seed 1): as in the gain, a zero-width interval at the mean
    assert (row["rise_low"], row["rise_high"]) == pytest.approx((0.33, 0.33), abs=1e-9)
    assert (row["test"], row["unit"], row["n"], row["seeds"]) == (stats.SEED_TEST, "seeds", 2, "0,1")


def test_rise_over_base_with_one_seed_is_wilcoxon_over_prompts(tables: dict[str, pd.DataFrame]) -> None:
    row = _row(tables["rise"], template=fx.SINGLE_TEMPLATE, split="train", model="pg", metric="mean_score")
    rises = [f - b for f, b in zip(fx.SINGLE_WITHOUT, fx.SINGLE_BASE, strict=True)]
    assert row["rise"] == pytest.approx(sum(rises) / len(rises), abs=1e-9)
    assert row["p_value"] == pytest.approx(2 / 2**6)  # six prompts, every rise positive
    assert (row["test"], row["unit"], row["n"]) == (stats.PROMPT_TEST, "prompts", 6)
    assert min(rises) <= row["rise_low"] < row["rise"] < row["rise_high"] <= max(rises)


def test_paired_table_is_wilcoxon_over_shared_images(tables: dict[str, pd.DataFrame]) -> None:
    """The dpo + D-Fusion eval against the base eval: 12 images, each +0.1 (verifier) or +0.05 (clip, half the
    scores); all 12 differences positive and tied, so the exact two-sided signed-rank p is 2 / 2**12."""
    paired = tables["paired"]
    row = _row(paired, scorer="verifier", metric="mean_score")
    n = 2 * len(fx.PROMPTS)
    assert (row["model"], row["n"], row["test"]) == ("dpo + D-Fusion", n, "Wilcoxon signed-rank over images")
    assert (row["base"], row["model_value"]) == pytest.approx((0.6, 0.7), abs=1e-12)
    assert (row["difference"], row["difference_ci95"]) == pytest.approx((0.1, 0.0), abs=1e-12)
    assert row["p_value"] == pytest.approx(2 / 2**n)
    assert _row(paired, scorer="clip", metric="mean_score")["difference"] == pytest.approx(0.05, abs=1e-12)
    aligned = _row(paired, scorer="verifier", metric="aligned_rate")  # every score is above 0.5: all aligned
    assert (aligned["base"], aligned["difference"]) == (1.0, 0.0) and math.isnan(aligned["p_value"])
    assert set(paired["metric"]) == {"mean_score", "aligned_rate"} and len(paired) == 3  # clip has no aligned rate


def test_paired_table_needs_a_base_of_the_same_weights(tmp_path: Path) -> None:
    fx.write_eval(tmp_path / "model", run="r")
    fx.write_eval(tmp_path / "base", base=True, weights="other")
    with pytest.warns(ReportWarning, match="no base-model evaluation shares"):
        frame, facts = paired_tables(collect([tmp_path]).evals)
    assert frame.empty and facts.empty


def test_facts_table_pairs_each_boolean_fact(tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    # the fixture: only the first image of each prompt names its facts ({"items": [...], "ok": true} on both sides)
    (row,) = [r for _, r in tables["facts"].iterrows()]  # "items" is a list, not a fact; clip has no facts
    assert (row["metric"], row["scorer"], row["n"]) == ("ok", "verifier", len(fx.PROMPTS))
    assert (row["base"], row["model_value"], row["difference"]) == (1.0, 1.0, 0.0)
    # a fact that training changed: "relation" holds in every model image, in 8 of the base's first 11 (its 12th
    # image, unreadable on both sides, drops out)
    model, base = fx.write_eval(tmp_path / "model", run="r"), fx.write_eval(tmp_path / "base", base=True)
    for folder, held in ((model, [True] * 12), (base, [True] * 8 + [False] * 4)):
        samples = pd.read_csv(folder / "samples.csv")
        verifier = samples["scorer"] == "verifier"
        facts = [json.dumps({"object0": True, "relation": h}) for h in held]
        samples["facts"] = samples["facts"].astype(object)
        samples.loc[verifier, "facts"] = facts[:-1] + ["not json"]  # an unreadable row is left out, not counted
        samples.to_csv(folder / "samples.csv", index=False)
    paired, facts = paired_tables(collect([tmp_path]).evals)
    assert list(facts["metric"]) == ["object0", "relation"] and set(paired["metric"]) == {"mean_score", "aligned_rate"}
    relation = _row(facts, metric="relation")
    assert (relation["base"], relation["model_value"], relation["n"]) == pytest.approx((8 / 11, 1.0, 11))
    assert relation["difference"] == pytest.approx(3 / 11) and relation["p_value"] == pytest.approx(2 / 2**3)


def test_fuse_facts_table_says_what_fusion_did_to_each_fact(tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    frame = tables["fuse_facts"]  # the fixture's three triples (fx.FUSE_FACTS)
    assert list(frame["fact"]) == ["object0", "count"] and set(frame["n_triples"]) == {3}
    object0, count = _row(frame, fact="object0"), _row(frame, fact="count")
    assert (object0["reference"], object0["base"], object0["target"]) == pytest.approx((1.0, 1 / 3, 2 / 3))
    assert (object0["repaired"], object0["broken"]) == (0.5, 0.0)  # one of two missing object0s repaired
    assert count["target_minus_base"] == pytest.approx(-1 / 3) and count["broken"] == pytest.approx(1 / 3)
    assert math.isnan(count["repaired"])  # no base lacked the count
    old = fx.write_fuse(tmp_path / "old")  # a fuse folder written before facts were recorded has no rows
    triples = pd.read_csv(old / "triples.csv")
    triples.drop(columns=["target_facts"]).to_csv(old / "triples.csv", index=False)
    assert fuse_facts_table(collect([old]).fuses).empty


def test_overview_pivots_the_final_table(tables: dict[str, pd.DataFrame]) -> None:
    overview = tables["overview"]
    models = ["base (epoch 0)", "dpo", "dpo + D-Fusion", "ddpo", "ddpo + D-Fusion"]
    row = _row(overview, template=fx.TEMPLATE, split="test")
    assert [c for c in overview.columns if c in models or c in ("pg", "pg + D-Fusion")][:5] == models
    final = tables["final"]
    for model in models:
        expected = _row(final, template=fx.TEMPLATE, split="test", model=model)
        assert row[model] == pytest.approx(expected["mean_score"], abs=1e-12)
        assert row[f"{model} aligned"] == pytest.approx(expected["aligned_rate"], abs=1e-12)
    assert pd.isna(row["pg"])  # pg ran on the other template only


# ---- files ---------------------------------------------------------------------------------------------------------


def test_report_writes_curves_tables_and_index(built: dict[str, Path]) -> None:
    out = built["out"]
    assert built["index"] == out / "index.html"
    for split in ("train", "test"):
        for metric in ("mean_score", "aligned_rate"):
            png = out / "curves" / f"{fx.TEMPLATE}_{split}_{metric}.png"
            with Image.open(png) as image:
                assert image.format == "PNG" and image.size[0] > 300
            svg = (out / "curves" / f"{fx.TEMPLATE}_{split}_{metric}.svg").read_text()
            assert "<svg" in svg and "dpo + D-Fusion" in svg  # text kept as text: small, searchable
            assert png.stat().st_size < 200_000
    for name in TABLES:
        for ext in ("csv", "parquet", "md", "tex"):
            assert (out / "tables" / f"{name}.{ext}").stat().st_size > 0, f"{name}.{ext}"
    md = (out / "tables" / "final.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Template"))
    assert header.index("Aligned rate [95% CI]") < header.index("Ok rate [95% CI]") < header.index("Mean score [95%")
    assert "| 0,1 (2) | 1.000 [1.000, 1.000] |" in md  # dpo + D-Fusion: every final image aligned
    tex = (out / "tables" / "final.tex").read_text()
    assert r"1.000 [1.000, 1.000]" in tex and r"\begin{tabular}" in tex


def test_report_writes_the_per_run_summary(built: dict[str, Path], tables: dict[str, pd.DataFrame]) -> None:
    """``dfusion report RUNS --out DIR`` writes DIR/tables/summary.csv: the per-run rise of rise_summary(RUNS)."""
    columns = ["method", "fusion", "suite", "seed", "split", "aligned_before", "aligned_after", "rise", "ci_low"]
    written = pd.read_csv(built["out"] / "tables" / "summary.csv")
    assert list(written.columns) == [*columns, "ci_high"]
    pd.testing.assert_frame_equal(written, rise_summary([built["runs"]]), check_dtype=False)
    assert (built["out"] / "tables" / "summary.md").is_file() and "summary_facts" in tables
    assert len(written) == 2 * len(collect([built["runs"]]).runs)


def test_index_is_self_contained(built: dict[str, Path]) -> None:
    out, page = built["out"], built["index"].read_text()
    sources = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert sources, "no images or links"
    for src in sources:
        assert not re.match(r"^[a-z]+:|^/", src), f"{src} is not a relative path inside the report"
        assert (out / src).is_file(), f"{src} missing from the report folder"
    assert "<script" not in page and "http://" not in page and "https://" not in page
    images = [s for s in sources if s.startswith("images/")]
    assert any("/fuse/" in s for s in images) and any("/evals/" in s for s in images)
    assert any(s.endswith("epoch-0000.png") for s in images) and any(s.endswith("epoch-0003.png") for s in images)
    assert "reference 0.900 | base 0.200 | target 0.100" in page  # triple 0's scores, from triples.csv
    assert "D-Fusion gain" in page and "Wilcoxon signed-rank over prompts (seed 7)" in page


def test_identical_images_are_stored_once(built: dict[str, Path]) -> None:
    """The fixture's runs share their epoch-0 grids (same bytes per fusion setting): one file each, shown by all."""
    out, page = built["out"], built["index"].read_text()
    files = [p for p in (out / "images").rglob("*.png")]
    contents = [p.read_bytes() for p in files]
    assert len(set(contents)) == len(contents), "an image is stored twice"
    shown = re.findall(r'src="(images/runs/[^"]+)"', page)
    n_runs = len(collect([built["runs"]]).runs)
    assert len(shown) == n_runs * 4  # train and test, before and after, for every run
    assert len(set(shown)) < len(shown)  # the shared epoch-0 grids are referenced, not copied
    assert all((out / src).is_file() for src in shown)


def test_curve_bands_are_bootstrap_intervals(built: dict[str, Path], tmp_path: Path) -> None:
    runs = collect([built["runs"]]).runs
    points = curves_mod.curve_points(runs)
    mean = points[(points["metric"] == "mean_score") & (points["split"] == "test")]
    multi = curves_mod.plot_curve(mean[mean["template"] == fx.TEMPLATE], "t", "mean_score")
    single = curves_mod.plot_curve(mean[mean["template"] == fx.SINGLE_TEMPLATE], "t", "mean_score")
    assert len(multi.axes[0].lines) == 4 and len(multi.axes[0].collections) == 4  # one band per line
    # one seed: still a band, from its prompts and images (the legend says how many seeds and points)
    assert len(single.axes[0].lines) == 2 and len(single.axes[0].collections) == 2
    labels = [t.get_text() for t in single.axes[0].get_legend().get_texts()]
    assert labels == ["pg (1 seed, 4 points)", "pg + D-Fusion (1 seed, 4 points)"]
    epoch3 = _row(mean, template=fx.TEMPLATE, model="dpo", epoch=3)
    assert epoch3["mean"] == pytest.approx(0.625, abs=1e-9) and epoch3["n"] == 2 and epoch3["n_images"] == 24
    assert 0.625 - SPREAD <= epoch3["low"] < 0.625 < epoch3["high"] <= 0.625 + SPREAD
    assert (epoch3["resampled"], epoch3["points"]) == ("prompts, images", fx.EPOCHS + 1)
    zero = _row(mean, template=fx.SINGLE_TEMPLATE, model="pg", epoch=0)
    assert zero["n_images"] == 12 and zero["low"] < zero["mean"] < zero["high"]
    # a seed without its per-image CSV at an epoch: no band there (and never a t-interval)
    paths = fx.write_multi_seed_runs(tmp_path / "runs")
    (paths[0] / "eval" / "epoch-0002" / "test.csv").unlink()
    broken = curves_mod.curve_points(collect([tmp_path / "runs"]).runs)
    hit = _row(broken, model="dpo + D-Fusion", split="test", metric="mean_score", epoch=2)
    assert math.isnan(hit["low"]) and math.isnan(hit["high"]) and hit["n"] == 2 and hit["resampled"] == ""
    assert not math.isnan(_row(broken, model="dpo + D-Fusion", split="test", metric="mean_score", epoch=3)["low"])
    line = broken[
        (broken["model"] == "dpo + D-Fusion") & (broken["split"] == "test") & (broken["metric"] == "mean_score")
    ]
    drawn = curves_mod.plot_curve(line, "t", "mean_score").axes[0].collections
    assert len(drawn) == 2 and len(drawn[1].get_segments()) == 1  # the band, and a bar at epoch 3 (no neighbour)


def test_curves_lead_with_the_aligned_rate_and_show_each_fact(built: dict[str, Path]) -> None:
    files = sorted(p.name for p in (built["out"] / "curves").glob(f"{fx.TEMPLATE}_test_*.svg"))
    assert files == [f"{fx.TEMPLATE}_test_{m}.svg" for m in ("aligned_rate", "mean_score", "ok_rate")]
    page = built["index"].read_text()
    shown = re.findall(rf'src="curves/{fx.TEMPLATE}_test_([a-z0-9_]+)\.png"', page)
    assert shown == ["aligned_rate", "ok_rate", "mean_score"]  # on the page: aligned rate, each fact, mean score
    assert "4 evaluation points per run" in page


def test_runs_with_fewer_than_six_evaluation_points_are_flagged(tmp_path: Path) -> None:
    fx.write_run(tmp_path / "short", fx.RunSpec("t", "dpo", True, 0, fx.linear(0.4, 0.7), epochs=4))
    fx.write_run(tmp_path / "long", fx.RunSpec("t", "dpo", False, 0, fx.linear(0.4, 0.7), epochs=5))
    runs = collect([tmp_path]).runs
    with pytest.warns(ReportWarning, match=r"1 of 2 runs have fewer than 6 evaluation points.*: short \(5\)$"):
        curves_mod.curve_points(runs)
    inventory = runs_frame(runs)
    points = dict(zip(inventory["run"].map(lambda p: Path(p).name), inventory["eval_points"], strict=True))
    assert points == {"long": 6, "short": 5}


def test_samples_seen_axis(tmp_path: Path) -> None:
    runs = fx.write_single_seed_pair(tmp_path / "in")
    build_report(runs, tmp_path / "out", x="samples_seen")
    assert (tmp_path / "out" / "curves" / f"{fx.SINGLE_TEMPLATE}_test_mean_score_by_samples.svg").is_file()
    assert not (tmp_path / "out" / "curves" / f"{fx.SINGLE_TEMPLATE}_test_mean_score.svg").exists()


def test_markdown_and_latex_escape_cells() -> None:
    frame = pd.DataFrame({"a_b": ["x&y|z"], "c": ["50% ± 1"]})
    assert "x&y\\|z" in to_markdown(frame)
    tex = to_latex(frame)
    assert r"a\_b" in tex and r"x\&y|z" in tex and r"50\% $\pm$ 1" in tex


# ---- round trip, re-runs, damaged input ----------------------------------------------------------------------------


def test_load_report_tables_round_trips(built: dict[str, Path], tables: dict[str, pd.DataFrame]) -> None:
    runs = collect([built["runs"]]).runs
    pd.testing.assert_frame_equal(tables["final"], final_table(runs))
    pd.testing.assert_frame_equal(tables["fusion_gain"], gain_table(runs))
    pd.testing.assert_frame_equal(tables["rise"], rise_table(runs))
    assert set(tables) == set(TABLES)
    csv = pd.read_csv(built["out"] / "tables" / "fusion_gain.csv")
    assert csv["p_value"].tolist() == pytest.approx(tables["fusion_gain"]["p_value"].tolist(), nan_ok=True)


@pytest.mark.slow
def test_rerun_overwrites_only_its_own_files(tmp_path: Path) -> None:
    paths = fx.write_everything(tmp_path / "in")
    out = tmp_path / "out"
    build_report([paths["runs"], paths["eval"], paths["fuse"]], out)
    (out / "mine.txt").write_text("kept")
    first = json.loads((out / "report.json").read_text())["files"]
    build_report([paths["runs"], paths["eval"], paths["fuse"]], out)
    assert json.loads((out / "report.json").read_text())["files"] == first

    build_report([paths["runs"] / fx.SINGLE_TEMPLATE], out)  # fewer inputs: the rest must go
    files = json.loads((out / "report.json").read_text())["files"]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([*files, "mine.txt", "report.json"])
    assert not (out / "curves" / f"{fx.TEMPLATE}_test_mean_score.png").exists()
    assert not (out / "images" / "fuse").exists() and not (out / "tables" / "evals.csv").exists()
    assert fx.TEMPLATE not in (out / "index.html").read_text()
    assert set(load_report_tables(out)["final"]["template"]) == {fx.SINGLE_TEMPLATE}


def test_truncated_last_metrics_line_is_skipped(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    fx.write_multi_seed_runs(runs)
    metrics = runs / fx.TEMPLATE / fx.run_name("dpo", True, 1) / "metrics.jsonl"
    lines = metrics.read_text().splitlines()[:-2]  # drop epoch 3 (train, test) ...
    metrics.write_text("\n".join(lines) + '\n{"epoch": 3, "split": "te')  # ... and leave it half written
    with pytest.warns(ReportWarning) as record:
        build_report([runs], tmp_path / "out")
    messages = [str(w.message) for w in record]
    assert any("metrics.jsonl:7: unparsable line" in m for m in messages), messages
    assert any("end at different epochs (2, 3)" in m for m in messages), messages
    row = _row(load_report_tables(tmp_path / "out")["final"], split="test", model="dpo + D-Fusion")
    at_epoch_2 = 0.44 + (0.80 - 0.44) * 2 / 3
    assert row["mean_score"] == pytest.approx((0.70 + at_epoch_2) / 2, abs=1e-9)
    assert (row["epoch_min"], row["epoch"], row["n_seeds"]) == (2, 3, 2)
    assert "unparsable line" in (tmp_path / "out" / "index.html").read_text()


def test_a_repeated_seed_is_counted_once(tmp_path: Path) -> None:
    runs = fx.write_single_seed_pair(tmp_path / "runs")
    shutil.copytree(runs[0], tmp_path / "runs" / "again")
    with pytest.warns(ReportWarning, match="left out"):
        found = collect([tmp_path / "runs"])
    assert len(found.runs) == 2


def test_bad_inputs_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_report([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="nothing to report"), pytest.warns(ReportWarning):
        build_report([tmp_path / "empty"], tmp_path / "out")
    junk = tmp_path / "junk" / "a" / "b"
    junk.mkdir(parents=True)
    (junk / "notes.json").write_text("{}")
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match="nothing to report"), pytest.warns(ReportWarning):
        build_report([tmp_path / "junk"], tmp_path / "out")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text('{"command": "train", "config": {"method": "dpo"')
    with pytest.raises(UserError, match="nothing to report"), pytest.warns(ReportWarning, match="run.json"):
        build_report([broken], tmp_path / "out")
    with pytest.raises(UserError, match="is a file"):
        build_report([tmp_path / "junk" / "readme.txt"], tmp_path / "out")
    run = fx.write_run(tmp_path / "run", fx.RunSpec("t", "dpo", True, 0, fx.linear(0.4, 0.7)))
    with pytest.raises(UserError, match="is a file"):
        build_report([run], tmp_path / "junk" / "readme.txt")
    with pytest.raises(UserError, match="no input"):
        build_report([], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_prints_where_the_report_is(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(report)
    runs = fx.write_single_seed_pair(tmp_path / "runs")
    result = CliRunner().invoke(app, [str(runs[0].parent), "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert f"report: {tmp_path / 'rep' / 'index.html'}" in result.output
    assert (tmp_path / "rep" / "tables" / "summary.csv").is_file()
    bad = CliRunner().invoke(app, [str(tmp_path / "nope"), "--out", str(tmp_path / "rep")])
    assert isinstance(bad.exception, UserError)


# ---- headless Chromium ---------------------------------------------------------------------------------------------


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    cmd = [str(CHROMIUM), *flags, f"--user-data-dir={profile}", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={"HOME": str(profile), "PATH": "/usr/bin:/bin"}
    )


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium missing (apt-get install -y chromium)")
def test_index_renders_in_headless_chromium(built: dict[str, Path], tmp_path: Path) -> None:
    url = built["index"].resolve().as_uri()
    shot = tmp_path / "shot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1200,2000", url], tmp_path / "profile")
    assert shot.is_file(), "no screenshot"
    with Image.open(shot) as image:
        assert image.size == (1200, 2000)
        colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colors is None or len(colors) > 16, "blank screenshot"
    dom = _chromium(["--dump-dom", url], tmp_path / "profile2").stdout
    assert "D-Fusion gain" in dom and "1.000 [1.000, 1.000]" in dom and stats.PROMPT_TEST in dom
    assert "base (epoch 0)" in dom
