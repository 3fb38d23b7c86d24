"""The GPU runner's tests: a real Stable Diffusion folder (``DFUSION_SD_MODEL``) samples and fuses on CUDA in fp16.

Skipped without a CUDA device or without the folder; ``.github/workflows/gpu-regression.yml`` runs them
(``pytest -m gpu``) beside the regression check and ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not os.environ.get("DFUSION_SD_MODEL"), reason="needs DFUSION_SD_MODEL (a local SD folder)"),
]


@pytest.fixture(scope="module")
def sd_pipe():
    from dfusion_bench.models.choice import ModelChoice

    return ModelChoice.check(Path(os.environ["DFUSION_SD_MODEL"])).load(torch.device("cuda"), torch.float16)


def test_the_sd_folder_samples_with_finite_log_probs(sd_pipe) -> None:
    from dfusion_bench.sampling import sample
    from dfusion_bench.settings import SamplerConfig

    traj = sample(sd_pipe, ["a cat eating a sandwich"] * 2, [0, 1], SamplerConfig(num_steps=4))
    assert torch.isfinite(traj.log_probs).all() and traj.images.shape[-1] == 8 * sd_pipe.unet.config.sample_size


def test_a_fused_target_on_sd(sd_pipe) -> None:
    from dfusion_bench.fusion import FusionConfig, Triple, fuse_triples
    from dfusion_bench.sampling import sample
    from dfusion_bench.settings import SamplerConfig
    from dfusion_bench.suites import PromptEntry

    prompt = "a cat eating a sandwich"
    samples = sample(sd_pipe, [prompt] * 2, [0, 1], SamplerConfig(num_steps=4))
    items = {prompt: PromptEntry(prompt, ("cat", "sandwich"), (None, None))}
    result = fuse_triples(sd_pipe, samples, [Triple(0, 1)], items, FusionConfig(skip_first_steps=1))
    assert result.plan.mask_resolution == sd_pipe.unet.config.sample_size // 4
    assert torch.isfinite(result.targets.log_probs).all() and result.events
