"""The whole benchmark grid in one command: every method × fusion × suite × seed, then the report.

``python -m dfusion_bench.grid --seeds 0 1`` (or ``nox -s grid -- --seeds 0 1``) trains each cell as its own
``dfusion train`` process (``--jobs`` at a time, one CPU thread each), resumes cells that were interrupted, skips
cells that are complete, and finally builds the report over all runs. The per-run configuration is
:data:`GRID_CONFIG`, sized so that one run takes at most about 20 minutes on a 2-core laptop CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

METHODS = ("dpo", "ddpo", "pg")
SUITES = ("shapes-objects", "shapes-binding", "shapes-spatial")

#: One run of the grid on the embedded model, sized to stay under ~20 minutes on one core of a 2-core laptop CPU.
GRID_CONFIG = [
    # 8 prompts x 8 samples (64 per epoch). The shipped model gets 97% / 92% / 91% of the facts of each suite's first
    # 4 train prompts right (objects / binding / spatial; the suites' means are 91% / 86% / 88%), which leaves a run
    # no room to show a rise; the first 8 sit at 94% / 88% / 86% (results/world/quality/per_prompt.csv). The first
    # model's grid (results/v1/grid) used 4 x 16.
    "--prompts", "8",
    "--samples-per-prompt", "8",
    "--epochs", "8",
    "--eval-every", "4",
    "--eval-samples-per-prompt", "8",
    "--inner-epochs", "2",
    "--train-batch-size", "2",
    "--timestep-fraction", "0.5",
    # `dfusion world study` on the train prompts: the 8x8 maps (the latent/4 rule's nearest grid) barely localise
    # objects (IoU 0.08 with the verifier's masks), the 16x16 maps do (0.33, auto threshold); fusion gain 7% -> 17%
    "--mask-resolution", "16",
]  # fmt: skip


def grid_value(option: str) -> str:
    """The value :data:`GRID_CONFIG` gives ``option`` (e.g. ``"--epochs"``)."""
    return GRID_CONFIG[GRID_CONFIG.index(option) + 1]


def run_dir(root: Path, method: str, fusion: bool, suite: str, seed: int) -> Path:
    return root / f"{method}-{'fusion' if fusion else 'plain'}-{suite}-s{seed}"


def is_complete(run: Path, epochs: int) -> bool:
    pointer = run / "checkpoints" / "latest.json"
    return pointer.is_file() and json.loads(pointer.read_text()).get("epoch") == epochs


def is_exported(dest: Path, epochs: int) -> bool:
    """Whether ``dest`` holds an exported run (:func:`export_run`) of the current :data:`GRID_CONFIG` that reached
    ``epochs``: such a cell is done even where its run folder (with the checkpoints) is gone, e.g. in a fresh clone
    that holds the committed results. A run exported under another prompt or sample count is not."""
    if not all((dest / name).is_file() for name in EXPORTED_FILES):
        return False
    config = json.loads((dest / "config.json").read_text())
    for key in ("prompts", "samples_per_prompt"):
        if str(config.get(key)) != grid_value("--" + key.replace("_", "-")):
            return False
    rows = (dest / "metrics.jsonl").read_text().splitlines()
    return any(json.loads(line).get("epoch") == epochs for line in rows if line.strip())


def command(run: Path, method: str, fusion: bool, suite: str, seed: int, extra: list[str]) -> list[str]:
    flag = "--fusion" if fusion else "--no-fusion"
    cmd = [sys.executable, "-m", "dfusion_bench", "train", "--method", method, flag, "--template", suite,
           "--seed", str(seed), "--out", str(run), "--device", "cpu",
           *GRID_CONFIG, *extra]  # fmt: skip
    if (run / "checkpoints" / "latest.json").is_file():
        cmd.append("--resume")
    elif run.exists():
        cmd.append("--overwrite")  # a run that died before its first checkpoint: start it again
    return cmd


#: What :func:`export_run` keeps of a finished run: enough for ``dfusion report`` (no checkpoints).
EXPORTED_FILES = ("config.json", "run.json", "metrics.jsonl", "train_log.jsonl")


def export_run(run: Path, dest: Path) -> Path:
    """Copy a finished run's configuration, run info, logs, its first and last evaluations and its final LoRA
    adapters (no optimizer state, no earlier checkpoints: a few hundred KB) to ``dest``, so that the results can be
    committed, the report rebuilt from them and the final policy re-evaluated (``dfusion eval --run dest``)."""
    import shutil
    import tempfile

    from dfusion_bench import atomic
    from dfusion_bench.rl.checkpoint import LATEST, epoch_dir, latest_epoch

    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for name in EXPORTED_FILES:
        shutil.copy2(run / name, staged / name)
    epochs = sorted((run / "eval").glob("epoch-*"))
    for folder in {epochs[0], epochs[-1]} if epochs else ():
        shutil.copytree(folder, staged / "eval" / folder.name)
    last = latest_epoch(run)
    if last is not None:
        (epoch_dir(staged, last)).mkdir(parents=True)
        shutil.copy2(epoch_dir(run, last) / "lora.safetensors", epoch_dir(staged, last) / "lora.safetensors")
        shutil.copy2(run / "checkpoints" / LATEST, staged / "checkpoints" / LATEST)
    return atomic.replace_dir(staged, dest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train every method x fusion x suite, then build the report.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--suites", nargs="+", default=list(SUITES))
    parser.add_argument("--out", type=Path, default=Path("runs/grid"))
    parser.add_argument("--report", type=Path, default=Path("results/report"))
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (each uses one CPU thread)")
    parser.add_argument("--export", type=Path, default=None, help="copy finished runs here; report on the copies")
    parser.add_argument("--with", dest="also", type=Path, nargs="*", default=[], help="more report inputs (fuse dirs)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `dfusion train` options")
    args = parser.parse_args(argv)
    console = Console()
    epochs = int(grid_value("--epochs"))
    cells = [(m, f, s, seed) for seed in args.seeds for s in args.suites for m in args.methods for f in (False, True)]

    def done(cell: tuple) -> bool:
        run = run_dir(args.out, *cell)
        return is_complete(run, epochs) or (args.export is not None and is_exported(args.export / run.name, epochs))

    todo = [c for c in cells if not done(c)]
    console.print(f"{len(cells)} runs, {len(cells) - len(todo)} complete, {len(todo)} to do, {args.jobs} at a time")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[subprocess.Popen, Path, float]] = []
    failed, exported = [], set()
    args.out.mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < args.jobs:
            cell = todo.pop(0)
            run = run_dir(args.out, *cell)
            log = open(args.out / f"{run.name}.log", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(command(run, *cell, args.extra), env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, run, time.time()))
            console.print(f"started {run.name}")
        time.sleep(2)
        for item in list(running):
            proc, run, start = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode}, see {run.name}.log)"
                console.print(f"{run.name}: {status} in {(time.time() - start) / 60:.1f} min")
                if proc.returncode != 0:
                    failed.append(run.name)
                elif args.export is not None and is_complete(run, epochs):
                    export_run(run, args.export / run.name)  # now, so that a stopped grid keeps what it finished
                    exported.add(run.name)
    from dfusion_bench.report import build_report

    sources = [args.out]
    if args.export is not None:
        finished = [run for run in (run_dir(args.out, *c) for c in cells) if is_complete(run, epochs)]
        for run in finished:
            if run.name not in exported:  # finished in an earlier invocation
                export_run(run, args.export / run.name)
        console.print(f"exported {len(finished)} runs to {args.export}")
        sources = [args.export]
    index = build_report([*sources, *args.also], args.report)
    console.print(f"report: {index}")
    if failed:
        console.print(f"[red]{len(failed)} runs failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
