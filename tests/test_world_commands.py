"""The world's measurement commands run end to end (on a barely trained world pipeline: numbers are not judged)."""

from __future__ import annotations

import pandas as pd
import pytest

from dfusion_bench.cli import main


def _ok(*args: str) -> None:
    try:
        main(list(args))
    except SystemExit as exc:
        assert exc.code in (0, None)


def test_study_writes_its_tables(tmp_path, world_dir) -> None:
    out = tmp_path / "study"
    _ok("world", "study", "--template", "shapes-spatial", "--out", str(out), "--model", str(world_dir),
        "--prompts", "1", "--per-prompt", "8", "--variants", "paper,fixed:0.05,mask16")  # fmt: skip
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.variant) <= {"paper", "fixed:0.05", "mask16"}
    for column in ("target_beats_base", "psnr_target_base", "ssim_reference_base", "mask_area"):
        assert column in summary.columns
    assert (out / "summary.md").read_text().startswith("|")
    assert {"triples.csv", "masks.csv", "samples.csv", "run.json"} <= {p.name for p in out.iterdir()}


def test_study_refuses_a_pipeline_outside_the_world(capsys, tmp_path, tiny_dir) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["world", "study", "--template", "shapes-objects", "--out", str(tmp_path / "o"), "--model", str(tiny_dir)])
    assert exc.value.code == 2 and "not a shapes-world pipeline" in capsys.readouterr().err
