"""The grid's export: what gets committed of a finished run."""

from __future__ import annotations

from pathlib import Path

from dfusion_bench.grid import EXPORTED_FILES, export_run
from dfusion_bench.rl.checkpoint import latest_epoch


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


def test_an_exported_run_counts_as_done_only_at_its_final_epoch_and_budget(tmp_path: Path) -> None:
    import json

    from dfusion_bench.grid import is_exported

    dest = tmp_path / "results" / "run"
    assert not is_exported(dest, 8)
    for name in EXPORTED_FILES:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text("{}\n")
    (dest / "config.json").write_text(json.dumps({"prompts": 8, "samples_per_prompt": 8}))
    rows = [{"epoch": e, "split": s} for e in (0, 4) for s in ("train", "test")]
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert not is_exported(dest, 8)
    assert is_exported(dest, 4)
    (dest / "config.json").write_text(json.dumps({"prompts": 4, "samples_per_prompt": 16}))  # the first model's grid
    assert not is_exported(dest, 4)
    (dest / "config.json").write_text(json.dumps({"prompts": 8, "samples_per_prompt": 8}))
    (dest / "run.json").unlink()
    assert not is_exported(dest, 4)
