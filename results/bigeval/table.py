"""Large-sample train-split evaluation of the base and final (epoch 8) models: means over 8 prompts x 48 seeds,
the same over seeds 8..47 only (independent of the grid's own 8 evaluation seeds), and a paired test against the base
on (prompt, seed) pairs (Wilcoxon signed-rank; same initial noise)."""

import sys
from pathlib import Path

import pandas as pd
from scipy import stats

from dfusion_bench.seeding import eval_seeds

template = sys.argv[1]
root = Path(__file__).parent
grid_seeds = {s for row in eval_seeds(8, 8) for s in row}
base = pd.read_csv(root / f"{template}-base" / "samples.csv").set_index(["prompt_index", "seed"])["score"]
rows = []
for folder in sorted(root.glob(f"{template}-*")):
    if not (folder / "samples.csv").is_file():
        continue
    s = pd.read_csv(folder / "samples.csv").set_index(["prompt_index", "seed"])["score"]
    fresh = s[[seed not in grid_seeds for _, seed in s.index]]
    d = (s - base.reindex(s.index)).dropna()
    p = stats.wilcoxon(d[d != 0]).pvalue if (d != 0).any() else float("nan")
    rows.append(
        {
            "model": folder.name.removeprefix(template + "-"),
            "n": len(s),
            "mean": s.mean(),
            "mean_fresh_seeds": fresh.mean(),
            "vs_base": d.mean(),
            "p_wilcoxon": p,
        }
    )
print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
