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
from dfusion_bench.trajectories import SamplerConfig

METHODS = ("dpo", "ddpo", "pg")

#: Learning rates of the methods' public code (AdamW; LoRA on the UNet's attention projections):
#: D3PO (Yang et al. 2024) 3e-5; ddpo-pytorch (Black et al. 2024) 3e-4 for PPO and for its REINFORCE ("SF")
#: variant; DPOK (Fan et al. 2023) 1e-5 with reward weight 100 — our pg has unit reward weight, so it keeps 3e-4.
LITERATURE_LR = {"dpo": 3e-5, "ddpo": 3e-4, "pg": 3e-4}

#: Learning rates on the embedded model (the default without --model, or with a shapes-world pipeline). The
#: literature's, meant for SD's 865M-parameter UNet over thousands of updates, barely move this 2.8M-parameter
#: model in a 20-minute run.
#: Calibrated without fusion on the first 8 shapes-objects prompts (scratch runs, 2-6 epochs): dpo 3e-5 no change,
#: 1e-3 train alignment up, 3e-3 collapse; with fusion ddpo and pg at 1e-2 (the literature's 10x ratio to dpo)
#: collapsed within 2 epochs, so ddpo and pg use 1e-3. Plain dpo at 1e-3 then collapsed or degraded in 3 of 5
#: four-epoch grid runs, so dpo uses 3e-4. The same rate serves with and without fusion.
EMBEDDED_LR = {"dpo": 3e-4, "ddpo": 1e-3, "pg": 1e-3}


def default_lr(method: str, model: str | None) -> float:
    """The learning rate a run uses when none is given: the embedded model's (``model`` None or any shapes-world
    pipeline, such as a fresh ``dfusion world pretrain``) or the literature's."""
    from dfusion_bench.models import is_world_model

    return (EMBEDDED_LR if model is None or is_world_model(Path(model)) else LITERATURE_LR)[method]


@dataclass(frozen=True)
class LoraSettings:
    """LoRA through peft. The D-Fusion paper: rank 4 on all attention projections."""

    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass(frozen=True)
class OptimSettings:
    """AdamW, as in ddpo-pytorch and D3PO: weight decay 1e-4, gradient-norm clip 1."""

    lr: float | None = None  # None: TrainConfig resolves it to default_lr(method, model)
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    inner_epochs: int = 1
    """Passes over each epoch's data (ddpo-pytorch: 1; the D-Fusion paper: 2)."""
    batch_size: int = 8
    """Training examples (pairs for dpo, samples for ddpo/pg) per optimizer step, over all processes."""
    micro_batch_size: int = 16
    """Examples per forward/backward pass (compute only): a larger optimizer batch accumulates gradients over
    micro-batches of this size, so one step can see many examples at the CPU's or GPU's throughput optimum."""
    timestep_sampling: str = "shared"
    """Which denoising steps an example trains on: ``shared`` (one draw per optimizer step, the same for every row)
    or ``per-sample`` (each example its own draw, as ddpo-pytorch permutes timesteps per sample)."""
    timestep_fraction: float = 1.0
    """Fraction of the denoising steps trained on per example (ddpo-pytorch's timestep_fraction; 1 = all)."""
    exclude_last_steps: int = 0
    """Denoising steps at the end (least noisy) left out of every update; the fraction applies to the rest. 0: none.
    A fused target's transition lies furthest off the policy's mean there (results/fuse-drift)."""


@dataclass(frozen=True)
class DPOSettings:
    """D3PO (Yang et al. 2024): beta 0.1, ratio clip 0.1.

    ``require_win``: train only on pairs whose winner scores strictly higher than its loser. D3PO's pairs come from
    human preferences, which never tie; D-Fusion treats every target as preferred to its base. With a reward in the
    loop neither assumption holds (references tie with bases; on the embedded world most targets do not beat their
    base), and training such pairs as preferences drives the policy toward noise. The rule is the same with and
    without fusion; ``--no-dpo-require-win`` restores the papers' behaviour.
    """

    beta: float = 0.1
    eps: float = 0.1
    require_win: bool = True


ADVANTAGES = ("prompt-stats", "group")
ADV_STDS = ("group", "batch")
TIMESTEP_SAMPLING = ("shared", "per-sample")


@dataclass(frozen=True)
class DDPOSettings:
    """ddpo-pytorch defaults: PPO clip range 1e-4, advantage clip 5, per-prompt stats (buffer 32, min count 16).

    The advantage settings serve ddpo and pg alike: ``prompt-stats`` (ddpo-pytorch: running per-prompt statistics
    over the last ``stat_buffer`` scores) or ``group`` (Flow-GRPO: the current epoch's group of the prompt, its mean
    subtracted, divided by the group's or the whole batch's standard deviation per ``adv_std``; with
    ``drop_flat_groups`` the samples of groups whose scores are all equal, which carry no signal, are not trained).
    """

    clip_range: float = 1e-4
    adv_clip_max: float = 5.0
    stat_buffer: int = 32
    stat_min_count: int = 16
    advantages: str = "prompt-stats"
    adv_std: str = "group"
    drop_flat_groups: bool = True


