"""``dfusion fuse``: sample a suite's prompts, score, build D-Fusion triples, and write them out."""

from __future__ import annotations

import dataclasses
import time

import typer

from dfusion_bench.cli import options as o
from dfusion_bench.errors import UserError


def fuse(
    template: o.Template,
    split: o.Split,
    out: o.Out,
    samples_per_prompt: int = typer.Option(
        8, "--samples-per-prompt", min=1, help="Samples per prompt (N); refs = top N/4, bases = bottom N/2."
    ),
    model: o.Model = None,
    prompts: o.Prompts = None,
    scorer: o.Scorer = None,
    clip_model: o.ClipModel = "ViT-H-14",
    clip_checkpoint: o.ClipCheckpoint = None,
    seed: o.Seed = 0,
    steps: o.Steps = 20,
    eta: o.Eta = 1.0,
    guidance: o.Guidance = 5.0,
    threshold: o.Threshold = "suite",
    mask_resolution: o.MaskResolution = None,
    fuse_layers: o.FuseLayers = "mid_block,up_blocks",
    skip_first_steps: o.SkipFirstSteps = 2,
    reference_fraction: o.ReferenceFraction = 0.25,
    reference_uses: o.ReferenceUses = 2,
    batch_size: o.BatchSize = 16,
    device: o.Device = None,
    dtype: o.Dtype = None,
    overwrite: o.Overwrite = False,
) -> None:
    """Build D-Fusion (reference, base, target) triples for a prompt suite and write images, masks and trajectories."""
    from dfusion_bench import fuse_output
    from dfusion_bench.fusion.triples import pairing_problem
    from dfusion_bench.logprob import require_stochastic
    from dfusion_bench.pairs import build_pairs, sample_and_score
    from dfusion_bench.progress import progress_bar
    from dfusion_bench.runinfo import check_out_dir, staged_dir, write_run_info
    from dfusion_bench.seeding import sample_seeds
    from dfusion_bench.session import ModelChoice, make_scorer, pick_device, pick_dtype
    from dfusion_bench.templates import load_suite
    from dfusion_bench.trajectories import SamplerConfig

    suite = load_suite(template)
    entries = list(suite.split(split))[:prompts]
    check_out_dir(out, overwrite)
    require_stochastic(eta)
    fusion = o.fusion_config(
        threshold, mask_resolution, fuse_layers, skip_first_steps, reference_fraction, reference_uses
    )
    problem = pairing_problem(samples_per_prompt, fusion.reference_fraction, fusion.reference_uses)
    if problem:
        raise UserError(f"--samples-per-prompt: {problem}")
    choice = ModelChoice.check(model)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    score_fn = make_scorer(scorer, choice, [e.prompt for e in entries], dev, clip_model, clip_checkpoint)
    sampler = SamplerConfig(num_steps=steps, eta=eta, guidance_scale=guidance)
    pipe = choice.load(dev, dt)
    seeds = sample_seeds(seed, 0, len(entries), samples_per_prompt)
    with staged_dir(out, overwrite) as stage, progress_bar() as progress:
        t0 = time.perf_counter()
        samples = sample_and_score(pipe, score_fn, entries, seeds, sampler, batch_size, progress=progress)
        t1 = time.perf_counter()
        pairs = build_pairs(pipe, score_fn, samples, fusion, fuse=True, batch_size=batch_size, progress=progress)
        t2 = time.perf_counter()
        timing = {"sampling_s": t1 - t0, "fusion_s": t2 - t1, "samples": len(samples.trajectories)}
        manifest = fuse_output.write(stage, pairs, {"scorer": score_fn.name, "split": split, "timing": timing})
        config = {
            "template": suite.name,
            "split": split,
            "prompts": len(entries),
            "samples_per_prompt": samples_per_prompt,
            "model": str(choice.path),
            "scorer": score_fn.name,
            "clip_model": clip_model if score_fn.name == "clip" else None,
            "sampler": dataclasses.asdict(sampler),
            "fusion": dataclasses.asdict(fusion),
            "batch_size": batch_size,
            "device": str(dev),
            "dtype": str(dt),
        }
        write_run_info(stage, "fuse", config, {"seed": seed, "sample_seeds": seeds}, choice.path)
    typer.echo(
        f"{manifest['n_triples']} triples from {manifest['n_samples']} samples in {out}; "
        f"target beats base {manifest.get('target_beats_base_rate', float('nan')):.0%}, "
        f"{manifest.get('unet_evals_per_target_step', float('nan')):.2f} UNet evals per target-step"
    )
    rates = manifest.get("fact_rates", {})
    if "target" in rates:
        moves = ", ".join(
            f"{k} {rates['base'][k]:.0%} → {v:.0%}" for k, v in rates["target"].items() if k in rates["base"]
        )
        typer.echo(f"facts held, base → target: {moves}")
