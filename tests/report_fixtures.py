"""Synthetic ``dfusion train`` / ``eval`` / ``fuse`` folders for the report tests, with numbers known by construction.

Every run evaluates ``len(PROMPTS)`` prompts x 2 samples per split and epoch. A run's per-prompt mean at an epoch is
given by a function ``(epoch, split) -> list of per-prompt means``; the two samples of a prompt sit at mean +- 0.005,
and ``metrics.jsonl`` carries the mean over prompts, so the CSVs and the metrics agree exactly as a real run's would.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

PROMPTS = [
    "a red circle",
    "a blue square",
    "two green triangles",
    "a yellow star left of a circle",
    "three purple squares",
    "a circle above a square",
]
OFFSETS = [-0.05, -0.03, -0.01, 0.01, 0.03, 0.05]  # per-prompt effects; they sum to zero
SAMPLE_SPREAD = 0.005
EPOCHS = 3  # epochs 0 (base model) .. 3
SAMPLES_PER_EPOCH = 64
TEMPLATE = "shapes-objects"
SINGLE_TEMPLATE = "colors-counts"
SINGLE_SEED = 7

PromptMeans = Callable[[int, str], Sequence[float]]

# Final-epoch mean scores on the test split of the multi-seed runs, and the base model's, by seed.
FINAL_TEST = {
    ("dpo", True, 0): 0.70,
    ("dpo", True, 1): 0.80,
    ("dpo", False, 0): 0.60,
    ("dpo", False, 1): 0.65,
    ("ddpo", True, 0): 0.66,
    ("ddpo", True, 1): 0.62,
    ("ddpo", False, 0): 0.52,
    ("ddpo", False, 1): 0.58,
}
BASE_TEST = {0: 0.40, 1: 0.44}
TRAIN_SHIFT = 0.05  # the train split scores this much higher than test, at every epoch
# The single-seed pair (pg, seed 7): per-prompt final means on the test split; with - without are all positive.
SINGLE_WITHOUT = [0.30, 0.42, 0.51, 0.60, 0.38, 0.47]
SINGLE_GAINS = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
SINGLE_BASE = [0.25, 0.35, 0.45, 0.55, 0.33, 0.41]


def tiny_png(path: Path, color: tuple[int, int, int], size: int = 16) -> Path:
    """A small two-colour PNG (left half ``color``, right half white)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    image.paste(color, (0, 0, size // 2, size))
    image.save(path, format="PNG")
    return path


def linear(base: float, final: float, shift: dict[str, float] | None = None) -> PromptMeans:
    """Per-prompt means moving linearly from ``base`` (epoch 0) to ``final`` (epoch ``EPOCHS``), plus OFFSETS."""
    shift = shift or {"train": TRAIN_SHIFT, "test": 0.0}

    def means(epoch: int, split: str) -> list[float]:
        value = base + (final - base) * epoch / EPOCHS + shift[split]
        return [value + o for o in OFFSETS]

    return means


def per_prompt(base: Sequence[float], final: Sequence[float]) -> PromptMeans:
    """Per-prompt means moving linearly from ``base`` to ``final`` prompt by prompt (train = test + TRAIN_SHIFT)."""

    def means(epoch: int, split: str) -> list[float]:
        s = TRAIN_SHIFT if split == "train" else 0.0
        return [b + (f - b) * epoch / EPOCHS + s for b, f in zip(base, final, strict=True)]

    return means


def _samples(means: Sequence[float], scorer: str) -> list[dict[str, object]]:
    rows = []
    for i, (prompt, mean) in enumerate(zip(PROMPTS, means, strict=True)):
        for j, delta in enumerate((-SAMPLE_SPREAD, SAMPLE_SPREAD)):
            score = mean + delta
            facts = json.dumps({"items": prompt.split()[-1:], "ok": score > 0.5}) if j == 0 else ""
            rows.append(
                {
                    "prompt_index": i,
                    "prompt": prompt,
                    "seed": 1000 + 2 * i + j,
                    "scorer": scorer,
                    "score": score,
                    "aligned": score > 0.5,
                    "facts": facts,
                }
            )
    return rows


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@dataclass(frozen=True)
class RunSpec:
    template: str
    method: str
    fusion: bool
    seed: int
    means: PromptMeans
    scorer: str = "verifier"
    epochs: int = EPOCHS


def write_run(folder: Path, spec: RunSpec) -> Path:
    """A training run folder as ``dfusion train --out`` writes it."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "method": spec.method,
        "fusion": spec.fusion,
        "template": spec.template,
        "seed": spec.seed,
        "scorer": spec.scorer,
        "epochs": spec.epochs,
    }
    info = {"command": "train", "config": config, "seeds": {"seed": spec.seed}, "versions": {"python": "3"}}
    (folder / "run.json").write_text(json.dumps(info, indent=2))
    metric_lines, log_lines = [], []
    for epoch in range(spec.epochs + 1):
        for split in ("train", "test"):
            rows = _samples(spec.means(epoch, split), spec.scorer)
            scores = [float(r["score"]) for r in rows]
            record = {
                "epoch": epoch,
                "split": split,
                "mean_score": sum(scores) / len(scores),
                "aligned_rate": sum(bool(r["aligned"]) for r in rows) / len(rows),
                "samples_seen": epoch * SAMPLES_PER_EPOCH,
                "wall_time_s": 10.0 * epoch,
                "scorer": spec.scorer,
                "n": len(rows),
            }
            metric_lines.append(json.dumps(record))
            eval_dir = folder / "eval" / f"epoch-{epoch:04d}"
            _write_csv(eval_dir / f"{split}.csv", rows)
            tiny_png(eval_dir / f"{split}.png", (40 * epoch % 256, 120, 200 if spec.fusion else 60))
        if epoch:
            timing = {"sampling_s": 2.0, "fusion_s": 1.0 if spec.fusion else 0.0, "scoring_s": 0.5}
            timing |= {"update_s": 3.0, "eval_s": 1.5}
            log_lines.append(
                json.dumps(
                    {
                        "epoch": epoch,
                        "loss": 1.0 / epoch,
                        "batch_mean_score": 0.5,
                        "n_pairs": 8,
                        "target_beats_base": 0.75 if spec.fusion else None,
                        "timing": timing,
                    }
                )
            )
    (folder / "metrics.jsonl").write_text("\n".join(metric_lines) + "\n")
    (folder / "train_log.jsonl").write_text("\n".join(log_lines) + "\n")
    return folder


def run_name(method: str, fusion: bool, seed: int) -> str:
    return f"{method}-{'fusion' if fusion else 'plain'}-s{seed}"


def write_multi_seed_runs(root: Path) -> list[Path]:
    """2 methods x fusion on/off x 2 seeds of ``TEMPLATE`` under ``root/TEMPLATE/<run>``."""
    paths = []
    for (method, fusion, seed), final in FINAL_TEST.items():
        spec = RunSpec(TEMPLATE, method, fusion, seed, linear(BASE_TEST[seed], final))
        paths.append(write_run(root / TEMPLATE / run_name(method, fusion, seed), spec))
    return paths


def write_single_seed_pair(root: Path) -> list[Path]:
    """pg with and without D-Fusion, one shared seed, of ``SINGLE_TEMPLATE`` under ``root/SINGLE_TEMPLATE``."""
    with_final = [w + g for w, g in zip(SINGLE_WITHOUT, SINGLE_GAINS, strict=True)]
    paths = []
    for fusion, final in ((True, with_final), (False, SINGLE_WITHOUT)):
        spec = RunSpec(SINGLE_TEMPLATE, "pg", fusion, SINGLE_SEED, per_prompt(SINGLE_BASE, final))
        paths.append(write_run(root / SINGLE_TEMPLATE / run_name("pg", fusion, SINGLE_SEED), spec))
    return paths


EVAL_MEANS = [0.7 + o for o in OFFSETS]  # the trained model's per-prompt means in write_eval's folder
BASE_EVAL_MEANS = [0.6 + o for o in OFFSETS]  # the base model's, on the same images: every pair differs by +0.1


def write_eval(
    folder: Path, run: str | None = None, epoch: int | None = 3, base: bool = False, weights: str = "w0"
) -> Path:
    """An eval folder as ``dfusion eval --out`` writes it: of dpo + D-Fusion (seed 0) or, with ``base``, of the base
    model (``--model``); test split, two scorers, the same prompts and seeds either way."""
    folder.mkdir(parents=True, exist_ok=True)
    means = BASE_EVAL_MEANS if base else EVAL_MEANS
    clip = [{**row, "aligned": "", "facts": ""} for row in _samples([m / 2 for m in means], "clip")]
    rows = _samples(means, "verifier") + clip
    _write_csv(folder / "samples.csv", rows)
    summary = {
        "split": "test",
        "template": TEMPLATE,
        "source": {"run": None if base else run, "epoch": None if base else epoch, "model": None},
        "method": None if base else "dpo",
        "fusion": None if base else True,
        "seed": None if base else 0,
        "sampler": {"steps": 20, "eta": 1.0, "guidance": 5.0},
        "scorers": {
            "verifier": {"mean_score": sum(means) / len(means), "aligned_rate": 0.5, "n": len(rows) // 2},
            "clip": {"mean_score": sum(means) / len(means) / 2, "aligned_rate": None, "n": len(rows) // 2},
        },
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    run_info = {"command": "eval", "config": {"template": TEMPLATE}, "model_digest": {"weights": weights}}
    (folder / "run.json").write_text(json.dumps(run_info))
    tiny_png(folder / "grid.png", (200, 30, 30), size=24)
    return folder


# per triple, the facts of reference, base and target: the first target keeps its base's missing object0, the second
# gains it and loses the count, the third keeps everything
FUSE_FACTS = [
    {"reference": {"object0": True, "count": True}, "base": {"object0": b0, "count": True}, "target": target}
    for b0, target in (
        (False, {"object0": False, "count": True}),
        (False, {"object0": True, "count": False}),
        (True, {"object0": True, "count": True}),
    )
]


def write_fuse(folder: Path, n_triples: int = 3) -> Path:
    """A fuse folder as ``dfusion fuse --out`` writes it (manifest, triples.csv, triple images)."""
    folder.mkdir(parents=True, exist_ok=True)
    triples = []
    for t in range(n_triples):
        triples.append(
            {
                "triple": t,
                "prompt": PROMPTS[t % len(PROMPTS)],
                "reference": 4 * t,
                "base": 4 * t + 1,
                "reference_score": 0.9,
                "base_score": 0.2 + 0.1 * t,
                "target_score": 0.6 if t else 0.1,
                **{f"{role}_facts": json.dumps(facts) for role, facts in FUSE_FACTS[t % len(FUSE_FACTS)].items()},
            }
        )
        tiny_png(folder / "images" / "triples" / f"t{t:04d}.png", (30, 30 + 60 * t, 30), size=32)
    _write_csv(folder / "triples.csv", triples)
    manifest = {
        "format": "dfusion-fuse/1",
        "n_samples": 4 * n_triples,
        "n_triples": n_triples,
        "scorer": "verifier",
        "split": "train",
        "target_beats_base_rate": 2 / 3,
        "mean_gain_target_vs_base": 0.15,
        "mean_gain_reference_vs_base": 0.6,
        "unet_evals_per_target_step": 2.0,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    info = {"command": "fuse", "config": {"template": TEMPLATE, "split": "train", "scorer": "verifier"}}
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def write_everything(root: Path) -> dict[str, Path]:
    """All of the above under ``root``: ``runs/`` (two levels deep), ``evals/e0`` and ``evals/base``, ``fuse/f0``."""
    runs = root / "runs"
    write_multi_seed_runs(runs)
    write_single_seed_pair(runs)
    return {
        "runs": runs,
        "eval": write_eval(root / "evals" / "e0", run=str(runs / TEMPLATE / run_name("dpo", True, 0))),
        "base_eval": write_eval(root / "evals" / "base", base=True),
        "fuse": write_fuse(root / "fuse" / "f0"),
    }
