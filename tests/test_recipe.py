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


@pytest.mark.slow
def test_micro_batches_accumulate_to_the_same_step(tmp_path, tiny_dir) -> None:
    """The micro-batch is compute only: one optimizer step over 8 samples in micro-batches of 2 moves the adapters
    as one pass over all 8 does (up to float summation order)."""
    whole = _lora_after(tmp_path, tiny_dir, "whole", "--micro-batch-size", "8")
    parts = _lora_after(tmp_path, tiny_dir, "parts", "--micro-batch-size", "2")
    # Adam's first step is lr * g / (|g| + eps): where a gradient is within a few eps (1e-8) of zero, summation order
    # moves it by a visible part of lr (measured: one lora_B element of 128 with |g| ~ 7e-8 differs by 2.5e-6, 0.85%
    # of lr 3e-4, after a change of the sampled data at float-noise level; the other elements by < 3e-7).
    for name in whole:
        assert torch.allclose(whole[name], parts[name], atol=1e-5), name


@pytest.mark.slow
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


# ---- options no other test exercises ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moved_policy():
    """A tiny LoRA policy whose adapters were moved away from the base model, with one epoch's pairs."""
    from dfusion_bench.fusion import FusionConfig
    from dfusion_bench.models.tiny import build_tiny_pipeline
    from dfusion_bench.pairs import build_pairs
    from dfusion_bench.rl.config import LoraSettings
    from dfusion_bench.rl.lora import add_lora
    from dfusion_bench.rollout import sample_and_score
    from dfusion_bench.scorers import get_scorer
    from dfusion_bench.suites import PromptEntry

    pipe = build_tiny_pipeline("tiny", seed=1)
    params = add_lora(pipe.unet, LoraSettings(), seed=0)
    entries = [PromptEntry("a cat eating a sandwich", ("cat", "sandwich"), (None, None))]
    scorer = get_scorer("compressibility")
    samples = sample_and_score(pipe, scorer, entries, [list(range(1, 9))], SamplerConfig(num_steps=3))
    pairs = build_pairs(pipe, scorer, samples, FusionConfig(skip_first_steps=1), fuse=False)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    return pipe, pairs


def test_dpok_kl_term_runs_and_adds_to_the_loss(moved_policy) -> None:
    from dfusion_bench.rl.advantages import PerPromptStats
    from dfusion_bench.rl.methods import Policy

    pipe, pairs = moved_policy
    losses = {}
    for w in (0.0, 0.5):
        config = TrainConfig(method="pg", sampler=SamplerConfig(num_steps=3), pg=PGSettings(kl_weight=w))
        policy = Policy(pipe, pipe.unet, pipe.unet, config)
        data = METHODS["pg"]().prepare(policy, pairs, PerPromptStats())
        with torch.no_grad():
            losses[w] = METHODS["pg"]().step_loss(policy, data, list(range(8)), 1)
    kl = losses[0.5].diagnostics["kl_surrogate"]
    assert (kl > 0).all()  # the adapters moved, so eps differs from the reference policy's
    assert losses[0.5].loss.item() == pytest.approx(losses[0.0].loss.item() + 0.5 * kl.mean().item(), rel=1e-5)


def test_ppo_clips_when_the_ratio_leaves_its_range(moved_policy) -> None:
    """With moved adapters the ratio to the sampling policy is not 1; rows outside 1 +- clip_range are flagged and
    their loss is the clipped surrogate's, max(-A r, -A clip(r))."""
    from dfusion_bench.rl.advantages import PerPromptStats
    from dfusion_bench.rl.methods import Policy
    from dfusion_bench.sampling import transition

    pipe, pairs = moved_policy
    config = TrainConfig(method="ddpo", sampler=SamplerConfig(num_steps=3), ddpo=DDPOSettings(clip_range=1e-4))
    policy = Policy(pipe, pipe.unet, pipe.unet, config)
    data = METHODS["ddpo"]().prepare(policy, pairs, PerPromptStats(min_count=100))
    rows = list(range(8))
    with torch.no_grad():
        out = METHODS["ddpo"]().step_loss(policy, data, rows, 1)
        text = data.texts[0].select(torch.tensor(rows))
        _, logp = transition(pipe, pipe.unet, text, data.trajs[0].latents, data.trajs[0].timesteps, 1, config.sampler)
    ratio = torch.exp(logp - data.old_log_probs[:, 1])
    assert (ratio - 1).abs().max() > 1e-4
    assert out.diagnostics["clipped"].tolist() == ((ratio - 1).abs() > 1e-4).float().tolist()
    adv = data.advantages.clamp(-5, 5)
    expected = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - 1e-4, 1 + 1e-4)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() != pytest.approx((-adv * ratio).mean().item(), rel=1e-7)  # clipping changed it


