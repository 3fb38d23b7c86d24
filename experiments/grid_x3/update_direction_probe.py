"""Which way does each method's first update move the policy's self-attention? A first-order companion of
attention_probe and fused_attention_probe.

One grid run's first epoch, rebuilt exactly (its configuration, seed and sampling seeds; the policy is still the
base model there, so every arm sees the same samples, and the fusion arms the same fused targets). For each arm, the
gradient of its loss over the whole epoch's data (every example, every denoising step the grid trains: all but the
last 3) at the initial LoRA weights, and the step Adam's first update takes along it, -c * sign(gradient), with the
same c for every arm. Then the attention measures of attention_probe (16x16 and 8x8 self-attention, denoising
steps 2-9, the base model's images with two shapes on the first 24 evaluation seeds of the grid's 8 prompts) after
that step minus before it, image by image (the same latents). At the initial weights ddpo's ratio is 1, so its
gradient is pg's up to a positive scale unless an advantage reaches ddpo's clip (±5); in the outputs here the two
arms' first steps move the attention alike, to the digits shown. They part only over later updates.

Usage (what made results/grid-x3/update_direction_probe_SUITE-sSEED.txt: objects with seeds 0 and 1, binding with
seed 1; the run's configuration is read from results/grid-x3/dpo-fusion-SUITE-sSEED/config.json unless --config):
    OMP_NUM_THREADS=1 python -m experiments.grid_x3.update_direction_probe shapes-objects 1 0.01
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from dfusion_bench.fusion.attention import recording
from dfusion_bench.fusion.layers import attention_layers
from dfusion_bench.guidance import encode_text
from dfusion_bench.pairs import build_pairs
from dfusion_bench.rl.advantages import PerPromptStats
from dfusion_bench.rl.config import TrainConfig
from dfusion_bench.rl.methods import METHODS, Policy
from dfusion_bench.rl.trainer import Trainer, trained_steps
from dfusion_bench.rollout import sample_and_score
from dfusion_bench.sampling import sample
from dfusion_bench.scorers.verifier import to_hwc_numpy
from dfusion_bench.seeding import eval_seeds, sample_seeds
from dfusion_bench.world.grammar import parse
from dfusion_bench.world.verify import verify
from experiments.grid_x3.measures import CONFIG, RUNS, difference, kept, new_values, record, unfused_pass

ARMS = [("dpo", False), ("dpo", True), ("ddpo", False), ("ddpo", True), ("pg", False), ("pg", True)]
BAND = "steps 2-9"
PER_PROMPT = 24


def epoch_gradient(policy: Policy, data) -> None:
    """Accumulate into the LoRA parameters' .grad the mean loss over every example and every trained step."""
    method, n_steps = METHODS[policy.config.method](), len(data.trajs[0].timesteps)
    eligible, _ = trained_steps(n_steps, policy.config.optim)
    n = len(data)
    for start in range(0, n, 4):
        rows = list(range(start, min(n, start + 4)))
        for j in range(eligible):
            loss = method.step_loss(policy, data, rows, j).loss * len(rows) / (n * eligible)
            loss.backward()


def attention_values(pipe, images) -> dict:
    """attention_probe's self-attention measures for the prepared images, at the UNet's current weights."""
    unet = pipe.unet
    layers = [la for la in attention_layers(unet) if la.kind == "self"]
    values = new_values()
    with recording(unet, [la.name for la in layers]) as store:
        for prompt, traj, keep, verdicts in images:
            idx = [i for i, _ in keep]
            text = encode_text(pipe, [prompt] * len(idx)).cond
            for j in range(2, 10):
                unfused_pass(unet, traj, idx, text, j)
                record(values, store, layers, unet.config.sample_size, keep, verdicts, [], BAND, prompt)
    return values


