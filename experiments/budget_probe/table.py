"""The budget probe's table: each run's last evaluation against its epoch 0 on the same 384 (prompt, seed) images,
with a two-sided Wilcoxon signed-rank test over the image pairs. Usage: python results/budget-probe/table.py"""

import json
from pathlib import Path

import pandas as pd

from dfusion_bench.report.stats import IMAGE_TEST, wilcoxon

rows = []
for run in sorted(p for p in Path(__file__).parent.iterdir() if (p / "metrics.jsonl").is_file()):
    evals = sorted((run / "eval").glob("epoch-*"))
    first, last = (pd.read_csv(e / "train.csv") for e in (evals[0], evals[-1]))
    pairs = first.merge(last, on=["prompt_index", "prompt", "seed"], suffixes=("_0", "_1"))
    test = wilcoxon(pairs["score_1"].to_numpy(float), pairs["score_0"].to_numpy(float), IMAGE_TEST)
    config = json.loads((run / "config.json").read_text())
    wall = [json.loads(line)["wall_time_s"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows.append(
        {
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
    )
print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
