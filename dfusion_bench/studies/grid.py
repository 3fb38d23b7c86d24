"""The whole benchmark grid in one command: every method × fusion × suite × seed, then the report.

``dfusion grid --seeds 0,1`` (or ``nox -s grid -- --seeds 0,1``) trains each cell as its own
``dfusion train`` process (``--jobs`` at a time, one CPU thread each), resumes cells that were interrupted, skips
cells that are complete, and finally builds the report over all runs. The per-run configuration is
:data:`GRID_CONFIG`, sized so that one run takes at most about 20 minutes on a 2-core laptop CPU. With
``--final-eval SEEDS`` it then evaluates the base model and every final policy on many more fixed seeds (into
``final-eval/``), which the report's ``paired`` table compares image by image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from dfusion_bench.rl.config import METHODS
from dfusion_bench.world.suites import SHAPES_SUITES as SUITES

#: One run of the grid on the embedded model, sized to stay under ~20 minutes on one core of a 2-core laptop CPU.
#: Why each value: docs/design.md, "Where the embedded defaults come from".
GRID_CONFIG = [
    "--prompts", "8",
    "--samples-per-prompt", "8",
    "--epochs", "8",
    "--eval-every", "4",
    "--eval-samples-per-prompt", "8",
    "--inner-epochs", "2",
    "--train-batch-size", "2",
    "--timestep-fraction", "0.5",
    "--mask-resolution", "16",
    "--exclude-last-steps", "3",
]  # fmt: skip


def grid_value(option: str, extra: list[str] | tuple[str, ...] = ()) -> str:
    """The value a grid run gets for ``option`` (e.g. ``"--epochs"``), one that :data:`GRID_CONFIG` names: its own,
    or ``extra``'s where that names the option too, as :func:`grid_options` reads them."""
    return grid_options(extra)[option.removeprefix("--").replace("-", "_")]


def run_dir(root: Path, method: str, fusion: bool, suite: str, seed: int) -> Path:
    return root / f"{method}-{'fusion' if fusion else 'plain'}-{suite}-s{seed}"


def is_complete(run: Path, epochs: int) -> bool:
    pointer = run / "checkpoints" / "latest.json"
    return pointer.is_file() and json.loads(pointer.read_text()).get("epoch") == epochs


def grid_options(extra: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The ``dfusion train`` options a grid run gets, ``{"exclude_last_steps": "3", ...}``: :data:`GRID_CONFIG`, then
    ``extra``, the later value winning as on the command line. A flag without a value reads ``"true"``, its
    ``--no-`` form ``"false"`` (``--no-dpo-require-win`` -> ``{"dpo_require_win": "false"}``)."""
    tokens, options = [*GRID_CONFIG, *extra], {}
    for i, token in enumerate(tokens):
        if not token.startswith("--"):
            continue
        value = tokens[i + 1] if i + 1 < len(tokens) else None
        name = token[2:].replace("-", "_")
        if value is not None and not value.startswith("--"):
            options[name] = value
        else:
            options[name.removeprefix("no_")] = "false" if name.startswith("no_") else "true"
    return options


def _agrees(stored: object, given: str) -> bool:
    if isinstance(stored, bool):
        return given == str(stored).lower()
    if isinstance(stored, int | float):
        try:
            return float(given) == float(stored)
        except ValueError:
            return False
    if isinstance(stored, list | tuple):
        return ",".join(map(str, stored)) == given
    return str(stored) == given


def is_exported(dest: Path, epochs: int, extra: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether ``dest`` holds an exported run (:func:`export_run`) that reached ``epochs`` under the options this grid
    passes (:func:`grid_options`): such a cell is done even where its run folder (with the checkpoints) is gone, e.g.
    in a fresh clone that holds the committed results. A run exported under any other value of them (another sample
    count, the first model's grid, all steps trained) is not."""
    from dfusion_bench.options import flatten
    from dfusion_bench.rl.config import TrainConfig, option_paths

    if not all((dest / name).is_file() for name in EXPORTED_FILES):
        return False
    stored = flatten(TrainConfig.load(dest / "config.json").to_dict())  # fields it lacks: their defaults
    paths = option_paths()
    for option, value in grid_options(extra).items():
        path = paths.get(option, option)
        if option != "epochs" and path in stored and not _agrees(stored[path], value):
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


#: Where the grid's final evaluations go, under the export folder (or the run root without --export).
FINAL_EVAL = "final-eval"


def final_eval_dir(root: Path, name: str, split: str) -> Path:
    """The ``dfusion eval`` folder of ``name`` (a run folder's name, or ``SUITE-base``) on ``split``."""
    return root / FINAL_EVAL / f"{name}-{split}"


def has_final_eval(folder: Path, images: int, epoch: int | None) -> bool:
    """Whether ``folder`` holds a finished ``dfusion eval`` of ``images`` images per scorer, of checkpoint ``epoch``
    (None: the base model)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    counts = [s.get("n") for s in summary.get("scorers", {}).values() if isinstance(s, dict)]
    source = summary.get("source") if isinstance(summary.get("source"), dict) else {}
    return bool(counts) and all(n == images for n in counts) and source.get("epoch") == epoch


def final_eval_command(out: Path, suite: str, split: str, seeds: int, run: Path | None, extra: list[str]) -> list[str]:
    """``dfusion eval`` of ``run``'s final checkpoint, or of the base model (the grid's ``--model`` if ``extra`` names
    one), on the grid's prompts of ``split`` (``--prompts`` and ``--epochs`` as ``extra`` leaves them) with ``seeds``
    fixed seeds each (the runs' own evaluations use the first of these seeds), so that the report pairs every final
    policy with the base image by image."""
    if run is not None:
        source = ["--run", str(run), "--epoch", grid_value("--epochs", extra)]
    else:
        model = grid_options(extra).get("model")
        source = ["--model", model] if model is not None else []
    return [sys.executable, "-m", "dfusion_bench", "eval", *source, "--template", suite, "--split", split,
            "--prompts", grid_value("--prompts", extra), "--samples-per-prompt", str(seeds), "--out", str(out),
            "--device", "cpu", "--no-grid", "--overwrite"]  # fmt: skip


def run_pool(
    jobs: list[tuple[str, list[str], Callable[[], None]]], n_jobs: int, log_dir: Path, console: Console
) -> list[str]:
    """Run ``(name, command, on_success)`` jobs ``n_jobs`` at a time, one CPU thread each, logging each to
    ``log_dir/NAME.log``; ``on_success`` runs as soon as its job ends well. Returns the names of failed jobs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo, failed = list(jobs), []
    running: list[tuple[subprocess.Popen, str, Callable[[], None], float]] = []
    log_dir.mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < n_jobs:
            name, cmd, on_success = todo.pop(0)
            log = open(log_dir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, name, on_success, time.time()))
            console.print(f"started {name}")
        time.sleep(2)
        for item in list(running):
            proc, name, on_success, start = item
            if proc.poll() is None:
                continue
            running.remove(item)
            status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode}, see {name}.log)"
            console.print(f"{name}: {status} in {(time.time() - start) / 60:.1f} min")
            if proc.returncode != 0:
                failed.append(name)
            else:
                on_success()
    return failed


