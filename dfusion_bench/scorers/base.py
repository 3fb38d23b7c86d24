"""What every scorer returns and accepts.

A scorer maps a batch of images and their prompts to one "higher is better" number per image. Reward-driven training
(RL, D-Fusion) and evaluation both consume :class:`Scores`, so every scorer — a learned one such as CLIPScore or the
exact verifier of the shapes world — speaks the same types.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, eq=False)  # eq would compare numpy arrays elementwise and fail; compare fields instead
class Scores:
    """Per-image results of one scorer call.

    ``scores`` is a float array of shape (B,), higher is better. ``aligned`` is a bool array of shape (B,) set only by
    scorers that can tell whether an image shows *everything* its prompt asks for (e.g. the exact verifier), else
    ``None``. ``details`` holds one JSON-serialisable dict per image (e.g. the verifier's per-fact breakdown).
    """

    scores: np.ndarray
    aligned: np.ndarray | None = None
    details: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = _check_vector("scores", self.scores, np.floating)
        if self.aligned is not None and _check_vector("aligned", self.aligned, np.bool_) != n:
            raise ValueError(f"aligned has {len(self.aligned)} entries for {n} scores")
        if len(self.details) != n:
            raise ValueError(f"details has {len(self.details)} entries for {n} scores")

    def __len__(self) -> int:
        return len(self.scores)

    def select(self, index: list[int]) -> Scores:
        """The scores of the images at ``index``."""
        idx = np.asarray(index, dtype=int)
        aligned = None if self.aligned is None else self.aligned[idx]
        return Scores(self.scores[idx], aligned, [self.details[i] for i in idx.tolist()])

    def facts_json(self, i: int) -> str:
        """Image ``i``'s per-fact breakdown (``details[i]["facts"]``) as JSON, or ``""`` when the scorer checks none.

        This is the ``facts`` column of every per-image CSV the package writes.
        """
        facts = self.details[i].get("facts")
        return json.dumps(facts) if facts is not None else ""

    def fact_rates(self, index: list[int] | None = None) -> dict[str, float]:
        """For each boolean fact, the fraction of the images at ``index`` (default: all) where it holds.

        A fact is counted over the images that check it (prompts of one suite can check different facts); an empty
        dict when the scorer checks none.
        """
        held: dict[str, list[bool]] = {}
        for i in range(len(self)) if index is None else index:
            for name, value in (self.details[i].get("facts") or {}).items():
                if isinstance(value, bool):
                    held.setdefault(name, []).append(value)
        return {name: float(np.mean(values)) for name, values in held.items()}

    @staticmethod
    def concat(parts: list[Scores]) -> Scores:
        """One ``Scores`` from consecutive batches of the same scorer."""
        aligned = None if parts[0].aligned is None else np.concatenate([p.aligned for p in parts])
        return Scores(np.concatenate([p.scores for p in parts]), aligned, [d for p in parts for d in p.details])


def _check_vector(name: str, values: np.ndarray, kind: type[np.generic]) -> int:
    """Length of ``values`` after checking that it is a 1-D numpy array of ``kind``."""
    if not isinstance(values, np.ndarray) or values.ndim != 1 or not np.issubdtype(values.dtype, kind):
        raise ValueError(f"{name} must be a 1-D numpy array of {kind.__name__}, got {values!r}")
    return len(values)


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores images against prompts; obtain one with :func:`dfusion_bench.scorers.get_scorer`.

    ``images`` is a float tensor (B, 3, H, W) with values in [0, 1] on any device, ``prompts`` a list of B strings,
    ``metadata`` an optional list of B dicts for scorers that need more than the prompt text.
    """

    name: str

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None = None
    ) -> Scores: ...


def check_batch(images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None = None) -> int:
    """Batch size of a scorer call, after checking that images, prompts and metadata agree.

    Mismatched inputs are programming errors, so they raise ``ValueError`` rather than a user-facing error.
    """
    import torch  # here, so that the scorer registry (and the command line) loads without torch

    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor with values in [0, 1], got dtype {images.dtype}")
    n = images.shape[0]
    if isinstance(prompts, str) or len(prompts) != n:
        raise ValueError(f"expected a list of {n} prompts, got {prompts!r}")
    if metadata is not None and len(metadata) != n:
        raise ValueError(f"expected {n} metadata dicts, got {len(metadata)}")
    return n
