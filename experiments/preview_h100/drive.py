"""Device preview: the grid's 18 cells (seed 0) on the candidate model, side by side, stopped at a deadline; the
cells named in GPU_CELLS on the GPU in fp32, the others on the machine's CPU. Partial metrics go to $OUT as they
come (see experiments.drive); each row carries ``gpu``.

Usage (what made results/preview-h100; --dry-run, before the arguments, prints the commands instead):
    python -m experiments.preview_h100.drive [--dry-run] LIMIT_S ROOT MODEL GPU_CELLS [TRAIN OPTIONS...]
where GPU_CELLS is e.g. dpo-plain,dpo-fusion,pg-fusion and the train options are added to every run.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from dfusion_bench.studies.grid import METHODS, SUITES, command, run_dir
from experiments.drive import Job, drive


def jobs(root: Path, model: str, gpu_cells: set[str], extra: list[str]) -> list[Job]:
    """Every suite x method x fusion cell of the grid at seed 0 under ``root``, with ``--model model``."""
    out = []
    for suite in SUITES:
        for method in METHODS:
            for fusion in (False, True):
                run = run_dir(root, method, fusion, suite, 0)
                gpu = f"{method}-{'fusion' if fusion else 'plain'}" in gpu_cells
                dev = ["--device", "cuda", "--dtype", "fp32"] if gpu else []
                cmd = command(run, method, fusion, suite, 0, ["--model", model, *extra, *dev])
                out.append(Job(cmd, run, root / f"{run.name}.log", {"gpu": gpu}))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.preview_h100.drive", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("limit_s", type=float, help="seconds before the runs still going are stopped")
    parser.add_argument("root", type=Path, help="folder of the run folders and their logs")
    parser.add_argument("model", help="the pipeline folder every run trains (--model)")
    parser.add_argument("gpu_cells", help="comma-separated METHOD-fusion|plain cells run on the GPU")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="options added to every dfusion train command")
    args = parser.parse_args(argv)
    planned = jobs(args.root, args.model, set(args.gpu_cells.split(",")), args.extra)
    if args.dry_run:
        print("\n".join(shlex.join(j.cmd) for j in planned))
        return
    args.root.mkdir(parents=True, exist_ok=True)
    drive(planned, args.limit_s, Path(os.environ.get("OUT", "/tmp/out")))


if __name__ == "__main__":
    main()
