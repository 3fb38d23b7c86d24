"""Do fused targets pull the policy one way? Per-transition policy gradients of targets against ordinary samples.

For each triple of a fuse folder (``results/fuse/shapes-objects``: 7 targets and their 7 bases, on the shipped
model), and for a few denoising steps, this computes g = d log pi(x_{t-1} | x_t, c) / d W over the UNet's attention
projections (the weights LoRA adapts), with the policy before any training (the model the fuse folder was made
with). It prints, per step and group: the mean per-element log-prob, the mean gradient norm, the mean pairwise cosine
between the group's gradients, and the norm of the group's mean gradient over the mean norm (1: all alike,
~1/sqrt(n): random).

The fuse folder's trajectories (``*.safetensors``) are not committed: regenerate them first with the command in
results/fuse-drift/README.md. Usage (what made results/fuse-drift/measure.txt):
    OMP_NUM_THREADS=1 python -m experiments.fuse_drift.measure > results/fuse-drift/measure.txt
    python -m experiments.fuse_drift.measure --fuse DIR [--model PIPELINE] [--steps 5,10,17,18,19]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path

import torch

from dfusion_bench import fuse_output
from dfusion_bench.guidance import encode_text
from dfusion_bench.models.choice import ModelChoice
from dfusion_bench.sampling import transition
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.trajectories import Trajectories
from experiments import RESULTS

FUSE = RESULTS / "fuse" / "shapes-objects"
STEPS = (5, 10, 17, 18, 19)
#: The modules LoRA adapts (LoraSettings' default targets): the gradients are taken over their weights.
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
HEADER = "step group     logp    |g|     mean cos  |mean g|/mean|g|"


def attention_weights(unet) -> list[torch.Tensor]:
    """The attention projections' parameters, the only ones left requiring gradients."""
    for p in unet.parameters():
        p.requires_grad_(False)
    chosen = [p for n, p in unet.named_parameters() if any(k in n for k in PROJECTIONS)]
    for p in chosen:
        p.requires_grad_(True)
    return chosen


def gradient(
    pipe, weights, traj: Trajectories, i: int, step: int, sampler: SamplerConfig
) -> tuple[torch.Tensor, float]:
    """The flattened gradient of sample i's log-prob of its step-``step`` transition, and that log-prob."""
    one = traj.select([i])
    text = encode_text(pipe, one.prompts)
    _, logp = transition(pipe, pipe.unet, text, one.latents, one.timesteps, step, sampler)
    grads = torch.autograd.grad(logp.sum(), weights)
    return torch.cat([g.flatten() for g in grads]), float(logp.detach())


def coherence_row(step: int, name: str, results: list[tuple[torch.Tensor, float]]) -> str:
    """The printed row of one group at one step (see the module docstring)."""
    grads = torch.stack([g for g, _ in results])
    norms = grads.norm(dim=1)
    unit = grads / norms[:, None]
    cos = [float(unit[a] @ unit[b]) for a, b in itertools.combinations(range(len(unit)), 2)]
    coherence = float(grads.mean(0).norm() / norms.mean())
    logp = sum(lp for _, lp in results) / len(results)
    return f"{step:>4} {name:8} {logp:7.3f} {float(norms.mean()):8.3f} {sum(cos) / len(cos):9.3f} {coherence:10.3f}"


def measure(fuse: Path, model: Path | None = None, steps: tuple[int, ...] = STEPS) -> Iterator[str]:
    """The output's lines, as they are computed, for the fuse folder ``fuse`` with the policy ``model`` (None: the
    embedded one). The transitions are scored with the sampler the fuse folder's samples were drawn with."""
    torch.manual_seed(0)
    found = fuse_output.load(fuse)
    pipe = ModelChoice.check(model).load(torch.device("cpu"), torch.float32)
    weights = attention_weights(pipe.unet)
    bases = found.samples.select([t.base for t in found.triples])
    groups = {"targets": found.targets, "bases": bases}
    yield HEADER
    for step in steps:
        for name, traj in groups.items():
            results = [gradient(pipe, weights, traj, i, step, found.samples.config) for i in range(len(traj))]
            yield coherence_row(step, name, results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.fuse_drift.measure", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--fuse", type=Path, default=FUSE, help="a dfusion fuse folder with its trajectories")
    parser.add_argument("--model", type=Path, default=None, help="the pipeline it was made with (default: embedded)")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="comma-separated denoising steps")
    args = parser.parse_args(argv)
    for line in measure(args.fuse, args.model, tuple(int(s) for s in args.steps.split(","))):
        print(line, flush=True)


if __name__ == "__main__":
    main()
