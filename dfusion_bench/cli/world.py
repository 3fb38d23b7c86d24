"""``dfusion world``: the embedded shapes world (pretraining the shipped model)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="The embedded shapes world: pretrain the shipped pipeline.", no_args_is_help=True)


@app.command()
def pretrain(
    out: Path = typer.Option(..., help="Run folder: checkpoint, config, and the exported pipeline/ at the end."),
    seed: int = typer.Option(0, help="Seed of weights and data; same seed and steps give the same weights on CPU."),
    minutes: float = typer.Option(None, help="Stop after this many minutes (checkpointed; continue with --resume)."),
    vae_steps: int = typer.Option(1500, help="VAE training steps."),
    unet_steps: int = typer.Option(6000, help="UNet + text encoder training steps."),
    batch_size: int = typer.Option(64, help="Scenes per step."),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt."),
) -> None:
    """Reproduce the shipped embedded pipeline from scratch."""
    from dfusion_bench.world.pretrain import PretrainConfig
    from dfusion_bench.world.pretrain import pretrain as run

    cfg = PretrainConfig(seed=seed, vae_steps=vae_steps, unet_steps=unet_steps, batch_size=batch_size)
    done = run(out, cfg, minutes=minutes, resume=resume)
    if done is None:
        typer.echo(f"stopped at the time limit; checkpoint in {out}; continue with --resume")
    else:
        typer.echo(f"pipeline written to {done}")
