"""The budget probe's table: each run's last evaluation against its epoch 0 on the same 384 (prompt, seed) images,
with a two-sided Wilcoxon signed-rank test over the image pairs.

Usage (what printed the tables in results/budget-probe/README.md; FOLDER defaults to results/budget-probe):
    python -m experiments.budget_probe.table [FOLDER]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from dfusion_bench.report.stats import IMAGE_TEST, wilcoxon
from experiments import RESULTS

FOLDER = RESULTS / "budget-probe"


def run_row(run: Path) -> dict:
    """One exported run's row: its settings, first and last evaluation means, their paired test, its wall time."""
    evals = sorted((run / "eval").glob("epoch-*"))
    first, last = (pd.read_csv(e / "train.csv") for e in (evals[0], evals[-1]))
    pairs = first.merge(last, on=["prompt_index", "prompt", "seed"], suffixes=("_0", "_1"))
    test = wilcoxon(pairs["score_1"].to_numpy(float), pairs["score_0"].to_numpy(float), IMAGE_TEST)
    config = json.loads((run / "config.json").read_text())
    wall = [json.loads(line)["wall_time_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "run": run.name,
        "epochs": config["epochs"],
        "lr": config["optim"]["lr"],
        "kl": config["pg"]["kl_weight"],
        "excl": config["optim"].get("exclude_last_steps", 0),  # --exclude-last-steps (absent in older runs: 0)
        "n": test.n,
        "epoch 0": pairs["score_0"].mean(),
        "final": pairs["score_1"].mean(),
        "difference": test.mean_difference,
        "ci95": test.half_width,
        "p": f"{test.p_value:.2g}",
        "wall min": max(wall) / 60,
    }


def table(folder: Path) -> pd.DataFrame:
    """A row per run folder (one with a metrics.jsonl) directly under ``folder``, by name."""
    runs = sorted(p for p in folder.iterdir() if (p / "metrics.jsonl").is_file())
    return pd.DataFrame([run_row(run) for run in runs])


def render(frame: pd.DataFrame) -> str:
    return frame.to_string(index=False, float_format=lambda x: f"{x:.4f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.budget_probe.table", description=__doc__.split("\n")[0]
    )
    parser.add_argument("folder", nargs="?", type=Path, default=FOLDER, help="folder of exported runs")
    args = parser.parse_args(argv)
    print(render(table(args.folder)))


if __name__ == "__main__":
    main()
