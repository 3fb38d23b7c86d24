"""experiments/control/ceiling.py, best-of-group fine-tuning: which samples it keeps, and a whole run on the tiny
random pipeline (one round, two prompts, a few fine-tuning steps) that resumes where it stopped and refuses other
arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dfusion_bench.errors import UserError
from dfusion_bench.scorers.base import Scores
from experiments.control.ceiling import kept_indices, main


def test_keeps_exactly_the_aligned_samples_or_each_groups_top_k() -> None:
    scores = Scores(
        scores=np.array([1.0, 0.5, 1.0, 0.75, 0.25, 0.75, 0.75, 1.0]),
        aligned=np.array([True, False, True, False, False, False, False, True]),
        details=[{}] * 8,
    )
    groups = [[0, 1, 2, 3], [4, 5, 6], [7]]
    assert kept_indices(scores, groups, "aligned", 2) == [[0, 2], [], [7]]
    assert kept_indices(scores, groups, "top-k", 2) == [[0, 2], [5, 6], [7]]  # a tie goes to the earlier sample
    assert kept_indices(scores, groups, "top-k", 1) == [[0], [5], [7]]
    unaligned = Scores(scores.scores, None, scores.details)  # a scorer that cannot tell full alignment
    with pytest.raises(UserError, match="--keep top-k"):
        kept_indices(unaligned, groups, "aligned", 2)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_round_on_the_tiny_pipeline_trains_the_lora_and_resumes(tmp_path, tiny_dir, capsys) -> None:
    out = tmp_path / "ceiling"
    argv = ["--out", str(out), "--model", str(tiny_dir), "--scorer", "verifier", "--template", "shapes-spatial"]
    argv += ["--prompts", "2", "--samples-per-prompt", "2", "--rounds", "1", "--steps", "2", "--eval-steps", "2"]
    argv += ["--eval-samples-per-prompt", "1", "--keep", "top-k", "--top-k", "1", "--sft-steps", "3"]
    argv += ["--batch-size", "2", "--lr", "1e-2", "--device", "cpu"]
    main(argv)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("epoch 0: train aligned ") and printed[1].startswith("round 1: kept 2/4 (2/2 prompts)")
    metrics = _rows(out / "metrics.jsonl")
    assert [(r["epoch"], r["split"]) for r in metrics] == [(0, "train"), (0, "test"), (1, "train"), (1, "test")]
    assert all(r["n"] == 2 and r["scorer"] == "verifier" and r["facts"] for r in metrics)
    assert [r["samples_seen"] for r in metrics] == [0, 0, 4, 4]
    (log,) = _rows(out / "rounds.jsonl")
    assert log["kept"] == 2 and log["kept_per_prompt"] == [1, 1] and log["sft_steps"] == 3
    assert set(log["timing"]) == {"sampling_s", "scoring_s", "sft_s", "eval_s"}
    for epoch in (0, 1):
        assert (out / f"eval/epoch-{epoch:04d}/test.csv").is_file() and (
            out / f"eval/epoch-{epoch:04d}/train.png"
        ).is_file()
    lora = [(out / f"round-{r:04d}/lora.safetensors").read_bytes() for r in (0, 1)]
    assert lora[0] != lora[1]  # the fine-tuning changed the adapters
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-2

    main(argv)  # the same command again: every round is finished, nothing is redone
    assert capsys.readouterr().out.splitlines() == ["resuming after round 1 of 1"]
    assert _rows(out / "metrics.jsonl") == metrics and (out / "round-0001/lora.safetensors").read_bytes() == lora[1]

    with pytest.raises(SystemExit) as exc:  # other arguments are refused, before anything is written
        main([*argv, "--uncond-prob", "0.5"])
    assert exc.value.code == 2 and "--uncond-prob 0.1 -> 0.5" in capsys.readouterr().err
    assert _rows(out / "metrics.jsonl") == metrics


def test_resuming_with_more_rounds_equals_one_longer_run(tmp_path, tiny_dir, capsys) -> None:
    """Round 2 after a resume starts from round 1's adapters and optimizer state: the same weights and rows."""

    def argv(out, rounds: int) -> list[str]:
        return [
            "--out", str(out), "--model", str(tiny_dir), "--scorer", "verifier", "--prompts", "1",
            "--samples-per-prompt", "2", "--rounds", str(rounds), "--steps", "2", "--eval-steps", "2",
            "--eval-samples-per-prompt", "1", "--keep", "top-k", "--sft-steps", "2", "--batch-size", "2",
            "--lr", "1e-2", "--device", "cpu",
        ]  # fmt: skip

    main(argv(tmp_path / "whole", 2))
    main(argv(tmp_path / "parts", 1))
    main(argv(tmp_path / "parts", 2))
    assert capsys.readouterr().out.count("resuming after round 1 of 2") == 1
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert (whole / "round-0002/lora.safetensors").read_bytes() == (parts / "round-0002/lora.safetensors").read_bytes()
    skip = {"wall_time_s", "timing"}
    for name in ("metrics.jsonl", "rounds.jsonl"):
        a, b = ([{k: v for k, v in r.items() if k not in skip} for r in _rows(f / name)] for f in (whole, parts))
        assert a == b and len(a) == (6 if name == "metrics.jsonl" else 2)


def test_keep_aligned_needs_the_verifier(tmp_path, tiny_dir, capsys) -> None:
    out = tmp_path / "refused"
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out), "--model", str(tiny_dir), "--scorer", "compressibility", "--prompts", "1"])
    assert exc.value.code == 2 and "use --keep top-k" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_the_fine_tuning_seed_is_no_samples_seed() -> None:
    from dfusion_bench.seeding import derive_seed, eval_seeds, sample_seeds
    from experiments.control.ceiling import SFT_STREAM, sft_seed

    seeds = {s for r in (1, 2) for row in sample_seeds(0, r, 40, 8) for s in row}
    seeds |= {s for row in eval_seeds(40, 8) for s in row}
    assert derive_seed(0, 1, SFT_STREAM) in seeds  # why the fine-tuning seed has five keys
    assert not {sft_seed(0, r) for r in (1, 2)} & seeds