@dataclass(frozen=True)
class PGSettings:
    """REINFORCE with a per-prompt baseline; ``kl_weight`` adds DPOK's KL surrogate (Fan et al. 2023: 0.01)."""

    kl_weight: float = 0.0
    full_batch: bool = True
    """One update on the epoch's whole batch (DDPO's SF variant); False: one per ``--train-batch-size`` examples."""


@dataclass(frozen=True)
class TrainConfig:
    method: str = "dpo"
    fusion: bool = False
    template: str = "shapes-objects"
    model: str | None = None
    """Local diffusers folder; None = the embedded shapes model."""
    prompts: int | None = 8
    """First K prompts of each split (None = all)."""
    prompts_per_epoch: int | None = None
    """Train prompts sampled each epoch: K drawn afresh every epoch from the run's train prompts (None = all)."""
    samples_per_prompt: int = 8
    epochs: int = 4
    seed: int = 0
    scorer: str | None = None
    """None: verifier for the embedded model, clip otherwise."""
    clip_model: str = "ViT-H-14"
    clip_checkpoint: str | None = None
    eval_every: int = 1
    eval_samples_per_prompt: int = 4
    eval_steps: int | None = None
    """DDIM steps of the evaluation samples (None = the training sampler's ``sampler.num_steps``); Flow-GRPO trains
    at fewer steps than it evaluates."""
    eval_splits: tuple[str, ...] = ("train", "test")
    """Splits evaluated every ``eval_every`` epochs (the regression check needs only train)."""
    batch_size: int = 16
    """Images per UNet batch when sampling (memory, not the optimisation)."""
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    fusion_settings: FusionConfig = field(default_factory=FusionConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    ddpo: DDPOSettings = field(default_factory=DDPOSettings)
    pg: PGSettings = field(default_factory=PGSettings)

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"--method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.epochs < 1 or self.samples_per_prompt < 2 or self.eval_every < 1:
            problems.append("--epochs >= 1, --samples-per-prompt >= 2 and --eval-every >= 1 are needed")
        if not self.eval_splits or not set(self.eval_splits) <= {"train", "test"}:
            problems.append(f"--eval-splits {','.join(self.eval_splits)!r}: use train, test or train,test")
        if self.sampler.eta <= 0:
            problems.append(f"--eta {self.sampler.eta}: training needs eta > 0 (log-probabilities are undefined at 0)")
        if not 0 < self.optim.timestep_fraction <= 1:
            problems.append("--timestep-fraction must lie in (0, 1]")
        if not 0 <= self.optim.exclude_last_steps < self.sampler.num_steps:
            problems.append(f"--exclude-last-steps must lie in [0, --steps) = [0, {self.sampler.num_steps})")
        if self.optim.batch_size < 1 or self.optim.inner_epochs < 1 or self.optim.micro_batch_size < 1:
            problems.append("--train-batch-size, --micro-batch-size and --inner-epochs must be >= 1")
        if self.optim.timestep_sampling not in TIMESTEP_SAMPLING:
            problems.append(f"--timestep-sampling: use one of {', '.join(TIMESTEP_SAMPLING)}")
        if self.ddpo.advantages not in ADVANTAGES or self.ddpo.adv_std not in ADV_STDS:
            problems.append(f"--advantages: one of {', '.join(ADVANTAGES)}; --adv-std: one of {', '.join(ADV_STDS)}")
        if self.prompts_per_epoch is not None and self.prompts_per_epoch < 1:
            problems.append("--prompts-per-epoch must be >= 1")
        if self.eval_steps is not None and self.eval_steps < 1:
            problems.append("--eval-steps must be >= 1")
        fusion = self.fusion_settings
        pairing = pairing_problem(self.samples_per_prompt, fusion.reference_fraction, fusion.reference_uses)
        if pairing:  # every method ranks and pairs its samples (dpo trains on the pairs, fusion fuses them)
            problems.append(f"--samples-per-prompt: {pairing}")
        if problems:
            raise UserError("; ".join(problems))
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TrainConfig:
        nested = {
            "sampler": SamplerConfig,
            "fusion_settings": FusionConfig,
            "lora": LoraSettings,
            "optim": OptimSettings,
            "dpo": DPOSettings,
            "ddpo": DDPOSettings,
            "pg": PGSettings,
        }
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}  # JSON lists are tuples here
        for key, cls in nested.items():
            if key in kwargs:
                values = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs[key].items()}
                kwargs[key] = cls(**values)
        return TrainConfig(**kwargs)

    @staticmethod
    def load(path: Path) -> TrainConfig:
        try:
            return TrainConfig.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, AttributeError, KeyError, ValueError) as exc:
            raise UserError(f"{path}: not a readable training configuration ({exc})") from None
