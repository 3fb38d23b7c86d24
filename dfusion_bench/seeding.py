"""Seeds: every sample's seed is a pure function of named integers, so runs are comparable and reproducible.

Training samples draw from ``(run seed, epoch, prompt index, sample index)``; evaluation samples from
``(EVAL_SEED, prompt index, sample index)`` — the same for every run and every checkpoint, so evaluation curves
compare like with like.
"""

from __future__ import annotations

import numpy as np

EVAL_SEED = 20250528  # D-Fusion's arXiv date; any fixed value works, it only has to never change


def derive_seed(*keys: int) -> int:
    """A 62-bit seed from a tuple of non-negative integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 2)


def sample_seeds(base: int, epoch: int, n_prompts: int, per_prompt: int) -> list[list[int]]:
    """Seeds of training samples: ``[prompt][k]``."""
    return [[derive_seed(base, epoch, p, k) for k in range(per_prompt)] for p in range(n_prompts)]


def eval_seeds(n_prompts: int, per_prompt: int) -> list[list[int]]:
    """Fixed evaluation seeds: ``[prompt][k]``, identical for every run."""
    return [[derive_seed(EVAL_SEED, p, k) for k in range(per_prompt)] for p in range(n_prompts)]
