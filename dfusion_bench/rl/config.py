"""Typed, validated configuration of a training run, with every default's source.

A run folder holds the resolved configuration as ``config.json``; ``--resume`` reloads it and refuses a mismatch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfusion_bench.errors import UserError
from dfusion_bench.fusion import FusionConfig
from dfusion_bench.fusion.triples import pairing_problem
from dfusion_bench.options import Option, from_tree, leaves, raise_problems
from dfusion_bench.settings import (
    BATCH_SIZE,
    CLIP_CHECKPOINT,
    CLIP_MODEL,
    MODEL,
    PROMPTS,
    SCORER,
    SEED,
    SPLITS,
    TEMPLATE,
    SamplerConfig,
)

METHODS = ("dpo", "ddpo", "pg")
ADVANTAGES = ("prompt-stats", "group")
ADV_STDS = ("group", "batch")
TIMESTEP_SAMPLING = ("shared", "per-sample")

#: Learning rates of the methods' public code (AdamW; LoRA on the UNet's attention projections):
#: D3PO (Yang et al. 2024) 3e-5; ddpo-pytorch (Black et al. 2024) 3e-4 for PPO and for its REINFORCE ("SF")
#: variant; DPOK (Fan et al. 2023) 1e-5 with reward weight 100 — our pg has unit reward weight, so it keeps 3e-4.
LITERATURE_LR = {"dpo": 3e-5, "ddpo": 3e-4, "pg": 3e-4}

#: Learning rates on the embedded model (the default without --model, or with a shapes-world pipeline): the
#: literature's barely move its 2.8M parameters in a short run. How they were calibrated: docs/design.md, "Where the
#: embedded defaults come from".
EMBEDDED_LR = {"dpo": 3e-4, "ddpo": 1e-3, "pg": 1e-3}


def default_lr(method: str, model: str | None) -> float:
    """The learning rate a run uses when none is given: the embedded model's (``model`` None or any shapes-world
    pipeline, such as a fresh ``dfusion world pretrain``) or the literature's."""
    from dfusion_bench.models.loading import is_world_model

    return (EMBEDDED_LR if model is None or is_world_model(Path(model)) else LITERATURE_LR)[method]


@dataclass(frozen=True)
class LoraSettings:
    """LoRA through peft. The D-Fusion paper: rank 4 on all attention projections."""

    rank: int = Option(4, "LoRA rank.", flag="--lora-rank", ge=1, source="D-Fusion, ddpo-pytorch").field()
    alpha: float | None = Option(
        None, "LoRA alpha (scale alpha / rank). Default: the rank.", flag="--lora-alpha", gt=0
    ).field()
    targets: tuple[str, ...] = Option(
        ("to_q", "to_k", "to_v", "to_out.0"),
        "Comma-separated UNet module names that get adapters.",
        flag="--lora-targets",
        rule=lambda v: None if v else "name at least one module",
        domain_text="module names of the UNet",
        source="D-Fusion (all attention projections)",
    ).field()

    def __post_init__(self) -> None:
        raise_problems(self)
        if self.alpha is None:  # resolved here, so config.json records the alpha the run used
            object.__setattr__(self, "alpha", float(self.rank))


@dataclass(frozen=True)
class OptimSettings:
    """AdamW, as in ddpo-pytorch and D3PO, and how an epoch's data becomes optimizer steps."""

    lr: float | None = Option(
        None,
        "Learning rate. Default: embedded model dpo 3e-4, ddpo/pg 1e-3; --model: dpo 3e-5, ddpo/pg 3e-4.",
        gt=0,
        source="D3PO, ddpo-pytorch; embedded: docs/findings.md",
    ).field()
    weight_decay: float = Option(1e-4, "AdamW weight decay.", ge=0, source="ddpo-pytorch, D3PO").field()
    betas: tuple[float, ...] = Option(
        (0.9, 0.999),
        "AdamW betas, two comma-separated numbers.",
        flag="--adam-betas",
        rule=lambda v: None if len(v) == 2 and all(0 <= b < 1 for b in v) else "must be two numbers in [0, 1)",
        domain_text="two numbers in [0, 1)",
        source="ddpo-pytorch",
    ).field()
    grad_clip: float = Option(1.0, "Gradient-norm clip.", gt=0, source="ddpo-pytorch, D3PO").field()
    inner_epochs: int = Option(
        1, "Passes over each epoch's data.", ge=1, source="ddpo-pytorch 1; the D-Fusion paper 2"
    ).field()
    batch_size: int = Option(
        8,
        "Training examples (pairs for dpo, samples for ddpo/pg) per optimizer step, over all processes.",
        flag="--train-batch-size",
        ge=1,
    ).field()
    micro_batch_size: int = Option(
        16,
        "Examples per forward/backward pass (compute only): a larger optimizer batch accumulates gradients over "
        "micro-batches of this size.",
        ge=1,
    ).field()
    timestep_sampling: str = Option(
        "shared",
        "Which denoising steps an example trains on: shared (one draw per optimizer step) or per-sample (each "
        "example its own draw, as ddpo-pytorch permutes timesteps per sample).",
        choices=TIMESTEP_SAMPLING,
    ).field()
    timestep_fraction: float = Option(
        1.0, "Fraction of the eligible denoising steps trained per example.", gt=0, le=1, source="ddpo-pytorch"
    ).field()
    exclude_last_steps: int = Option(
        0,
        "Denoising steps at the end (least noisy) left out of every update; the fraction applies to the rest.",
        ge=0,
        source="results/fuse-drift",
    ).field()

    def __post_init__(self) -> None:
        raise_problems(self)


