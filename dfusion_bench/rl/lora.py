"""LoRA adapters on the UNet through peft, their exact save/load, and the frozen reference policy.

The reference policy that DPO's ratio and DPOK's KL need is the same UNet with its adapters disabled — no second copy
of the weights in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from safetensors.torch import load_file

from dfusion_bench import atomic
from dfusion_bench.errors import UserError
from dfusion_bench.rl.config import LoraSettings


def add_lora(unet: UNet2DConditionModel, settings: LoraSettings, seed: int) -> list[torch.nn.Parameter]:
    """Freeze the UNet and add trainable LoRA adapters (B = 0 at start, so the policy starts as the base model)."""
    names = [name for name, _ in unet.named_modules()]
    missing = [t for t in settings.targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UserError(
            f"--lora-targets: no module named {missing[0]!r} in this UNet; its attention projections are "
            "to_q, to_k, to_v and to_out.0"
        )
    unet.requires_grad_(False)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        init_lora_weights="gaussian",
        target_modules=list(settings.targets),
        lora_dropout=0.0,
    )
    problem = f"no LoRA target among {settings.targets} in this UNet; check --lora-targets"
    try:
        unet.add_adapter(config)
    except ValueError:  # peft refuses targets it cannot find (NoMatchingPeftModuleError) before we could look
        raise UserError(problem) from None
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise UserError(problem)
    for p in params:  # train adapters in fp32 even when the UNet runs in half precision
        p.data = p.data.float()
    return params


def lora_state(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) parameters by name, on CPU."""
    return {name: p.detach().cpu().clone() for name, p in unet.named_parameters() if p.requires_grad}


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of LoRA weights by name and value (float32 bytes): equal weights, equal digest, on any process."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].float().numpy().tobytes())
    return h.hexdigest()


def save_lora(unet: UNet2DConditionModel, path: Path) -> Path:
    tensors = {k: v.contiguous() for k, v in lora_state(unet).items()}
    return atomic.write_safetensors(path, tensors)


def load_lora(unet: UNet2DConditionModel, path: Path) -> None:
    """Load LoRA weights saved by :func:`save_lora` into a UNet that already has the same adapters."""
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # missing or corrupt file
        raise UserError(f"{path}: cannot read LoRA weights ({exc}); the checkpoint is damaged") from None
    params = dict(unet.named_parameters())
    missing = [k for k in tensors if k not in params] + [
        k for k, p in params.items() if p.requires_grad and k not in tensors
    ]
    if missing:
        raise UserError(f"{path}: LoRA weights do not fit this model/configuration (e.g. {missing[0]})")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


@contextmanager
def reference_policy(unet: UNet2DConditionModel) -> Iterator[UNet2DConditionModel]:
    """The frozen pretrained model: the same UNet with its adapters disabled for the duration of the block."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()
