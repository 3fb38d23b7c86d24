"""Device pilot: does DPOK's KL term (pg --kl-weight 0.01) stop pg + fusion's collapse on the shipped model?

Runs the grid's configuration (8 epochs, 8 prompts x 8 samples) for pg with and without fusion on each suite, all
on the GPU, evaluating the train split at epochs 0, 4 and 8 with 48 fixed seeds per prompt (384 images), and copies
the metrics to $OUT as they come. Usage: python drive.py LIMIT_S ROOT CELL... where CELL is method:fusion:suite:kl.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dfusion_bench.studies.grid import command, run_dir

limit, root = float(sys.argv[1]), Path(sys.argv[2])
out = Path(os.environ.get("OUT", "/tmp/out"))
root.mkdir(parents=True, exist_ok=True)
out.mkdir(parents=True, exist_ok=True)
env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
override = ["--eval-every", "4", "--eval-samples-per-prompt", "48", "--eval-splits", "train"]
override += ["--exclude-last-steps", "0"]  # every step trained, as the grid did then (GRID_CONFIG now leaves 3 out)
procs, start = [], time.time()
for cell in sys.argv[3:]:
    method, fusion, suite, kl = cell.split(":")
    run = run_dir(root, method, fusion == "fusion", suite, 0)
    run = run.with_name(f"{run.name}-kl{kl}")
    cmd = command(run, method, fusion == "fusion", suite, 0, [*override, "--kl-weight", kl, "--device", "cuda"])
    log = open(root / f"{run.name}.log", "w")  # noqa: SIM115 - closed at exit
    procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), run))


def collect() -> None:
    rows, logs = [], []
    for proc, run in procs:
        for name in ("metrics.jsonl", "train_log.jsonl"):
            path = run / name
            for line in path.read_text().splitlines() if path.is_file() else []:
                try:
                    rows.append({"run": run.name, "file": name, **json.loads(line)})
                except json.JSONDecodeError:
                    continue
        text = (root / f"{run.name}.log").read_text(errors="replace")
        logs.append(f"==== {run.name} rc={proc.poll()}\n{text[-1500:]}")
    tmp = out / "rows.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out / "rows.jsonl")
    (out / "logs.txt").write_text("\n".join(logs))
    running = sum(p.poll() is None for p, _ in procs)
    print(f"t={time.time() - start:.0f}s rows={len(rows)} running={running}", flush=True)


while time.time() - start < limit and any(p.poll() is None for p, _ in procs):
    time.sleep(20)
    collect()
for proc, _ in procs:
    if proc.poll() is None:
        proc.terminate()
time.sleep(3)
collect()