@dataclass(frozen=True)
class DPOSettings:
    """D3PO (Yang et al. 2024): beta 0.1, ratio clip 0.1.

    ``require_win``: train only on pairs whose winner scores strictly higher than its loser. D3PO's pairs come from
    human preferences, which never tie; D-Fusion treats every target as preferred to its base. With a reward in the
    loop neither assumption holds (references tie with bases; on the embedded world most targets do not beat their
    base), and training such pairs as preferences drives the policy toward noise. The rule is the same with and
    without fusion; ``--no-dpo-require-win`` restores the papers' behaviour.
    """

    beta: float = Option(0.1, "dpo: beta of the preference loss.", gt=0, source="D3PO").field()
    eps: float = Option(0.1, "dpo: ratio clip epsilon.", flag="--dpo-eps", gt=0, lt=1, source="D3PO").field()
    require_win: bool = Option(
        True,
        "dpo: train only pairs whose winner outscores its loser (off: every target/reference is preferred).",
        flag="--dpo-require-win/--no-dpo-require-win",
    ).field()

    def __post_init__(self) -> None:
        raise_problems(self)


@dataclass(frozen=True)
class DDPOSettings:
    """ddpo-pytorch defaults: PPO clip range 1e-4, advantage clip 5, per-prompt stats (buffer 32, min count 16).

    The advantage settings serve ddpo and pg alike: ``prompt-stats`` (ddpo-pytorch: running per-prompt statistics
    over the last ``stat_buffer`` scores) or ``group`` (Flow-GRPO: the current epoch's group of the prompt, its mean
    subtracted, divided by the group's or the whole batch's standard deviation per ``adv_std``; with
    ``drop_flat_groups`` the samples of groups whose scores are all equal, which carry no signal, are not trained).
    """

    clip_range: float = Option(1e-4, "ddpo: PPO clip range of the ratio.", gt=0, source="ddpo-pytorch").field()
    adv_clip_max: float = Option(
        5.0, "ddpo: advantages are clipped to +-this.", flag="--adv-clip", gt=0, source="ddpo-pytorch"
    ).field()
    stat_buffer: int = Option(32, "ddpo/pg, prompt-stats: scores kept per prompt.", ge=1, source="ddpo-pytorch").field()
    stat_min_count: int = Option(
        16, "ddpo/pg, prompt-stats: below this many scores a prompt uses the batch's statistics.", ge=1,
        source="ddpo-pytorch",
    ).field()  # fmt: skip
    advantages: str = Option(
        "prompt-stats",
        "ddpo/pg: prompt-stats (DDPO's running per-prompt statistics) or group (Flow-GRPO: this epoch's group).",
        choices=ADVANTAGES,
        source="ddpo-pytorch; Flow-GRPO",
    ).field()
    adv_std: str = Option(
        "group", "ddpo/pg, group advantages: divide by the group's or the batch's std.", choices=ADV_STDS
    ).field()
    drop_flat_groups: bool = Option(
        True,
        "ddpo/pg, group advantages: leave out groups whose scores are all equal (zero advantage).",
        flag="--drop-flat-groups/--keep-flat-groups",
        source="Flow-GRPO",
    ).field()

    def __post_init__(self) -> None:
        raise_problems(self)


@dataclass(frozen=True)
class PGSettings:
    """REINFORCE with a per-prompt baseline; ``kl_weight`` adds DPOK's KL surrogate (Fan et al. 2023: 0.01)."""

    kl_weight: float = Option(0.0, "pg: DPOK's KL weight (0.01 reproduces DPOK).", ge=0, source="DPOK").field()
    full_batch: bool = Option(
        True,
        "pg: one update on the epoch's whole batch (DDPO's SF variant), or one per --train-batch-size examples.",
        flag="--pg-full-batch/--pg-minibatches",
        source="ddpo-pytorch (SF)",
    ).field()

    def __post_init__(self) -> None:
        raise_problems(self)


