"""Do fused targets pull the policy one way? Per-transition policy gradients of targets against ordinary samples.

For each triple of ``results/fuse/shapes-objects`` (7 targets and their 7 bases, on the shipped model), and for a few
denoising steps, this computes g = d log pi(x_{t-1} | x_t, c) / d W over the UNet's attention projections (the
weights LoRA adapts), with the policy before any training (the model the fuse folder was made with). It prints,
per step and group: the mean per-element log-prob, the mean gradient norm, the mean pairwise cosine between the
group's gradients, and the norm of the group's mean gradient over the mean norm (1: all alike, ~1/sqrt(n): random).
Usage: OMP_NUM_THREADS=1 python results/fuse-drift/measure.py > results/fuse-drift/measure.txt
"""

import itertools
from pathlib import Path

import torch

from dfusion_bench import fuse_output
from dfusion_bench.guidance import encode_text
from dfusion_bench.sampling import transition
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.settings import SamplerConfig

torch.manual_seed(0)
fuse = fuse_output.load(Path("results/fuse/shapes-objects"))
pipe = ModelChoice.check(None).load(torch.device("cpu"), torch.float32)
unet = pipe.unet
names = [n for n, _ in unet.named_parameters() if any(k in n for k in ("to_q", "to_k", "to_v", "to_out.0"))]
params = dict(unet.named_parameters())
for p in unet.parameters():
    p.requires_grad_(False)
for n in names:
    params[n].requires_grad_(True)
sampler = SamplerConfig()
bases = fuse.samples.select([t.base for t in fuse.triples])
groups = {"targets": fuse.targets, "bases": bases}


def gradient(traj, i: int, step: int) -> tuple[torch.Tensor, float]:
    one = traj.select([i])
    text = encode_text(pipe, one.prompts)
    _, logp = transition(pipe, unet, text, one.latents, one.timesteps, step, sampler)
    grads = torch.autograd.grad(logp.sum(), [params[n] for n in names])
    return torch.cat([g.flatten() for g in grads]), float(logp.detach())


print("step group     logp    |g|     mean cos  |mean g|/mean|g|")
for step in (5, 10, 17, 18, 19):
    for name, traj in groups.items():
        results = [gradient(traj, i, step) for i in range(len(traj))]
        grads = torch.stack([g for g, _ in results])
        norms = grads.norm(dim=1)
        unit = grads / norms[:, None]
        cos = [float(unit[a] @ unit[b]) for a, b in itertools.combinations(range(len(unit)), 2)]
        coherence = float(grads.mean(0).norm() / norms.mean())
        logp = sum(lp for _, lp in results) / len(results)
        print(f"{step:>4} {name:8} {logp:7.3f} {float(norms.mean()):8.3f} {sum(cos) / len(cos):9.3f} {coherence:10.3f}")
