"""Training throughput (``nox -s bench``): trained samples per second of one epoch, as ratios on one machine.

Side by side, on the embedded model, one ``dfusion train`` epoch each (sampling + scoring + update; the evaluation
is excluded): the grid's earlier settings (``GRID_CONFIG``: 20 steps, optimizer batches of 2, two inner epochs),
the anchors' settings (10 training steps, one optimizer step per 64 samples in micro-batches of 32, per-sample
timesteps), and the same anchors' settings on both cores two ways: one process with two torch threads, and two
processes of one thread (``accelerate launch --multi_gpu --num_processes 2``). Prints a table and writes
``benchmarks/throughput.json``.

    python benchmarks/throughput.py [--prompts 8] [--samples-per-prompt 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

GRID = ["--steps", "20", "--train-batch-size", "2", "--inner-epochs", "2", "--timestep-fraction", "0.5",
        "--exclude-last-steps", "3"]  # fmt: skip
ANCHORS = ["--steps", "10", "--train-batch-size", "64", "--micro-batch-size", "32", "--timestep-sampling",
           "per-sample", "--timestep-fraction", "0.5", "--advantages", "group", "--pg-minibatches"]  # fmt: skip
ARMS = {  # name: (settings, threads, processes)
    "grid settings, 1 thread": (GRID, 1, 1),
    "anchors' settings, 1 thread": (ANCHORS, 1, 1),
    "anchors' settings, 1 process x 2 threads": (ANCHORS, 2, 1),
    "anchors' settings, 2 processes x 1 thread": (ANCHORS, 1, 2),
}


def one_epoch(out: Path, settings: list[str], threads: int, processes: int, prompts: int, per_prompt: int) -> dict:
    """Train pg for one epoch; the epoch's timing from ``train_log.jsonl`` and the samples it trained."""
    train = ["-m", "dfusion_bench", "train", "--method", "pg", "--template", "shapes-spatial", "--prompts",
             str(prompts), "--samples-per-prompt", str(per_prompt), "--epochs", "1", "--eval-samples-per-prompt", "1",
             "--eval-splits", "train", "--device", "cpu", "--out", str(out), *settings]  # fmt: skip
    if processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]  # fmt: skip
        cmd = [*launch, *train]
    else:
        cmd = [sys.executable, *train]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    log = json.loads((out / "train_log.jsonl").read_text().splitlines()[-1])
    timing = log["timing"]
    epoch_s = sum(timing[k] for k in ("sampling_s", "fusion_s", "scoring_s", "update_s"))
    return {"samples": log["samples_seen"], "epoch_s": epoch_s, "wall_s": wall, **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    args = parser.parse_args()
    console = Console()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (settings, threads, processes)) in enumerate(ARMS.items()):
            rows[name] = one_epoch(
                Path(tmp) / str(i), settings, threads, processes, args.prompts, args.samples_per_prompt
            )
    base = rows["grid settings, 1 thread"]["samples"] / rows["grid settings, 1 thread"]["epoch_s"]
    table = Table(title=f"trained samples per second, one epoch of {args.prompts} prompts x {args.samples_per_prompt}")
    for column in ("settings", "samples/s", "x grid", "sampling_s", "update_s", "epoch_s"):
        table.add_column(column)
    for name, r in rows.items():
        rate = r["samples"] / r["epoch_s"]
        r["samples_per_s"] = rate
        table.add_row(name, f"{rate:.2f}", f"{rate / base:.2f}", f"{r['sampling_s']:.1f}", f"{r['update_s']:.1f}",
                      f"{r['epoch_s']:.1f}")  # fmt: skip
    console.print(table)
    out = Path(__file__).parent / "throughput.json"
    out.write_text(json.dumps(rows, indent=2) + "\n")
    console.print(f"written {out}")


if __name__ == "__main__":
    main()
