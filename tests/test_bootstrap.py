"""The hierarchical bootstrap of :mod:`dfusion_bench.report.bootstrap` on hand-made images with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dfusion_bench.report import bootstrap as bs


def images(values: dict[int, list[list[float]]]) -> pd.DataFrame:
    """One row per image from {run seed: [[prompt 0's image values], [prompt 1's], ...]}; image seeds 100 * p + k."""
    rows = [
        {"run_seed": seed, "prompt_index": p, "seed": 100 * p + k, "v": v}
        for seed, prompts in values.items()
        for p, vs in enumerate(prompts)
        for k, v in enumerate(vs)
    ]
    return pd.DataFrame.from_records(rows)


def test_mde_is_z_quantiles_times_the_standard_error() -> None:
    # z_0.975 = 1.959964, z_0.8 = 0.841621
    assert bs.mde(0.1) == pytest.approx((1.959964 + 0.841621) * 0.1, abs=1e-6)
    assert bs.mde(0.1, power=0.5) == pytest.approx(1.959964 * 0.1, abs=1e-6)  # z_0.5 = 0
    interval = bs.Interval(0.2, 0.1, 0.3, 0.05, 2, 8, 64, False)
    assert interval.mde == pytest.approx(2.801585 * 0.05, abs=1e-6)


def test_identical_images_differ_by_exactly_zero() -> None:
    rng = np.random.default_rng(3)
    frame = images({s: [list(rng.integers(0, 2, 4).astype(float)) for _ in range(5)] for s in range(3)})
    same = bs.paired_difference(frame, frame.sample(frac=1.0, random_state=1), "v")  # row order does not matter
    assert (same.estimate, same.low, same.high, same.se, same.mde) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert (same.n_seeds, same.n_prompts, same.n_images, same.seeds_resampled) == (3, 5, 60, True)


def test_a_rise_on_every_prompt_excludes_zero_and_a_mixed_one_holds_it() -> None:
    before = images({0: [[0.0, 0.0, 1.0, 0.0] for _ in range(8)]})
    up = images({0: [[1.0, 0.0, 1.0, 1.0] for _ in range(8)]})  # two more of four aligned on every prompt
    rise = bs.paired_difference(up, before, "v")
    assert rise.estimate == pytest.approx(0.5) and 0 < rise.low < 0.5 < rise.high <= 1.0
    assert rise.resampled == "prompts, images"  # one run: no seed level
    mixed = images({0: [[1.0] * 4 if p % 2 else [0.0] * 4 for p in range(8)]})
    flat = images({0: [[0.0] * 4 if p % 2 else [1.0] * 4 for p in range(8)]})
    change = bs.paired_difference(mixed, flat, "v")  # half the prompts gain everything, half lose everything
    assert change.estimate == 0.0 and change.low < -0.25 and change.high > 0.25


def test_two_seeds_are_not_resampled_three_are() -> None:
    two = images({0: [[1.0, 1.0]] * 4, 1: [[0.0, 0.0]] * 4})
    fixed = bs.bootstrap_mean(two, "v")
    # seeds kept once each, prompts drawn once for both (crossed), so every replicate holds as many images of each
    assert (fixed.estimate, fixed.low, fixed.high, fixed.seeds_resampled) == (0.5, 0.5, 0.5, False)
    three = images({0: [[1.0, 1.0]] * 4, 1: [[0.0, 0.0]] * 4, 2: [[0.0, 0.0]] * 4})
    blocks = bs.bootstrap_mean(three, "v")
    # replicate means are 0, 1/3, 2/3 or 1; P(every draw the all-1 seed) = 1/27 > 2.5%, P(none) = 8/27
    assert blocks.seeds_resampled and (blocks.low, blocks.high) == (0.0, 1.0)
    assert blocks.resampled == "seeds, prompts, images"
    not_yet = bs.bootstrap_mean(three, "v", min_blocks=4)
    assert (not_yet.low, not_yet.high) == pytest.approx((1 / 3, 1 / 3)) and not not_yet.seeds_resampled


def test_prompts_level_is_the_ordinary_bootstrap_over_prompts() -> None:
    values = [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    one_image = images({0: [[v] for v in values]})
    result = bs.bootstrap_mean(one_image, "v", n_boot=20000)
    assert result.se == pytest.approx(np.std(values) / np.sqrt(len(values)), rel=0.05)  # plug-in SE of a mean


def test_image_level_within_a_prompt() -> None:
    values = [0.2, 0.9, 0.4, 0.7, 0.1, 0.6, 0.3, 0.8]
    one_prompt = images({0: [values]})  # one prompt: only the images vary
    result = bs.bootstrap_mean(one_prompt, "v", n_boot=20000)
    assert result.se == pytest.approx(np.std(values) / np.sqrt(len(values)), rel=0.05)
    assert result.low < np.mean(values) < result.high


def test_prompts_are_crossed_with_seeds() -> None:
    """Two seeds of the same prompts: a prompt's difficulty is common to both, so the prompt draw is shared (the
    same spread as one seed); nested draws (a fresh draw per seed) would halve the variance."""
    values = [[float(v)] for v in (0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0)]
    one = bs.bootstrap_mean(images({0: values}), "v", n_boot=20000)
    twin = images({0: values, 1: values})
    crossed = bs.bootstrap_mean(twin, "v", n_boot=20000)
    nested = bs.bootstrap_mean(twin, "v", n_boot=20000, crossed=False)
    assert crossed.se == pytest.approx(one.se, rel=0.05)
    assert nested.se == pytest.approx(one.se / np.sqrt(2), rel=0.05)


def test_level_and_draws_agree_for_many_distinct_values() -> None:
    """Few distinct values are drawn as level counts, many as image indices: the same bootstrap either way."""
    rng = np.random.default_rng(0)
    frame = images({s: [list(rng.integers(0, 2, 8).astype(float)) for _ in range(6)] for s in range(3)})
    noisy = frame.assign(v=frame["v"] + rng.normal(0, 1e-9, len(frame)))  # every value distinct
    a, b = bs.bootstrap_mean(frame, "v", n_boot=20000), bs.bootstrap_mean(noisy, "v", n_boot=20000)
    assert a.se == pytest.approx(b.se, rel=0.05)
    assert (a.low, a.high) == pytest.approx((b.low, b.high), abs=0.02)


def test_fixed_seed_missing_values_and_empty_input() -> None:
    frame = images({0: [[1.0, 0.0, np.nan], [0.0, 1.0, 1.0]], 1: [[1.0, 1.0, 0.0], [np.nan, np.nan, np.nan]]})
    first, again = bs.bootstrap_mean(frame, "v"), bs.bootstrap_mean(frame, "v")
    assert first == again and first.n_images == 8 and first.estimate == pytest.approx(5 / 8)
    assert bs.bootstrap_mean(frame, "v", seed=1) != first
    assert bs.bootstrap_mean(frame.assign(v=np.nan), "v") == bs.EMPTY
    assert bs.bootstrap_mean(frame, "absent") == bs.EMPTY and bs.EMPTY.resampled == ""


def test_pairs_match_on_run_seed_prompt_and_image_seed() -> None:
    after = pd.DataFrame(
        {"run_seed": [0, 0, 1, 1], "prompt_index": [0, 0, 0, 1], "seed": [5, 6, 5, 9], "v": [1.0, 1.0, 0.0, 1.0]}
    )
    before = pd.DataFrame(
        {"run_seed": [1, 0, 0, 1], "prompt_index": [0, 0, 0, 2], "seed": [5, 6, 5, 9], "v": [1.0, 0.0, 1.0, 0.0]}
    )
    pairs = bs.paired_values(after, before, ["run_seed", "prompt_index", "seed"])
    assert sorted(zip(pairs["run_seed"], pairs["seed"], pairs["v"], strict=True)) == [
        (0, 5, 0.0),
        (0, 6, 1.0),
        (1, 5, -1.0),
    ]
    result = bs.paired_difference(after, before, "v")  # the unmatched (prompt 1 / prompt 2) images are left out
    assert (result.estimate, result.n_images, result.n_seeds) == (0.0, 3, 2)
    no_run = bs.paired_difference(after.drop(columns="run_seed"), before.drop(columns="run_seed"), "v")
    assert no_run.n_seeds == 1  # without run seeds: one run, paired on prompt_index and image seed
