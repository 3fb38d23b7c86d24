"""D-Fusion's settings, with the paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FusionConfig:
    """Where, when and how the target attends to its reference.

    Defaults follow the paper's code: self-attention of the mid block and all up blocks; every step but the first
    two (of 20); the cross-attention mask at latent side / 4 (16x16 for SD 2.1-base at 512 px); thresholds from
    the prompt suite (``auto`` where the suite gives none); references = top quarter, each used twice.
    """

    fuse_layers: tuple[str, ...] = ("mid_block", "up_blocks")
    """Prefixes of the self-attention processor names to fuse."""
    skip_first_steps: int = 2
    """Steps 0 .. skip_first_steps - 1 (0 = noisiest) run unmodified; the rest are fused."""
    mask_resolution: int | None = None
    """Side of the cross-attention grid the mask comes from; None: latent side / 4, or the nearest available."""
    threshold: str = "suite"
    """``suite``: each item's threshold from the suite (auto where missing); ``auto``: Otsu on every map;
    or a number, used for every item."""
    reference_fraction: float = 0.25
    """Fraction of each prompt's samples, ranked by score, that serve as references."""
    reference_uses: int = 2
    """Targets per reference; the bases are the bottom reference_fraction * reference_uses of the ranking."""

    def __post_init__(self) -> None:
        if self.threshold not in ("suite", "auto"):
            try:
                float(self.threshold)
            except ValueError:
                raise ValueError(f"threshold must be 'suite', 'auto' or a number, not {self.threshold!r}") from None
        if not 0 < self.reference_fraction * (1 + self.reference_uses) <= 1:
            raise ValueError("reference_fraction * (1 + reference_uses) must lie in (0, 1]")
        if self.skip_first_steps < 0:
            raise ValueError("skip_first_steps must be >= 0")

    def thresholds_for(self, suite_thresholds: tuple[float | None, ...]) -> list[float | None]:
        """Per-item thresholds to use (None = auto)."""
        if self.threshold == "suite":
            return list(suite_thresholds)
        if self.threshold == "auto":
            return [None] * len(suite_thresholds)
        return [float(self.threshold)] * len(suite_thresholds)
