"""The regression session's CPU form (what `nox -s regression` runs without GPU model paths), as CI runs it."""

from __future__ import annotations

import json

import pytest

from dfusion_bench.cli.regression import _run_command
from dfusion_bench.models.loading import EMBEDDED_MODEL
from dfusion_bench.studies.regression import BASELINE_FILE, run_regression


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

    baseline = {"must_rise": ["dpo-plain"], "min_train_final": {"dpo-fusion": 0.9}, "min_target_beats_base": 0.05}

    def result(plain_rose: bool, fusion_final: float, rate: float | None) -> dict:
        return {
            "dpo-plain": {"rose": plain_rose, "train_score_final": 0.95},
            "dpo-fusion": {"rose": False, "train_score_final": fusion_final},
            "target_beats_base": rate,
        }

    assert failures(result(True, 0.9, 0.05), baseline) == []
    found = failures(result(False, 0.89, 0.04), baseline)
    assert len(found) == 3
    assert found[0].startswith("dpo-plain: train-split score did not rise")
    assert found[1].startswith("dpo-fusion: final train-split score 0.8900 < 0.9")
    assert found[2] == "target-beats-base 0.04 < baseline 0.05"
    assert failures(result(True, 0.95, None), baseline) == ["target-beats-base None < baseline 0.05"]
