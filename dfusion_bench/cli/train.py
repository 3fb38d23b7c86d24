"""``dfusion train``: fine-tune with DPO, DDPO or PG, with or without D-Fusion; resumable.

Its options are the fields of :class:`~dfusion_bench.rl.config.TrainConfig` (and of the run's folder and device,
:class:`~dfusion_bench.settings.RunOptions`), derived by :mod:`dfusion_bench.cli.derive`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dfusion_bench.cli.derive import Given, derived_command
from dfusion_bench.errors import UserError
from dfusion_bench.options import Option, build, flatten, raise_problems
from dfusion_bench.rl.config import TrainConfig
from dfusion_bench.rl.tracking import TRACKERS
from dfusion_bench.settings import RunOptions, resolve_paths

#: Options that may differ on --resume: where and on what it computes, and (raising only) the number of epochs.
RESUMABLE = {"run.out", "run.overwrite", "run.device", "run.dtype", "run.resume", "run.log_with", "config.epochs"}


@dataclass(frozen=True)
class TrainRun(RunOptions):
    """A training run's folder: RunOptions, with a default folder name and --resume."""

    out: Path | None = Option(None, "Run folder. Default: runs/METHOD-fusion|plain-SUITE-sSEED.", metavar="DIR").field()
    resume: bool = Option(False, "Continue the run in --out from its latest checkpoint.", flag="--resume").field()
    log_with: tuple[str, ...] = Option(
        (),
        "Also send per-epoch metrics and sample grids to these trackers (comma-separated; accelerate's tracker API). "
        "Default: none; the run folder's curves and tables are written either way.",
        choices=TRACKERS,
    ).field()

    def __post_init__(self) -> None:
        raise_problems(self)


SECTIONS = {"config": TrainConfig, "run": TrainRun}


def resumed_config(fresh: TrainConfig, given: Given, out: Path) -> TrainConfig:
    """The stored configuration of the run in ``out``, with ``--epochs`` raised where given; refuses any other option
    the user gave that differs from what the run stored."""
    if not (out / "config.json").is_file():
        raise UserError(f"--resume: {out} holds no run (no config.json); start it without --resume")
    stored = TrainConfig.load(out / "config.json")
    mine, theirs = flatten(fresh.to_dict()), flatten(stored.to_dict())
    for path in sorted(given.explicit - RESUMABLE):
        key = path.removeprefix("config.")
        if mine.get(key) != theirs.get(key):
            flag = next(leaf.flag for leaf in _leaves() if leaf.path == path)
            raise UserError(f"--resume: {flag} differs from the run's config.json; drop it")
    epochs = fresh.epochs if "config.epochs" in given.explicit else stored.epochs
    return TrainConfig.from_dict({**stored.to_dict(), "epochs": epochs})


def _leaves():
    from dfusion_bench.cli.derive import command_leaves

    return command_leaves(SECTIONS)


def run_train(given: Given) -> None:
    from dfusion_bench.devices import pick_device
    from dfusion_bench.rl.trainer import Trainer
    from dfusion_bench.runinfo import check_out_dir
    from dfusion_bench.suites import load_suite

    run: TrainRun = build(TrainRun, given.section("run"))
    config: TrainConfig = resolve_paths(build(TrainConfig, given.section("config")))
    out = run.out or Path("runs") / config.run_name
    if run.resume:
        config = resumed_config(config, given, out)
    else:
        check_out_dir(out, run.overwrite)
    suite = load_suite(config.template)  # a bad or empty suite fails before the model loads
    for split in dict.fromkeys(("train", *config.eval_splits)):
        suite.prompts(split, config.prompts)
    pick_device(run.device)
    if run.log_with:
        from dfusion_bench.rl.tracking import check_available

        check_available(run.log_with)
    trainer = Trainer(config, out, device=run.device, dtype=run.dtype, log_with=run.log_with)
    trainer.run(resume=run.resume, overwrite=run.overwrite)
    if trainer.dist.is_main:
        import typer

        from dfusion_bench.report import build_report

        index = build_report([out], out / "report")
        typer.echo(
            f"done: curves and tables in {index} (metrics: {out / 'metrics.jsonl'}; rebuild: dfusion report {out})"
        )


train = derived_command(
    "train",
    "Fine-tune the UNet's LoRA adapters with an RL method; evaluate on train and held-out prompts each epoch.",
    SECTIONS,
    run_train,
)
