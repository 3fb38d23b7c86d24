"""experiments.control.gradient_snr: the SNR arithmetic on constructed gradients; a smoke run on the tiny pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from experiments.control.gradient_snr import batch_for_snr_1, main, moments, snr, snr_stats

GROUPS = [list(range(k, k + 8)) for k in range(0, 64, 8)]  # 8 prompts x 8 examples


def test_two_vectors_by_hand() -> None:
    """g1 = (1, 0), g2 = (3, 0): mean (2, 0), |mean|^2 = 4, tr = 1 + 1 = 2, |g|^2_unb = 4 - 2/2 = 3 = g1 . g2."""
    g = np.array([[1.0, 0.0], [3.0, 0.0]])
    m = moments(g @ g.T)
    assert m["sq_mean"] == pytest.approx(4) and m["trace"] == pytest.approx(2)
    assert m["sq_mean_unbiased"] == pytest.approx(3)
    assert snr(3, 2, 4) == pytest.approx(6) and batch_for_snr_1(3, 2) == pytest.approx(2 / 3)
    assert batch_for_snr_1(-0.1, 2) == math.inf and snr(1.0, 0.0, 4) == math.inf


def test_a_bootstrap_resample_does_not_count_a_repeated_vector_as_signal() -> None:
    g = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    gram = g @ g.T
    # vector 0 twice and vector 1 once: the pairs of distinct originals are (0, 1) twice, mean product -1
    assert moments(gram, np.array([2, 1, 0]))["sq_mean_unbiased"] == pytest.approx(-1)
    assert moments(gram, np.ones(3))["sq_mean_unbiased"] == pytest.approx(moments(gram)["sq_mean_unbiased"])


def test_identical_gradients_are_all_signal() -> None:
    grads = torch.tensor([1.0, -2.0, 0.5, 0.0]).repeat(64, 1)
    out = snr_stats(grads, GROUPS, batch=64, seed=0, splits=20, bootstrap=50)
    assert out["trace"] == pytest.approx(0, abs=1e-9)
    assert out["sq_mean_unbiased"] == pytest.approx(5.25) == pytest.approx(out["sq_mean"])
    assert out["b_star"] == pytest.approx(0, abs=1e-9) and out["snr_batch"] > 1e6
    assert out["cos_halves_within_prompts"]["mean"] == pytest.approx(1)
    assert out["cos_halves_across_prompts"]["mean"] == pytest.approx(1)
    assert out["sq_mean_across_prompts"] == pytest.approx(5.25)
    assert out["coordinates_with_gradient"] == 3  # the fourth coordinate carries none


def test_pure_noise_has_no_signal_and_a_known_mean_is_found() -> None:
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(64, 2000, generator=gen)
    out = snr_stats(noise, GROUPS, batch=64, seed=0, splits=50, bootstrap=200)
    assert out["trace"] == pytest.approx(2000, rel=0.05)
    assert abs(out["snr_batch"]) < 0.05 and abs(out["whitened_snr_batch"]) < 0.05
    assert abs(out["cos_halves_within_prompts"]["mean"]) < 0.05 and abs(out["cos_halves_across_prompts"]["mean"]) < 0.05
    low, high = out["sq_mean_unbiased_ci95"]
    assert low < 0 < high and out["b_star_lower_95"] > 64
    # a mean of |mu|^2 = 2000 / 16 under the same noise: B* = tr / |mu|^2 = 16, SNR(64) = 4
    mu = torch.full((2000,), math.sqrt(1 / 16))
    out = snr_stats(noise + mu, GROUPS, batch=64, seed=0, splits=50, bootstrap=200)
    assert out["sq_mean_unbiased"] == pytest.approx(125, rel=0.2) and out["b_star"] == pytest.approx(16, rel=0.2)
    assert out["snr_batch"] == pytest.approx(4, rel=0.2)
    assert out["cos_halves_within_prompts"]["mean"] == pytest.approx(out["cos_predicted"], abs=0.1)


def test_smoke_on_the_tiny_pipeline(tmp_path, tiny_dir, capsys) -> None:
    out = tmp_path / "snr"
    args = ["--model", str(tiny_dir), "--scorer", "compressibility", "--prompts", "2", "--samples-per-prompt", "4"]
    args += ["--steps", "3", "--first", "2", "--splits", "10", "--bootstrap", "20", "--out", str(out)]
    main(args)
    result = json.loads((out / "snr.json").read_text())
    table = (out / "snr.md").read_text()
    assert capsys.readouterr().out == table
    assert result["samples"] == 8 and result["examples"] == 8  # compressibility: no two images tie
    steps = [(r["loss"], r["steps"], r["advantage"]) for r in result["rows"]]
    assert steps[:4] == [("pg", "all", "A"), ("pg", "all", "max(A,0)"), ("pg", "t<2", "A"), ("pg", "t<2", "max(A,0)")]
    assert [s for s in steps if s[1].startswith("t=")] == [
        ("pg", f"t={t}", a) for t in range(3) for a in ("A", "max(A,0)")
    ]
    assert [s[0] for s in steps[-3:]] == ["eps-MSE (aligned)", "eps-MSE (all samples)", "eps-MSE (aligned - all)"]
    assert [r["n"] for r in result["rows"][-3:]] == [2, 8, 8]  # no alignment from this scorer: each prompt's best
    for r in result["rows"]:
        assert r["n"] >= 2 and r["trace"] > 0 and r["mean_sq_norm"] > 0
    kinds = result["parameters"]["by_kind"]
    assert kinds["lora_A"]["tensors_with_gradient"] == 0  # B = 0 at the start: no gradient reaches A
    assert kinds["lora_B"]["tensors_with_gradient"] == kinds["lora_B"]["tensors"] > 0
    assert table.count("\n| pg |") == 4 + 6 and "| eps-MSE (aligned) |" in table
