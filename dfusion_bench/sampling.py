"""DDIM sampling with per-step log-probabilities, one random stream per sample.

A sample's randomness is a pure function of its seed: :func:`noise_stream` draws its initial latent x_T and then the
noise of every step from one ``torch.Generator`` seeded with it (on the CPU, so a seed means the same noise on every
device). A sample is therefore reproduced whether it is drawn alone or in any batch — and D-Fusion's target, which
starts from its base's seed, sees exactly the base's initial latent and per-step noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from dfusion_bench.guidance import TextConditioning, call_groups, encode_text, guided_output, samples_per_call
from dfusion_bench.logprob import ddim_step, prev_timestep_of, require_stochastic
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.trajectories import Trajectories

#: Called before each denoising step with the step index (0 = noisiest); used by fusion to advance its controller.
StepHook = Callable[[int], None]
#: Called before each UNet call of a chain with the step index and the indices of the samples the call evaluates.
StepCallHook = Callable[[int, torch.Tensor], None]


def latent_shape(pipe: StableDiffusionPipeline) -> tuple[int, int, int]:
    size = pipe.unet.config.sample_size
    return (pipe.unet.config.in_channels, size, size)


def noise_stream(seed: int, shape: tuple[int, ...], num_steps: int) -> torch.Tensor:
    """x_T followed by the noise of each of ``num_steps`` steps, shape (num_steps + 1, *shape), float32 on CPU."""
    gen = torch.Generator("cpu").manual_seed(int(seed))
    return torch.stack([torch.randn(shape, generator=gen) for _ in range(num_steps + 1)])


def timesteps_for(pipe: StableDiffusionPipeline, num_steps: int) -> torch.Tensor:
    pipe.scheduler.set_timesteps(num_steps)
    return pipe.scheduler.timesteps.clone().cpu()


@torch.no_grad()
def decode(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1], float32 on CPU, from final latents (on a CPU in calls of one shape, as the UNet's)."""
    vae, n = pipe.vae, latents.shape[0]
    parts = []
    for rows in call_groups(n, samples_per_call(pipe.device)):
        z = latents[rows].to(pipe.device, vae.dtype) / vae.config.scaling_factor
        parts.append(vae.decode(z).sample[: min(len(rows), n - int(rows[0]))])
    x = torch.cat(parts)
    return ((x.float() + 1) / 2).clamp(0, 1).cpu()


