"""Which way does each method's first update move the policy's self-attention? A first-order companion of
attention_probe.py and fused_attention_probe.py.

One grid run's first epoch, rebuilt exactly (its configuration, seed and sampling seeds; the policy is still the
base model there, so every arm sees the same samples, and the fusion arms the same fused targets). For each arm, the
gradient of its loss over the whole epoch's data (every example, every denoising step the grid trains: all but the
last 3) at the initial LoRA weights, and the step Adam's first update takes along it, -c * sign(gradient), with the
same c for every arm. Then the attention measures of attention_probe.py (16x16 and 8x8 self-attention, denoising
steps 2-9, the base model's images with two shapes on the first 24 evaluation seeds of the grid's 8 prompts) after
that step minus before it, image by image (the same latents). At the initial weights ddpo's ratio is 1, so its
gradient is pg's up to a positive scale unless an advantage reaches ddpo's clip (±5); in the outputs here the two
arms' first steps move the attention alike, to the digits shown. They part only over later updates.

Usage (what made update_direction_probe_SUITE-sSEED.txt here: objects with seeds 0 and 1, binding with seed 1):
    OMP_NUM_THREADS=1 python results/grid-x3/update_direction_probe.py shapes-objects 1 0.01
"""

import dataclasses
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from attention_probe import CONFIG, difference, kept, new_values, record, recorders, unfused_pass  # noqa: E402

from dfusion_bench.guidance import encode_text  # noqa: E402
from dfusion_bench.fusion.layers import attention_layers  # noqa: E402
from dfusion_bench.pairs import build_pairs  # noqa: E402
from dfusion_bench.rollout import sample_and_score  # noqa: E402
from dfusion_bench.rl.advantages import PerPromptStats  # noqa: E402
from dfusion_bench.rl.config import TrainConfig  # noqa: E402
from dfusion_bench.rl.methods import METHODS, Policy  # noqa: E402
from dfusion_bench.rl.trainer import Trainer, trained_steps  # noqa: E402
from dfusion_bench.sampling import sample  # noqa: E402
from dfusion_bench.scorers.verifier import to_hwc_numpy  # noqa: E402
from dfusion_bench.seeding import eval_seeds, sample_seeds  # noqa: E402
from dfusion_bench.world.grammar import parse  # noqa: E402
from dfusion_bench.world.verify import verify  # noqa: E402

ARMS = [("dpo", False), ("dpo", True), ("ddpo", False), ("ddpo", True), ("pg", False), ("pg", True)]
BAND = "steps 2-9"


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
    """attention_probe.py's self-attention measures for the prepared images, at the UNet's current weights."""
    unet = pipe.unet
    layers = [la for la in attention_layers(unet) if la.kind == "self"]
    stock, store, values = dict(unet.attn_processors), {}, new_values()
    unet.set_attn_processor(recorders(stock, store, layers))
    for prompt, traj, keep, verdicts in images:
        idx = [i for i, _ in keep]
        text = encode_text(pipe, [prompt] * len(idx)).cond
        for j in range(2, 10):
            unfused_pass(unet, traj, idx, text, j)
            record(values, store, layers, unet.config.sample_size, keep, verdicts, [], BAND, prompt)
    unet.set_attn_processor(dict(stock))
    return values


def main(argv: list[str]) -> None:
    suite, seed, c = argv[0], int(argv[1]), float(argv[2])
    config = TrainConfig.load(Path(f"results/grid-x3/dpo-fusion-{suite}-s{seed}/config.json"))
    trainer = Trainer(config, Path(tempfile.mkdtemp()))
    pipe, entries = trainer.pipe, trainer.train_entries
    torch.manual_seed(0)
    images = []
    with torch.no_grad():
        for entry, row in zip(entries, eval_seeds(len(entries), 24), strict=True):
            traj = sample(pipe, [entry.prompt] * len(row), list(row), CONFIG, batch_size=len(row))
            spec = parse(entry.prompt)
            verdicts = [verify(spec, im) for im in to_hwc_numpy(traj.images)]
            images.append((entry.prompt, traj, kept(spec, verdicts), verdicts))
        before = attention_values(pipe, images)
        seeds = sample_seeds(config.seed, 1, len(entries), config.samples_per_prompt)
        samples = sample_and_score(pipe, trainer.scorer, entries, seeds, config.sampler, config.batch_size)
        pairs = build_pairs(pipe, trainer.scorer, samples, config.fusion_settings, fuse=True)
    print(
        f"{suite}, grid seed {seed}, epoch 1: {len(samples.trajectories)} samples, {len(pairs.triples)} triples, "
        f"c = {c}"
    )
    print(f"   {BAND}, after the step minus before, image by image (mean ± twice its standard error); 1->0, 1->1")
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
        for side in (16, 8):
            for name in ("1->0", "1->1"):
                a, b = after[(BAND, side, name, "all")], before[(BAND, side, name, "all")]
                cells.append(f"{side}x{side} {name} {difference(a, b)}")
        label = f"{method}{' + F' if fusion else ''} ({len(data)} examples)"
        print(f"   {label:22s} " + ", ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
