"""D-Fusion's settings, with the paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass

from dfusion_bench.options import Option, raise_problems


def _threshold_problem(value: str) -> str | None:
    if value in ("suite", "auto"):
        return None
    try:
        number = float(value)
    except ValueError:
        return "must be 'suite', 'auto' or a number in [0, 1]"
    return None if 0.0 <= number <= 1.0 else "must be 'suite', 'auto' or a number in [0, 1]"


def _layers_problem(value: tuple[str, ...]) -> str | None:
    return None if value else "name at least one layer prefix"


@dataclass(frozen=True)
class FusionConfig:
    """Where, when and how the target attends to its reference.

    Defaults follow the paper's code: self-attention of the mid block and all up blocks; every step but the first
    two (of 20); the cross-attention mask at latent side / 4 (16x16 for SD 2.1-base at 512 px); thresholds from
    the prompt suite (``auto`` where the suite gives none), a position in the mask when its map value is >= the
    threshold; references = top quarter, each used twice. The reference cache changes the cost, never the numbers.
    """

    fuse_layers: tuple[str, ...] = Option(
        ("mid_block", "up_blocks"),
        "Comma-separated prefixes of the self-attention layers to fuse.",
        rule=_layers_problem,
        domain_text="layer-name prefixes",
        source="D-Fusion code",
    ).field()
    skip_first_steps: int = Option(
        2, "Unfused leading (noisiest) steps; the rest are fused.", ge=0, source="D-Fusion code"
    ).field()
    mask_resolution: int | None = Option(
        None,
        "Cross-attention grid side the mask comes from. Default: latent side / 4, or the nearest grid the UNet has.",
        ge=1,
        source="D-Fusion code",
    ).field()
    threshold: str = Option(
        "suite",
        "Mask thresholds: 'suite' (per item, from the suite; auto where missing), 'auto' (Otsu), or a number (a "
        "cell is in the mask when its map value is >= it).",
        rule=_threshold_problem,
        domain_text="suite, auto, or in [0, 1]",
        source="D-Fusion code",
    ).field()
    reference_fraction: float = Option(
        0.25, "Top fraction of each prompt's samples used as references.", gt=0, lt=1, source="D-Fusion code"
    ).field()
    reference_uses: int = Option(2, "Targets (bases) per reference.", ge=1, source="D-Fusion code").field()
    reference_cache: str = Option(
        "auto",
        "Record the references while sampling ('on') or replay them at their stored latents ('off'; one more UNet "
        "evaluation per reference and fused step); 'auto': record when the records of all samples fit "
        "--reference-cache-gb. Same numbers either way; the fuse manifest says which ran.",
        choices=("auto", "on", "off"),
        source="measured here (benchmarks/bench.py)",
    ).field()
    reference_cache_gb: float | None = Option(
        None,
        "Memory budget of --reference-cache auto, in GiB. Default: a quarter of the UNet device's total memory.",
        ge=0,
    ).field()
    policy_log_probs: bool = True
    """Recompute the targets' log-probs under the unmodified policy at the fused steps (one UNet evaluation per fused
    target-step). ddpo's ratio needs them, pg reads them only for its approx-KL diagnostic, dpo never; False leaves
    them NaN there. A library setting, not a command-line option: which value fits depends on the method."""

    def __post_init__(self) -> None:
        pairing = 0 < self.reference_fraction * (1 + self.reference_uses) <= 1
        raise_problems(self, [] if pairing else ["--reference-fraction x (1 + --reference-uses) must lie in (0, 1]"])

    def thresholds_for(self, suite_thresholds: tuple[float | None, ...]) -> list[float | None]:
        """Per-item thresholds to use (None = auto)."""
        if self.threshold == "suite":
            return list(suite_thresholds)
        if self.threshold == "auto":
            return [None] * len(suite_thresholds)
        return [float(self.threshold)] * len(suite_thresholds)
