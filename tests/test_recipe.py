"""The trainer's compute options (issue: RL that visibly learns): per-sample timesteps, gradient accumulation,
group-relative advantages, prompt rotation, evaluation steps, and the per-epoch diagnostics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dfusion_bench.cli import main
from dfusion_bench.errors import UserError
from dfusion_bench.guidance import encode_text
from dfusion_bench.rl.advantages import group_advantages
from dfusion_bench.rl.config import DDPOSettings, OptimSettings, PGSettings, TrainConfig
from dfusion_bench.rl.methods import METHODS
from dfusion_bench.rl.trainer import epoch_prompts, step_plan
from dfusion_bench.sampling import sample, transition
from dfusion_bench.settings import SamplerConfig

TINY = ["--template", "paper-t1", "--prompts", "2", "--scorer", "compressibility", "--steps", "4"]


def _cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_per_row_steps_match_one_step_at_a_time(tiny_pipe) -> None:
    """transition() with one step per row gives each row the output and log-prob of its own step."""
    config = SamplerConfig(num_steps=4)
    traj = sample(tiny_pipe, ["a cat", "a dog", "a cat"], [1, 2, 3], config)
    text = encode_text(tiny_pipe, traj.prompts)
    steps = [0, 3, 1]
    with torch.no_grad():
        eps, logp = transition(tiny_pipe, tiny_pipe.unet, text, traj.latents, traj.timesteps, steps, config)
        for row, j in enumerate(steps):
            one = text.select([row])
            eps_j, logp_j = transition(tiny_pipe, tiny_pipe.unet, one, traj.latents[[row]], traj.timesteps, j, config)
            assert torch.allclose(eps[row], eps_j[0], atol=1e-5)
            assert logp[row].item() == pytest.approx(logp_j.item(), abs=1e-5)
            assert logp[row].item() == pytest.approx(traj.log_probs[row, j].item(), abs=1e-4)  # = sampling's


def test_step_plans() -> None:
    rng = np.random.default_rng(0)
    every = step_plan(rng, 3, 5, 5, "per-sample")
    assert (every == np.arange(5)).all()
    shared = step_plan(rng, 4, 10, 3, "shared")
    assert shared.shape == (4, 3) and (shared == shared[0]).all()
    own = step_plan(rng, 64, 10, 3, "per-sample")
    assert own.shape == (64, 3) and len({tuple(r) for r in own}) > 1
    assert all(len(set(r)) == 3 and list(r) == sorted(r) and r.max() < 10 for r in own)
    # the shared plan draws exactly what the trainer drew before per-sample plans existed
    assert step_plan(np.random.default_rng(7), 2, 10, 3, "shared")[0].tolist() == sorted(
        np.random.default_rng(7).choice(10, size=3, replace=False).tolist()
    )


def test_epoch_prompts_rotate() -> None:
    assert epoch_prompts(5, None, 0, 1) == [0, 1, 2, 3, 4]
    assert epoch_prompts(5, 9, 0, 1) == [0, 1, 2, 3, 4]
    draws = [epoch_prompts(40, 8, 3, e) for e in range(1, 6)]
    assert all(len(d) == 8 == len(set(d)) and d == sorted(d) for d in draws)
    assert len({tuple(d) for d in draws}) == 5  # a new draw each epoch
    assert epoch_prompts(40, 8, 3, 2) == draws[1]  # a pure function of seed and epoch
    assert epoch_prompts(40, 8, 4, 2) != draws[1]


def test_group_advantages() -> None:
    prompts = ["a", "a", "a", "b", "b", "c", "c"]
    scores = np.array([1.0, 0.0, 0.5, 0.3, 0.3, 1.0, 0.0])
    adv, informative = group_advantages(prompts, scores, "group")
    assert informative.tolist() == [True, True, True, False, False, True, True]
    assert adv[3] == adv[4] == 0.0
    group_a = scores[:3]
    assert adv[:3] == pytest.approx((group_a - group_a.mean()) / (group_a.std() + 1e-4))
    assert adv[5:] == pytest.approx([0.5 / (0.5 + 1e-4), -0.5 / (0.5 + 1e-4)])
    batch, _ = group_advantages(prompts, scores, "batch")
    assert batch[:3] == pytest.approx((group_a - group_a.mean()) / (scores.std() + 1e-4))


def test_new_options_are_validated_and_round_trip() -> None:
    config = TrainConfig(
        prompts_per_epoch=4,
        eval_steps=20,
        sampler=SamplerConfig(num_steps=10),
        optim=OptimSettings(micro_batch_size=4, timestep_sampling="per-sample"),
        ddpo=DDPOSettings(advantages="group", adv_std="batch", drop_flat_groups=False),
    )
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.eval_sampler.num_steps == 20 and config.sampler.num_steps == 10
    assert TrainConfig().eval_sampler == TrainConfig().sampler
    old = TrainConfig().to_dict()  # a config.json written before these options loads with their defaults
    del old["optim"]["micro_batch_size"], old["ddpo"]["advantages"], old["prompts_per_epoch"], old["eval_steps"]
    assert TrainConfig.from_dict(old) == TrainConfig()
    for bad, match in (
        (lambda: OptimSettings(timestep_sampling="each"), "--timestep-sampling"),
        (lambda: OptimSettings(micro_batch_size=0), "--micro-batch-size"),
        (lambda: DDPOSettings(advantages="grpo"), "--advantages"),
        (lambda: TrainConfig(prompts_per_epoch=0), "--prompts-per-epoch"),
        (lambda: TrainConfig(eval_steps=0), "--eval-steps"),
    ):
        with pytest.raises(UserError, match=match):
            bad()


def test_examples_per_optimizer_step() -> None:
    """pg takes one step on the whole epoch (DDPO's SF variant) unless asked for minibatches; the others always
    take --train-batch-size examples per step."""
    optim = OptimSettings(batch_size=4)
    assert METHODS["pg"]().examples_per_step(TrainConfig(method="pg", optim=optim), 16) == 16
    minibatches = TrainConfig(method="pg", optim=optim, pg=PGSettings(full_batch=False))
    assert METHODS["pg"]().examples_per_step(minibatches, 16) == 4
    assert TrainConfig.from_dict(minibatches.to_dict()) == minibatches
    for name in ("dpo", "ddpo"):
        assert METHODS[name]().examples_per_step(TrainConfig(method=name, optim=optim), 16) == 4


def _lora_after(tmp_path, tiny_dir, name: str, *extra: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = tmp_path / name
    args = ["train", "--method", "pg", "--model", str(tiny_dir), *TINY, "--samples-per-prompt", "4"]
    args += ["--epochs", "1", "--eval-samples-per-prompt", "1", "--eval-splits", "train", "--out", str(out), *extra]
    assert _cli(*args) == 0
    return load_file(str(out / "checkpoints/epoch-0001/lora.safetensors"))


def test_micro_batches_accumulate_to_the_same_step(tmp_path, tiny_dir) -> None:
    """The micro-batch is compute only: one optimizer step over 8 samples in micro-batches of 2 moves the adapters
    as one pass over all 8 does (up to float summation order)."""
    whole = _lora_after(tmp_path, tiny_dir, "whole", "--micro-batch-size", "8")
    parts = _lora_after(tmp_path, tiny_dir, "parts", "--micro-batch-size", "2")
    for name in whole:
        assert torch.allclose(whole[name], parts[name], atol=1e-6), name


def test_ddpo_logs_diagnostics_and_group_advantages(tmp_path, tiny_dir, monkeypatch) -> None:
    """Per epoch: approx KL and clip fraction (ddpo-pytorch's), reward mean and std, the zero-advantage share and
    what was trained; per-sample timesteps, rotation of 1 of 2 prompts and evaluation at more steps run end to end."""
    from dfusion_bench.rl import trainer

    evaluated_at = []

    def evaluate(*args, **kwargs):
        evaluated_at.append(args[4].num_steps)  # the sampler
        return real_evaluate(*args, **kwargs)

    real_evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", evaluate)
    out = tmp_path / "run"
    args = ["train", "--method", "ddpo", "--model", str(tiny_dir), *TINY, "--samples-per-prompt", "4"]
    args += ["--epochs", "2", "--eval-samples-per-prompt", "1", "--out", str(out), "--train-batch-size", "2"]
    args += ["--advantages", "group", "--timestep-sampling", "per-sample", "--timestep-fraction", "0.5"]
    args += ["--prompts-per-epoch", "1", "--eval-steps", "6", "--inner-epochs", "2", "--lr", "3e-2"]
    assert _cli(*args) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    for row in log:
        assert row["approx_kl"] >= 0 and 0 <= row["clipped"] <= 1 and row["loss"] == row["loss"]
        assert set(row["data"]) >= {"reward_mean", "reward_std", "zero_advantage_share", "examples_trained"}
        assert row["data"]["examples_trained"] == 4 * (1 - row["data"]["zero_advantage_share"])
        assert len(row["prompts"]) == 1
    assert any(row["clipped"] > 0 for row in log)  # a second inner epoch at this rate leaves the 1e-4 clip
    config = json.loads((out / "config.json").read_text())
    assert config["eval_steps"] == 6 and config["optim"]["timestep_sampling"] == "per-sample"
    assert evaluated_at == [6] * 6  # epochs 0, 1, 2 x train, test: at --eval-steps, not --steps
