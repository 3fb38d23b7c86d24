"""Image helpers: tensors to PNG, side-by-side strips, mask overlays, grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dfusion_bench import atomic


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def upscale(image: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour resize of (3, h, w) or (h, w) to ``size`` x ``size`` (keeps pixels crisp)."""
    x = image.float()
    squeeze = x.ndim == 2
    x = x[None, None] if squeeze else x[None]
    x = F.interpolate(x, size=(size, size), mode="nearest")[0]
    return x[0] if squeeze else x


def mask_image(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A boolean mask as a white-on-black RGB image of side ``size``."""
    return upscale(mask.float(), size)[None].repeat(3, 1, 1)


def overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """The image with the mask tinted in (masked area keeps the image, the rest is darkened)."""
    m = upscale(mask.float(), image.shape[-1])[None]
    return image * (alpha + (1 - alpha) * m)


def hstack(images: list[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Images (3, H, W) of equal size side by side, separated by ``pad`` white columns."""
    h = images[0].shape[1]
    sep = torch.ones(3, h, pad)
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(sep)
        parts.append(im.float().cpu())
    return torch.cat(parts, dim=2)


def grid(images: list[torch.Tensor], columns: int, pad: int = 2) -> torch.Tensor:
    """Images (3, H, W) in rows of ``columns``."""
    rows = []
    blank = torch.zeros_like(images[0])
    for start in range(0, len(images), columns):
        row = images[start : start + columns]
        row = row + [blank] * (columns - len(row))
        rows.append(hstack(row, pad))
    sep = torch.ones(3, pad, rows[0].shape[2])
    out = []
    for i, r in enumerate(rows):
        if i:
            out.append(sep)
        out.append(r)
    return torch.cat(out, dim=1)


def save_png(image: torch.Tensor, path: str | Path, scale: int = 1) -> Path:
    """Write (3, H, W) in [0, 1] as PNG (atomically), optionally enlarged ``scale`` times (nearest)."""
    if scale != 1:
        image = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0]
    pil = Image.fromarray(to_uint8(image))
    return atomic.write_with(path, lambda p: pil.save(p, format="PNG"))


def read_png(path: str | Path) -> np.ndarray:
    """A PNG as an (H, W, 3) uint8 array."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
