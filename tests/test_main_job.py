"""The README's main job, exactly: ``dfusion train --method dpo --fusion`` on the embedded default."""

from __future__ import annotations

import json

import pytest

from dfusion_bench.cli import main
from dfusion_bench.models.loading import EMBEDDED_MODEL
from dfusion_bench.rl.config import EMBEDDED_LR


@pytest.mark.slow
@pytest.mark.skipif(not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="the embedded model is not installed")
def test_main_job_runs_with_no_other_options(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    try:
        main(["train", "--method", "dpo", "--fusion"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    run = tmp_path / "runs" / "dpo-fusion-shapes-objects-s0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    epochs = config["epochs"]
    assert config["optim"]["lr"] == EMBEDDED_LR["dpo"]  # resolved and stored: the embedded model's rate
    assert [(r["epoch"], r["split"]) for r in rows] == [(e, s) for e in range(epochs + 1) for s in ("train", "test")]
    assert all(r["scorer"] == "verifier" and r["aligned_rate"] is not None for r in rows)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert all(r["n_pairs"] > 0 and r["target_beats_base"] is not None for r in log)
    assert f"{run.relative_to(tmp_path)}/report/index.html" in capsys.readouterr().out
    assert (run / "report" / "curves").is_dir()
