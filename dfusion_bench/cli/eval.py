"""``dfusion eval``: fixed-seed evaluation of a plain model or of a training run's checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from dfusion_bench.cli import options as o
from dfusion_bench.errors import UserError


def eval_command(
    split: o.Split,
    out: o.Out,
    template: str = typer.Option(None, "--template", help="Prompt suite. Default: the run's, else required."),
    run: Path = typer.Option(None, "--run", help="A `dfusion train` folder: evaluate its checkpoint."),
    epoch: int = typer.Option(None, "--epoch", help="Which checkpoint of --run (default: the latest)."),
    model: o.Model = None,
    prompts: o.Prompts = None,
    samples_per_prompt: int = typer.Option(4, "--samples-per-prompt", min=1, help="Fixed-seed samples per prompt."),
    scorer: list[str] = typer.Option(None, "--scorer", help="Scorer(s); repeat for several. Default: the model's."),
    clip_model: o.ClipModel = "ViT-H-14",
    clip_checkpoint: o.ClipCheckpoint = None,
    steps: o.Steps = 20,
    eta: o.Eta = 1.0,
    guidance: o.Guidance = 5.0,
    batch_size: o.BatchSize = 16,
    grid: bool = typer.Option(True, "--grid/--no-grid", help="Write grid.png, every image in one picture."),
    device: o.Device = None,
    dtype: o.Dtype = None,
    overwrite: o.Overwrite = False,
) -> None:
    """Sample a suite's prompts with the fixed evaluation seeds; write per-sample scores, a summary and a grid."""
    from dfusion_bench import atomic
    from dfusion_bench.evaluation import evaluate, write_grid, write_samples
    from dfusion_bench.progress import progress_bar
    from dfusion_bench.rl.checkpoint import load_policy
    from dfusion_bench.rl.config import TrainConfig
    from dfusion_bench.runinfo import check_out_dir, staged_dir, write_run_info
    from dfusion_bench.session import ModelChoice, make_scorer, pick_device, pick_dtype
    from dfusion_bench.templates import load_suite
    from dfusion_bench.trajectories import SamplerConfig

    if run is not None and model is not None:
        raise UserError("give either --run (a training run) or --model (a plain pipeline), not both")
    if epoch is not None and run is None:
        raise UserError("--epoch needs --run")
    run_config = TrainConfig.load(run / "config.json") if run is not None and (run / "config.json").is_file() else None
    template = template or (run_config.template if run_config else None)
    if template is None:
        raise UserError("--template is required when evaluating a plain model")
    entries = list(load_suite(template).split(split))[:prompts]
    check_out_dir(out, overwrite)
    choice = ModelChoice.check(Path(run_config.model) if run_config and run_config.model else model)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    names = scorer or [choice.default_scorer()]
    scorers = [make_scorer(n, choice, [e.prompt for e in entries], dev, clip_model, clip_checkpoint) for n in names]
    if run is not None:
        pipe, _, epoch = load_policy(run, epoch, dev, dt)
    else:
        pipe = choice.load(dev, dt)
    sampler = SamplerConfig(num_steps=steps, eta=eta, guidance_scale=guidance)
    with staged_dir(out, overwrite) as stage, progress_bar() as progress:
        result = evaluate(pipe, scorers, entries, samples_per_prompt, sampler, batch_size, progress=progress)
        write_samples(stage / "samples.csv", result)
        if grid:
            write_grid(stage / "grid.png", result)
        summary = {
            "split": split,
            "template": load_suite(template).name,
            "source": {"run": str(run) if run else None, "epoch": epoch, "model": str(choice.path)},
            "method": run_config.method if run_config else None,
            "fusion": run_config.fusion if run_config else None,
            "seed": run_config.seed if run_config else None,
            "samples_per_prompt": samples_per_prompt,
            "sampler": {"steps": steps, "eta": eta, "guidance": guidance},
            "scorers": result.summary,
        }
        atomic.write_json(stage / "summary.json", summary)
        config = {k: v for k, v in summary.items() if k != "scorers"}
        write_run_info(stage, "eval", config, {"eval_seeds": "fixed"}, choice.path)
    for name, s in result.summary.items():
        rate = "" if s["aligned_rate"] is None else f", aligned {s['aligned_rate']:.1%}"
        typer.echo(f"{name}: mean {s['mean_score']:.4f}{rate} over {s['n']} images -> {out}")
