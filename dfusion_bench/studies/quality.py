"""How well the embedded model follows prompts, by the exact verifier: the README's table of the shipped model.

Rows: single-object prompts (every color × shape), and each shapes suite's train and test split. For the spatial
suite, also how often the relation holds where both objects are present, next to the 25% of chance. A second table
has one row per prompt, so that one can see which prompts leave a training run room to improve.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from diffusers import StableDiffusionPipeline
from rich.progress import Progress

from dfusion_bench.evaluation import EvalResult, evaluate, write_grid
from dfusion_bench.scorers import get_scorer
from dfusion_bench.settings import SamplerConfig
from dfusion_bench.suites import PromptEntry, load_suite
from dfusion_bench.world.grammar import COLORS, SHAPES, ObjectSpec, SceneSpec, format_prompt
from dfusion_bench.world.suites import SHAPES_SUITES


def single_object_entries() -> list[PromptEntry]:
    return [
        PromptEntry(format_prompt(SceneSpec((ObjectSpec(shape, color),))), (shape,), (None,))
        for color in COLORS
        for shape in SHAPES
    ]


def relation_given_both(result: EvalResult) -> tuple[float, int]:
    """Rate at which the relation holds among images where both objects were found, and how many such images."""
    facts = [json.loads(f) for f in result.table["facts"] if f]
    both = [f for f in facts if f.get("object0") and f.get("object1") and "relation" in f]
    return (float(np.mean([f["relation"] for f in both])) if both else float("nan")), len(both)


def per_prompt_table(result: EvalResult, name: str, split: str) -> pd.DataFrame:
    """One row per prompt of an evaluation: its index in the split, text, images, aligned rate and mean score."""
    table = result.table.groupby(["prompt_index", "prompt"], sort=True)
    out = table.agg(n_images=("score", "size"), aligned_rate=("aligned", "mean"), mean_score=("score", "mean"))
    return out.reset_index().assign(prompts=name, split=split)[
        ["prompts", "split", "prompt_index", "prompt", "n_images", "aligned_rate", "mean_score"]
    ]


def quality_table(
    pipe: StableDiffusionPipeline,
    per_prompt: int = 8,
    sampler: SamplerConfig = SamplerConfig(),
    progress: Progress | None = None,
    batch_size: int = 32,
    grids: Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per prompt set: aligned rate, mean verifier score, and (spatial) relation-given-both rate; and one
    row per prompt (:func:`per_prompt_table`).

    With ``grids``, also writes ``grid_<set>_<split>.png`` there: the first 8 prompts, one row each."""
    verifier = get_scorer("verifier")
    sets = [("single objects", "all", single_object_entries())]
    for name in SHAPES_SUITES:
        suite = load_suite(name)
        sets += [(name, "train", list(suite.train)), (name, "test", list(suite.test))]
    rows, prompts = [], []
    for name, split, entries in sets:
        result = evaluate(
            pipe, [verifier], entries, per_prompt, sampler, batch_size, progress=progress, label=f"{name} {split}"
        )
        if grids is not None:
            write_grid(grids / f"grid_{name.replace(' ', '-')}_{split}.png", result, max_prompts=8)
        summary = result.summary["verifier"]
        row = {
            "prompts": name,
            "split": split,
            "n_images": summary["n"],
            "aligned_rate": summary["aligned_rate"],
            "mean_score": summary["mean_score"],
        }
        if name == "shapes-spatial":
            row["relation_given_both"], row["n_both"] = relation_given_both(result)
        rows.append(row)
        prompts.append(per_prompt_table(result, name, split))
    return pd.DataFrame(rows), pd.concat(prompts, ignore_index=True)
