"""The package as a user installs it: a wheel built from this tree, installed into a fresh environment, lists and runs
the suites it ships (no checkout on the path, no environment variable pointing at one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_a_built_wheel_lists_and_runs_its_suites(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("DFUSION_")}
    env["OMP_NUM_THREADS"] = "1"
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(dist)],
         tmp_path, env)  # fmt: skip
    (wheel,) = dist.glob("dfusion_bench-*.whl")

    # A fresh environment with only the wheel installed; its dependencies are borrowed from the test's own
    # environment through a plain path entry (a path in a .pth file is added as is: the development install's
    # editable finder beside it is not run, so only the wheel's copy of dfusion_bench can be imported).
    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         tmp_path, env)  # fmt: skip
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env))
    site = Path(str(site).strip())
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = _run([str(python), "-c", "import dfusion_bench; print(dfusion_bench.__file__)"], tmp_path, env).strip()
    assert Path(where).is_relative_to(fresh), where

    dfusion = str(fresh / "bin" / "dfusion")
    listing = _run([dfusion, "templates", "list"], tmp_path, env)
    for suite in ("shapes-objects", "shapes-binding", "shapes-spatial"):
        assert suite in listing
    out = tmp_path / "eval"
    one_prompt = ["--prompts", "1", "--samples-per-prompt", "2", "--steps", "4", "--device", "cpu"]
    command = [dfusion, "eval", "--template", "shapes-spatial", "--split", "test", *one_prompt, "--out", str(out)]
    _run(command, tmp_path, env)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["template"] == "shapes-spatial" and summary["scorers"]["verifier"]["aligned_rate"] is not None
    assert len((out / "samples.csv").read_text().splitlines()) == 1 + 2  # header and one row per image
    # the model the run used is the wheel's embedded one, not the checkout's
    assert Path(summary["source"]["model"]).is_relative_to(fresh), summary["source"]
