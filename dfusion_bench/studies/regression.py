"""The regression check (``nox -s regression``): a short fixed configuration that must keep working.

Two forms, one code path:

- **real** (a GPU runner): environment variables ``DFUSION_SD_MODEL`` (a local SD 2.1-base diffusers folder) and
  ``DFUSION_CLIP_CHECKPOINT`` (a local open_clip ViT-H-14 checkpoint) select SD + CLIPScore on ``paper-t1``;
- **embedded** (anywhere, CI included): the shipped shapes model + the exact verifier on ``shapes-objects``.

Steps: ``fuse`` on the train split, then a few DPO epochs with and without fusion, evaluated on the train split only
(the check reads nothing else). The criteria (:data:`BASELINE_FILE`, one entry per form) are statistical, per image:
a run named under ``must_rise`` must rise by more than ``margin`` at level ``alpha`` (one-sided Wilcoxon signed-rank
over the evaluation images, first against last evaluation, pairs sharing prompt and seed), every run must end at or
above its ``min_train_final`` floor (its measured final score less three standard errors), and fusion's
target-beats-base rate must stay at or above ``min_target_beats_base``.

Measured baselines: every run writes ``regression_baseline.candidate.json`` (:func:`candidate_baseline`) beside its
result. A form without a measured baseline (the ``real`` form until the GPU runner's first run) fails with a line
saying so; a maintainer reviews the candidate from that run and commits it into :data:`BASELINE_FILE`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from dfusion_bench import atomic
from dfusion_bench.studies.grid import grid_value

BASELINE_FILE = Path(__file__).parent / "regression_baseline.json"
#: What every regression run writes beside its result: a baseline measured from it, for the first run on a runner.
CANDIDATE = "regression_baseline.candidate.json"


def _grid_options(*names: str) -> list[str]:
    """These options, with their values, as the grid's per-run configuration sets them."""
    return [item for name in names for item in (name, grid_value(name))]


FORMS = {
    # SD: the literature's DPO settings (D3PO lr 3e-5)
    "real": {"template": "paper-t1", "scorer": "clip", "fusion": [], "train": []},
    # the embedded model: the grid's settings, 2 epochs at lr 1e-3 (why: docs/design.md, "The regression check")
    "embedded": {
        "template": "shapes-objects",
        "scorer": "verifier",
        "fusion": _grid_options("--mask-resolution"),
        "train": ["--lr", "1e-3", *_grid_options("--inner-epochs", "--train-batch-size", "--timestep-fraction")],
    },
}
#: ``fuse_samples_per_prompt``: fuse draws 16 samples per prompt so that the target-beats-base rate rests on ~20
#: triples (at 8, the shipped model leaves 9 triples: its samples are mostly aligned, so few are poor enough to be
#: bases). DPO trains on 8 per prompt. Measured values: see BASELINE_FILE.
PROTOCOL = {"prompts": 8, "samples_per_prompt": 8, "fuse_samples_per_prompt": 16, "epochs": 2,
            "eval_samples_per_prompt": 8, "seed": 0}  # fmt: skip


def _form() -> tuple[str, str | None, str | None]:
    model, clip = os.environ.get("DFUSION_SD_MODEL"), os.environ.get("DFUSION_CLIP_CHECKPOINT")
    if model and clip:
        return "real", model, clip
    return "embedded", None, None


