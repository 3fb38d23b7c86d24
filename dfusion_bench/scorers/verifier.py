"""The ``verifier`` scorer: exact prompt-image alignment in the embedded shapes world.

Each prompt is parsed with the world's grammar and each image checked by the world's verifier, so the score is the
fraction of the prompt's facts (objects, relation, count) that hold, and ``aligned`` says whether all of them do.
A prompt outside the grammar raises the grammar's :class:`~dfusion_bench.errors.UserError`, which names the word.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dfusion_bench.scorers.base import Scores, check_batch
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.verify import Verdict, verify


def to_hwc_numpy(images: torch.Tensor) -> np.ndarray:
    """(B, H, W, 3) float32 numpy array in [0, 1] from a (B, 3, H, W) tensor on any device."""
    return images.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()


class VerifierScorer:
    """Scores images by the shapes world's exact verifier; takes no options."""

    name: str = "verifier"

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None = None
    ) -> Scores:
        check_batch(images, prompts, metadata)
        specs = [parse(p) for p in prompts]  # parse all first: a bad prompt fails before any verification work
        verdicts = [verify(spec, image) for spec, image in zip(specs, to_hwc_numpy(images), strict=True)]
        return _scores(verdicts)


def _scores(verdicts: list[Verdict]) -> Scores:
    """Scores, alignment and per-fact details of a batch of verdicts."""
    return Scores(
        scores=np.array([v.score for v in verdicts], dtype=np.float64),
        aligned=np.array([v.aligned for v in verdicts], dtype=bool),
        details=[{"facts": {k: bool(held) for k, held in v.facts.items()}} for v in verdicts],
    )
