"""The regression session's CPU form (what `nox -s regression` runs without GPU model paths), as CI runs it."""

from __future__ import annotations

import json

import pytest

from dfusion_bench.models import EMBEDDED_MODEL
from dfusion_bench.regression import BASELINE_FILE, run_regression


@pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="the embedded model is not installed")
def test_regression_passes_on_the_embedded_world(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DFUSION_SD_MODEL", raising=False)
    monkeypatch.delenv("DFUSION_CLIP_CHECKPOINT", raising=False)
    result = run_regression(tmp_path / "regression", device="cpu")
    assert result["form"] == "embedded"
    assert result["failures"] == [], result
    assert json.loads((tmp_path / "regression" / "regression.json").read_text())["failures"] == []
    assert "embedded" in json.loads(BASELINE_FILE.read_text())
