"""Hierarchical percentile bootstrap of a mean over images, of paired differences, and the minimum detectable effect.

The data are one row per image: its *block* (the training run's seed), its *prompt* (``prompt_index``) and a value
(1.0/0.0 for a rate: fully aligned, or one fact of the verifier; or a score). The estimate is the mean over all images.
One bootstrap replicate resamples the three levels of the design:

1. seeds: with ``min_blocks`` (3) or more seeds, ``S`` seeds are drawn with replacement; with one or two seeds every
   seed is kept once (two values cannot estimate a spread between seeds, so the seed level is not resampled and the
   interval covers prompts and images only: it speaks for these training runs, not for a new seed);
2. prompts: ``P`` prompts are drawn with replacement. ``crossed=True`` (the default): one draw per replicate, shared
   by every seed copy, because every run of a suite evaluates the same prompts (a prompt's difficulty is common to
   all seeds; drawing prompts afresh per seed would count it as independent ``S`` times and narrow the interval);
   ``crossed=False``: each seed copy draws its own prompts (prompts nested in seeds);
3. images: within each drawn (seed, prompt) cell its ``n`` images are drawn with replacement.

The replicate's statistic is the mean over all drawn images; the interval is the ``(1 - level) / 2`` and
``(1 + level) / 2`` percentiles of ``n_boot`` (B) replicates, the standard error their standard deviation. The RNG seed
is fixed, so a report rebuilt from the same data prints the same intervals.

A paired difference is the same bootstrap of per-image differences ``a - b`` of images that share their keys: after
minus before of one run (same ``prompt_index`` and image ``seed``: the same initial noise at epoch 0 and at the last
epoch), or D-Fusion minus plain (same run seed, ``prompt_index`` and image seed). Identical images give a difference
of exactly 0 with a zero-width interval.

Implementation: a seed drawn ``w`` times and a prompt drawn ``m`` times give their cell ``w * m`` independent image
resamples of ``n`` images, i.e. ``w * m * n`` independent uniform draws among the cell's images (a sum of independent
equal-probability multinomials is one multinomial), so each replicate needs only per-cell draw counts and one
vectorised draw of image indices: O(B x images) time, in chunks of bounded memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

N_BOOT = 2000  # B: replicates per interval
LEVEL = 0.95
MIN_BLOCKS = 3  # seeds needed before the seed level is resampled
RNG_SEED = 0
POWER = 0.8
ALPHA = 0.05
_DRAWS_PER_CHUNK = 1 << 22  # image draws held in memory at once


@dataclass(frozen=True)
class Interval:
    """A bootstrap estimate: the mean over images, its percentile interval and standard error, and the design."""

    estimate: float
    low: float
    high: float
    se: float
    n_seeds: int
    n_prompts: int
    n_images: int
    seeds_resampled: bool

    @property
    def mde(self) -> float:
        """The minimum detectable effect of this (paired) design at power 0.8, two-sided alpha 0.05 (:func:`mde`)."""
        return mde(self.se)

    @property
    def resampled(self) -> str:
        """The levels the bootstrap resampled: ``"seeds, prompts, images"``, ``"prompts, images"`` or ``""``."""
        if self.n_images == 0:
            return ""
        return "seeds, prompts, images" if self.seeds_resampled else "prompts, images"


EMPTY = Interval(float("nan"), float("nan"), float("nan"), float("nan"), 0, 0, 0, False)


def mde(se: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect ``(z_{1 - alpha/2} + z_{power}) * se``: the smallest true difference that a two-sided
    level-``alpha`` test of the estimate detects with probability ``power``, when the estimate is normal with
    standard error ``se`` (2.80 x SE at alpha 0.05 and power 0.8)."""
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)