def test_per_prompt_statistics_buffer() -> None:
    """Batch statistics until a prompt has min_count scores, then its own over the last `buffer` scores."""
    from dfusion_bench.rl.advantages import PerPromptStats

    stats = PerPromptStats(buffer=4, min_count=3)
    first = stats.advantages(["a", "a", "b", "b"], np.array([1.0, 0.0, 0.5, 0.5]))
    batch = np.array([1.0, 0.0, 0.5, 0.5])
    assert first == pytest.approx((batch - batch.mean()) / (batch.std() + 1e-6))
    second = stats.advantages(["a", "a"], np.array([1.0, 1.0]))  # "a" now holds 1, 0, 1, 1
    held = np.array([1.0, 0.0, 1.0, 1.0])
    assert second == pytest.approx((1.0 - held.mean()) / (held.std() + 1e-6))
    stats.advantages(["a"], np.array([0.0]))  # the buffer keeps the last 4: 0, 1, 1, 0
    restored = PerPromptStats()
    restored.load_state_dict(stats.state_dict())
    assert list(restored._scores["a"]) == [0.0, 1.0, 1.0, 0.0] and restored.buffer == 4 and restored.min_count == 3


def test_inner_epochs_and_timestep_fraction_set_the_work_of_an_epoch(tmp_path, tiny_dir, monkeypatch) -> None:
    """ddpo on 8 samples, batches of 4, 2 inner epochs: 4 optimizer steps; a fraction 0.5 of 4 steps: 2 denoising
    steps per example and minibatch."""
    from dfusion_bench.rl import methods

    calls, steps = [], []
    real_loss = methods.DDPO.step_loss

    def counting_loss(self, policy, data, idx, step):
        calls.append((tuple(idx), step))
        return real_loss(self, policy, data, idx, step)

    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(methods.DDPO, "step_loss", counting_loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or real_step(self, *a, **k))
    args = ["train", "--method", "ddpo", "--model", str(tiny_dir), *TINY, "--samples-per-prompt", "4"]
    args += ["--epochs", "1", "--eval-samples-per-prompt", "1", "--eval-splits", "train", "--out", str(tmp_path / "r")]
    args += ["--train-batch-size", "4", "--inner-epochs", "2", "--timestep-fraction", "0.5"]
    assert _cli(*args) == 0
    assert len(steps) == 4
    assert len(calls) == 4 * 2 and all(len(rows) == 4 for rows, _ in calls)


@pytest.mark.slow
def test_eval_of_a_runs_epoch_reproduces_that_epochs_evaluation(tmp_path, tiny_dir) -> None:
    """`eval --run --epoch E` with the run's settings samples the same images as the run's own evaluation at E."""
    run = tmp_path / "run"
    args = ["train", "--method", "pg", "--model", str(tiny_dir), *TINY, "--samples-per-prompt", "4", "--lr", "3e-2"]
    assert _cli(*args, "--epochs", "1", "--eval-samples-per-prompt", "2", "--out", str(run)) == 0
    metrics = {(r["epoch"], r["split"]): r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    for epoch in (0, 1):
        out = tmp_path / f"e{epoch}"
        code = _cli("eval", "--run", str(run), "--epoch", str(epoch), "--split", "test", "--prompts", "2",
                    "--samples-per-prompt", "2", "--out", str(out))  # fmt: skip
        assert code == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["source"]["epoch"] == epoch
        assert summary["scorers"]["compressibility"]["mean_score"] == pytest.approx(
            metrics[(epoch, "test")]["mean_score"]
        )
    assert metrics[(0, "test")]["mean_score"] != metrics[(1, "test")]["mean_score"]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_on_cpu(tmp_path, tiny_dir, dtype) -> None:
    """--dtype bf16 / fp16 on the CPU: the pipeline runs in that dtype and scores stay finite."""
    out = tmp_path / dtype
    code = _cli("eval", "--model", str(tiny_dir), *TINY, "--split", "train", "--samples-per-prompt", "2",
                "--dtype", dtype, "--device", "cpu", "--out", str(out))  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(summary["scorers"]["compressibility"]["mean_score"])
