"""Device pilot: does DPOK's KL term (pg --kl-weight 0.01) stop pg + fusion's collapse on the shipped model?

Runs the grid's configuration (8 epochs, 8 prompts x 8 samples) for pg with and without fusion on each suite, all
on the GPU, evaluating the train split at epochs 0, 4 and 8 with 48 fixed seeds per prompt (384 images), and copies
the metrics to $OUT as they come (see experiments.drive).

Usage (what made results/device-pg-kl; --dry-run, before the arguments, prints the commands instead):
    python -m experiments.device_pg_kl.drive [--dry-run] LIMIT_S ROOT CELL...
where CELL is method:fusion|plain:suite:kl, e.g. pg:fusion:shapes-objects:0.01.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from dfusion_bench.studies.grid import command, run_dir
from experiments.drive import Job, drive

#: What the pilot adds to the grid's options: 384-image train evaluations at epochs 0, 4 and 8.
OVERRIDE = ["--eval-every", "4", "--eval-samples-per-prompt", "48", "--eval-splits", "train"]
OVERRIDE += ["--exclude-last-steps", "0"]  # every step trained, as the grid did then (GRID_CONFIG now leaves 3 out)


def job(root: Path, cell: str) -> Job:
    """The training job of ``cell`` (method:fusion|plain:suite:kl) under ``root``, on the GPU."""
    method, fusion, suite, kl = cell.split(":")
    run = run_dir(root, method, fusion == "fusion", suite, 0)
    run = run.with_name(f"{run.name}-kl{kl}")
    cmd = command(run, method, fusion == "fusion", suite, 0, [*OVERRIDE, "--kl-weight", kl, "--device", "cuda"])
    return Job(cmd, run, root / f"{run.name}.log")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.device_pg_kl.drive", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("limit_s", type=float, help="seconds before the runs still going are stopped")
    parser.add_argument("root", type=Path, help="folder of the run folders and their logs")
    parser.add_argument("cells", nargs="+", help="method:fusion|plain:suite:kl")
    args = parser.parse_args(argv)
    jobs = [job(args.root, cell) for cell in args.cells]
    if args.dry_run:
        print("\n".join(shlex.join(j.cmd) for j in jobs))
        return
    args.root.mkdir(parents=True, exist_ok=True)
    drive(jobs, args.limit_s, Path(os.environ.get("OUT", "/tmp/out")))


if __name__ == "__main__":
    main()
