"""``dfusion world``: the embedded shapes world (pretraining the shipped model, and measuring it)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="The embedded shapes world: pretrain the shipped pipeline and measure it.", no_args_is_help=True)


@app.command()
def pretrain(
    out: Path = typer.Option(..., help="Run folder: checkpoint, config, and the exported pipeline/ at the end."),
    seed: int = typer.Option(0, help="Seed of weights and data; same seed and steps give the same weights on CPU."),
    minutes: float = typer.Option(None, help="Stop after this many minutes (checkpointed; continue with --resume)."),
    vae_steps: int = typer.Option(1500, help="VAE training steps."),
    text_steps: int = typer.Option(1500, help="Contrastive (CLIP-style) text encoder training steps."),
    unet_steps: int = typer.Option(6000, help="UNet training steps (text encoder frozen)."),
    batch_size: int = typer.Option(64, help="Scenes per step."),
    resume: bool = typer.Option(False, help="Continue from OUT/checkpoint.pt."),
) -> None:
    """Reproduce the shipped embedded pipeline from scratch."""
    from dfusion_bench.world.pretrain import PretrainConfig
    from dfusion_bench.world.pretrain import pretrain as run

    cfg = PretrainConfig(
        seed=seed, vae_steps=vae_steps, text_steps=text_steps, unet_steps=unet_steps, batch_size=batch_size
    )
    done = run(out, cfg, minutes=minutes, resume=resume)
    if done is None:
        typer.echo(f"stopped at the time limit; checkpoint in {out}; continue with --resume")
    else:
        typer.echo(f"pipeline written to {done}")


def _world_pipeline(model: Path | None, why: str):
    """The checked world pipeline at ``model`` (default: the shipped one), loaded on CPU in float32; any other
    pipeline is refused in one line that says ``why`` the command needs the world."""
    import torch

    from dfusion_bench.errors import UserError
    from dfusion_bench.models.choice import ModelChoice

    choice = ModelChoice.check(model)
    if not choice.is_world:
        raise UserError(f"{choice.path} is not a shapes-world pipeline; {why}")
    return choice.load(torch.device("cpu"), torch.float32), choice.path


#: Named D-Fusion variants for ``dfusion world study`` (each changes one thing from the paper's defaults).
VARIANTS = {
    "paper": {},
    "auto": {"threshold": "auto"},
    "mask16": {"mask_resolution": 16},
    "mid-only": {"fuse_layers": ("mid_block",)},
    "all-layers": {"fuse_layers": ("down_blocks", "mid_block", "up_blocks")},
    "skip0": {"skip_first_steps": 0},
    "skip10": {"skip_first_steps": 10},
}


def _variant(spec: str):
    import dataclasses

    from dfusion_bench.errors import UserError
    from dfusion_bench.fusion import FusionConfig
    from dfusion_bench.studies.fusion_study import Variant

    if spec.startswith("fixed:"):
        try:
            return Variant(spec, FusionConfig(threshold=spec.split(":", 1)[1]))
        except ValueError:
            raise UserError(f"variant {spec!r}: fixed:VALUE needs a number, e.g. fixed:0.05") from None
    if spec not in VARIANTS:
        raise UserError(f"unknown variant {spec!r}; use fixed:VALUE or one of {', '.join(VARIANTS)}")
    return Variant(spec, dataclasses.replace(FusionConfig(), **VARIANTS[spec]))


@app.command()
def study(
    template: str = typer.Option(..., help="A shapes suite: shapes-objects, shapes-binding or shapes-spatial."),
    out: Path = typer.Option(..., help="Output folder (summary.csv, triples.csv, masks.csv, summary.md)."),
    per_prompt: int = typer.Option(16, help="Samples per prompt (the paper: 16)."),
    prompts: int = typer.Option(None, help="Use the first K prompts of each split."),
    variants: str = typer.Option("paper,auto", help="Comma-separated: " + ", ".join(VARIANTS) + ", fixed:VALUE."),
    seed: int = typer.Option(0, help="Seed of the samples."),
    model: Path = typer.Option(None, help="A world pipeline folder (default: the shipped one)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """Measure D-Fusion on the embedded model with the exact verifier: alignment, visual consistency, mask IoU."""
    from dfusion_bench import atomic
    from dfusion_bench.progress import progress_bar
    from dfusion_bench.report.table_io import display_numbers, to_markdown
    from dfusion_bench.runinfo import staged_dir, write_run_info
    from dfusion_bench.studies.fusion_study import run_study
    from dfusion_bench.suites import load_suite

    chosen = [_variant(v.strip()) for v in variants.split(",") if v.strip()]
    suite = load_suite(template)
    pipe, path = _world_pipeline(model, "the study needs the exact verifier")
    with staged_dir(out, overwrite) as stage, progress_bar() as progress:
        tables = run_study(
            pipe, list(suite.train)[:prompts], list(suite.test)[:prompts], chosen, per_prompt, seed, progress=progress
        )
        for name, df in tables.items():
            atomic.write_text(stage / f"{name}.csv", df.to_csv(index=False))
        masks = tables["masks"].groupby(["mask_resolution", "rule", "split"])[["iou_mean_over_steps", "iou_last_step"]]
        report = "\n".join(
            [to_markdown(display_numbers(tables["summary"])), to_markdown(display_numbers(masks.mean().reset_index()))]
        )
        atomic.write_text(stage / "summary.md", report)
        config = {"template": suite.name, "per_prompt": per_prompt, "prompts": prompts, "variants": variants}
        write_run_info(stage, "world study", config, {"seed": seed}, path)
    typer.echo(tables["summary"].to_string(index=False))
    typer.echo(f"written to {out}")


@app.command()
def quality(
    out: Path = typer.Option(..., help="Output folder: quality.csv, quality.md and per_prompt.csv."),
    per_prompt: int = typer.Option(8, help="Fixed-seed samples per prompt."),
    model: Path = typer.Option(None, help="A world pipeline folder (default: the shipped one)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """The shipped model's alignment by the exact verifier: single objects and every shapes suite, train and test."""
    import torch

    from dfusion_bench import atomic
    from dfusion_bench.models.choice import ModelChoice
    from dfusion_bench.progress import progress_bar
    from dfusion_bench.report.table_io import display_numbers, to_markdown
    from dfusion_bench.runinfo import staged_dir, write_run_info
    from dfusion_bench.studies.quality import quality_table

    choice = ModelChoice.check(model)
    pipe = choice.load(torch.device("cpu"), torch.float32)
    with staged_dir(out, overwrite) as stage, progress_bar() as progress:
        table, prompts = quality_table(pipe, per_prompt, progress=progress, grids=stage)
        atomic.write_text(stage / "quality.csv", table.to_csv(index=False))
        atomic.write_text(stage / "per_prompt.csv", prompts.to_csv(index=False))
        atomic.write_text(stage / "quality.md", to_markdown(display_numbers(table)))
        write_run_info(stage, "world quality", {"per_prompt": per_prompt, "model": str(choice.path)}, {}, choice.path)
    typer.echo(table.to_string(index=False))


