"""One guided denoising step of a Stable Diffusion UNet, shared by sampling, fusion and training.

Classifier-free guidance runs the unconditional and the conditional half in one batch, ``[uncond; cond]``, and
combines them as eps = eps_u + w (eps_c - eps_u). Everything that evaluates the policy goes through
:func:`guided_output`, so that sampling, log-probability recomputation and training agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel


@dataclass
class TextConditioning:
    """Prompt embeddings for CFG: ``cond`` and ``uncond`` (the empty prompt), each (B, L, D)."""

    cond: torch.Tensor
    uncond: torch.Tensor

    def select(self, index: torch.Tensor | list[int]) -> TextConditioning:
        return TextConditioning(self.cond[index], self.uncond[index])

    def stacked(self) -> torch.Tensor:
        """``[uncond; cond]``, the layout of a CFG batch."""
        return torch.cat([self.uncond, self.cond])


@torch.no_grad()
def encode_text(pipe: StableDiffusionPipeline, prompts: list[str]) -> TextConditioning:
    """Embeddings of ``prompts`` and of the empty prompt, with the pipeline's own text encoder."""
    cond, uncond = pipe.encode_prompt(list(prompts), pipe.device, 1, True, negative_prompt=None)
    return TextConditioning(cond=cond, uncond=uncond)


def guided_output(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timestep: int | torch.Tensor,
    text: TextConditioning,
    guidance_scale: float,
) -> torch.Tensor:
    """The guided model output for a batch of latents at one timestep (an int) or at one timestep per row (a
    (B,) tensor), in float32."""
    dtype = next(unet.parameters()).dtype  # works for a distributed wrapper too
    x = torch.cat([latents, latents]).to(dtype)
    if isinstance(timestep, torch.Tensor):
        t = torch.cat([timestep, timestep]).to(device=x.device, dtype=torch.long)
    else:
        t = torch.full((x.shape[0],), int(timestep), device=x.device, dtype=torch.long)
    out = unet(x, t, encoder_hidden_states=text.stacked().to(dtype)).sample.float()
    uncond, cond = out.chunk(2)
    return uncond + guidance_scale * (cond - uncond)


class EvalCounter:
    """Counts UNet evaluations, one per image: a CFG pair (uncond + cond) counts once."""

    def __init__(self) -> None:
        self.images = 0

    @contextmanager
    def watch(self, unet: UNet2DConditionModel) -> Iterator[EvalCounter]:
        def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            sample = args[0] if args else kwargs["sample"]
            self.images += sample.shape[0] // 2

        handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield self
        finally:
            handle.remove()
