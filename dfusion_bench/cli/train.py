"""``dfusion train``: fine-tune with DPO, DDPO or PG, with or without D-Fusion; resumable."""

from __future__ import annotations

from pathlib import Path

import typer

from dfusion_bench.cli import options as o
from dfusion_bench.errors import UserError


def _explicit(ctx: typer.Context) -> set[str]:
    """Names of the options the user actually gave (not defaults).

    Compared by the source's name: typer ships its own copy of click, whose ParameterSource is not click's.
    """
    given = {"COMMANDLINE", "ENVIRONMENT", "PROMPT"}
    return {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", None) in given}


#: Where each option lands in the nested configuration (options not listed map to the field of their own name).
OPTION_PATHS: dict[str, tuple[str, ...]] = {
    "lr": ("optim.lr",),
    "inner_epochs": ("optim.inner_epochs",),
    "train_batch_size": ("optim.batch_size",),
    "micro_batch_size": ("optim.micro_batch_size",),
    "timestep_sampling": ("optim.timestep_sampling",),
    "advantages": ("ddpo.advantages",),
    "adv_std": ("ddpo.adv_std",),
    "drop_flat_groups": ("ddpo.drop_flat_groups",),
    "timestep_fraction": ("optim.timestep_fraction",),
    "exclude_last_steps": ("optim.exclude_last_steps",),
    "beta": ("dpo.beta",),
    "dpo_eps": ("dpo.eps",),
    "dpo_require_win": ("dpo.require_win",),
    "clip_range": ("ddpo.clip_range",),
    "adv_clip": ("ddpo.adv_clip_max",),
    "kl_weight": ("pg.kl_weight",),
    "pg_full_batch": ("pg.full_batch",),
    "lora_rank": ("lora.rank", "lora.alpha"),
    "lora_targets": ("lora.targets",),
    "steps": ("sampler.num_steps",),
    "eta": ("sampler.eta",),
    "guidance": ("sampler.guidance_scale",),
    "threshold": ("fusion_settings.threshold",),
    "mask_resolution": ("fusion_settings.mask_resolution",),
    "fuse_layers": ("fusion_settings.fuse_layers",),
    "skip_first_steps": ("fusion_settings.skip_first_steps",),
    "reference_fraction": ("fusion_settings.reference_fraction",),
    "reference_uses": ("fusion_settings.reference_uses",),
}


def flat_config(tree: dict, prefix: str = "") -> dict:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}`` (lists as tuples, so stored and fresh values compare)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def train(
    ctx: typer.Context,
    method: str = typer.Option(
        ..., "--method", help="dpo (D3PO), ddpo (PPO) or pg (REINFORCE; DPOK with --kl-weight)."
    ),
    fusion: bool = typer.Option(False, "--fusion/--no-fusion", help="Train on D-Fusion targets (the paper's method)."),
    template: str = typer.Option("shapes-objects", "--template", help="Prompt suite (dfusion templates list)."),
    out: Path = typer.Option(None, "--out", help="Run folder. Default: runs/METHOD-fusion|plain-TEMPLATE-sSEED."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its latest checkpoint."),
    overwrite: o.Overwrite = False,
    model: o.Model = None,
    epochs: int = typer.Option(4, "--epochs", min=1, help="Epochs (each: sample, pair, update, evaluate)."),
    prompts: int = typer.Option(8, "--prompts", min=1, help="Use the first K prompts of each split."),
    prompts_per_epoch: int = typer.Option(
        None, "--prompts-per-epoch", min=1, help="Draw K of the train prompts afresh each epoch (default: all)."
    ),
    samples_per_prompt: int = typer.Option(8, "--samples-per-prompt", min=2, help="Training samples per prompt."),
    scorer: o.Scorer = None,
    clip_model: o.ClipModel = "ViT-H-14",
    clip_checkpoint: o.ClipCheckpoint = None,
    seed: o.Seed = 0,
    eval_every: int = typer.Option(1, "--eval-every", min=1, help="Evaluate on train and test every k epochs."),
    eval_splits: str = typer.Option("train,test", "--eval-splits", help="Splits evaluated: train,test, train or test."),
    eval_samples_per_prompt: int = typer.Option(4, "--eval-samples-per-prompt", min=1, help="Fixed-seed eval samples."),
    eval_steps: int = typer.Option(
        None, "--eval-steps", min=1, help="DDIM steps of evaluation samples (default: --steps; Flow-GRPO: more)."
    ),
    lr: float = typer.Option(
        None, "--lr", help="Learning rate. Default: embedded dpo 3e-4, ddpo/pg 1e-3; --model dpo 3e-5, ddpo/pg 3e-4."
    ),
    inner_epochs: int = typer.Option(1, "--inner-epochs", min=1, help="Passes over each epoch's data."),
    train_batch_size: int = typer.Option(8, "--train-batch-size", min=1, help="Examples per optimizer step."),
    micro_batch_size: int = typer.Option(
        16, "--micro-batch-size", min=1, help="Examples per forward/backward pass; gradients accumulate to a step."
    ),
    timestep_sampling: str = typer.Option(
        "shared", "--timestep-sampling", help="shared (one draw per step) or per-sample (ddpo-pytorch)."
    ),
    timestep_fraction: float = typer.Option(1.0, "--timestep-fraction", help="Fraction of steps trained on."),
    exclude_last_steps: int = typer.Option(
        0, "--exclude-last-steps", min=0, help="Leave the last N denoising steps out of every update (0: none)."
    ),
    beta: float = typer.Option(0.1, "--beta", help="dpo: beta (D3PO 0.1)."),
    dpo_eps: float = typer.Option(0.1, "--dpo-eps", help="dpo: ratio clip epsilon (D3PO 0.1)."),
    dpo_require_win: bool = typer.Option(
        True,
        "--dpo-require-win/--no-dpo-require-win",
        help="dpo: train only pairs whose winner outscores its loser (off: every target/reference is preferred).",
    ),
    clip_range: float = typer.Option(1e-4, "--clip-range", help="ddpo: PPO clip range (DDPO 1e-4)."),
    adv_clip: float = typer.Option(5.0, "--adv-clip", help="ddpo: advantage clip (DDPO 5)."),
    advantages: str = typer.Option(
        "prompt-stats", "--advantages", help="ddpo/pg: prompt-stats (DDPO's running stats) or group (Flow-GRPO)."
    ),
    adv_std: str = typer.Option("group", "--adv-std", help="ddpo/pg, group advantages: group or batch std."),
    drop_flat_groups: bool = typer.Option(
        True, "--drop-flat-groups/--keep-flat-groups", help="ddpo/pg with group advantages: skip groups without spread."
    ),
    kl_weight: float = typer.Option(0.0, "--kl-weight", help="pg: DPOK's KL weight (0.01 reproduces DPOK)."),
    pg_full_batch: bool = typer.Option(
        True, "--pg-full-batch/--pg-minibatches", help="pg: one update per epoch, or one per --train-batch-size."
    ),
    lora_rank: int = typer.Option(4, "--lora-rank", min=1, help="LoRA rank (the paper: 4)."),
    lora_targets: str = typer.Option("to_q,to_k,to_v,to_out.0", "--lora-targets", help="LoRA target modules."),
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
) -> None:
    """Fine-tune the UNet's LoRA adapters with an RL method; evaluate on train and held-out prompts each epoch."""
    from dfusion_bench.rl.config import (
        DDPOSettings,
        DPOSettings,
        LoraSettings,
        OptimSettings,
        PGSettings,
        TrainConfig,
    )
    from dfusion_bench.rl.trainer import Trainer
    from dfusion_bench.runinfo import check_out_dir
    from dfusion_bench.session import pick_device
    from dfusion_bench.templates import load_suite
    from dfusion_bench.trajectories import SamplerConfig

    out = out or Path("runs") / f"{method}-{'fusion' if fusion else 'plain'}-{Path(template).stem}-s{seed}"
    config = TrainConfig(
        method=method,
        fusion=fusion,
        template=template,
        model=str(model) if model else None,
        prompts=prompts,
        prompts_per_epoch=prompts_per_epoch,
        samples_per_prompt=samples_per_prompt,
        epochs=epochs,
        seed=seed,
        scorer=scorer,
        clip_model=clip_model,
        clip_checkpoint=str(clip_checkpoint) if clip_checkpoint else None,
        eval_every=eval_every,
        eval_samples_per_prompt=eval_samples_per_prompt,
        eval_steps=eval_steps,
        eval_splits=tuple(part.strip() for part in eval_splits.split(",") if part.strip()),
        batch_size=batch_size,
        sampler=SamplerConfig(num_steps=steps, eta=eta, guidance_scale=guidance),
        fusion_settings=o.fusion_config(
            threshold, mask_resolution, fuse_layers, skip_first_steps, reference_fraction, reference_uses
        ),
        lora=LoraSettings(rank=lora_rank, alpha=float(lora_rank), targets=tuple(lora_targets.split(","))),
        optim=OptimSettings(
            lr=lr,
            inner_epochs=inner_epochs,
            batch_size=train_batch_size,
            micro_batch_size=micro_batch_size,
            timestep_sampling=timestep_sampling,
            timestep_fraction=timestep_fraction,
            exclude_last_steps=exclude_last_steps,
        ),
        dpo=DPOSettings(beta=beta, eps=dpo_eps, require_win=dpo_require_win),
        ddpo=DDPOSettings(
            clip_range=clip_range,
            adv_clip_max=adv_clip,
            advantages=advantages,
            adv_std=adv_std,
            drop_flat_groups=drop_flat_groups,
        ),
        pg=PGSettings(kl_weight=kl_weight, full_batch=pg_full_batch),
    )
    if resume:
        stored = TrainConfig.load(out / "config.json") if (out / "config.json").is_file() else None
        if stored is None:
            raise UserError(f"--resume: {out} holds no run (no config.json); start it without --resume")
        explicit = _explicit(ctx)
        given = explicit - {"resume", "out", "device", "dtype", "overwrite", "epochs"}
        mine, theirs = flat_config(config.to_dict()), flat_config(stored.to_dict())
        clash = sorted(o for o in given if any(mine[p] != theirs.get(p) for p in OPTION_PATHS.get(o, (o,))))
        if clash:
            raise UserError(f"--resume: --{clash[0].replace('_', '-')} differs from the run's config.json; drop it")
        config = TrainConfig.from_dict(
            {**stored.to_dict(), "epochs": epochs if "epochs" in explicit else stored.epochs}
        )
    else:
        check_out_dir(out, overwrite)
    load_suite(config.template)  # a bad template fails before the model loads
    pick_device(device)
    trainer = Trainer(config, out, device=device, dtype=dtype)
    trainer.run(resume=resume, overwrite=overwrite)
    if trainer.dist.is_main:
        from dfusion_bench.report import build_report

        index = build_report([out], out / "report")
        typer.echo(
            f"done: curves and tables in {index} (metrics: {out / 'metrics.jsonl'}; rebuild: dfusion report {out})"
        )