@torch.no_grad()
def denoise(
    pipe: StableDiffusionPipeline,
    text: TextConditioning,
    noises: torch.Tensor,
    timesteps: torch.Tensor,
    config: SamplerConfig,
    unet: UNet2DConditionModel | None = None,
    before_step: StepHook | None = None,
    before_call: StepCallHook | None = None,
    start: tuple[int, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the DDIM chain from noise streams (B, T + 1, C, h, w); return latents (B, T + 1, ...) and log-probs (B, T).

    ``start = (s, x_s)`` continues a chain from step s with latents x_s (B, C, h, w) instead of drawing x_T: then the
    latents returned are x_s ... x_0 (B, T + 1 - s, ...) and the log-probs those of steps s .. T - 1.
    """
    unet = unet or pipe.unet
    device = pipe.device
    first, x = (0, noises[:, 0].to(device) * pipe.scheduler.init_noise_sigma) if start is None else start
    x = x.to(device)
    latents, log_probs = [x.float().cpu()], []
    for i, t in enumerate(timesteps.tolist()):
        if i < first:
            continue
        if before_step is not None:
            before_step(i)
        on_call = None if before_call is None else (lambda rows, i=i: before_call(i, rows))
        eps = guided_output(unet, x, t, text, config.guidance_scale, before_call=on_call)
        x, logp = ddim_step(
            pipe.scheduler,
            eps,
            t,
            prev_timestep_of(timesteps, i),
            x.float(),
            config.eta,
            noise=noises[:, i + 1].to(device),
        )
        latents.append(x.cpu())
        log_probs.append(logp.cpu())
    lps = torch.stack(log_probs, dim=1) if log_probs else torch.zeros(x.shape[0], 0)
    return torch.stack(latents, dim=1), lps


def sample(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    seeds: list[int],
    config: SamplerConfig = SamplerConfig(),
    batch_size: int = 16,
    unet: UNet2DConditionModel | None = None,
    on_batch: Callable[[int], None] | None = None,
    before_call: StepCallHook | None = None,
) -> Trajectories:
    """Sample one trajectory per (prompt, seed); ``on_batch(n)`` reports progress after each batch of n samples.

    ``before_call(step, index)`` runs before each UNet call with the indices, in ``prompts``, of the samples it
    evaluates (fusion records references with it)."""
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    require_stochastic(config.eta)
    timesteps = timesteps_for(pipe, config.num_steps)
    shape = latent_shape(pipe)
    parts = []
    for start in range(0, len(prompts), batch_size):
        chunk_prompts, chunk_seeds = prompts[start : start + batch_size], seeds[start : start + batch_size]
        noises = torch.stack([noise_stream(s, shape, config.num_steps) for s in chunk_seeds])
        text = encode_text(pipe, chunk_prompts)
        on_call = None if before_call is None else (lambda i, rows, start=start: before_call(i, rows + start))
        latents, log_probs = denoise(pipe, text, noises, timesteps, config, unet=unet, before_call=on_call)
        images = decode(pipe, latents[:, -1])
        parts.append(Trajectories(chunk_prompts, list(chunk_seeds), timesteps, latents, log_probs, images, config))
        if on_batch is not None:
            on_batch(len(chunk_prompts))
    return Trajectories.cat(parts)


def recompute_log_probs(
    pipe: StableDiffusionPipeline,
    traj: Trajectories,
    unet: UNet2DConditionModel | None = None,
    batch_size: int = 16,
    steps: list[int] | None = None,
) -> torch.Tensor:
    """Per-step log-probs (B, len(steps)) of stored trajectories under ``unet`` (default: the pipeline's), without
    gradients; ``steps`` default to all (B, T)."""
    unet = unet or pipe.unet
    steps = list(range(len(traj.timesteps))) if steps is None else steps
    out = []
    for start in range(0, len(traj), batch_size):
        part = traj.select(list(range(start, min(start + batch_size, len(traj)))))
        text = encode_text(pipe, part.prompts)
        with torch.no_grad():
            per_step = [transition(pipe, unet, text, part.latents, part.timesteps, i, part.config)[1] for i in steps]
        out.append(torch.stack(per_step, dim=1).cpu() if per_step else torch.zeros(len(part), 0))
    return torch.cat(out)


def transition(
    pipe: StableDiffusionPipeline,
    unet: UNet2DConditionModel,
    text: TextConditioning,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    index: int | Sequence[int],
    config: SamplerConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Guided model output and log p(x_{t-1} | x_t, c) of step ``index`` of stored latents (B, T + 1, ...).

    ``index`` is one step for every row, or one step per row (ddpo-pytorch's per-sample timesteps): the UNet then
    runs once on the whole batch with each row's own timestep, and each row's DDIM step uses its own schedule.
    Differentiable with respect to ``unet`` (which may be wrapped for distributed training).
    """
    device = pipe.device
    if isinstance(index, int):
        x_t, x_prev = latents[:, index].to(device), latents[:, index + 1].to(device)
        t = int(timesteps[index])
        eps = guided_output(unet, x_t, t, text, config.guidance_scale)
        _, logp = ddim_step(pipe.scheduler, eps, t, prev_timestep_of(timesteps, index), x_t, config.eta, x_prev=x_prev)
        return eps, logp
    rows = torch.arange(len(latents))
    steps = torch.as_tensor(list(index), dtype=torch.long)
    x_t, x_prev = latents[rows, steps].to(device), latents[rows, steps + 1].to(device)
    eps = guided_output(unet, x_t, timesteps[steps], text, config.guidance_scale)
    logp = torch.empty(len(latents), device=eps.device)
    for j in torch.unique(steps).tolist():  # the step's schedule is a scalar per step: one group per distinct step
        at = (steps == j).nonzero().flatten().to(eps.device)
        t = int(timesteps[j])
        _, logp_j = ddim_step(
            pipe.scheduler, eps[at], t, prev_timestep_of(timesteps, j), x_t[at], config.eta, x_prev=x_prev[at]
        )
        logp = logp.index_put((at,), logp_j)
    return eps, logp