@dataclass(frozen=True)
class TrainConfig:
    """A training run: method, prompts, sampling, evaluation, fusion, LoRA and optimisation."""

    method: str = Option(
        "dpo", "dpo (D3PO), ddpo (PPO) or pg (REINFORCE; DPOK with --kl-weight).", choices=METHODS, required=True
    ).field()
    fusion: bool = Option(False, "Train on D-Fusion targets (the paper's method).").field()
    template: str = TEMPLATE.field()
    model: str | None = MODEL.field()
    prompts: int | None = PROMPTS.but(default=8, help="Use the first K prompts of each split (default 8).").field()
    prompts_per_epoch: int | None = Option(
        None, "Train prompts sampled each epoch: K drawn afresh from the run's train prompts (default: all).", ge=1
    ).field()
    samples_per_prompt: int = Option(8, "Training samples per prompt each epoch.", ge=2).field()
    epochs: int = Option(4, "Epochs (each: sample, pair, update, evaluate).", ge=1).field()
    seed: int = SEED.field()
    scorer: str | None = SCORER.field()
    clip_model: str = CLIP_MODEL.field()
    clip_checkpoint: str | None = CLIP_CHECKPOINT.field()
    eval_every: int = Option(1, "Evaluate every k epochs (and after the last).", ge=1).field()
    eval_samples_per_prompt: int = Option(4, "Fixed-seed evaluation samples per prompt.", ge=1).field()
    eval_steps: int | None = Option(
        None, "DDIM steps of evaluation samples (default: --steps).", ge=1, source="Flow-GRPO trains at fewer"
    ).field()
    eval_splits: tuple[str, ...] = Option(
        ("train", "test"), "Splits evaluated: train,test, train or test.", choices=SPLITS
    ).field()
    batch_size: int = BATCH_SIZE.field()
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    fusion_settings: FusionConfig = field(default_factory=FusionConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    ddpo: DDPOSettings = field(default_factory=DDPOSettings)
    pg: PGSettings = field(default_factory=PGSettings)

    def __post_init__(self) -> None:
        problems = []
        if not self.eval_splits:
            problems.append("--eval-splits: name train, test or both")
        if not self.optim.exclude_last_steps < self.sampler.num_steps:
            problems.append(f"--exclude-last-steps must lie in [0, --steps) = [0, {self.sampler.num_steps})")
        fusion = self.fusion_settings
        pairing = pairing_problem(self.samples_per_prompt, fusion.reference_fraction, fusion.reference_uses)
        if pairing:  # every method ranks and pairs its samples (dpo trains on the pairs, fusion fuses them)
            problems.append(f"--samples-per-prompt: {pairing}")
        raise_problems(self, problems)
        if self.optim.lr is None:  # resolved here, so config.json records the rate the run used
            object.__setattr__(self, "optim", dataclasses.replace(self.optim, lr=default_lr(self.method, self.model)))

    @property
    def lr(self) -> float:
        return self.optim.lr

    @property
    def eval_sampler(self) -> SamplerConfig:
        """The evaluation sampler: the training sampler, at ``eval_steps`` steps where given."""
        if self.eval_steps is None:
            return self.sampler
        return dataclasses.replace(self.sampler, num_steps=self.eval_steps)

    @property
    def run_name(self) -> str:
        """The run's default folder name: ``METHOD-fusion|plain-SUITE-sSEED``."""
        return run_name(self.method, self.fusion, Path(self.template).stem, self.seed)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TrainConfig:
        return from_tree(TrainConfig, data)

    @staticmethod
    def load(path: Path) -> TrainConfig:
        try:
            return TrainConfig.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, AttributeError, KeyError, ValueError) as exc:
            raise UserError(f"{path}: not a readable training configuration ({exc})") from None
        except UserError as exc:
            raise UserError(f"{path}: not a valid training configuration ({exc})") from None


def run_name(method: str, fusion: bool, suite: str, seed: int) -> str:
    """``METHOD-fusion|plain-SUITE-sSEED``, the name of a run's folder wherever one is made."""
    return f"{method}-{'fusion' if fusion else 'plain'}-{suite}-s{seed}"


def option_paths() -> dict[str, str]:
    """Each training option's name as the command line spells it without dashes (``exclude_last_steps``), to its
    path in ``config.json`` (``optim.exclude_last_steps``)."""
    return {leaf.flag[2:].replace("-", "_"): leaf.path for leaf in leaves(TrainConfig)}
