"""The options several commands share (sampler, model, suite, prompts, scorer, seed, batch), and the
configurations of ``dfusion fuse`` and ``dfusion eval`` and of a command's run folder.

Each option is written here once, with its help, default and domain (:mod:`dfusion_bench.options`); a command whose
meaning differs (another default) says so with :meth:`Option.but`. ``TrainConfig`` (:mod:`dfusion_bench.rl.config`)
takes its shared fields from here too.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfusion_bench.fusion.config import FusionConfig
from dfusion_bench.options import Option, raise_problems
from dfusion_bench.scorers import DEFAULT_CLIP_MODEL, available_scorers

SPLITS = ("train", "test")


@dataclass(frozen=True)
class SamplerConfig:
    """DDIM sampling. Defaults are those of DDPO and D3PO (and the D-Fusion paper): 20 steps, eta 1, CFG 5."""

    num_steps: int = Option(20, "DDIM denoising steps.", flag="--steps", ge=1, source="D-Fusion, D3PO").field()
    eta: float = Option(
        1.0,
        "DDIM eta: the share of the step's noise; log-probabilities need eta > 0, and above 1 the step is no longer "
        "DDIM's.",
        gt=0,
        le=1,
        source="DDPO, D3PO",
    ).field()
    guidance_scale: float = Option(
        5.0, "Classifier-free guidance scale.", flag="--guidance", ge=0, source="DDPO"
    ).field()

    def __post_init__(self) -> None:
        raise_problems(self)


def _scorer_problem(value: str | tuple[str, ...]) -> str | None:
    names = value if isinstance(value, tuple) else (value,)
    unknown = [n for n in names if n not in available_scorers()]
    return f"unknown scorer {unknown[0]!r}; known scorers: {', '.join(available_scorers())}" if unknown else None


MODEL = Option(
    None, "Local diffusers Stable Diffusion 1.x/2.x folder. Default: the embedded shapes model.", metavar="DIR"
)
TEMPLATE = Option(
    "shapes-objects", "Prompt suite: a name from `dfusion templates list`, or a path to a suite .json file."
)
SPLIT = Option(None, "Which prompts of the suite: train or test.", choices=SPLITS, required=True)
PROMPTS = Option(None, "Use the first K prompts of each split (default: all).", ge=1)
SCORER = Option(
    None,
    "Reward and metric: verifier (default for the embedded model), clip (default otherwise), compressibility.",
    rule=_scorer_problem,
    domain_text="a registered scorer",
)
CLIP_MODEL = Option(
    DEFAULT_CLIP_MODEL,
    "open_clip model name for --scorer clip.",
    source="D-Fusion (open_clip ViT-H-14, laion2B-s32B-b79K)",
)
CLIP_CHECKPOINT = Option(
    None,
    "Local open_clip checkpoint file for --scorer clip.",
    envvar="DFUSION_CLIP_CHECKPOINT",
    metavar="FILE",
)
SEED = Option(0, "Seed of the run; same seed, same result on CPU.", ge=0)
BATCH_SIZE = Option(16, "Images per UNet batch when sampling (memory and speed, not the result).", ge=1)


@dataclass(frozen=True)
class RunOptions:
    """Where a command writes and on what it computes; not part of the result's configuration."""

    out: Path | None = Option(
        None, "Output folder (refused if not empty, unless --overwrite).", metavar="DIR", required=True
    ).field()
    overwrite: bool = Option(False, "Replace a non-empty output folder.", flag="--overwrite").field()
    device: str | None = Option(
        None,
        "cpu, cuda or cuda:N. Default: accelerate's choice.",
        rule=lambda v: None if re.fullmatch(r"cpu|cuda(:\d+)?|mps", v) else "use cpu, cuda or cuda:N",
        domain_text="cpu, cuda, cuda:N",
    ).field()
    dtype: str | None = Option(
        None, "Weights' dtype. Default: fp16 on GPU, fp32 on CPU.", choices=("fp32", "fp16", "bf16")
    ).field()

    def __post_init__(self) -> None:
        raise_problems(self)


@dataclass(frozen=True)
class FuseConfig:
    """``dfusion fuse``: sample a suite's prompts, score, rank into triples and fuse a target per triple."""

    template: str = TEMPLATE.but(default=None, required=True).field()
    split: str = SPLIT.field()
    prompts: int | None = PROMPTS.field()
    samples_per_prompt: int = Option(
        8, "Samples per prompt (N); references = top N/4, bases = bottom N/2.", ge=2, source="D-Fusion code (16)"
    ).field()
    model: str | None = MODEL.field()
    scorer: str | None = SCORER.field()
    clip_model: str = CLIP_MODEL.field()
    clip_checkpoint: str | None = CLIP_CHECKPOINT.field()
    seed: int = SEED.field()
    batch_size: int = BATCH_SIZE.field()
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)

    def __post_init__(self) -> None:
        from dfusion_bench.fusion.triples import pairing_problem

        problem = pairing_problem(self.samples_per_prompt, self.fusion.reference_fraction, self.fusion.reference_uses)
        raise_problems(self, [f"--samples-per-prompt: {problem}"] if problem else [])


@dataclass(frozen=True)
class EvalConfig:
    """``dfusion eval``: fixed-seed samples of a suite's prompts from a plain model or a training run, scored."""

    split: str = SPLIT.field()
    template: str | None = TEMPLATE.but(default=None, help="Prompt suite. Default: the run's; else required.").field()
    run: str | None = Option(
        None, "A `dfusion train` folder: evaluate its checkpoint with the run's settings.", metavar="DIR"
    ).field()
    epoch: int | None = Option(None, "Which checkpoint of --run (default: the latest).", ge=0).field()
    model: str | None = MODEL.field()
    prompts: int | None = PROMPTS.field()
    samples_per_prompt: int = Option(4, "Fixed-seed samples per prompt.", ge=1).field()
    scorer: tuple[str, ...] | None = SCORER.but(
        help="Scorer(s); repeat for several. Default: the run's, else the model's.", multiple=True
    ).field()
    clip_model: str = CLIP_MODEL.field()
    clip_checkpoint: str | None = CLIP_CHECKPOINT.field()
    batch_size: int = BATCH_SIZE.field()
    grid: bool = Option(True, "Write grid.png, every image in one picture.").field()
    sampler: SamplerConfig = field(default_factory=SamplerConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.run is not None and self.model is not None:
            problems.append("give either --run (a training run) or --model (a plain pipeline), not both")
        if self.epoch is not None and self.run is None:
            problems.append("--epoch needs --run")
        raise_problems(self, problems)


#: Fields that name files or folders: stored resolved, so a run folder works from any working directory.
PATH_FIELDS = ("model", "clip_checkpoint", "run")


def resolve_paths(config: Any) -> Any:
    """``config`` with its path fields (:data:`PATH_FIELDS`, and a suite given as a file) made absolute against the
    working directory; names and unset fields stay as they are."""
    changes = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not isinstance(value, str):
            continue
        if f.name in PATH_FIELDS or (f.name == "template" and Path(value).is_file()):
            changes[f.name] = str(Path(value).expanduser().resolve())
    return dataclasses.replace(config, **changes)
