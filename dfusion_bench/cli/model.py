"""``dfusion model``: Stable Diffusion pipelines — create a random-weight test pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Stable Diffusion pipelines: create random-weight test pipelines.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Stable Diffusion pipelines: create random-weight test pipelines."""


@app.command()
def tiny(
    out: Annotated[Path, typer.Option(help="Folder to create (must not exist, or be empty).")],
    arch: Annotated[
        str, typer.Option(help="tiny: smallest SD-shaped pipeline, fast on CPU; sd21: SD 2.1-base UNet, 3.5 GB.")
    ] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed of the random weights; same seed, same weights.")] = 0,
    sample_size: Annotated[
        int | None, typer.Option(help="Latent side (default 16 for tiny, 64 for sd21); images are 2× / 8× larger.")
    ] = None,
    clip: Annotated[
        bool, typer.Option("--clip/--no-clip", help="Also write a tiny open_clip config and weights to OUT/clip/.")
    ] = True,
) -> None:
    """Save a random-weight Stable Diffusion pipeline (a standard diffusers folder) for tests and dry runs, with a
    tiny CLIP for --scorer clip, so the real path runs from the command line in minutes."""
    from dfusion_bench.models.tiny import save_tiny_pipeline
    from dfusion_bench.models.tiny_clip import TINY_CLIP_NAME

    path = save_tiny_pipeline(out, arch=arch, seed=seed, sample_size=sample_size, with_clip=clip)
    typer.echo(str(path))
    if clip:
        clip_dir = path / "clip"
        typer.echo(
            f"CLIP: --scorer clip --clip-model {clip_dir / (TINY_CLIP_NAME + '.json')} "
            f"--clip-checkpoint {clip_dir / (TINY_CLIP_NAME + '.pt')}"
        )
