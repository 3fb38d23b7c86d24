"""The DDIM step as a Gaussian policy: its mean, its standard deviation and the log-probability of a transition.

With eta > 0, one DDIM step is x_{t-1} ~ N(mu_theta(x_t, c), sigma_t^2 I) where (Song et al. 2021, eq. 12)

    x0_hat  = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    mu      = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma_t^2) eps

with a = the scheduler's cumulative alphas. The log-probability is that of the diagonal Gaussian, averaged (not
summed) over latent dimensions — ddpo-pytorch's convention, so that ratios exp(logp_new - logp_old) stay O(1).

Everything here is a pure function of tensors and the scheduler's fixed schedule; ``timesteps`` always comes from
``scheduler.set_timesteps`` so that the "previous" timestep is the next entry of that list.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

from dfusion_bench.errors import UserError

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def require_stochastic(eta: float) -> None:
    """Log-probabilities (and so every RL method) need eta > 0: with eta = 0 the step is deterministic."""
    if eta <= 0:
        raise UserError(
            f"eta = {eta} makes the DDIM step deterministic, so its log-probability is undefined; "
            "use eta > 0 (the literature's default is 1.0) for anything that trains"
        )


def alpha_bars(scheduler: DDIMScheduler, timestep: int, prev_timestep: int) -> tuple[float, float]:
    """Cumulative alphas at ``timestep`` and at the previous one (``prev_timestep < 0``: the final alpha)."""
    a_t = scheduler.alphas_cumprod[timestep]
    a_prev = scheduler.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else scheduler.final_alpha_cumprod
    return float(a_t), float(a_prev)


def prev_timestep_of(timesteps: torch.Tensor, index: int) -> int:
    return int(timesteps[index + 1]) if index + 1 < len(timesteps) else -1


def step_distribution(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    x_t: torch.Tensor,
    eta: float,
) -> tuple[torch.Tensor, float]:
    """Mean and standard deviation of p(x_prev | x_t) for the guided model output at ``timestep``."""
    a_t, a_prev = alpha_bars(scheduler, timestep, prev_timestep)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        eps = model_output
        x0 = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
    elif kind == "v_prediction":
        x0 = math.sqrt(a_t) * x_t - math.sqrt(1 - a_t) * model_output
        eps = math.sqrt(a_t) * model_output + math.sqrt(1 - a_t) * x_t
    elif kind == "sample":
        x0 = model_output
        eps = (x_t - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
    else:
        raise UserError(f"scheduler prediction_type {kind!r} is not supported; use epsilon, v_prediction or sample")
    if scheduler.config.clip_sample:
        limit = scheduler.config.clip_sample_range
        x0 = x0.clamp(-limit, limit)
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * math.sqrt(max(variance, 0.0))
    if std <= 0:
        raise UserError(
            f"the DDIM step from timestep {timestep} to {prev_timestep} has zero variance, so no log-probability; "
            "use a scheduler config with set_alpha_to_one=False (SD's own) and distinct timesteps"
        )
    mean = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - std**2, 0.0)) * eps
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mean, std^2 I), averaged over all but the batch dimension."""
    logp = -((x.detach() - mean) ** 2) / (2 * std**2) - math.log(std) - _HALF_LOG_2PI
    return logp.mean(dim=tuple(range(1, x.ndim)))


def ddim_step(
    scheduler: DDIMScheduler,
    model_output: torch.Tensor,
    timestep: int,
    prev_timestep: int,
    x_t: torch.Tensor,
    eta: float,
    noise: torch.Tensor | None = None,
    x_prev: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step: ``(x_prev, log p(x_prev | x_t))``.

    Either draw ``x_prev = mean + std * noise`` (sampling) or score a given ``x_prev`` (recomputing a trajectory).
    """
    require_stochastic(eta)
    mean, std = step_distribution(scheduler, model_output, timestep, prev_timestep, x_t, eta)
    if x_prev is None:
        if noise is None:
            raise ValueError("ddim_step needs either noise (to sample) or x_prev (to score)")
        x_prev = mean + std * noise
    return x_prev, gaussian_log_prob(x_prev, mean, std)