def _cells(blocks: np.ndarray, prompts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(cell of each image, each cell's block, each cell's prompt, number of blocks, number of prompts)."""
    _, block = np.unique(blocks, return_inverse=True)
    _, prompt = np.unique(prompts, return_inverse=True)
    n_blocks, n_prompts = int(block.max()) + 1, int(prompt.max()) + 1
    keys, cell = np.unique(block * n_prompts + prompt, return_inverse=True)
    return cell, keys // n_prompts, keys % n_prompts, n_blocks, n_prompts


def _copies(
    rng: np.random.Generator,
    n: int,
    cell_block: np.ndarray,
    cell_prompt: np.ndarray,
    n_blocks: int,
    n_prompts: int,
    resample_blocks: bool,
    crossed: bool,
) -> np.ndarray:
    """(n, cells): how many times each replicate draws each (seed, prompt) cell (steps 1 and 2)."""
    w = _counts(rng, n, n_blocks) if resample_blocks else np.ones((n, n_blocks), dtype=np.int64)
    if crossed:
        m = _counts(rng, n, n_prompts)
        return w[:, cell_block] * m[:, cell_prompt]
    copies = np.zeros((n, cell_block.size), dtype=np.int64)
    for s in range(n_blocks):  # nested: the w_s copies of seed s draw w_s * P_s prompts among its own P_s
        mine = np.flatnonzero(cell_block == s)
        copies[:, mine] = rng.multinomial(w[:, s] * mine.size, np.full(mine.size, 1 / mine.size))
    return copies


def _counts(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """(n, k): how often each of ``k`` units is drawn in ``n`` resamples of ``k`` draws with replacement."""
    drawn = rng.integers(0, k, size=(n, k)) + k * np.arange(n)[:, None]
    return np.bincount(drawn.ravel(), minlength=n * k).reshape(n, k)


def _means(rng: np.random.Generator, x: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, copies: np.ndarray):
    """Each replicate's mean over its drawn images (step 3): cell g drawn c times yields c * n_g uniform draws among
    its n_g images (``x[offsets[g]:offsets[g] + n_g]``)."""
    n, n_cells = copies.shape
    draws = copies * sizes  # (n, cells)
    cell = np.repeat(np.tile(np.arange(n_cells), n), draws.ravel())  # draws are grouped by replicate
    if cell.size == 0:
        return np.full(n, np.nan)
    pick = offsets[cell] + (rng.random(cell.size) * sizes[cell]).astype(np.int64)
    counts = draws.sum(axis=1)
    starts = np.minimum(np.cumsum(counts) - counts, cell.size - 1)
    totals = np.add.reduceat(x[pick], starts)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def _means_by_level(rng: np.random.Generator, levels: np.ndarray, shares: np.ndarray, sizes: np.ndarray, copies):
    """The same as :func:`_means` for values with few distinct ``levels``: c * n_g uniform draws among a cell's
    images hold each level a multinomial number of times (probabilities ``shares[g]``: the level's share of the
    cell's images), which is cheaper to draw than the images themselves."""
    draws = copies * sizes
    held = rng.multinomial(draws, shares)  # (n, cells, levels)
    counts = draws.sum(axis=1)
    totals = (held.sum(axis=1) * levels).sum(axis=1)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


_MAX_LEVELS = 16  # up to this many distinct values, draw level counts (:func:`_means_by_level`) instead of images


def replicate_means(
    blocks: Sequence[object] | np.ndarray,
    prompts: Sequence[object] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    *,
    n_boot: int = N_BOOT,
    rng: np.random.Generator | None = None,
    min_blocks: int = MIN_BLOCKS,
    crossed: bool = True,
) -> np.ndarray:
    """``n_boot`` bootstrap replicates of the mean of ``values`` (one per image; ``blocks`` and ``prompts`` its seed
    and prompt), resampled as the module describes. Non-finite values are left out beforehand."""
    x = np.asarray(values, dtype=float)
    keep = np.isfinite(x)
    x, b, p = x[keep], np.asarray(blocks)[keep], np.asarray(prompts)[keep]
    if x.size == 0:
        return np.full(n_boot, np.nan)
    rng = rng if rng is not None else np.random.default_rng(RNG_SEED)
    cell, cell_block, cell_prompt, n_blocks, n_prompts = _cells(b, p)
    order = np.argsort(cell, kind="stable")
    x = x[order]
    sizes = np.bincount(cell, minlength=cell_block.size)
    offsets = np.cumsum(sizes) - sizes
    levels, level = np.unique(x, return_inverse=True)
    by_level = levels.size <= _MAX_LEVELS and cell_block.size * levels.size < x.size
    if by_level:
        shares = np.zeros((cell_block.size, levels.size))
        np.add.at(shares, (np.sort(cell), level), 1.0)
        shares /= sizes[:, None]
    width = cell_block.size * levels.size if by_level else x.size
    chunk = max(1, min(n_boot, _DRAWS_PER_CHUNK // width))
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        copies = _copies(rng, n, cell_block, cell_prompt, n_blocks, n_prompts, n_blocks >= min_blocks, crossed)
        if by_level:
            out[start : start + n] = _means_by_level(rng, levels, shares, sizes, copies)
        else:
            out[start : start + n] = _means(rng, x, offsets, sizes, copies)
    return out


def bootstrap_mean(
    frame: pd.DataFrame,
    value: str,
    *,
    block: str = "run_seed",
    prompt: str = "prompt_index",
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = RNG_SEED,
    min_blocks: int = MIN_BLOCKS,
    crossed: bool = True,
) -> Interval:
    """The mean of ``frame[value]`` over images (rows; missing values left out) with its hierarchical percentile
    bootstrap interval at ``level``: seeds (``block``, when there are ``min_blocks`` or more), prompts (``prompt``),
    images. A frame without a ``block`` column is one seed. :data:`EMPTY` when no value is finite."""
    if value not in frame:
        return EMPTY
    values = pd.to_numeric(frame[value], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(values)
    if not keep.any():
        return EMPTY
    blocks = frame[block].to_numpy()[keep] if block in frame else np.zeros(int(keep.sum()), dtype=int)
    prompts = frame[prompt].to_numpy()[keep]
    x = values[keep]
    reps = replicate_means(
        blocks, prompts, x, n_boot=n_boot, rng=np.random.default_rng(seed), min_blocks=min_blocks, crossed=crossed
    )
    low, high = np.nanquantile(reps, [(1 - level) / 2, (1 + level) / 2])
    n_blocks = int(pd.unique(blocks).size)
    return Interval(
        estimate=float(x.mean()),
        low=float(low),
        high=float(high),
        se=float(np.nanstd(reps, ddof=1)) if reps.size > 1 else float("nan"),
        n_seeds=n_blocks,
        n_prompts=int(pd.unique(prompts).size),
        n_images=int(x.size),
        seeds_resampled=n_blocks >= min_blocks,
    )


def paired_values(
    a: pd.DataFrame, b: pd.DataFrame, keys: Sequence[str], columns: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per image present in both frames (matched on ``keys``; a repeated key keeps its first row): the ``keys`` and,
    per value column present in both (default: every column of ``a`` but the keys), ``a - b``."""
    keys = list(keys)
    shared = [c for c in (columns if columns is not None else a.columns) if c not in keys and c in a and c in b]
    left = a[[*keys, *shared]].drop_duplicates(keys)
    right = b[[*keys, *shared]].drop_duplicates(keys)
    merged = left.merge(right, on=keys, suffixes=("_a", "_b"))
    out = merged[keys].copy()
    for column in shared:
        first = pd.to_numeric(merged[f"{column}_a"], errors="coerce")
        second = pd.to_numeric(merged[f"{column}_b"], errors="coerce")
        out[column] = (first - second).astype(float)
    return out


def paired_difference(
    a: pd.DataFrame,
    b: pd.DataFrame,
    value: str,
    *,
    keys: Sequence[str] = ("run_seed", "prompt_index", "seed"),
    **options: object,
) -> Interval:
    """Mean of ``a - b`` over the images the two frames share (matched on ``keys``: run seed, ``prompt_index`` and
    image seed by default), with the bootstrap of :func:`bootstrap_mean` (``options``) over those pairs."""
    keys = [k for k in keys if k in a and k in b]
    return bootstrap_mean(paired_values(a, b, keys, [value]), value, **options)  # type: ignore[arg-type]
