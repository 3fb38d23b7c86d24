"""Paired tests of (with D-Fusion) - (without) and of (final) - (base), and the t-interval they report.

The report's intervals over training runs come from the hierarchical bootstrap of :mod:`.bootstrap` (a t-interval
over two seeds, with its 12.7 x SE half-width, says nothing); :func:`mean_ci` is left to the tests' p-values and to
the ``paired`` table of eval folders, where the pairs are many images. The fusion gain is
tested on pairs that share a seed (same initial noise, same evaluation seeds) with a paired t-test; when only one
seed is shared, the pairs are the prompts instead (Wilcoxon signed-rank over the per-prompt mean scores), which tests
that one seed's runs, not the method across seeds — the table says which test it used and on how many pairs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
SEED_TEST = "paired t-test over seeds"
PROMPT_TEST = "Wilcoxon signed-rank over prompts"
IMAGE_TEST = "Wilcoxon signed-rank over images"
NO_TEST = "none"


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values and the half-width of its two-sided t-interval (NaN when n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> MeanCI:
    """Mean and t-interval half-width ``t_{(1+level)/2, n-1} * s / sqrt(n)`` of the finite ``values``."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return MeanCI(float("nan"), float("nan"), 0)
    mean = float(x.mean())
    if n < 2:
        return MeanCI(mean, float("nan"), n)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    return MeanCI(mean, float(stats.t.ppf((1 + level) / 2, n - 1)) * sem, n)


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison: mean difference, its t-interval half-width, the test used, its p-value, the pairs."""

    mean_difference: float
    half_width: float
    p_value: float
    test: str
    n: int


def paired_t(with_values: Sequence[float], without_values: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test (``scipy.stats.ttest_rel``); NaN p-value for fewer than 2 pairs or zero spread."""
    a, b = _finite_pairs(with_values, without_values)
    ci = mean_ci(a - b)
    p = float("nan")
    if a.size >= 2 and np.ptp(a - b) > 0:
        p = float(stats.ttest_rel(a, b).pvalue)
    return PairedTest(ci.mean, ci.half_width, p, SEED_TEST, int(a.size))


def wilcoxon(with_values: Sequence[float], without_values: Sequence[float], label: str = PROMPT_TEST) -> PairedTest:
    """Two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``); NaN p-value when every difference is zero.
    ``label`` names the pairs in the result (:data:`PROMPT_TEST`, :data:`IMAGE_TEST`)."""
    a, b = _finite_pairs(with_values, without_values)
    ci = mean_ci(a - b)
    p = float("nan")
    if a.size >= 1 and np.any(a != b):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's small-sample notes; the n is in the table
            p = float(stats.wilcoxon(a, b).pvalue)
    return PairedTest(ci.mean, ci.half_width, p, label, int(a.size))


def _finite_pairs(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.shape} vs {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]
