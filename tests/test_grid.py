"""The grid's export: what gets committed of a finished run."""

from __future__ import annotations

from pathlib import Path

from dfusion_bench.rl.checkpoint import latest_epoch
from dfusion_bench.studies.grid import EXPORTED_FILES, export_run


def _fake_run(run: Path) -> None:
    for name in EXPORTED_FILES:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    for epoch in (0, 2, 4):
        folder = run / "eval" / f"epoch-{epoch:04d}"
        folder.mkdir(parents=True)
        (folder / "train.png").write_bytes(b"png")
    (run / "checkpoints" / "epoch-0004").mkdir(parents=True)
    (run / "checkpoints" / "epoch-0004" / "lora.safetensors").write_bytes(b"weights")
    (run / "checkpoints" / "epoch-0004" / "trainer_state.pt").write_bytes(b"optimizer")
    (run / "checkpoints" / "epoch-0002").mkdir(parents=True)
    (run / "checkpoints" / "epoch-0002" / "lora.safetensors").write_bytes(b"older")
    (run / "checkpoints" / "latest.json").write_text('{"epoch": 4}')


def test_export_keeps_logs_first_and_last_eval_and_final_adapters_only(tmp_path: Path) -> None:
    run, dest = tmp_path / "run", tmp_path / "results" / "run"
    _fake_run(run)
    export_run(run, dest)
    assert sorted(p.name for p in (dest / "eval").iterdir()) == ["epoch-0000", "epoch-0004"]
    assert all((dest / name).read_text() == name for name in EXPORTED_FILES)
    # the final LoRA weights only (dfusion eval --run can load them), no optimizer state or earlier epochs
    assert sorted(str(p.relative_to(dest)) for p in (dest / "checkpoints").rglob("*") if p.is_file()) == [
        "checkpoints/epoch-0004/lora.safetensors",
        "checkpoints/latest.json",
    ]
    assert latest_epoch(dest) == 4 and (dest / "checkpoints/epoch-0004/lora.safetensors").read_bytes() == b"weights"
    # exporting again replaces the copy (a rerun of the grid), leaving nothing staged behind
    (run / "metrics.jsonl").write_text("new")
    export_run(run, dest)
    assert (dest / "metrics.jsonl").read_text() == "new"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["run"]


def _grid_config(**changes: object) -> str:
    """A config.json as a grid run writes it: the defaults with every grid option set, then ``changes`` (dotted)."""
    import json

    from dfusion_bench.rl.config import TrainConfig, option_paths
    from dfusion_bench.studies.grid import grid_options

    tree = TrainConfig().to_dict()

    def put(path: str, value: object) -> None:
        *parents, leaf = path.split(".")
        node = tree
        for key in parents:
            node = node[key]
        node[leaf] = json.loads(value) if isinstance(value, str) else value  # the grid's values are numbers

    for option, value in grid_options().items():
        put(option_paths().get(option, option), value)
    for path, value in changes.items():
        put(path, value)
    return json.dumps(tree)


def test_an_exported_run_counts_as_done_only_at_its_final_epoch_and_options(tmp_path: Path) -> None:
    import json

    from dfusion_bench.studies.grid import is_exported

    dest = tmp_path / "results" / "run"
    assert not is_exported(dest, 8)
    for name in EXPORTED_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text("{}\n")
    (dest / "config.json").write_text(_grid_config(epochs=4))
    rows = [{"epoch": e, "split": s} for e in (0, 4) for s in ("train", "test")]
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not is_exported(dest, 8)
    assert is_exported(dest, 4)
    (dest / "config.json").write_text(_grid_config(prompts=4, samples_per_prompt=16))  # the first model's grid
    assert not is_exported(dest, 4)
    # the papers' setting (every step trained) is another grid, done only where the grid asks for it
    old = json.loads(_grid_config())
    del old["optim"]["exclude_last_steps"]  # a config written before the option existed: all steps trained
    (dest / "config.json").write_text(json.dumps(old))
    assert not is_exported(dest, 4)
    assert is_exported(dest, 4, ["--exclude-last-steps", "0"])
    assert not is_exported(dest, 4, ["--exclude-last-steps", "0", "--lr", "1e-3"])
    (dest / "config.json").write_text(_grid_config(**{"optim.lr": 1e-3}))
    assert is_exported(dest, 4, ["--lr", "0.001"])  # values compare as numbers, not as text
    assert is_exported(dest, 4, ["--dpo-require-win", "--lr", "0.001"])  # a flag: the default, true
    assert not is_exported(dest, 4, ["--no-dpo-require-win", "--lr", "0.001"])
    (dest / "config.json").write_text(_grid_config())
    (dest / "run.json").unlink()
    assert not is_exported(dest, 4)


