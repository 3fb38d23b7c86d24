"""How much of the policy log-prob pass a shared forward could save: the UNet FLOPs before the first fused layer.

The fused target pass and the unmodified policy's pass on the same target latent agree, bit for bit, up to the first
fused self-attention layer (the mid block's, in execution order): everything before it — conv_in, the time embedding,
the down blocks, the mid block's first resnet — could be computed once for both. Taking that saving needs the UNet's
forward split at that layer (the residual stream would have to fork from one batch into two inside the UNet), which
attention processors cannot do and the project does not fork diffusers to do; this prints what it would be worth.
FLOPs are counted by ``torch.utils.flop_counter`` from shapes: SD 2.1-base's UNet is built on the ``meta`` device
(no weights, no compute), the embedded model runs one evaluation.

    python benchmarks/policy_pass.py
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

from dfusion_bench.fusion import FusionConfig, FusionPlan
from dfusion_bench.models.loading import EMBEDDED_MODEL
from dfusion_bench.models.tiny import build_tiny_pipeline


def flops_before_fusion(unet: UNet2DConditionModel, context_tokens: int, device: str) -> tuple[float, float, str]:
    """(GFLOP per image, share before the first fused layer to run, that layer) for one CFG evaluation."""
    plan = FusionPlan.resolve(unet, FusionConfig(), 20)
    side = unet.config.sample_size
    x = torch.zeros(2, unet.config.in_channels, side, side, device=device)
    context = torch.zeros(2, context_tokens, unet.config.cross_attention_dim, device=device)
    counter, first = FlopCounterMode(display=False), {}

    def mark(name: str):
        def hook(_module, _args, _kwargs) -> None:
            first.setdefault("at", (counter.get_total_flops(), name))

        return hook

    handles = [
        unet.get_submodule(name.removesuffix(".processor")).register_forward_pre_hook(mark(name), with_kwargs=True)
        for name in plan.fuse_layers
    ]
    with torch.no_grad(), counter:
        unet(x, torch.full((2,), 500, device=device), encoder_hidden_states=context)
    for h in handles:
        h.remove()
    total = counter.get_total_flops()
    return total / 2 / 1e9, first["at"][0] / total, first["at"][1]


def main() -> None:
    rows = [("SD 2.1-base UNet, 512 px", build_tiny_pipeline("sd21", device="meta"), "meta")]
    if (EMBEDDED_MODEL / "model_index.json").is_file():
        from dfusion_bench.models.loading import load_pipeline

        rows.append(("embedded model", load_pipeline(EMBEDDED_MODEL), "cpu"))
    for label, pipe, device in rows:
        gflop, share, layer = flops_before_fusion(pipe.unet, pipe.tokenizer.model_max_length, device)
        print(f"{label}: {gflop:.1f} GFLOP per image; {share:.1%} before the first fused layer ({layer})")


if __name__ == "__main__":
    main()