@app.command("text-probe")
def text_probe(
    out: Path = typer.Option(..., help="Output folder: distances.csv (per prompt and edit) and probe.csv / probe.md."),
    template: str = typer.Option("shapes-spatial", help="The shapes suite whose prompts (train and test) are edited."),
    model: Path = typer.Option(None, help="A world pipeline folder (default: the shipped one)."),
    overwrite: bool = typer.Option(False, help="Replace a non-empty --out."),
) -> None:
    """How far one-word edits of the suite's prompts move the text conditioning (relation vs color, shape, size)."""
    from dfusion_bench import atomic
    from dfusion_bench.report.table_io import display_numbers, to_markdown
    from dfusion_bench.runinfo import staged_dir, write_run_info
    from dfusion_bench.studies.text_probe import edit_distances, probe_summary
    from dfusion_bench.suites import load_suite

    suite = load_suite(template)
    pipe, path = _world_pipeline(model, "the probe edits prompts of the world's grammar")
    prompts = [entry.prompt for entry in (*suite.train, *suite.test)]
    with staged_dir(out, overwrite) as stage:
        distances = edit_distances(pipe, prompts)
        summary = probe_summary(distances)
        atomic.write_text(stage / "distances.csv", distances.to_csv(index=False))
        atomic.write_text(stage / "probe.csv", summary.to_csv(index=False))
        atomic.write_text(stage / "probe.md", to_markdown(display_numbers(summary)))
        write_run_info(stage, "world text-probe", {"template": suite.name, "model": str(path)}, {}, path)
    typer.echo(summary.to_string(index=False))
    typer.echo(f"written to {out}")
