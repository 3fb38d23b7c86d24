"""The regression session's CPU form (what `nox -s regression` runs without GPU model paths), as CI runs it."""

from __future__ import annotations

import json

import pytest

from dfusion_bench.cli.regression import _run_command
from dfusion_bench.models.loading import EMBEDDED_MODEL
from dfusion_bench.studies.regression import BASELINE_FILE, run_regression


@pytest.mark.slow
@pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="the embedded model is not installed")
def test_regression_passes_on_the_embedded_world(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DFUSION_SD_MODEL", raising=False)
    monkeypatch.delenv("DFUSION_CLIP_CHECKPOINT", raising=False)
    result = run_regression(tmp_path / "regression", "cpu", _run_command)
    assert result["form"] == "embedded"
    assert result["failures"] == [], result
    assert json.loads((tmp_path / "regression" / "regression.json").read_text())["failures"] == []
    metrics = (tmp_path / "regression" / "dpo-plain" / "metrics.jsonl").read_text().splitlines()
    assert {json.loads(line)["split"] for line in metrics} == {"train"}  # the check evaluates only what it reads
    assert "embedded" in json.loads(BASELINE_FILE.read_text())


def test_regression_criteria_name_each_failure() -> None:
    from dfusion_bench.studies.regression import failures

    baseline = {
        "must_rise": ["dpo-plain"],
        "min_train_final": {"dpo-fusion": 0.9},
        "min_target_beats_base": 0.05,
        "margin": 0.0,
        "alpha": 0.05,
    }

    def result(plain_p: float, fusion_final: float, rate: float | None) -> dict:
        return {
            "dpo-plain": {"p_rise": plain_p, "rise": 0.01, "n": 64, "after": 0.95},
            "dpo-fusion": {"p_rise": 0.5, "rise": -0.01, "n": 64, "after": fusion_final},
            "target_beats_base": rate,
        }

    assert failures(result(0.01, 0.9, 0.05), baseline) == []
    found = failures(result(0.2, 0.89, 0.04), baseline)
    assert len(found) == 3
    assert found[0].startswith("dpo-plain: no rise above 0.0 at level 0.05 (mean +0.0100 over 64 images, p 0.200)")
    assert found[1].startswith("dpo-fusion: final train-split score 0.8900 < 0.9")
    assert found[2] == "target-beats-base 0.04 < baseline 0.05"
    assert failures(result(0.01, 0.95, None), baseline) == ["target-beats-base None < baseline 0.05"]


def _run_with_scores(folder, before: list[float], after: list[float]):
    import pandas as pd

    for epoch, scores in ((0, before), (2, after)):
        path = folder / "eval" / f"epoch-{epoch:04d}"
        path.mkdir(parents=True)
        rows = {"prompt_index": [i // 2 for i in range(len(scores))], "seed": list(range(len(scores)))}
        pd.DataFrame({**rows, "score": scores}).to_csv(path / "train.csv", index=False)
    return folder


def test_a_rise_must_be_significant_per_image_and_exceed_the_margin(tmp_path) -> None:
    """Float noise (every image up by 1e-7) passes no margin; a real rise on most images passes a small one; one
    lucky image out of 16 is not a rise."""
    from dfusion_bench.studies.regression import paired_rise

    noise = _run_with_scores(tmp_path / "noise", [0.5] * 16, [0.5 + 1e-7] * 16)
    assert paired_rise(noise, margin=1e-3)["p_rise"] > 0.05
    rise = _run_with_scores(tmp_path / "rise", [0.5] * 16, [0.5 + 0.01 * (1 + i % 3) for i in range(16)])
    result = paired_rise(rise, margin=1e-3)
    assert result["p_rise"] < 0.05 and result["rise"] == pytest.approx(0.02, abs=2e-3) and result["n"] == 16
    lucky = _run_with_scores(tmp_path / "lucky", [0.5] * 16, [0.5] * 15 + [0.9])
    assert paired_rise(lucky)["p_rise"] > 0.05


def test_candidate_baseline_from_a_measurement() -> None:
    from dfusion_bench.studies.regression import candidate_baseline, failures

    result = {
        "dpo-plain": {"n": 64, "before": 0.9, "after": 0.95, "rise": 0.05, "rise_se": 0.01, "after_se": 0.01,
                      "p_rise": 0.001},
        "dpo-fusion": {"n": 64, "before": 0.9, "after": 0.88, "rise": -0.02, "rise_se": 0.01, "after_se": 0.02,
                       "p_rise": 0.9},
        "target_beats_base": 0.1, "triples": 20, "model_digest": "x",
    }  # fmt: skip
    candidate = candidate_baseline(result)
    assert candidate["must_rise"] == ["dpo-plain"]
    assert candidate["min_train_final"] == {"dpo-plain": 0.92, "dpo-fusion": 0.82}
    assert candidate["min_target_beats_base"] == 0.05
    assert failures(result, candidate) == []  # the measurement passes its own baseline
