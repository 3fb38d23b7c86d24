"""Shared fixtures: tiny random-weight pipelines built from configs (no download), on CPU."""

from __future__ import annotations

import os

import pytest
import torch

# One intra-op thread: the tests' models are tiny, and a second thread only adds contention on 2-core machines.
torch.set_num_threads(int(os.environ.get("DFUSION_TEST_THREADS", "1")))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_pipe():
    """A tiny SD pipeline with the real CLIP tokenizer (so "woolen" splits into several tokens)."""
    from dfusion_bench.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_pipe):
    """The tiny pipeline saved as a diffusers folder."""
    out = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_pipe.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """A barely trained shapes-world pipeline (a few steps): the embedded architecture, marker and tokenizer."""
    from dfusion_bench.world.pretrain import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("world")
    cfg = PretrainConfig(
        vae_steps=2, text_steps=2, text_batch_size=8, unet_steps=2, batch_size=4, checkpoint_every=100, warmup_steps=1
    )
    return pretrain(out, cfg)
