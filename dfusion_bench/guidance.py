"""One guided denoising step of a Stable Diffusion UNet, shared by sampling, fusion and training.

Classifier-free guidance runs the unconditional and the conditional half in one batch, ``[uncond; cond]``, and
combines them as eps = eps_u + w (eps_c - eps_u). Everything that evaluates the policy goes through
:func:`guided_output`, so that sampling, log-probability recomputation and fusion agree bit for bit on a CPU.

Batch invariance. oneDNN and MKL choose their blocking, and so the order of their floating-point sums, from a call's
shape: on the CPUs measured, a 1x1 convolution gives other bits below 16 images, a 3x3 one for 1 image, and a matrix
product below 4 rows, so a sample's output depended on the batch it ran in (by up to 2.7e-5 on the embedded model).
Without gradients, :func:`guided_output` therefore evaluates a CPU batch in calls of exactly :data:`CPU_CALL_SAMPLES`
samples, the last one padded by repeating its last sample (the padding's outputs are dropped): every call has one
shape, and each image's output is the same, bit for bit, at any position of any batch. The text encoder runs once per
distinct prompt (one shape as well, and cheaper: a prompt's samples share it). Training forwards (with gradients) run
unchanged: their batches are the optimiser's, and a distributed wrapper must run once per backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

#: Samples per UNet call on a CPU (2 x this many images with CFG); batches of a multiple of it pad nothing. 4: on the
#: embedded model, one thread, calls of 4, 8 and 16 samples cost the same within the noise (10-15%), calls of 2 25%
#: more; the smallest of those wastes least on padding.
CPU_CALL_SAMPLES = 4

#: Called before each UNet call with the indices, in the batch, of the samples the call evaluates (padding left out):
#: they fill the call's first rows of each CFG half.
CallHook = Callable[[torch.Tensor], None]


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
    """Embeddings of ``prompts`` and of the empty prompt, with the pipeline's own text encoder, one distinct prompt
    per call (so a prompt's embedding does not depend on the batch it is asked for in)."""
    distinct = list(dict.fromkeys(prompts))
    encoded = [pipe.encode_prompt([p], pipe.device, 1, True, negative_prompt=None) for p in distinct]
    where = [distinct.index(p) for p in prompts]
    return TextConditioning(
        cond=torch.cat([encoded[k][0] for k in where]), uncond=torch.cat([encoded[k][1] for k in where])
    )


def call_groups(n: int, per_call: int | None) -> list[torch.Tensor]:
    """The batch indices each UNet call evaluates, for a batch of ``n``: consecutive runs of ``per_call``, the last
    padded to ``per_call`` by repeating its last index; one call of all ``n`` when ``per_call`` is None."""
    if per_call is None or n == 0:
        return [torch.arange(n)]
    groups = []
    for start in range(0, n, per_call):
        idx = torch.arange(start, min(start + per_call, n))
        groups.append(torch.cat([idx, idx[-1:].repeat(per_call - len(idx))]))
    return groups


def samples_per_call(device: torch.device) -> int | None:
    """Samples per UNet call on ``device``: :data:`CPU_CALL_SAMPLES` on a CPU without gradients, else the batch."""
    return CPU_CALL_SAMPLES if device.type == "cpu" and not torch.is_grad_enabled() else None


def guided_output(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    timestep: int | torch.Tensor,
    text: TextConditioning,
    guidance_scale: float,
    before_call: CallHook | None = None,
) -> torch.Tensor:
    """The guided model output for a batch of latents at one timestep (an int) or at one timestep per row (a
    (B,) tensor), in float32 (see the module's note on calls)."""
    dtype = next(unet.parameters()).dtype  # works for a distributed wrapper too
    n = latents.shape[0]
    outs = []
    for rows in call_groups(n, samples_per_call(latents.device)):
        real = rows[: min(len(rows), n - int(rows[0]))]  # the call's samples, padding left out
        if before_call is not None:
            before_call(real)
        whole = len(rows) == n and len(real) == n  # one call of the batch as it is: no copies
        part = latents if whole else latents[rows.to(latents.device)]
        context = text if whole else text.select(rows.to(text.cond.device))
        x = torch.cat([part, part]).to(dtype)
        if isinstance(timestep, torch.Tensor):
            t_rows = timestep if whole else timestep[rows.to(timestep.device)]
            t = torch.cat([t_rows, t_rows]).to(device=x.device, dtype=torch.long)
        else:
            t = torch.full((x.shape[0],), int(timestep), device=x.device, dtype=torch.long)
        out = unet(x, t, encoder_hidden_states=context.stacked().to(dtype)).sample.float()
        uncond, cond_out = out.chunk(2)
        outs.append((uncond + guidance_scale * (cond_out - uncond))[: len(real)])
    return outs[0] if len(outs) == 1 else torch.cat(outs)
