"""Seeds: a sample is the same alone or in a batch; trajectories round-trip through safetensors."""

from __future__ import annotations

import torch

from dfusion_bench.guidance import call_groups
from dfusion_bench.sampling import noise_stream, sample
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.trajectories import Trajectories

CFG = SamplerConfig(num_steps=8)


def test_sample_alone_equals_sample_in_batch(tiny_pipe) -> None:
    prompts = ["a cat eating a sandwich", "a black and woolen bus", "a dog"]
    batch = sample(tiny_pipe, prompts, [11, 12, 13], CFG)
    alone = sample(tiny_pipe, [prompts[1]], [12], CFG)
    assert torch.equal(batch.latents[1], alone.latents[0])  # bit for bit: one UNet call shape on a CPU
    assert torch.equal(batch.log_probs[1], alone.log_probs[0])
    # batches of 10 and 2: UNet calls of 4, 4, 2 + 2 padding, then 2 + 2 padding; sample 10 is the second batch's first
    many = sample(tiny_pipe, prompts * 4, [11, 12, 13] * 4, CFG, batch_size=10)
    assert torch.equal(many.latents[10], alone.latents[0]) and torch.equal(many.images[10], alone.images[0])
    assert torch.equal(many.latents[4], alone.latents[0])  # the first batch's second call


def test_call_groups_pad_the_last_call() -> None:
    assert [g.tolist() for g in call_groups(5, 2)] == [[0, 1], [2, 3], [4, 4]]
    assert [g.tolist() for g in call_groups(5, None)] == [[0, 1, 2, 3, 4]]
    assert [g.tolist() for g in call_groups(4, 4)] == [[0, 1, 2, 3]]


def test_different_seeds_differ(tiny_pipe) -> None:
    a = sample(tiny_pipe, ["a dog"], [1], CFG)
    b = sample(tiny_pipe, ["a dog"], [2], CFG)
    assert not torch.allclose(a.latents[0, -1], b.latents[0, -1])


def test_noise_stream_is_a_pure_function_of_the_seed() -> None:
    assert torch.equal(noise_stream(5, (4, 8, 8), 3), noise_stream(5, (4, 8, 8), 3))
    assert not torch.equal(noise_stream(5, (4, 8, 8), 3), noise_stream(6, (4, 8, 8), 3))


def test_trajectories_round_trip(tiny_pipe, tmp_path) -> None:
    traj = sample(tiny_pipe, ["a dog", "a cat"], [1, 2], SamplerConfig(num_steps=3))
    path = traj.save(tmp_path / "t.safetensors")
    back = Trajectories.load(path)
    assert back.prompts == traj.prompts and back.seeds == traj.seeds and back.config == traj.config
    for name in ("timesteps", "latents", "log_probs", "images"):
        assert torch.equal(getattr(back, name), getattr(traj, name))
    assert back.latents.shape == (2, 4, *traj.latents.shape[2:])
