"""DDPO's JPEG-compressibility reward (Black et al. 2024): minus the image's JPEG size in kB at quality 95.

It needs no model, runs anywhere, and gives graded scores to any image — the classic first reward of RL for
diffusion, and the one the toolkit's own tests train on with random-weight pipelines.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from dfusion_bench.imaging import to_uint8
from dfusion_bench.scorers.base import Scores, check_batch


class CompressibilityScorer:
    name = "compressibility"

    def __init__(self, quality: int = 95):
        self.quality = quality

    def __call__(
        self, images: torch.Tensor, prompts: list[str], metadata: list[dict[str, Any]] | None = None
    ) -> Scores:
        n = check_batch(images, prompts, metadata)
        sizes = []
        for i in range(n):
            buffer = io.BytesIO()
            Image.fromarray(to_uint8(images[i])).save(buffer, format="JPEG", quality=self.quality)
            sizes.append(buffer.tell() / 1000.0)
        return Scores(-np.asarray(sizes, dtype=np.float64), None, [{} for _ in range(n)])
