"""Advantages of ddpo and pg: running per-prompt statistics (DDPO) or the current group's (Flow-GRPO).

- :class:`PerPromptStats` (Black et al. 2024; ddpo-pytorch's PerPromptStatTracker): each prompt keeps its last
  ``buffer`` scores; a sample's advantage is its score standardised by its prompt's mean and standard deviation, or by
  the whole batch's while the prompt has fewer than ``min_count`` scores. The statistics are part of a checkpoint, so
  a resumed run normalises exactly as an uninterrupted one.
- :func:`group_advantages` (Liu et al. 2025, Flow-GRPO): A_i = (r_i - mean_g) / (std + 1e-4) over the samples of
  the same prompt in this epoch only, ``std`` the group's or the whole batch's; a group whose scores are all equal
  carries no signal and is flagged so that it can be left out of the update.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class PerPromptStats:
    def __init__(self, buffer: int = 32, min_count: int = 16):
        self.buffer, self.min_count = buffer, min_count
        self._scores: dict[str, deque[float]] = {}

    def advantages(self, prompts: list[str], scores: np.ndarray) -> np.ndarray:
        """Standardised advantages of a batch; updates the per-prompt buffers with it first."""
        scores = np.asarray(scores, dtype=np.float64)
        out = np.zeros_like(scores)
        batch_mean, batch_std = scores.mean(), scores.std()
        for prompt in dict.fromkeys(prompts):
            idx = np.array([i for i, p in enumerate(prompts) if p == prompt])
            buf = self._scores.setdefault(prompt, deque(maxlen=self.buffer))
            buf.extend(float(s) for s in scores[idx])
            if len(buf) < self.min_count:
                mean, std = batch_mean, batch_std
            else:
                mean, std = float(np.mean(buf)), float(np.std(buf))
            out[idx] = (scores[idx] - mean) / (std + 1e-6)
        return out

    def state_dict(self) -> dict:
        return {
            "buffer": self.buffer,
            "min_count": self.min_count,
            "scores": {k: list(v) for k, v in self._scores.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.buffer, self.min_count = state["buffer"], state["min_count"]
        self._scores = {k: deque(v, maxlen=self.buffer) for k, v in state["scores"].items()}


def group_advantages(prompts: list[str], scores: np.ndarray, std: str = "group") -> tuple[np.ndarray, np.ndarray]:
    """Group-relative advantages of one epoch's samples and a mask of the samples whose group has spread.

    ``std``: ``group`` divides by each group's standard deviation, ``batch`` by the whole batch's (Flow-GRPO's
    ``global_std``). Returns ``(advantages, informative)``; ``informative[i]`` is False when every sample of i's
    prompt scored the same (its advantages are then exactly 0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    out = np.zeros_like(scores)
    informative = np.zeros(len(scores), dtype=bool)
    batch_std = scores.std()
    for prompt in dict.fromkeys(prompts):
        idx = np.array([i for i, p in enumerate(prompts) if p == prompt])
        group = scores[idx]
        if np.ptp(group) == 0:
            continue
        scale = group.std() if std == "group" else batch_std
        out[idx] = (group - group.mean()) / (scale + 1e-4)
        informative[idx] = True
    return out, informative
