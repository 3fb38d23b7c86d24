"""Smoke tests of experiments/: each experiment's main logic on tiny inputs (a prompt or two, a few seeds, tiny or
embedded pipelines, temporary folders); the GPU drivers with stand-in processes, no GPU. The probes that sample the
embedded model take 10-70 s each on a busy 2-core machine (about 50 s of CPU together) and are marked slow."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from dfusion_bench.report.stats import IMAGE_TEST, wilcoxon
from dfusion_bench.rl.config import TrainConfig
from dfusion_bench.settings import SamplerConfig
from experiments import RESULTS

FIGURE = re.compile(r"-?\d+\.\d\d±\d+\.\d\d")


# ---- budget-probe table -----------------------------------------------------------------------------------------
def _exported_run(folder, name: str, first: list[float], last: list[float], kl: float = 0.0) -> None:
    """A run folder as grid.export_run leaves it, with only what the table reads."""
    run = folder / name
    for epoch, scores in ((0, first), (8, last)):
        (run / "eval" / f"epoch-{epoch:04d}").mkdir(parents=True)
        rows = {"prompt_index": [0, 0, 1, 1, 1], "prompt": list("aabbb"), "seed": [1, 2, 1, 2, 3], "score": scores}
        pd.DataFrame(rows).to_csv(run / "eval" / f"epoch-{epoch:04d}" / "train.csv", index=False)
    config = {"epochs": 8, "optim": {"lr": 1e-3}, "pg": {"kl_weight": kl}}  # an old run: no exclude_last_steps
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"wall_time_s": t}) + "\n" for t in (0.0, 90.0, 120.0)))


def test_budget_table_pairs_each_runs_first_and_last_evaluation(tmp_path, capsys) -> None:
    from experiments.budget_probe.table import main, table

    first, last = [0.5, 1.0, 0.5, 0.0, 1.0], [1.0, 1.0, 0.5, 0.5, 1.0]
    _exported_run(tmp_path, "pg-b", first, last, kl=0.01)
    _exported_run(tmp_path, "dpo-a", first, first)
    (tmp_path / "not-a-run").mkdir()
    frame = table(tmp_path)
    assert list(frame["run"]) == ["dpo-a", "pg-b"]
    row = frame.iloc[1]
    test = wilcoxon(np.array(last), np.array(first), IMAGE_TEST)
    assert row["n"] == 5 and row["excl"] == 0 and row["kl"] == 0.01 and row["wall min"] == 2.0
    assert row["epoch 0"] == pytest.approx(0.6) and row["final"] == pytest.approx(0.8)
    assert row["difference"] == pytest.approx(0.2) == pytest.approx(test.mean_difference)
    assert frame.iloc[0]["difference"] == 0
    main([str(tmp_path)])
    assert capsys.readouterr().out.splitlines()[0].split()[:3] == ["run", "epochs", "lr"]


def test_budget_table_reproduces_the_committed_readme_rows() -> None:
    from experiments.budget_probe.table import FOLDER, table

    assert FOLDER == RESULTS / "budget-probe"
    rows = table(FOLDER).set_index("run")
    assert rows.loc["ddpo-no-fusion-shapes-spatial-e24", "difference"] == pytest.approx(0.0202, abs=5e-5)
    assert rows.loc["pg-fusion-shapes-objects-e8-x3", "p"] == "0.043"


# ---- device drivers ---------------------------------------------------------------------------------------------
def test_device_pg_kl_plans_gpu_runs_with_the_kl_weight(tmp_path, capsys) -> None:
    from experiments.device_pg_kl.drive import job, main

    planned = job(tmp_path, "pg:fusion:shapes-objects:0.01")
    assert planned.run == tmp_path / "pg-fusion-shapes-objects-s0-kl0.01"
    assert planned.log == tmp_path / "pg-fusion-shapes-objects-s0-kl0.01.log"
    cmd = planned.cmd
    assert cmd[cmd.index("--kl-weight") + 1] == "0.01"
    assert cmd[-2:] == ["--device", "cuda"] and "--fusion" in cmd and "--eval-samples-per-prompt" in cmd
    main(["--dry-run", "1", str(tmp_path / "runs"), "pg:plain:shapes-spatial:0", "pg:fusion:shapes-binding:0.01"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "--no-fusion" in lines[0] and "pg-fusion-shapes-binding-s0-kl0.01" in lines[1]
    assert not (tmp_path / "runs").exists()  # a dry run makes nothing


def test_preview_plans_every_grid_cell_and_the_named_ones_on_the_gpu(tmp_path, capsys) -> None:
    from experiments.preview_h100.drive import jobs, main

    planned = jobs(tmp_path, "MODEL", {"dpo-plain", "pg-fusion"}, ["--eval-every", "2"])
    assert len(planned) == 18 and len({j.run for j in planned}) == 18
    on_gpu = {j.run.name.rsplit("-shapes", 1)[0] for j in planned if j.tags["gpu"]}
    assert on_gpu == {"dpo-plain", "pg-fusion"}
    for j in planned:
        assert j.cmd[j.cmd.index("--model") + 1] == "MODEL" and "--eval-every" in j.cmd
        assert ("cuda" in j.cmd) == j.tags["gpu"]
    main(["--dry-run", "60", str(tmp_path), "MODEL", "ddpo-fusion", "--eval-every", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 18 and sum("cuda" in line for line in lines) == 3


@pytest.mark.slow
def test_drive_collects_rows_as_they_come_and_stops_at_the_deadline(tmp_path) -> None:
    """Stand-in jobs: one writes two metrics rows (and half a line) and ends, the other never ends."""
    from experiments.drive import Job, drive

    writer = (
        "import json, pathlib, sys; run = pathlib.Path(sys.argv[1]); run.mkdir(parents=True); "
        "(run / 'metrics.jsonl').write_text(json.dumps({'epoch': 0}) + '\\n' + json.dumps({'epoch': 1}) + '\\n{\"ep');"
        "print('trained')"
    )
    done, stuck = tmp_path / "runs" / "done", tmp_path / "runs" / "stuck"
    jobs = [
        Job([sys.executable, "-c", writer, str(done)], done, tmp_path / "done.log", {"gpu": True}),
        Job([sys.executable, "-c", "import time; time.sleep(60)"], stuck, tmp_path / "stuck.log", {"gpu": False}),
    ]
    out = tmp_path / "out"
    drive(jobs, limit_s=6.0, out=out, poll_s=0.2, grace_s=0.5)  # time enough for the writer on a busy machine
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert rows == [{"run": "done", "file": "metrics.jsonl", "gpu": True, "epoch": e} for e in (0, 1)]
    logs = (out / "logs.txt").read_text()
    assert "==== done rc=0 gpu=True\ntrained" in logs
    assert "==== stuck rc=-15 gpu=False" in logs  # terminated at the deadline
    assert not (out / "rows.jsonl.tmp").exists()


# ---- fuse-drift -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fuse_drift_measures_targets_and_bases(tmp_path, tiny_dir) -> None:
    from dfusion_bench import fuse_output
    from dfusion_bench.cli import main as dfusion
    from experiments.fuse_drift.measure import FUSE, HEADER, measure

    assert FUSE == RESULTS / "fuse" / "shapes-objects"
    fuse = tmp_path / "fuse"
    args = ["fuse", "--template", "paper-t1", "--split", "train", "--prompts", "1", "--samples-per-prompt", "8"]
    args += ["--steps", "3", "--scorer", "compressibility", "--model", str(tiny_dir), "--out", str(fuse)]
    try:
        dfusion(args)
    except SystemExit as exc:
        assert exc.code in (0, None)
    found = fuse_output.load(fuse)
    assert len(found.triples) >= 2
    lines = list(measure(fuse, tiny_dir, steps=(0, 2)))
    assert lines[0] == HEADER and len(lines) == 5
    rows = [line.split() for line in lines[1:]]
    assert [(r[0], r[1]) for r in rows] == [("0", "targets"), ("0", "bases"), ("2", "targets"), ("2", "bases")]
    bases = found.samples.select([t.base for t in found.triples])
    for step, group, logp, norm, cos, coherence in rows:
        assert float(norm) > 0 and -1 <= float(cos) <= 1 and 0 < float(coherence) <= 1.0005
        if group == "bases":  # the policy is the model that sampled them: its log-probs are the stored ones
            assert float(logp) == pytest.approx(float(bases.log_probs[:, int(step)].mean()), abs=1.5e-3)


# ---- grid-x3 probes, on the embedded model (real shapes, so the measured images exist) ------------------------------
@pytest.fixture(scope="module")
def zero_lora_runs(tmp_path_factory):
    """A runs folder with dpo-fusion-shapes-objects-s1, a "final policy" whose LoRA is freshly initialised (B = 0):
    the embedded model itself, loaded the way the probes load a grid run."""
    from dfusion_bench.models.choice import ModelChoice
    from dfusion_bench.rl.checkpoint import save
    from dfusion_bench.rl.lora import add_lora
    from experiments.grid_x3.measures import FINAL_EPOCH

    runs = tmp_path_factory.mktemp("runs")
    run = runs / "dpo-fusion-shapes-objects-s1"
    config = TrainConfig(method="dpo", fusion=True, template="shapes-objects", seed=1)
    run.mkdir()
    (run / "config.json").write_text(json.dumps(config.to_dict()))
    pipe = ModelChoice.check(None).load(torch.device("cpu"), torch.float32)
    add_lora(pipe.unet, config.lora, config.seed)
    save(run, FINAL_EPOCH, pipe.unet, {})
    return runs


def _blocks(lines: list[str], start: str) -> list[list[str]]:
    """The output split into one block per model (each starting with a line that begins with ``start``)."""
    blocks: list[list[str]] = []
    for line in lines:
        if line.startswith(start):
            blocks.append([])
        blocks[-1].append(line)
    return blocks


@pytest.mark.slow
def test_object_probe_counts_facts_and_failures(zero_lora_runs) -> None:
    from experiments.grid_x3.object_probe import probe

    lines = list(probe("shapes-objects", 1, 3, ["dpo-fusion"], runs=zero_lora_runs, n_prompts=1))
    base, policy = _blocks(lines, "shapes-objects s1 ")
    assert base[0].startswith("shapes-objects s1 base: n=3 ") and "object0" in base[0]
    assert base[1].startswith("   shapes drawn: {") and base[2].startswith("   object0 fails ")
    assert len(base) == 4 and policy[0].startswith("shapes-objects s1 dpo-fusion: n=3 ")
    assert base[1:] == policy[1:] and base[0].split(":")[1] == policy[0].split(":")[1]  # a zero LoRA is the base


@pytest.mark.slow
def test_attention_probe_measures_the_two_shapes(zero_lora_runs, capsys) -> None:
    from experiments.grid_x3.attention_probe import BANDS, main

    main(["shapes-objects", "1", "3", "dpo-fusion", "--runs", str(zero_lora_runs), "--prompts", "1"])
    lines = capsys.readouterr().out.splitlines()
    base, policy = _blocks(lines, "shapes-objects s1 ")
    n_used = int(re.search(r": (\d+) images with two shapes", base[0]).group(1))
    assert 2 <= n_used <= 3  # the embedded model draws both shapes on most of these seeds
    assert len(base) == 2 + 2 * len(BANDS)  # a line per band and grid side (16x16, 8x8)
    for line in base[2:]:
        figures = FIGURE.findall(line.split("; object1 fails")[0])
        assert len(figures) == 4  # 1->0, 1->1, their ratio, color0 share, for all kept images
        assert 0 < float(figures[3].split("±")[0]) < 1  # a share
    assert base[1:] == policy[1:]


@pytest.mark.slow
def test_fused_attention_probe_compares_the_fused_pass_with_the_models_own(capsys) -> None:
    from experiments.grid_x3.fused_attention_probe import FUSED_BANDS, main

    main(["shapes-spatial", "1", "8", "--prompts", "1"])
    lines = capsys.readouterr().out.splitlines()
    n_used = int(re.search(r"base model: (\d+) with two shapes", lines[0]).group(1))
    assert n_used >= 2
    assert lines[1] == " fused attention (the target pass, blended keys):"
    own = lines.index(" the base model's own attention on the same latents:")
    diff = lines.index(" fused minus own, image by image (mean ± twice its standard error):")
    sides = 2 * len(FUSED_BANDS)
    assert own == 3 + sides and diff == own + 2 + sides and len(lines) == diff + 1 + sides
    fused_figures = [FIGURE.findall(line)[:3] for line in lines[3 : 3 + sides]]
    own_figures = [FIGURE.findall(line)[:3] for line in lines[own + 2 : own + 2 + sides]]
    assert all(len(f) == 3 for f in fused_figures + own_figures)
    assert fused_figures != own_figures  # blended keys change the attention
    assert all(len(FIGURE.findall(line)) == 3 for line in lines[diff + 1 :])


@pytest.mark.slow
def test_update_direction_probe_steps_every_arm_from_the_same_weights(tmp_path, capsys) -> None:
    from experiments.grid_x3.update_direction_probe import ARMS, main

    config = TrainConfig(
        method="dpo", fusion=True, template="shapes-spatial", prompts=1, samples_per_prompt=4, seed=1,
        sampler=SamplerConfig(num_steps=4),
    )  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    main(["shapes-spatial", "1", "0.05", "--config", str(path), "--per-prompt", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shapes-spatial, grid seed 1, epoch 1: 4 samples, ") and lines[0].endswith("c = 0.05")
    assert len(lines) == 2 + len(ARMS)
    moved = {}
    for (method, fusion), line in zip(ARMS, lines[2:], strict=True):
        name, examples, cells = re.fullmatch(r"   (.+?) \((\d+) examples\) +(.*)", line).groups()
        assert name == method + (" + F" if fusion else "")
        figures = FIGURE.findall(cells)
        assert len(figures) == 4  # 16x16 and 8x8, 1->0 and 1->1
        if int(examples) == 0:  # no step taken: the attention is where it was
            assert figures == ["0.00±0.00"] * 4
        moved[name] = cells
    assert moved["ddpo"] != "16x16 1->0 0.00±0.00, 16x16 1->1 0.00±0.00, 8x8 1->0 0.00±0.00, 8x8 1->1 0.00±0.00"
    # At the initial weights ddpo's gradient is pg's up to a positive scale, so their sign steps agree: each arm
    # starts from the weights every other arm started from.
    assert moved["ddpo"] == moved["pg"] and moved["ddpo + F"] == moved["pg + F"]


# ---- the lab's layout -------------------------------------------------------------------------------------------
#: The experiments' shared helpers: imported by the runnable modules, not run themselves.
HELPERS = {"experiments/drive.py", "experiments/grid_x3/measures.py"}


def test_results_hold_data_only_and_the_experiments_import_each_other_as_a_package() -> None:
    """No Python under results/; no experiment reaches another through sys.path; each runnable one has main."""
    import importlib

    from experiments import REPO

    assert sorted(p.relative_to(REPO) for p in RESULTS.rglob("*.py")) == []
    runnable = 0
    for path in sorted((REPO / "experiments").rglob("*.py")):
        assert "sys.path" not in path.read_text(), path
        relative = path.relative_to(REPO)
        module = importlib.import_module(".".join(relative.with_suffix("").parts).removesuffix(".__init__"))
        if path.name != "__init__.py" and str(relative) not in HELPERS:
            assert callable(getattr(module, "main", None)), relative
            runnable += 1
    assert runnable == 10