def paired_rise(run: Path, split: str = "train", margin: float = 0.0) -> dict:
    """The run's rise from its first to its last evaluation, image by image (pairs matched by prompt and seed):
    mean before and after, the mean difference, its standard error, the standard error of the final mean, and the
    one-sided Wilcoxon signed-rank p-value of "the rise exceeds ``margin``" (differences minus the margin; ties at
    zero are dropped, scipy's default), so that float noise or a lucky image or two cannot pass as a rise."""
    import numpy as np
    import pandas as pd
    from scipy import stats

    epochs = sorted(int(d.name.split("-")[1]) for d in (run / "eval").glob("epoch-*") if (d / f"{split}.csv").is_file())
    first, last = (pd.read_csv(run / "eval" / f"epoch-{e:04d}" / f"{split}.csv") for e in (epochs[0], epochs[-1]))
    keys = ["prompt_index", "seed"]
    joined = first[[*keys, "score"]].merge(last[[*keys, "score"]], on=keys, suffixes=("_before", "_after"))
    before, after = joined["score_before"].to_numpy(float), joined["score_after"].to_numpy(float)
    diff = after - before
    shifted = diff - margin
    p = float(stats.wilcoxon(shifted, alternative="greater").pvalue) if np.any(shifted != 0) else 1.0
    n = len(diff)
    return {
        "n": n,
        "before": float(before.mean()),
        "after": float(after.mean()),
        "rise": float(diff.mean()),
        "rise_se": float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "after_se": float(after.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "p_rise": p,
    }


def failures(result: dict, baseline: dict) -> list[str]:
    """What the baseline's criteria say about a result: runs that had to rise by more than the baseline's ``margin``
    and did not at level ``alpha`` (per-image test, :func:`paired_rise`), runs that ended under their floor, a
    target-beats-base rate under its floor. Empty when the check passes."""
    found = []
    alpha = baseline.get("alpha", 0.05)
    for name in baseline["must_rise"]:
        r = result[name]
        if not r["p_rise"] < alpha:
            found.append(
                f"{name}: no rise above {baseline.get('margin', 0.0)} at level {alpha} "
                f"(mean {r['rise']:+.4f} over {r['n']} images, p {r['p_rise']:.3f})"
            )
    for name, floor in baseline.get("min_train_final", {}).items():
        if result[name]["after"] < floor:
            found.append(f"{name}: final train-split score {result[name]['after']:.4f} < {floor}")
    rate = result["target_beats_base"]
    if rate is None or rate < baseline["min_target_beats_base"]:
        found.append(f"target-beats-base {rate} < baseline {baseline['min_target_beats_base']}")
    return found


def candidate_baseline(result: dict, margin: float = 0.0, alpha: float = 0.05, floor_se: float = 3.0) -> dict:
    """A baseline measured from ``result`` for a maintainer to review and commit: a run must rise where it rose
    significantly here; each run's floor is its final score minus ``floor_se`` standard errors of that mean; the
    target-beats-base floor is the measured rate less one triple."""
    runs = [k for k in ("dpo-plain", "dpo-fusion") if k in result]
    triples = max(result.get("triples") or 1, 1)
    rate = result["target_beats_base"] or 0.0
    return {
        "margin": margin,
        "alpha": alpha,
        "must_rise": [k for k in runs if result[k]["p_rise"] < alpha],
        "min_train_final": {k: round(result[k]["after"] - floor_se * result[k]["after_se"], 4) for k in runs},
        "min_target_beats_base": round(max(rate - 1 / triples, 0.0), 4),
        "measured": {
            "model_digest": result.get("model_digest"),
            "target_beats_base": rate,
            "triples": result.get("triples"),
            **{k: {f: result[k][f] for f in ("n", "before", "after", "rise", "rise_se", "p_rise")} for k in runs},
        },
    }


def run_regression(out: Path, device: str | None, run_command: Callable[[list[str]], None]) -> dict:
    """Fuse, then dpo with and without fusion, each through ``run_command`` (``dfusion`` argv); the result with
    the baseline's verdict, also written to ``out/regression.json``."""
    form, model, clip = _form()
    if form == "embedded" and device in (None, "cpu"):
        import torch

        # the baseline was measured with one CPU thread: another reduction order can flip a sample's verdict
        torch.set_num_threads(1)
    settings, p = FORMS[form], PROTOCOL
    common = ["--template", settings["template"], "--scorer", settings["scorer"], "--prompts", str(p["prompts"]),
              "--seed", str(p["seed"])]  # fmt: skip
    if model:
        common += ["--model", model, "--clip-checkpoint", clip]
    if device:
        common += ["--device", device]
    common += settings["fusion"]
    fuse_n = ["--samples-per-prompt", str(p["fuse_samples_per_prompt"])]
    run_command(["fuse", "--split", "train", "--out", str(out / "fuse"), "--overwrite", *fuse_n, *common])
    manifest = json.loads((out / "fuse" / "manifest.json").read_text())
    result: dict = {
        "form": form,
        "protocol": p,
        "target_beats_base": manifest.get("target_beats_base_rate"),
        "triples": manifest.get("n_triples"),
        "model_digest": json.loads((out / "fuse" / "run.json").read_text())["model_digest"]["weights"],
    }
    baselines = json.loads(BASELINE_FILE.read_text())
    baseline = baselines.get(form, {})
    for fusion in (True, False):
        run = out / f"dpo-{'fusion' if fusion else 'plain'}"
        flag = "--fusion" if fusion else "--no-fusion"
        train = ["train", "--method", "dpo", flag, "--out", str(run), "--overwrite", "--epochs", str(p["epochs"]),
                 "--samples-per-prompt", str(p["samples_per_prompt"]),
                 "--eval-samples-per-prompt", str(p["eval_samples_per_prompt"]),
                 "--eval-every", str(p["epochs"]), "--eval-splits", "train", *common]  # fmt: skip
        train += settings["train"]
        run_command(train)
        result[run.name] = paired_rise(run, "train", baseline.get("margin", 0.0))
    atomic.write_json(out / CANDIDATE, {form: candidate_baseline(result, baseline.get("margin", 0.0))})
    result["baseline"] = baseline
    if "measured" not in baseline:
        result["failures"] = [
            f"no measured baseline for the {form!r} form yet: review {out / CANDIDATE} (measured on this machine) and "
            f"commit it as the {form!r} entry of {BASELINE_FILE.name}"
        ]
    else:
        result["failures"] = failures(result, baseline)
    atomic.write_json(out / "regression.json", result)
    return result
