"""A researcher's own checkpoints from the command line alone: a tiny SD pipeline and CLIP from `dfusion model
tiny`, CLIP configs as files, scorers checked before sampling, `eval --run` reusing its run, paths that work from
any directory, trackers, and the options no other test exercises."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dfusion_bench.cli import main
from dfusion_bench.models.tiny_clip import TINY_CLIP_NAME

TINY = ["--template", "paper-t1", "--prompts", "1", "--steps", "2"]


def _cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def tiny_with_clip(tmp_path_factory) -> Path:
    """`dfusion model tiny --out DIR`: the tiny pipeline with a tiny CLIP in DIR/clip/."""
    out = tmp_path_factory.mktemp("own") / "sd"
    assert _cli("model", "tiny", "--out", str(out)) == 0
    return out


def _clip_args(model: Path) -> list[str]:
    clip = model / "clip"
    return ["--scorer", "clip", "--clip-model", str(clip / f"{TINY_CLIP_NAME}.json"), "--clip-checkpoint",
            str(clip / f"{TINY_CLIP_NAME}.pt")]  # fmt: skip


def test_the_real_path_runs_from_the_command_line(tmp_path, tiny_with_clip) -> None:
    """`dfusion model tiny` writes a CLIP config and weights; `--clip-model CONFIG.json` scores with them."""
    assert (tiny_with_clip / "clip" / f"{TINY_CLIP_NAME}.json").is_file()
    out = tmp_path / "eval"
    code = _cli("eval", "--model", str(tiny_with_clip), *TINY, "--split", "train", "--samples-per-prompt", "2",
                *_clip_args(tiny_with_clip), "--out", str(out))  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scorers"]["clip"]["n"] == 2 and np.isfinite(summary["scorers"]["clip"]["mean_score"])


def test_a_checkpoint_that_does_not_fit_fails_before_sampling(capsys, tmp_path, tiny_with_clip, monkeypatch) -> None:
    from dfusion_bench.models import choice

    other = tmp_path / "other.pt"
    torch.save({"not": torch.zeros(3)}, other)
    monkeypatch.setattr(choice.ModelChoice, "load", lambda *a: pytest.fail("the model loaded before the scorer"))
    args = _clip_args(tiny_with_clip)
    args[-1] = str(other)
    out = tmp_path / "eval"
    code = _cli("eval", "--model", str(tiny_with_clip), *TINY, "--split", "train", *args, "--out", str(out))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not load into open_clip" in err
    assert not out.exists()


def test_a_clip_config_file_that_is_not_one_is_refused(capsys, tmp_path, tiny_with_clip) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"width": 3}')
    args = _clip_args(tiny_with_clip)
    args[3] = str(bad)
    code = _cli("eval", "--model", str(tiny_with_clip), *TINY, "--split", "train", *args, "--out", str(tmp_path / "e"))
    assert code == 2 and "is not an open_clip model config" in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_from_elsewhere(tmp_path_factory, tiny_dir) -> Path:
    """A 1-epoch run trained at 3 steps with --model given relative to a working directory that is not the test's."""
    home = tmp_path_factory.mktemp("home")
    os.symlink(tiny_dir, home / "my-sd")
    cwd = Path.cwd()
    os.chdir(home)  # a module fixture cannot use monkeypatch; restored below
    try:
        code = _cli("train", "--method", "pg", "--model", "my-sd", "--template", "paper-t1", "--prompts", "1",
                    "--scorer", "compressibility", "--steps", "3", "--samples-per-prompt", "4", "--epochs", "1",
                    "--eval-samples-per-prompt", "1", "--out", "runs/r")  # fmt: skip
    finally:
        os.chdir(cwd)
    assert code == 0
    return home / "runs" / "r"


def test_paths_are_stored_resolved_and_typed_ones_kept(run_from_elsewhere) -> None:
    config = json.loads((run_from_elsewhere / "config.json").read_text())
    assert Path(config["model"]).is_absolute() and Path(config["model"]).samefile(
        run_from_elsewhere.parent.parent / "my-sd"
    )
    typed = json.loads((run_from_elsewhere / "run.json").read_text())
    assert "my-sd" in typed["argv"] and typed["processes"] == 1


