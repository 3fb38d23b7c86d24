"""Command-line options shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Model = Annotated[
    Path | None,
    typer.Option(
        "--model", help="Local diffusers Stable Diffusion 1.x/2.x folder. Default: the embedded shapes model."
    ),
]
Template = Annotated[
    str, typer.Option("--template", help="Prompt suite: a name from `dfusion templates list`, or a path.")
]
Split = Annotated[str, typer.Option("--split", help="Which prompts of the suite: train or test.")]
Prompts = Annotated[int | None, typer.Option("--prompts", min=1, help="Use only the first K prompts of the split.")]
Scorer = Annotated[
    str | None,
    typer.Option(
        "--scorer", help="Reward/metric: verifier (default for the embedded model) or clip (default otherwise)."
    ),
]
ClipModel = Annotated[str, typer.Option("--clip-model", help="open_clip model name for --scorer clip.")]
ClipCheckpoint = Annotated[
    Path | None,
    typer.Option(
        "--clip-checkpoint",
        envvar="DFUSION_CLIP_CHECKPOINT",
        help="Local open_clip checkpoint file for --scorer clip (the paper: ViT-H-14 laion2B-s32B-b79K).",
    ),
]
Seed = Annotated[int, typer.Option("--seed", help="Seed of the run; same seed, same result on CPU.")]
Out = Annotated[Path, typer.Option("--out", help="Output folder (refused if not empty, unless --overwrite).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty output folder.")]
Device = Annotated[str | None, typer.Option("--device", help="cpu, cuda or cuda:N. Default: accelerate's choice.")]
Dtype = Annotated[str | None, typer.Option("--dtype", help="fp32, fp16 or bf16. Default: fp16 on GPU, fp32 on CPU.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images per UNet batch.")]
Steps = Annotated[int, typer.Option("--steps", min=1, help="DDIM denoising steps.")]
Eta = Annotated[float, typer.Option("--eta", help="DDIM eta; must be > 0 for log-probabilities (1.0 in DDPO/D3PO).")]
Guidance = Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")]

# ---- D-Fusion settings (fuse, train) -------------------------------------------------------------------------------
Threshold = Annotated[
    str,
    typer.Option(
        "--threshold",
        help="Mask thresholds: 'suite' (per item, from the suite; auto where missing), 'auto' (Otsu), or a number.",
    ),
]
MaskResolution = Annotated[
    int | None,
    typer.Option("--mask-resolution", help="Cross-attention grid side for the mask. Default: latent side / 4."),
]
FuseLayers = Annotated[
    str,
    typer.Option("--fuse-layers", help="Comma-separated prefixes of the self-attention layers to fuse."),
]
SkipFirstSteps = Annotated[
    int, typer.Option("--skip-first-steps", min=0, help="Unfused leading (noisiest) steps; the rest are fused.")
]
ReferenceFraction = Annotated[
    float, typer.Option("--reference-fraction", help="Top fraction of each prompt's samples used as references.")
]
ReferenceUses = Annotated[int, typer.Option("--reference-uses", min=1, help="Targets (bases) per reference.")]


def fusion_config(
    threshold: str,
    mask_resolution: int | None,
    fuse_layers: str,
    skip_first_steps: int,
    reference_fraction: float,
    reference_uses: int,
):
    """A validated :class:`FusionConfig` from the shared options."""
    from dfusion_bench.errors import UserError
    from dfusion_bench.fusion import FusionConfig

    try:
        return FusionConfig(
            fuse_layers=tuple(p.strip() for p in fuse_layers.split(",") if p.strip()),
            skip_first_steps=skip_first_steps,
            mask_resolution=mask_resolution,
            threshold=threshold,
            reference_fraction=reference_fraction,
            reference_uses=reference_uses,
        )
    except ValueError as exc:
        raise UserError(f"fusion options: {exc}") from None
