"""Where a command computes: the device (accelerate's choice unless given) and the weights' dtype."""

from __future__ import annotations

import torch

from dfusion_bench.errors import UserError


def use_cpu(device: str | None) -> bool:
    """Whether accelerate should run on CPU: asked for, or no GPU (then several processes talk over gloo)."""
    return device == "cpu" or (device is None and not torch.cuda.is_available())


def pick_device(device: str | None) -> torch.device:
    """The requested device, or accelerate's choice for this process (its GPU under ``accelerate launch``)."""
    if device is None:
        from accelerate import PartialState

        return PartialState(cpu=use_cpu(device)).device
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return dev


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    """fp16 on GPUs (the paper's setting), fp32 on CPU, unless asked otherwise."""
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in names:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]
