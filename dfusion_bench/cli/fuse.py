"""``dfusion fuse``: sample a suite's prompts, score, build D-Fusion triples, and write them out.

Its options are the fields of :class:`~dfusion_bench.settings.FuseConfig` and
:class:`~dfusion_bench.settings.RunOptions`, derived by :mod:`dfusion_bench.cli.derive`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import typer

from dfusion_bench.cli.derive import Given, derived_command
from dfusion_bench.options import build
from dfusion_bench.settings import FuseConfig, RunOptions, resolve_paths

SECTIONS = {"config": FuseConfig, "run": RunOptions}


def run_fuse(given: Given) -> None:
    from dfusion_bench import fuse_output
    from dfusion_bench.devices import pick_device, pick_dtype
    from dfusion_bench.models.choice import ModelChoice
    from dfusion_bench.pairs import build_pairs
    from dfusion_bench.progress import progress_bar
    from dfusion_bench.rollout import sample_and_score
    from dfusion_bench.runinfo import check_out_dir, staged_dir, write_run_info
    from dfusion_bench.scorers import make_scorer
    from dfusion_bench.seeding import sample_seeds
    from dfusion_bench.suites import load_suite

    config: FuseConfig = resolve_paths(build(FuseConfig, given.section("config")))
    run: RunOptions = build(RunOptions, given.section("run"))
    suite = load_suite(config.template)
    entries = suite.prompts(config.split, config.prompts)
    check_out_dir(run.out, run.overwrite)
    choice = ModelChoice.check(Path(config.model) if config.model else None)
    dev = pick_device(run.device)
    dt = pick_dtype(dev, run.dtype)
    checkpoint = Path(config.clip_checkpoint) if config.clip_checkpoint else None
    score_fn = make_scorer(config.scorer, choice, [e.prompt for e in entries], dev, config.clip_model, checkpoint)
    pipe = choice.load(dev, dt)
    seeds = sample_seeds(config.seed, 0, len(entries), config.samples_per_prompt)
    batch = config.batch_size
    with staged_dir(run.out, run.overwrite) as stage, progress_bar() as progress:
        t0 = time.perf_counter()
        samples = sample_and_score(
            pipe, score_fn, entries, seeds, config.sampler, batch, progress=progress, fusion=config.fusion
        )
        t1 = time.perf_counter()
        pairs = build_pairs(pipe, score_fn, samples, config.fusion, fuse=True, batch_size=batch, progress=progress)
        t2 = time.perf_counter()
        timing = {"sampling_s": t1 - t0, "fusion_s": t2 - t1, "samples": len(samples.trajectories)}
        manifest = fuse_output.write(stage, pairs, {"scorer": score_fn.name, "split": config.split, "timing": timing})
        record = {
            **dataclasses.asdict(config),
            "template": suite.name,
            "prompts": len(entries),
            "model": str(choice.path),
            "scorer": score_fn.name,
            "clip_model": config.clip_model if score_fn.name == "clip" else None,
            "device": str(dev),
            "dtype": str(dt),
        }
        write_run_info(stage, "fuse", record, {"seed": config.seed, "sample_seeds": seeds}, choice.path)
    if not manifest["n_triples"]:
        typer.echo(
            f"0 triples from {manifest['n_samples']} samples in {run.out}: no reference scored above a base "
            "(more --samples-per-prompt or --prompts give pairs a chance)"
        )
        return
    typer.echo(
        f"{manifest['n_triples']} triples from {manifest['n_samples']} samples in {run.out}; "
        f"target beats base {manifest.get('target_beats_base_rate', float('nan')):.0%}, "
        f"{manifest.get('unet_evals_per_target_step', float('nan')):.2f} UNet evals per target-step "
        f"(references: {manifest.get('reference_cache', {}).get('mode', 'none')})"
    )
    rates = manifest.get("fact_rates", {})
    if "target" in rates:
        moves = ", ".join(
            f"{k} {rates['base'][k]:.0%} → {v:.0%}" for k, v in rates["target"].items() if k in rates["base"]
        )
        typer.echo(f"facts held, base → target: {moves}")


fuse = derived_command(
    "fuse",
    "Build D-Fusion (reference, base, target) triples for a prompt suite and write images, masks and trajectories.",
    SECTIONS,
    run_fuse,
)
