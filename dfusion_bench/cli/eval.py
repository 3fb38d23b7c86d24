"""``dfusion eval``: fixed-seed evaluation of a plain model or of a training run's checkpoint.

Its options are the fields of :class:`~dfusion_bench.settings.EvalConfig` and
:class:`~dfusion_bench.settings.RunOptions`, derived by :mod:`dfusion_bench.cli.derive`. With ``--run`` every
setting the run trained with (suite, model, scorer, CLIP model and checkpoint, sampler) is the default; an option
given explicitly overrides it, and ``summary.json`` records which did.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from dfusion_bench.cli.derive import Given, derived_command
from dfusion_bench.errors import UserError
from dfusion_bench.options import build
from dfusion_bench.settings import EvalConfig, RunOptions, resolve_paths

SECTIONS = {"config": EvalConfig, "run": RunOptions}

#: What ``eval --run`` takes from the run's config.json unless given: EvalConfig path -> TrainConfig attribute.
FROM_RUN = {
    "template": "template",
    "scorer": "scorer",
    "clip_model": "clip_model",
    "clip_checkpoint": "clip_checkpoint",
    "sampler": "eval_sampler",
}


def with_run_settings(config: EvalConfig, explicit: frozenset[str], train) -> tuple[EvalConfig, list[str]]:
    """``config`` with every setting of :data:`FROM_RUN` that the user did not give taken from the training run's
    configuration ``train``; returns it and the names of the settings given explicitly (the overrides)."""
    changes, overrides = {}, []
    for name, attr in FROM_RUN.items():
        given = any(p == f"config.{name}" or p.startswith(f"config.{name}.") for p in explicit)
        if given:
            overrides.append(name)
            continue
        value = getattr(train, attr)
        if name == "scorer":
            value = (value,) if value else None
        changes[name] = value
    return dataclasses.replace(config, **changes), overrides


def run_eval(given: Given) -> None:
    from dfusion_bench import atomic
    from dfusion_bench.devices import pick_device, pick_dtype
    from dfusion_bench.evaluation import evaluate, write_grid, write_samples
    from dfusion_bench.models.choice import ModelChoice
    from dfusion_bench.progress import progress_bar
    from dfusion_bench.rl.checkpoint import load_policy
    from dfusion_bench.rl.config import TrainConfig
    from dfusion_bench.runinfo import check_out_dir, staged_dir, write_run_info
    from dfusion_bench.scorers import make_scorer
    from dfusion_bench.suites import load_suite

    config: EvalConfig = resolve_paths(build(EvalConfig, given.section("config")))
    run: RunOptions = build(RunOptions, given.section("run"))
    train_config, overrides = None, []
    if config.run is not None:
        if not (Path(config.run) / "config.json").is_file():
            raise UserError(
                f"--run {config.run}: not a training run folder (no config.json); pass a `dfusion train --out` folder"
            )
        train_config = TrainConfig.load(Path(config.run) / "config.json")
        config, overrides = with_run_settings(config, given.explicit, train_config)
    if config.template is None:
        raise UserError("--template is required when evaluating a plain model")
    suite = load_suite(config.template)
    entries = suite.prompts(config.split, config.prompts)
    check_out_dir(run.out, run.overwrite)
    model = train_config.model if train_config else config.model
    choice = ModelChoice.check(Path(model) if model else None)
    dev = pick_device(run.device)
    dt = pick_dtype(dev, run.dtype)
    names = config.scorer or (choice.default_scorer(),)
    checkpoint = Path(config.clip_checkpoint) if config.clip_checkpoint else None
    prompts = [e.prompt for e in entries]
    scorers = [make_scorer(n, choice, prompts, dev, config.clip_model, checkpoint) for n in names]
    epoch = config.epoch
    if config.run is not None:
        pipe, _, epoch = load_policy(Path(config.run), epoch, dev, dt)
    else:
        pipe = choice.load(dev, dt)
    sampler = config.sampler
    with staged_dir(run.out, run.overwrite) as stage, progress_bar() as progress:
        result = evaluate(
            pipe, scorers, entries, config.samples_per_prompt, sampler, config.batch_size, progress=progress
        )
        write_samples(stage / "samples.csv", result)
        if config.grid:
            write_grid(stage / "grid.png", result)
        summary = {
            "split": config.split,
            "template": suite.name,
            "source": {"run": config.run, "epoch": epoch, "model": str(choice.path)},
            "method": train_config.method if train_config else None,
            "fusion": train_config.fusion if train_config else None,
            "seed": train_config.seed if train_config else None,
            "samples_per_prompt": config.samples_per_prompt,
            "sampler": {"steps": sampler.num_steps, "eta": sampler.eta, "guidance": sampler.guidance_scale},
            "overrides": overrides,
            "scorers": result.summary,
        }
        atomic.write_json(stage / "summary.json", summary)
        recorded = {k: v for k, v in summary.items() if k != "scorers"}
        write_run_info(
            stage, "eval", {**recorded, "config": dataclasses.asdict(config)}, {"eval_seeds": "fixed"}, choice.path
        )
    for name, s in result.summary.items():
        rate = "" if s["aligned_rate"] is None else f", aligned {s['aligned_rate']:.1%}"
        typer.echo(f"{name}: mean {s['mean_score']:.4f}{rate} over {s['n']} images -> {run.out}")


eval_command = derived_command(
    "eval",
    "Sample a suite's prompts with the fixed evaluation seeds; write per-sample scores, a summary and a grid.",
    SECTIONS,
    run_eval,
)
