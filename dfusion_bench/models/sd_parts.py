"""Stable Diffusion's fixed parts, shared by every pipeline the toolkit builds (tiny test models, the embedded one).

SD 1.x/2.x train with 1000 scaled-linear betas from 0.00085 to 0.012 and sample with DDIM (no sample clipping,
final alpha from the schedule, timesteps offset by one). A pipeline is assembled without a safety checker.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, StableDiffusionPipeline

#: The training noise schedule (also what a DDPM noise-adding scheduler takes).
NOISE_SCHEDULE: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
)
#: DDIM sampling settings of SD's released scheduler configs.
DDIM_SETTINGS: dict[str, Any] = dict(clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def make_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**NOISE_SCHEDULE, **DDIM_SETTINGS)


def assemble(vae, text_encoder, tokenizer, unet) -> StableDiffusionPipeline:
    """A standard diffusers pipeline from its parts, with SD's DDIM scheduler and no safety checker."""
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