def _exported_run(dest: Path, epochs: int) -> None:
    import json

    for name in EXPORTED_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text("{}\n")
    (dest / "config.json").write_text(_grid_config())
    (dest / "metrics.jsonl").write_text(json.dumps({"epoch": epochs, "split": "train"}) + "\n")


def _final_eval(folder: Path, n: int, epoch: int | None) -> None:
    import json

    folder.mkdir(parents=True)
    summary = {"source": {"run": None, "epoch": epoch}, "scorers": {"verifier": {"n": n}}}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_final_evaluations_cover_the_base_and_every_finished_run_once(tmp_path: Path) -> None:
    import argparse

    from dfusion_bench.studies.grid import (
        final_eval_command,
        final_eval_dir,
        final_eval_jobs,
        grid_value,
        is_exported,
        run_dir,
    )

    epochs, export = int(grid_value("--epochs")), tmp_path / "results"
    cells = [("dpo", fusion, "shapes-objects", 0) for fusion in (False, True)]
    _exported_run(export / run_dir(tmp_path, *cells[0]).name, epochs)  # dpo + fusion never finished
    args = argparse.Namespace(
        final_eval=48, final_eval_splits=["train"], suites=["shapes-objects"], out=tmp_path / "runs", extra=[]
    )

    def exported(cell: tuple) -> Path | None:
        dest = export / run_dir(args.out, *cell).name
        return dest if is_exported(dest, epochs) else None

    jobs = final_eval_jobs(args, cells, export, epochs, exported)
    assert [name for name, _, _ in jobs] == ["shapes-objects-base-train", "dpo-plain-shapes-objects-s0-train"]
    base_cmd, run_cmd = (cmd for _, cmd, _ in jobs)
    assert "--run" not in base_cmd and "--model" not in base_cmd  # the embedded default
    assert run_cmd[run_cmd.index("--run") + 1] == str(export / "dpo-plain-shapes-objects-s0")
    assert run_cmd[run_cmd.index("--epoch") + 1] == str(epochs)
    for cmd in (base_cmd, run_cmd):
        assert cmd[cmd.index("--samples-per-prompt") + 1] == "48"
        assert cmd[cmd.index("--prompts") + 1] == grid_value("--prompts")
        assert "--no-grid" in cmd  # 384 images in one picture: not worth committing
    # a finished evaluation of the right size is not redone; one of another size, or of another epoch, is
    images = int(grid_value("--prompts")) * 48
    _final_eval(final_eval_dir(export, "shapes-objects-base", "train"), images, None)
    _final_eval(final_eval_dir(export, "dpo-plain-shapes-objects-s0", "train"), images, epochs - 1)
    assert [name for name, _, _ in final_eval_jobs(args, cells, export, epochs, exported)] == [
        "dpo-plain-shapes-objects-s0-train"
    ]
    # the base model of a grid run on another model is that model
    args.extra = ["--model", "some/pipeline"]
    (base_cmd,) = [cmd for name, cmd, _ in final_eval_jobs(args, cells, tmp_path / "other", epochs, exported)][:1]
    assert base_cmd[base_cmd.index("--model") + 1] == "some/pipeline"
    # --prompts and --epochs given in --extra win over GRID_CONFIG's, as they do for the training runs: the finished
    # base evaluation (of GRID_CONFIG's prompt count) is the wrong size, and runs are evaluated at the extra's epoch
    args.extra = ["--prompts", "3", "--epochs", "2"]
    assert [name for name, _, _ in final_eval_jobs(args, cells, export, epochs, exported)][:1] == [
        "shapes-objects-base-train"
    ]
    cmd = final_eval_command(tmp_path / "e", "shapes-objects", "train", 48, export / "run", args.extra)
    assert (cmd[cmd.index("--prompts") + 1], cmd[cmd.index("--epoch") + 1]) == ("3", "2")
