"""Fixed, fair evaluation: the same prompts and the same seeds for every model and every checkpoint.

Each (prompt, k) pair always gets the seed ``seeding.eval_seeds[p][k]``, so an evaluation grid shows the same noise
before and after training, and two runs are compared image for image. One row per sample and scorer, with the
verifier's per-fact breakdown where it applies; a summary per scorer (mean score, aligned rate where the scorer
knows full alignment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from rich.progress import Progress

from dfusion_bench import atomic, imaging
from dfusion_bench.distributed import SINGLE, Distributor
from dfusion_bench.rollout import sample_and_score, score_trajectories
from dfusion_bench.scorers.base import Scorer
from dfusion_bench.seeding import eval_seeds
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import PromptEntry

GRID_IMAGE = 64  # pixels per image in evaluation grids


@dataclass
class EvalResult:
    table: pd.DataFrame  # one row per sample and scorer
    summary: dict[str, dict[str, Any]]  # scorer -> mean_score, aligned_rate, n
    images: torch.Tensor  # (n, 3, H, W), prompt-major
    per_prompt: int


def evaluate(
    pipe: StableDiffusionPipeline,
    scorers: list[Scorer],
    entries: list[PromptEntry],
    per_prompt: int,
    sampler: SamplerConfig,
    batch_size: int = 16,
    unet: UNet2DConditionModel | None = None,
    progress: Progress | None = None,
    label: str = "evaluating",
    dist: Distributor = SINGLE,
) -> EvalResult:
    """Sample every entry ``per_prompt`` times with the fixed evaluation seeds and score with every scorer."""
    seeds = eval_seeds(len(entries), per_prompt)
    scored = sample_and_score(
        pipe, scorers[0], entries, seeds, sampler, batch_size, unet=unet, progress=progress, label=label, dist=dist
    )
    traj = scored.trajectories
    prompt_index = scored.prompt_index()
    rows, summary = [], {}
    for i, scorer in enumerate(scorers):
        scores = scored.scores if i == 0 else score_trajectories(scorer, traj)
        summary[scorer.name] = {
            "mean_score": float(np.mean(scores.scores)),
            "aligned_rate": None if scores.aligned is None else float(np.mean(scores.aligned)),
            "fact_rates": scores.fact_rates(),
            "n": len(scores),
        }
        for j in range(len(traj)):
            rows.append(
                {
                    "prompt_index": int(prompt_index[j]),
                    "prompt": traj.prompts[j],
                    "seed": traj.seeds[j],
                    "scorer": scorer.name,
                    "score": float(scores.scores[j]),
                    "aligned": None if scores.aligned is None else bool(scores.aligned[j]),
                    "facts": scores.facts_json(j),
                }
            )
    return EvalResult(pd.DataFrame(rows), summary, traj.images, per_prompt)


def metrics_row(
    epoch: int, split: str, summary: dict[str, Any], scorer: str, samples_seen: int, wall_time_s: float
) -> dict[str, Any]:
    """One evaluation's row of a run's ``metrics.jsonl``: a scorer's ``summary`` (from :attr:`EvalResult.summary`)
    after ``samples_seen`` training samples and ``wall_time_s`` seconds."""
    return {
        "epoch": epoch,
        "split": split,
        "mean_score": summary["mean_score"],
        "aligned_rate": summary["aligned_rate"],
        "facts": summary.get("fact_rates") or None,
        "samples_seen": samples_seen,
        "wall_time_s": wall_time_s,
        "scorer": scorer,
        "n": summary["n"],
    }


def write_samples(path: Path, result: EvalResult) -> None:
    """Per-sample rows as CSV (atomically)."""
    atomic.write_text(path, result.table.to_csv(index=False))


def write_grid(path: Path, result: EvalResult, max_prompts: int = 16) -> None:
    """A grid of the evaluation images: one row per prompt (at most ``max_prompts``), one column per seed."""
    n = min(len(result.images), max_prompts * result.per_prompt)
    images = [imaging.upscale(result.images[i], GRID_IMAGE) for i in range(n)]
    imaging.save_png(imaging.grid(images, columns=result.per_prompt), path)