def test_eval_run_takes_the_runs_settings_and_records_overrides(tmp_path, run_from_elsewhere, monkeypatch) -> None:
    """Run from another directory: the run's model, suite, scorer and 3 steps by default; --steps overrides."""
    monkeypatch.chdir(tmp_path)
    base = ["eval", "--run", str(run_from_elsewhere), "--split", "test", "--prompts", "1", "--samples-per-prompt", "1"]
    assert _cli(*base, "--out", "same") == 0
    same = json.loads((tmp_path / "same" / "summary.json").read_text())
    assert same["sampler"]["steps"] == 3 and same["template"] == "paper-t1" and same["overrides"] == []
    assert list(same["scorers"]) == ["compressibility"]
    assert _cli(*base, "--steps", "2", "--out", "two", "--epoch", "0") == 0
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["sampler"]["steps"] == 2 and two["overrides"] == ["sampler"] and two["source"]["epoch"] == 0


def test_resume_works_from_another_directory(tmp_path, run_from_elsewhere, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _cli("train", "--out", str(run_from_elsewhere), "--resume", "--epochs", "2", "--method", "pg") == 0
    rows = [json.loads(line) for line in (run_from_elsewhere / "metrics.jsonl").read_text().splitlines()]
    assert max(r["epoch"] for r in rows) == 2


def test_tensorboard_gets_the_same_metrics_and_grids(tmp_path, tiny_dir) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code = _cli("train", "--method", "ddpo", "--model", str(tiny_dir), *TINY, "--scorer", "compressibility",
                "--samples-per-prompt", "4", "--epochs", "1", "--eval-samples-per-prompt", "1", "--out", str(out),
                "--log-with", "tensorboard")  # fmt: skip
    assert code == 0
    events = EventAccumulator(str(next((out / "run").glob("events.out.tfevents*"))))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {
        "eval/train/mean_score",
        "eval/test/mean_score",
        "train/loss",
        "train/approx_kl",
        "train/clipped",
    } <= scalars
    assert [e.step for e in events.Scalars("eval/train/mean_score")] == [0, 1]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in metrics if r["split"] == "train" and r["epoch"] == 0)
    assert events.Scalars("eval/train/mean_score")[0].value == pytest.approx(first["mean_score"])
    assert {"eval/train/grid", "eval/test/grid"} <= set(events.Tags()["images"])


def test_an_uninstalled_tracker_is_refused_in_one_line(capsys, tmp_path, monkeypatch) -> None:
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    assert _cli("train", "--method", "pg", "--log-with", "wandb", "--out", str(tmp_path / "r")) == 2
    assert "pip install wandb" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_launchers_asking_for_more_processes_than_run_are_named() -> None:
    from dfusion_bench.distributed import launch_warning, requested_processes

    parent = "/usr/bin/python /venv/bin/accelerate launch --num_processes 2 -m dfusion_bench train --method dpo"
    assert requested_processes({}, parent) == 2
    assert requested_processes({"WORLD_SIZE": "4"}, "") == 4
    assert requested_processes({}, "bash") is None
    assert requested_processes({}, "torchrun --nproc_per_node=3 -m dfusion_bench train") == 3
    assert "--multi_gpu" in launch_warning(1, 2) and launch_warning(2, 2) is None and launch_warning(1, None) is None


@pytest.mark.slow
def test_accelerate_launch_runs_two_processes_on_cpu(tmp_path, tiny_dir) -> None:
    """The documented CPU form, `accelerate launch --multi_gpu --num_processes 2`, runs two processes whose adapters
    agree; the plain `--num_processes 2` (one process on a machine without GPUs) warns and records 1."""
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["-m", "dfusion_bench", "train", "--method", "ddpo", "--model", str(tiny_dir), *TINY,
             "--scorer", "compressibility", "--samples-per-prompt", "4", "--epochs", "1",
             "--eval-samples-per-prompt", "1", "--train-batch-size", "4", "--device", "cpu"]  # fmt: skip
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no", "--main_process_port", "29533"]  # fmt: skip
    two = subprocess.run([*launch, "--multi_gpu", "--num_processes", "2", *train, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    log = json.loads((tmp_path / "two" / "train_log.jsonl").read_text().splitlines()[-1])
    assert len(log["lora_sha256_per_process"]) == 2 and len(set(log["lora_sha256_per_process"])) == 1
    one = subprocess.run([*launch, "--num_processes", "2", *train, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    assert "asked for 2 processes but 1 runs" in one.stderr
    assert json.loads((tmp_path / "one" / "run.json").read_text())["processes"] == 1
