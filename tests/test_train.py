"""Training: the methods' losses at the start, a full CLI run, resume after SIGKILL, and two-process sync."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dfusion_bench.cli import main
from dfusion_bench.errors import UserError
from dfusion_bench.fusion import FusionConfig
from dfusion_bench.pairs import build_pairs
from dfusion_bench.rl.advantages import PerPromptStats
from dfusion_bench.rl.config import EMBEDDED_LR, LITERATURE_LR, DPOSettings, LoraSettings, OptimSettings, TrainConfig
from dfusion_bench.rl.lora import add_lora, reference_policy
from dfusion_bench.rl.methods import METHODS, Policy, winning_pairs
from dfusion_bench.rl.trainer import trained_steps
from dfusion_bench.rollout import sample_and_score
from dfusion_bench.runinfo import model_digest
from dfusion_bench.scorers import get_scorer
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import PromptEntry

TINY_RUN = ["--template", "paper-t1", "--prompts", "2", "--scorer", "compressibility", "--steps", "4"]


def _cli(*args: str) -> int:
    try:
        main(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture(scope="module")
def lora_pipe():
    from dfusion_bench.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny", seed=1)
    add_lora(pipe.unet, LoraSettings(), seed=0)
    return pipe


@pytest.fixture(scope="module")
def pairs(lora_pipe):
    entries = [PromptEntry("a cat eating a sandwich", ("cat", "sandwich"), (None, None))]
    scorer = get_scorer("compressibility")
    samples = sample_and_score(lora_pipe, scorer, entries, [[1, 2, 3, 4, 5, 6, 7, 8]], SamplerConfig(num_steps=3))
    return build_pairs(lora_pipe, scorer, samples, FusionConfig(skip_first_steps=1), fuse=True)


@pytest.mark.parametrize("fusion", [False, True])
def test_losses_at_the_start(lora_pipe, pairs, fusion: bool) -> None:
    """Before any update the policy is the reference: DPO's loss is log 2, PPO's ratio is 1, the KL term is 0."""
    for name in ("dpo", "ddpo", "pg"):
        dpo = DPOSettings(require_win=False)  # every triple (the papers' rule)
        config = TrainConfig(method=name, fusion=fusion, sampler=SamplerConfig(num_steps=3), dpo=dpo)
        policy = Policy(lora_pipe, lora_pipe.unet, lora_pipe.unet, config)
        method = METHODS[name]()
        data = method.prepare(policy, pairs, PerPromptStats(min_count=100))
        assert len(data) == (len(pairs.triples) if name == "dpo" else 8 + (len(pairs.triples) if fusion else 0))
        with torch.no_grad():
            loss = method.step_loss(policy, data, list(range(len(data))), 1).loss
        if name == "dpo":
            assert loss.item() == pytest.approx(np.log(2), abs=1e-5)
            winners = data.trajs[0]
            expected = (
                pairs.fusion.targets
                if fusion
                else pairs.samples.trajectories.select([t.reference for t in pairs.triples])
            )
            assert torch.equal(winners.latents, expected.latents)
        elif name == "ddpo":
            assert loss.item() == pytest.approx(-data.advantages.mean().item(), abs=1e-4)  # ratio 1
        else:  # REINFORCE on the stored (= current) log-probs; the KL term is 0
            expected = -(data.advantages * data.old_log_probs[:, 1]).mean().item()
            assert loss.item() == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("fusion", [False, True])
def test_dpo_trains_only_pairs_whose_winner_wins(lora_pipe, pairs, fusion: bool) -> None:
    scores = pairs.samples.scores.scores
    winner = pairs.target_scores.scores if fusion else scores[[t.reference for t in pairs.triples]]
    expected = [i for i, t in enumerate(pairs.triples) if winner[i] > scores[t.base]]
    config = TrainConfig(method="dpo", fusion=fusion, sampler=SamplerConfig(num_steps=3))
    assert config.dpo.require_win and winning_pairs(pairs, config) == expected
    policy = Policy(lora_pipe, lora_pipe.unet, lora_pipe.unet, config)
    data = METHODS["dpo"]().prepare(policy, pairs, PerPromptStats())
    assert len(data) == len(expected)
    losers = pairs.samples.trajectories.select([pairs.triples[i].base for i in expected])
    assert torch.equal(data.trajs[1].latents, losers.latents)
    # a tie or a target that loses is never trained as a preference
    tie = scores.copy()
    tie[pairs.triples[0].base] = winner[0]
    samples = dataclasses.replace(pairs.samples, scores=dataclasses.replace(pairs.samples.scores, scores=tie))
    assert 0 not in winning_pairs(dataclasses.replace(pairs, samples=samples), config)
    all_pairs = TrainConfig(method="dpo", fusion=fusion, dpo=DPOSettings(require_win=False))
    assert winning_pairs(pairs, all_pairs) == list(range(len(pairs.triples)))


@pytest.mark.parametrize("method", ["dpo", "ddpo", "pg"])
def test_default_learning_rate_depends_on_the_model(method: str, world_dir) -> None:
    """The embedded model's calibrated rate without --model or with a world pipeline, the literature's with another
    model; an explicit rate wins."""
    assert TrainConfig(method=method).lr == EMBEDDED_LR[method]
    assert TrainConfig(method=method, model=str(world_dir)).lr == EMBEDDED_LR[method]
    assert TrainConfig(method=method, model="some/sd-folder").lr == LITERATURE_LR[method]
    assert TrainConfig(method=method, optim=OptimSettings(lr=0.5)).lr == 0.5
    assert EMBEDDED_LR[method] != LITERATURE_LR[method]


def test_eval_splits_are_validated_and_round_trip() -> None:
    assert TrainConfig(eval_splits=("train",)).eval_splits == ("train",)
    assert TrainConfig.from_dict(TrainConfig(eval_splits=("test",)).to_dict()).eval_splits == ("test",)
    for bad in ((), ("train", "val")):
        with pytest.raises(UserError, match="--eval-splits"):
            TrainConfig(eval_splits=bad)


def test_excluded_last_steps_are_never_trained() -> None:
    """--exclude-last-steps shrinks the steps an update draws from; the fraction applies to what is left, and an
    old config.json (without the field) loads as 0, i.e. every step eligible, as before."""
    assert trained_steps(20, OptimSettings(timestep_fraction=0.5)) == (20, 10)
    assert trained_steps(20, OptimSettings(timestep_fraction=0.5, exclude_last_steps=3)) == (17, 8)
    assert trained_steps(4, OptimSettings(timestep_fraction=0.1, exclude_last_steps=3)) == (1, 1)
    old = TrainConfig().to_dict()
    del old["optim"]["exclude_last_steps"]
    assert TrainConfig.from_dict(old).optim.exclude_last_steps == 0
    for bad in (-1, 20):
        with pytest.raises(UserError, match="--exclude-last-steps"):
            TrainConfig(optim=OptimSettings(exclude_last_steps=bad))


def test_reference_policy_is_the_base_model(lora_pipe) -> None:
    unet = lora_pipe.unet
    params = [p for p in unet.parameters() if p.requires_grad]
    x = torch.randn(2, 4, 16, 16)
    emb = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        before = unet(x, 10, encoder_hidden_states=emb).sample
        saved = [p.clone() for p in params]
        for p in params:
            p.add_(0.5)
        changed = unet(x, 10, encoder_hidden_states=emb).sample
        with reference_policy(unet):
            ref = unet(x, 10, encoder_hidden_states=emb).sample
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    assert not torch.allclose(before, changed)
    assert torch.allclose(before, ref, atol=1e-6)


def test_train_cli_end_to_end(tmp_path, tiny_dir) -> None:
    out = tmp_path / "run"
    code = _cli(
        "train",
        "--method",
        "dpo",
        "--fusion",
        "--model",
        str(tiny_dir),
        *TINY_RUN,
        "--samples-per-prompt",
        "4",
        "--epochs",
        "2",
        "--eval-samples-per-prompt",
        "2",
        "--lr",
        "1e-3",
        "--out",
        str(out),
    )
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in rows] == [(e, s) for e in range(3) for s in ("train", "test")]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and all(r["n_pairs"] > 0 for r in log)
    assert all(r["target_beats_base"] is not None for r in log)
    assert all(r["pair_fact_rates"] is None for r in log)  # logged each epoch; compressibility checks no facts
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["method"] == "dpo" and run["config"]["fusion"] is True and "torch" in run["versions"]
    assert run["model_digest"]["weights"] == model_digest(tiny_dir)  # the result names the weights that made it
    first = (out / "checkpoints/epoch-0000/lora.safetensors").read_bytes()
    last = (out / "checkpoints/epoch-0002/lora.safetensors").read_bytes()
    assert first != last  # the update changed the adapters
    assert (out / "eval/epoch-0002/test.png").is_file() and (out / "eval/epoch-0002/train.csv").is_file()
    assert _cli("train", "--method", "dpo", "--model", str(tiny_dir), *TINY_RUN, "--out", str(out)) == 2  # not empty


def _train_cmd(tiny_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "dfusion_bench",
        "train",
        "--method",
        "ddpo",
        "--fusion",
        "--model",
        str(tiny_dir),
        *TINY_RUN,
        "--samples-per-prompt",
        "8",
        "--epochs",
        "2",
        "--eval-samples-per-prompt",
        "1",
        "--train-batch-size",
        "4",
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical(tmp_path, tiny_dir) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, broken = tmp_path / "full", tmp_path / "broken"
    subprocess.run(_train_cmd(tiny_dir, full), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train_cmd(tiny_dir, broken), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = broken / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (pointer.is_file() and json.loads(pointer.read_text())["epoch"] == 1):
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(pointer.read_text())["epoch"] == 1, "the run finished before it could be killed mid-epoch"
    subprocess.run([*_train_cmd(tiny_dir, broken), "--resume"], check=True, env=env, capture_output=True)
    for epoch in (1, 2):
        name = f"checkpoints/epoch-{epoch:04d}/lora.safetensors"
        assert (broken / name).read_bytes() == (full / name).read_bytes()

    def metrics(run: Path) -> list[dict]:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in rows]  # wall time differs, nothing else

    assert metrics(broken) == metrics(full) and len(metrics(full)) == 6


@pytest.mark.slow
def test_resume_refuses_a_corrupt_checkpoint(tmp_path, tiny_dir) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--method",
        "pg",
        "--model",
        str(tiny_dir),
        *TINY_RUN,
        "--samples-per-prompt",
        "4",
        "--epochs",
        "1",
        "--eval-samples-per-prompt",
        "1",
        "--out",
        str(out),
    ]
    assert _cli(*args) == 0
    (out / "checkpoints/epoch-0001/lora.safetensors").write_bytes(b"not a safetensors file")
    assert _cli(*args, "--epochs", "2", "--resume") == 2
    shutil.rmtree(out / "checkpoints")
    assert _cli(*args, "--resume") == 2


@pytest.mark.slow
def test_resume_refuses_changed_options(capsys, tmp_path, tiny_dir) -> None:
    out = tmp_path / "run"
    args = ["train", "--method", "dpo", "--model", str(tiny_dir), *TINY_RUN, "--samples-per-prompt", "4",
            "--epochs", "1", "--eval-samples-per-prompt", "1", "--out", str(out)]  # fmt: skip
    assert _cli(*args) == 0
    capsys.readouterr()
    assert _cli(*args, "--epochs", "2", "--beta", "0.5", "--resume") == 2  # a nested option
    assert "--beta differs" in capsys.readouterr().err
    assert _cli(*args, "--epochs", "2", "--beta", "0.1", "--resume") == 0  # the same value is fine
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    # options left out take the run's values, not the defaults (which differ here: template, prompts, scorer, ...)
    assert _cli("train", "--method", "dpo", "--out", str(out), "--resume", "--epochs", "3") == 0
    assert _cli("train", "--method", "dpo", "--out", str(out), "--resume") == 0  # no --epochs: the run's 3
    config = json.loads((out / "config.json").read_text())
    assert config["epochs"] == 3 and config["template"] == "paper-t1" and config["prompts"] == 2


@pytest.mark.slow
def test_two_processes_keep_lora_identical_and_match_one_process(tmp_path, tiny_dir) -> None:
    """ddpo-pytorch #10: unsynchronised LoRA across GPUs. Two gloo processes must hold identical weights, and an odd
    minibatch (3 pairs over 2 processes) must give the same update as one process: no example is dropped."""
    from safetensors.torch import load_file

    args = ["train", "--method", "dpo", "--model", str(tiny_dir), *TINY_RUN, "--samples-per-prompt", "8",
            "--epochs", "1", "--eval-samples-per-prompt", "1", "--lr", "1e-2", "--train-batch-size", "3",
            "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # torchrun sets the process-group environment; accelerate sees it and, with no GPU, uses gloo (MULTI_CPU)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "dfusion_bench"]
    two = subprocess.run([*launcher, *args, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "dfusion_bench", *args, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    log_two = json.loads((tmp_path / "two/train_log.jsonl").read_text().splitlines()[-1])
    log_one = json.loads((tmp_path / "one/train_log.jsonl").read_text().splitlines()[-1])
    digests = log_two["lora_sha256_per_process"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert log_two["n_pairs"] == log_one["n_pairs"] == 8  # 8 pairs: minibatches of 3, 3 and 2
    name = "checkpoints/epoch-0001/lora.safetensors"
    a, b = load_file(str(tmp_path / "two" / name)), load_file(str(tmp_path / "one" / name))
    start = load_file(str(tmp_path / "one/checkpoints/epoch-0000/lora.safetensors"))
    moved = max((b[k] - start[k]).abs().max().item() for k in b)
    assert moved > 1e-4  # the update did something
    # two processes average gradients in another order than one process: equal up to float error (measured 1.1e-3
    # of the update on an AVX-512 CPU), far below the ~1/8 of the update that dropping one of the 8 pairs would change
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-2 * moved


def test_model_digest_changes_with_any_weight(tmp_path, tiny_dir) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    assert model_digest(copy) == model_digest(tiny_dir)
    weights = next(copy.glob("text_encoder/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_digest(copy) != model_digest(tiny_dir)