def probe_images(pipe, entries, per_prompt: int) -> list:
    """(prompt, trajectories, kept images, verdicts) of the base model on each prompt's fixed evaluation seeds."""
    images = []
    for entry, row in zip(entries, eval_seeds(len(entries), per_prompt), strict=True):
        traj = sample(pipe, [entry.prompt] * len(row), list(row), CONFIG, batch_size=len(row))
        spec = parse(entry.prompt)
        verdicts = [verify(spec, im) for im in to_hwc_numpy(traj.images)]
        images.append((entry.prompt, traj, kept(spec, verdicts), verdicts))
    return images


def probe(config: TrainConfig, c: float, title: str, per_prompt: int = PER_PROMPT) -> Iterator[str]:
    """The output's lines for the run of ``config`` (its first epoch), with step size ``c``."""
    with tempfile.TemporaryDirectory() as scratch:
        yield from _probe(Trainer(config, Path(scratch)), config, c, title, per_prompt)


def _probe(trainer: Trainer, config: TrainConfig, c: float, title: str, per_prompt: int) -> Iterator[str]:
    pipe, entries = trainer.pipe, trainer.train_entries
    torch.manual_seed(0)
    with torch.no_grad():
        images = probe_images(pipe, entries, per_prompt)
        before = attention_values(pipe, images)
        seeds = sample_seeds(config.seed, 1, len(entries), config.samples_per_prompt)
        samples = sample_and_score(pipe, trainer.scorer, entries, seeds, config.sampler, config.batch_size)
        pairs = build_pairs(pipe, trainer.scorer, samples, config.fusion_settings, fuse=True)
    yield f"{title}, epoch 1: {len(samples.trajectories)} samples, {len(pairs.triples)} triples, c = {c}"
    yield f"   {BAND}, after the step minus before, image by image (mean ± twice its standard error); 1->0, 1->1"
    params = trainer.params
    start = [p.detach().clone() for p in params]
    for method, fusion in ARMS:
        arm_config = dataclasses.replace(config, method=method, fusion=fusion)
        policy = Policy(pipe, trainer.model, trainer.unet, arm_config)
        data = METHODS[method]().prepare(
            policy, pairs, PerPromptStats(config.ddpo.stat_buffer, config.ddpo.stat_min_count)
        )
        for p in params:
            p.grad = None
        if len(data):
            trainer.unet.train()
            epoch_gradient(policy, data)
            trainer.unet.eval()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= c * torch.sign(p.grad)
        with torch.no_grad():
            after = attention_values(pipe, images)
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
        cells = []
        for side in sorted({k[1] for k in before}, reverse=True):  # 16x16 and 8x8 on the embedded model
            for name in ("1->0", "1->1"):
                a, b = after[(BAND, side, name, "all")], before[(BAND, side, name, "all")]
                cells.append(f"{side}x{side} {name} {difference(a, b)}")
        label = f"{method}{' + F' if fusion else ''} ({len(data)} examples)"
        yield f"   {label:22s} " + ", ".join(cells)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.grid_x3.update_direction_probe", description=__doc__.split("\n")[0]
    )
    parser.add_argument("suite", help="the grid's suite, e.g. shapes-objects")
    parser.add_argument("seed", type=int, help="the grid's seed of the run rebuilt")
    parser.add_argument("c", type=float, help="the size of every arm's sign step")
    parser.add_argument("--runs", type=Path, default=RUNS, help="folder of the grid's runs (default results/grid-x3)")
    parser.add_argument("--config", type=Path, default=None, help="the run's config.json (default: under --runs)")
    parser.add_argument("--per-prompt", type=int, default=PER_PROMPT, help="evaluation seeds per prompt (24)")
    args = parser.parse_args(argv)
    path = args.config or args.runs / f"dpo-fusion-{args.suite}-s{args.seed}" / "config.json"
    title = f"{args.suite}, grid seed {args.seed}"
    for line in probe(TrainConfig.load(path), args.c, title, args.per_prompt):
        print(line, flush=True)


if __name__ == "__main__":
    main()
