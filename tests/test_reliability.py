"""The error boundary under both kinds of click, the run lock, staging folders, checkpoints that refuse to be half
made, and the small promises of the files we write (modes, strict JSON, reproducible bytes)."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from entry_point import dfusion_command, entry_env, run_dfusion

from dfusion_bench import atomic, runlock
from dfusion_bench.cli import boundary
from dfusion_bench.errors import UserError, write_failure
from dfusion_bench.models.loading import EMBEDDED_MODEL
from dfusion_bench.rl import checkpoint
from dfusion_bench.runinfo import staged_dir

needs_model = pytest.mark.skipif(
    not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="the embedded model is not installed"
)

# ---- the error boundary -------------------------------------------------------------------------------------------


def _old_typer_app():
    """An app that behaves as typer <= 0.15 did in non-standalone mode: a group of the separate `click` package,
    whose errors are that package's classes (typer 0.16+'s own copy is what the catalogue runs through)."""
    import click

    @click.group(name="dfusion")
    def root():
        pass

    @root.command(name="train")
    @click.option("--epochs", type=click.IntRange(min=1))
    def train(epochs):
        pass

    def app(args, prog_name, standalone_mode):
        return root.main(args=list(args), prog_name=prog_name, standalone_mode=False)

    return app


def test_usage_errors_of_the_click_package_are_one_line(capsys) -> None:
    """typer <= 0.15 raised the `click` package's exceptions, unrelated to typer 0.16+'s: one line all the same, with
    where help is, and click's exit code."""
    app = _old_typer_app()
    assert boundary.run(app, ["train", "--epochs", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: Invalid value for '--epochs': 0 is not in the range x>=1. (see: dfusion train --help)\n"
    assert boundary.run(app, ["train", "--nope"]) == 2
    assert re.fullmatch(r"error: No such option.*--nope.* \(see: dfusion train --help\)\n", capsys.readouterr().err)
    assert boundary.run(app, ["nope"]) == 2
    assert capsys.readouterr().err == "error: No such command 'nope'. (see: dfusion --help)\n"
    assert boundary.run(app, ["train"]) == 0


def test_old_typer_abort_on_ctrl_c_is_an_interrupt(capsys) -> None:
    """typer <= 0.15 turned a KeyboardInterrupt into click's Abort; new typer returns 130. Both say "interrupted"."""
    import click

    def old(args, prog_name, standalone_mode):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise click.exceptions.Abort() from exc

    def new(args, prog_name, standalone_mode):
        return 130

    def aborted(args, prog_name, standalone_mode):
        raise click.exceptions.Abort()

    assert boundary.run(old, []) == 130 and capsys.readouterr().err == "interrupted; nothing was written\n"
    assert boundary.run(new, []) == 130 and capsys.readouterr().err == "interrupted; nothing was written\n"
    assert boundary.run(aborted, []) == 1 and capsys.readouterr().err == "error: aborted\n"


def test_refused_writes_name_the_path_and_the_fix(capsys) -> None:
    def full(args, prog_name, standalone_mode):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/metrics.jsonl")

    assert boundary.run(full, []) == 1
    line = "error: cannot write /data/run/metrics.jsonl: No space left on device; free some space or choose another"
    assert capsys.readouterr().err == line + " --out\n"
    assert "ulimit -f" in str(write_failure(OSError(errno.EFBIG, "File too large", "f")))
    assert write_failure(OSError(errno.ECONNRESET, "reset")) is None  # not the user's to fix: keeps its traceback

    def bug(args, prog_name, standalone_mode):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        boundary.run(bug, [])


def test_a_ctrl_c_in_a_command_says_what_became_of_its_output() -> None:
    def work(out):
        raise KeyboardInterrupt

    with pytest.raises(boundary.Interrupted, match=r"^interrupted; nothing was written to --out runs/x$"):
        boundary.guard(work, boundary.staged_note)(out="runs/x")


def test_a_ctrl_c_outside_training_names_what_train_kept(tmp_path) -> None:
    """Before training starts (loading the model) or after it ends (building the report), `train` says itself."""
    from dfusion_bench.cli import NOTES

    note = NOTES["train"]
    run = tmp_path / "run"
    params = {"run__out": run, "config__method": "dpo", "config__fusion": False, "config__template": "shapes-objects"}
    params |= {"config__seed": 0, "config__sampler__seed": 5}  # as derived commands name them
    assert note(params) == f"nothing was written to --out {run}"
    atomic.write_json(run / "checkpoints" / checkpoint.LATEST, {"epoch": 3})
    expected = f"epoch 3 ({run}/checkpoints/epoch-0003); resume with: dfusion train --out {run} --resume"
    assert note(params).endswith(expected)
    assert "runs/dpo-plain-shapes-objects-s0" in note({**params, "run__out": None})  # the default --out


def test_help_still_works_through_the_entry_point() -> None:
    done = run_dfusion(["train", "--help"], timeout=120)
    assert done.returncode == 0 and "--method" in done.stdout and not done.stderr.strip()


# ---- the run lock -------------------------------------------------------------------------------------------------


def test_a_held_run_folder_is_refused_naming_its_holder(tmp_path) -> None:
    fd, created = runlock.acquire(tmp_path / "run")
    assert created
    with pytest.raises(UserError, match=rf"run is in use by process {os.getpid()} on "):
        runlock.acquire(tmp_path / "run")
    runlock.free(tmp_path / "run", fd, created)
    assert not (tmp_path / "run").exists()  # made for the run and left empty: removed with its lock


def test_a_stale_lock_is_taken_over(tmp_path, capfd) -> None:
    """A process that died holding the lock (killed outright) leaves its details in run.lock; the lock itself went
    with it, so the next writer takes the folder over and says so."""
    run = tmp_path / "run"
    script = (
        "import os, sys; from dfusion_bench import runlock; "
        "runlock.acquire(__import__('pathlib').Path(sys.argv[1])); os._exit(9)"
    )
    done = subprocess.run([sys.executable, "-c", script, str(run)], env=entry_env())
    assert done.returncode == 9
    dead = json.loads((run / runlock.LOCK_NAME).read_text())["pid"]
    capfd.readouterr()
    fd, created = runlock.acquire(run)
    assert f"process {dead} on" in capfd.readouterr().err and not created
    (run / "config.json").write_text("{}")
    runlock.free(run, fd, created)
    assert (run / runlock.LOCK_NAME).read_text() == ""  # a clean release names no holder


def test_every_process_learns_the_main_processs_refusal(tmp_path) -> None:
    """Under accelerate only the main process locks; the others must stop too, not wait at a barrier forever."""
    fd, created = runlock.acquire(tmp_path / "run")
    refusal = "the main process's refusal"
    other = SimpleNamespace(is_main=False, world=2, gather=lambda local: [refusal, *local])
    with pytest.raises(UserError, match="the main process's refusal"):
        with runlock.hold(tmp_path / "run", other):
            pytest.fail("a refused process went on")
    main = SimpleNamespace(is_main=True, world=2, gather=lambda local: [*local, None])
    with pytest.raises(UserError, match="in use by process"):
        with runlock.hold(tmp_path / "run", main):
            pytest.fail("a refused process went on")
    runlock.free(tmp_path / "run", fd, created)


def test_a_check_under_the_lock_refuses_and_releases(tmp_path) -> None:
    def check():
        raise UserError("not empty")

    with pytest.raises(UserError, match="not empty"):
        with runlock.hold(tmp_path / "run", check=check):
            pytest.fail("went on")
    assert not (tmp_path / "run").exists()


# ---- staging folders ----------------------------------------------------------------------------------------------


def test_stale_staging_folders_are_swept_and_live_ones_kept(tmp_path) -> None:
    stale = tmp_path / ".out.dead1.partial"
    stale.mkdir()
    (stale / "samples.csv").write_text("half")
    live, fd = runlock.locked_dir(tmp_path, ".out.", ".partial")  # another fuse, still writing
    with staged_dir(tmp_path / "out", overwrite=False) as stage:
        (stage / "a.txt").write_text("a")
    assert not stale.exists() and live.is_dir()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"
    runlock.release(fd)


def test_a_resumed_run_sweeps_what_a_killed_writer_left(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / ".epoch-0003.partial").mkdir(parents=True)
    (run / "checkpoints" / ".epoch-0003.partial" / "lora.safetensors").write_bytes(b"half")
    (run / ".metrics.jsonl.k1ll.tmp").write_text("half")
    (run / "eval" / "epoch-0001").mkdir(parents=True)
    (run / "eval" / "epoch-0001" / ".train.png.x.tmp").write_bytes(b"")
    (run / "metrics.jsonl").write_text("{}\n")
    runlock.sweep_held(run)
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    assert left == ["checkpoints", "eval", "eval/epoch-0001", "metrics.jsonl"]


def test_a_failed_write_in_a_staging_folder_names_the_output_and_leaves_nothing(tmp_path) -> None:
    def full(path: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(OSError) as info:
        with staged_dir(tmp_path / "out", overwrite=False) as stage:
            atomic.write_with(stage / "images" / "s0.png", full)
    assert info.value.filename == str(tmp_path / "out" / "images" / "s0.png")
    assert list(tmp_path.iterdir()) == []


def test_output_follows_the_umask(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        with staged_dir(tmp_path / "out", overwrite=False) as stage:
            atomic.write_json(stage / "summary.json", {"a": 1})
        atomic.write_text(tmp_path / "plain.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "out" / "summary.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o640


# ---- files --------------------------------------------------------------------------------------------------------


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_holds_no_bare_nan(tmp_path) -> None:
    row = {"loss": float("nan"), "nested": [float("inf"), 1.5], "rate": -float("inf")}
    atomic.write_json(tmp_path / "a.json", row)
    atomic.append_json(tmp_path / "log.jsonl", row)
    expected = {"loss": None, "nested": [None, 1.5], "rate": None}
    assert _strict((tmp_path / "a.json").read_text()) == expected
    assert _strict((tmp_path / "log.jsonl").read_text()) == expected


@pytest.mark.slow  # two interpreters importing torch
def test_equal_tensors_give_equal_safetensors_bytes() -> None:
    """The library writes metadata keys in hash-map order, which changes between calls and processes."""
    tensors = {"latents": torch.arange(6.0).reshape(2, 3), "seeds": torch.tensor([1, 2])}
    meta = {"prompts": json.dumps(["a", "ü"]), "seeds": "[1, 2]", "config": '{"eta": 1.0}', "z": "\n\t\x01"}
    blobs = {atomic.safetensors_bytes(tensors, dict(reversed(meta.items()))) for _ in range(8)}
    blobs |= {atomic.safetensors_bytes(tensors, meta) for _ in range(8)}
    assert len(blobs) == 1
    from safetensors.torch import load

    assert torch.equal(load(blobs.pop())["latents"], tensors["latents"])
    script = (
        "import torch, sys; from dfusion_bench import atomic; "
        "sys.stdout.buffer.write(atomic.safetensors_bytes({'a': torch.ones(2)}, {'x': '1', 'y': '2', 'w': '3'}))"
    )
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, env=entry_env()).stdout for _ in "ab"}
    assert len(runs) == 1


def test_write_errors_name_the_destination_not_the_temporary_file(tmp_path) -> None:
    def full(path: Path) -> None:
        path.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with pytest.raises(OSError) as info:
        atomic.write_with(tmp_path / "metrics.csv", full)
    assert info.value.filename == str(tmp_path / "metrics.csv") and info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_that_cannot_be_written_is_not_half_made(tmp_path, monkeypatch) -> None:
    layer = torch.nn.Linear(3, 2)
    checkpoint.save(tmp_path, 0, layer, {"step": 0})
    checkpoint.check_complete(tmp_path, 0)

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "write_torch", full)
    with pytest.raises(OSError) as info:
        checkpoint.save(tmp_path, 1, layer, {"step": 1})
    assert info.value.filename == str(checkpoint.epoch_dir(tmp_path, 1) / "trainer_state.pt")  # not the staging one
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0000", "latest.json"]
    assert checkpoint.latest_epoch(tmp_path) == 0


# ---- commands -----------------------------------------------------------------------------------------------------


@needs_model
@pytest.mark.slow
def test_fuse_with_no_triples_says_so(tmp_path) -> None:
    """Every sample of the prompt scores the same, so no reference beats a base: no "nan%", no NaN in JSON."""
    out = tmp_path / "out"
    argv = ["fuse", "--template", "shapes-binding", "--split", "train", "--prompts", "1", "--samples-per-prompt", "4"]
    done = run_dfusion([*argv, "--steps", "2", "--seed", "2", "--out", str(out)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"0 triples from 4 samples in {out}: no reference scored above a base" in done.stdout
    assert "nan" not in done.stdout.lower()
    assert _strict((out / "manifest.json").read_text())["n_triples"] == 0


@needs_model
@pytest.mark.slow
def test_a_run_stopped_by_a_full_disk_resumes_from_its_last_checkpoint(tmp_path) -> None:
    run = tmp_path / "run"
    argv = ["train", "--method", "pg", "--out", str(run), "--prompts", "1", "--samples-per-prompt", "4"]
    argv += ["--steps", "2", "--eval-samples-per-prompt", "1", "--epochs", "2"]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # checkpoint 0 fits, epoch 1's state not

    cut = subprocess.run([*dfusion_command(), *argv], capture_output=True, text=True, env=entry_env(), preexec_fn=limit)
    assert cut.returncode == 1 and "File too large" in cut.stderr and checkpoint.latest_epoch(run) == 0
    done = run_dfusion([*argv, "--resume"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert checkpoint.latest_epoch(run) == 2
    log = [_strict(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    for epoch in (0, 1, 2):
        checkpoint.check_complete(run, epoch)
