"""Command-line error paths: one line on stderr naming the problem and the fix, exit code 2, nothing written."""

from __future__ import annotations

import json

import pytest

from dfusion_bench.cli import main
from dfusion_bench.report.collect import collect
from dfusion_bench.report.paired import paired_tables

FUSE = [
    "fuse",
    "--template",
    "paper-t1",
    "--split",
    "train",
    "--prompts",
    "1",
    "--samples-per-prompt",
    "4",
    "--steps",
    "3",
    "--scorer",
    "compressibility",
]


def _run(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code), capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "/no/such/folder"], "no such model folder"),
        (["--template", "no-such-suite"], "unknown suite 'no-such-suite'"),
        (["--split", "validation"], "unknown split 'validation'"),
        (["--scorer", "aesthetic"], "unknown scorer 'aesthetic'"),
        (["--eta", "0"], "eta"),
        (["--samples-per-prompt", "2"], "too few"),
    ],
)
def test_fuse_refuses_bad_input(capsys, tmp_path, tiny_dir, args, needle) -> None:
    out = tmp_path / "out"
    base = [*FUSE, "--model", str(tiny_dir), "--out", str(out)]
    code, err = _run(capsys, *base, *args)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


def test_fuse_refuses_a_non_empty_output_folder(capsys, tmp_path, tiny_dir) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = _run(capsys, *FUSE, "--model", str(tiny_dir), "--out", str(out))
    assert code == 2 and "not empty" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"


def test_fuse_refuses_a_folder_that_is_not_a_pipeline(capsys, tmp_path) -> None:
    bogus = tmp_path / "bogus"
    bogus.mkdir()
    code, err = _run(capsys, *FUSE, "--model", str(bogus), "--out", str(tmp_path / "out"))
    assert code == 2 and "model_index.json" in err


def test_fuse_writes_a_loadable_folder(tmp_path, tiny_dir) -> None:
    from dfusion_bench import fuse_output

    out = tmp_path / "fz"
    main_args = [*FUSE, "--model", str(tiny_dir), "--out", str(out), "--samples-per-prompt", "8"]
    try:
        main(main_args)
    except SystemExit as exc:
        assert exc.code in (0, None)
    loaded = fuse_output.load(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["unet_evals_per_target_step"] <= 1  # the cache: the target pass only, at fused steps only
    assert manifest["reference_cache"]["mode"] == "cache" and manifest["reference_cache"]["kept_bytes"] > 0
    assert loaded.targets is not None and len(loaded.targets) == len(loaded.triples) == manifest["n_triples"] > 0
    assert loaded.masks.shape[:2] == (len(loaded.triples), 3)
    assert len(list((out / "images" / "triples").glob("*.png"))) == len(loaded.triples)
    assert len(list((out / "images" / "samples").glob("*.png"))) == 8
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["template"] == "paper-t1" and run["seeds"]["seed"] == 0 and "diffusers" in run["versions"]
    from dfusion_bench.runinfo import model_digest

    assert run["model_digest"] == {"folder": str(tiny_dir.resolve()), "weights": model_digest(tiny_dir)}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_fuse_tables_and_manifest_carry_each_roles_facts() -> None:
    from types import SimpleNamespace

    import numpy as np

    from dfusion_bench import fuse_output
    from dfusion_bench.fusion import Triple
    from dfusion_bench.pairs import Pairs
    from dfusion_bench.rollout import ScoredSamples
    from dfusion_bench.scorers import Scores

    def scores(*held: tuple[bool, bool]) -> Scores:
        details = [{"facts": {"object0": a, "object1": b}} for a, b in held]
        return Scores(np.array([(a + b) / 2 for a, b in held], dtype=float), None, details)

    # samples 0, 1 are references; 2, 3 bases; the first target gains object0, the second keeps its base's
    # missing object1
    samples = scores((True, True), (True, True), (False, True), (True, False))
    traj = SimpleNamespace(prompts=["p"] * 4, seeds=[0, 1, 2, 3])
    pairs = Pairs(ScoredSamples([], traj, samples, [[0, 1, 2, 3]]), [Triple(0, 2), Triple(1, 3)])
    pairs.target_scores = scores((True, True), (True, False))
    table = fuse_output.triples_table(pairs)
    assert [json.loads(f)["object1"] for f in table.target_facts] == [True, False]
    assert table.base_facts.tolist() == [samples.facts_json(2), samples.facts_json(3)]
    assert pairs.fact_rates() == {
        "reference": {"object0": 1.0, "object1": 1.0},
        "base": {"object0": 0.5, "object1": 0.5},
        "target": {"object0": 1.0, "object1": 0.5},
    }
    pairs.samples.scores, pairs.target_scores = Scores(np.zeros(4), None, [{}] * 4), Scores(np.zeros(2), None, [{}] * 2)
    assert pairs.fact_rates() == {} and set(fuse_output.triples_table(pairs).target_facts) == {""}  # no facts


def test_eval_rows_have_the_same_shape_for_a_run_and_a_model(tmp_path, tiny_dir) -> None:
    import pandas as pd

    run = tmp_path / "run"
    common = ["--template", "paper-t1", "--prompts", "1", "--scorer", "compressibility", "--steps", "3"]
    train = [
        "train",
        "--method",
        "pg",
        "--model",
        str(tiny_dir),
        *common,
        "--samples-per-prompt",
        "4",
        "--epochs",
        "1",
        "--eval-samples-per-prompt",
        "1",
        "--out",
        str(run),
    ]
    for args in (
        train,
        ["eval", "--split", "test", "--run", str(run), *common, "--out", str(tmp_path / "a")],
        ["eval", "--split", "test", "--model", str(tiny_dir), *common, "--out", str(tmp_path / "b"), "--no-grid"],
    ):
        try:
            main(args)
        except SystemExit as exc:
            assert exc.code in (0, None)
    a, b = pd.read_csv(tmp_path / "a" / "samples.csv"), pd.read_csv(tmp_path / "b" / "samples.csv")
    assert list(a.columns) == list(b.columns) and len(a) == len(b) == 4
    assert list(a.seed) == list(b.seed)  # the fixed evaluation seeds
    assert (tmp_path / "a" / "grid.png").is_file() and not (tmp_path / "b" / "grid.png").exists()
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["source"]["epoch"] == 1 and summary["method"] == "pg" and "compressibility" in summary["scorers"]
    assert summary["sampler"] == json.loads((tmp_path / "b" / "summary.json").read_text())["sampler"]
    # the report pairs the trained policy's images with the base model's, seed by seed
    paired, facts = paired_tables(collect([tmp_path / "a", tmp_path / "b"]).evals)
    row = paired[paired["metric"] == "mean_score"].iloc[0]
    assert row["n"] == 4 and row["model"] == "pg"
    assert row["difference"] == pytest.approx(a.score.mean() - b.score.mean(), abs=1e-12)
    assert facts.empty  # compressibility checks no facts


def test_eval_refuses_run_and_model_together(capsys, tmp_path, tiny_dir) -> None:
    code, err = _run(
        capsys,
        "eval",
        "--split",
        "test",
        "--run",
        str(tmp_path),
        "--model",
        str(tiny_dir),
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "not both" in err
