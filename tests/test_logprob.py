"""The DDIM step's log-probability, its recomputation, and the refusal of eta = 0."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from dfusion_bench.errors import UserError
from dfusion_bench.logprob import ddim_step, prev_timestep_of, step_distribution
from dfusion_bench.sampling import recompute_log_probs, sample
from dfusion_bench.settings import SamplerConfig


def _scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    sched = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )
    sched.set_timesteps(20)
    return sched


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("index", [0, 7, 19])
def test_log_prob_equals_torch_normal(prediction_type: str, index: int) -> None:
    sched = _scheduler(prediction_type)
    gen = torch.Generator().manual_seed(index)
    x_t, out, noise = (torch.randn(3, 4, 8, 8, generator=gen) for _ in range(3))
    t, prev = int(sched.timesteps[index]), prev_timestep_of(sched.timesteps, index)
    x_prev, logp = ddim_step(sched, out, t, prev, x_t, eta=1.0, noise=noise)
    mean, std = step_distribution(sched, out, t, prev, x_t, 1.0)
    reference = torch.distributions.Normal(mean, std).log_prob(x_prev).mean(dim=(1, 2, 3))
    torch.testing.assert_close(logp, reference, rtol=1e-5, atol=1e-5)


def test_ddim_step_matches_diffusers_mean() -> None:
    """With the noise fixed, our sample equals DDIMScheduler.step's (same DDIM update)."""
    sched = _scheduler()
    gen = torch.Generator().manual_seed(0)
    x_t, eps, noise = (torch.randn(2, 4, 8, 8, generator=gen) for _ in range(3))
    t = int(sched.timesteps[5])
    ours, _ = ddim_step(sched, eps, t, prev_timestep_of(sched.timesteps, 5), x_t, eta=0.7, noise=noise)
    theirs = sched.step(eps, t, x_t, eta=0.7, variance_noise=noise).prev_sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_recomputed_log_probs_reproduce_sampling(tiny_pipe) -> None:
    traj = sample(tiny_pipe, ["a cat eating a sandwich", "a dog"], [3, 4], SamplerConfig(num_steps=6))
    again = recompute_log_probs(tiny_pipe, traj)
    ratio = torch.exp(again - traj.log_probs)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)


def test_eta_zero_is_refused(tiny_pipe) -> None:
    with pytest.raises(UserError, match="eta"):
        sample(tiny_pipe, ["a dog"], [0], SamplerConfig(num_steps=4, eta=0.0))
