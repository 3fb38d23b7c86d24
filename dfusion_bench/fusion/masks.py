"""From cross-attention maps to D-Fusion's mask: thresholds, the ``auto`` rule, the union, and resizing.

An item's map is the probability that a query position attends to the item's tokens (summed over a multi-token
word's tokens), averaged over the chosen cross-attention layers and over heads — values are small probabilities, as
the softmax runs over every text token. A position joins the item's mask when its value reaches the item's numeric
threshold, ``value >= threshold`` (the rule of the paper's code; an exact tie counts as attended).

``auto`` threshold (no hand tuning): Otsu's method on the item's map, the cut between the map's values that maximises
the between-class variance of "attended" and "not attended" positions. It is invariant to the map's scale, so it
transfers across models and prompt lengths, and a map of one constant value gives an empty mask. It keeps its own
rule, ``value > cut``: the cut is the top of the low class, so a value equal to it is not attended.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUTO = None  # a threshold of None means the auto rule


def otsu_threshold(values: torch.Tensor) -> float:
    """Otsu's threshold of a set of values: positions strictly above it form the foreground class."""
    v, _ = torch.sort(values.flatten().double())
    n = v.numel()
    if n < 2 or v[0] == v[-1]:
        return float(v[-1]) if n else 0.0
    csum = torch.cumsum(v, 0)
    k = torch.arange(1, n, dtype=torch.float64)  # class sizes of the low class for cuts after index k-1
    mean_low = csum[:-1] / k
    mean_high = (csum[-1] - csum[:-1]) / (n - k)
    between = k * (n - k) * (mean_low - mean_high) ** 2
    valid = v[1:] > v[:-1]  # only cut between distinct values
    between = torch.where(valid, between, torch.full_like(between, -1.0))
    cut = int(torch.argmax(between))
    return float(v[cut])


def binarize(maps: torch.Tensor, thresholds: list[float | None]) -> torch.Tensor:
    """Per-item masks (items, h, w) from maps (items, h, w): ``map >= threshold``, or ``map > cut`` with Otsu's cut
    where the threshold is None."""
    if maps.shape[0] != len(thresholds):
        raise ValueError(f"{maps.shape[0]} maps but {len(thresholds)} thresholds")
    out = torch.zeros_like(maps, dtype=torch.bool)
    for i, thr in enumerate(thresholds):
        out[i] = (maps[i] > otsu_threshold(maps[i])) if thr is AUTO else (maps[i] >= float(thr))
    return out


def union(item_masks: torch.Tensor) -> torch.Tensor:
    """One mask (h, w) from per-item masks (items, h, w)."""
    return item_masks.any(dim=0)


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize of boolean masks (..., h, w) to (..., height, width)."""
    if mask.shape[-2:] == (height, width):
        return mask
    lead = mask.shape[:-2]
    flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    return (F.interpolate(flat, size=(height, width), mode="nearest") > 0.5).reshape(*lead, height, width)