@dataclass(frozen=True)
class GridPlan:
    """What a grid run covers and where it writes (the options of ``dfusion grid``)."""

    seeds: tuple[int, ...] = (0,)
    methods: tuple[str, ...] = METHODS
    suites: tuple[str, ...] = SUITES
    out: Path = Path("runs/grid")
    report: Path = Path("results/report")
    jobs: int = 2
    export: Path | None = None
    final_eval: int = 0
    final_eval_splits: tuple[str, ...] = ("train",)
    also: tuple[Path, ...] = ()
    extra: tuple[str, ...] = ()


def run_grid(args: GridPlan, console: Console) -> list[str]:
    """Train every cell not yet complete (``args.jobs`` at a time), export, evaluate finally, build the report;
    returns the names of the jobs that failed."""
    extra = list(args.extra)
    epochs = int(grid_value("--epochs", extra))
    cells = [(m, f, s, seed) for seed in args.seeds for s in args.suites for m in args.methods for f in (False, True)]

    def exported(cell: tuple) -> Path | None:
        dest = args.export / run_dir(args.out, *cell).name if args.export is not None else None
        return dest if dest is not None and is_exported(dest, epochs, extra) else None

    todo = [c for c in cells if not (is_complete(run_dir(args.out, *c), epochs) or exported(c))]
    console.print(f"{len(cells)} runs, {len(cells) - len(todo)} complete, {len(todo)} to do, {args.jobs} at a time")
    done_now: set[str] = set()

    def export(run: Path) -> Callable[[], None]:
        def on_success() -> None:
            if args.export is not None and is_complete(run, epochs):
                export_run(run, args.export / run.name)  # now, so that a stopped grid keeps what it finished
                done_now.add(run.name)

        return on_success

    train_jobs = []
    for cell in todo:
        run = run_dir(args.out, *cell)
        train_jobs.append((run.name, command(run, *cell, extra), export(run)))
    failed = run_pool(train_jobs, args.jobs, args.out, console)
    finished = [run for run in (run_dir(args.out, *c) for c in cells) if is_complete(run, epochs)]
    if args.export is not None:
        for run in finished:
            if run.name not in done_now:  # finished in an earlier invocation
                export_run(run, args.export / run.name)
        console.print(f"exported {len(finished)} runs to {args.export}")
    root = args.export if args.export is not None else args.out
    if args.final_eval > 0:
        failed += run_pool(final_eval_jobs(args, cells, root, epochs, exported), args.jobs, args.out, console)
    from dfusion_bench.report import build_report

    index = build_report([root, *args.also], args.report)
    console.print(f"report: {index}")
    if failed:
        console.print(f"[red]{len(failed)} jobs failed: {', '.join(failed)}")
    return failed


def final_eval_jobs(
    args: GridPlan, cells: list[tuple], root: Path, epochs: int, exported: Callable[[tuple], Path | None]
) -> list[tuple[str, list[str], Callable[[], None]]]:
    """The final evaluations still missing: the base model once per suite and split, and every finished run."""
    extra = list(args.extra)
    images = int(grid_value("--prompts", extra)) * args.final_eval
    jobs = []
    for split in args.final_eval_splits:
        for suite in args.suites:
            out = final_eval_dir(root, f"{suite}-base", split)
            if not has_final_eval(out, images, None):
                cmd = final_eval_command(out, suite, split, args.final_eval, None, extra)
                jobs.append((out.name, cmd, lambda: None))
        for cell in cells:
            run = run_dir(args.out, *cell)
            source = exported(cell) or (run if is_complete(run, epochs) else None)  # the committed copy first
            out = final_eval_dir(root, run.name, split)
            if source is not None and not has_final_eval(out, images, epochs):
                cmd = final_eval_command(out, cell[2], split, args.final_eval, source, extra)
                jobs.append((out.name, cmd, lambda: None))
    return jobs
