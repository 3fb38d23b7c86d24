"""Device preview: the grid's 18 cells (seed 0) on the candidate model, stopped at a deadline.

Partial metrics go to $OUT."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dfusion_bench.studies.grid import METHODS, SUITES, command, run_dir

limit = float(sys.argv[1])
root = Path(sys.argv[2])
out = Path(os.environ.get("OUT", "/tmp/out"))
model = sys.argv[3]
gpu_cells = set(sys.argv[4].split(","))  # e.g. dpo-plain,dpo-fusion,pg-fusion
extra_opts = sys.argv[5:]
root.mkdir(parents=True, exist_ok=True)
out.mkdir(parents=True, exist_ok=True)
env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
procs = []
start = time.time()
for suite in SUITES:
    for m in METHODS:
        for f in (False, True):
            run = run_dir(root, m, f, suite, 0)
            key = f"{m}-{'fusion' if f else 'plain'}"
            dev = ["--device", "cuda", "--dtype", "fp32"] if key in gpu_cells else []
            cmd = command(run, m, f, suite, 0, ["--model", model, *extra_opts, *dev])
            log = open(root / f"{run.name}.log", "w")
            procs.append((subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), run, key in gpu_cells))


def collect(final=False):
    rows, logs = [], []
    for p, run, gpu in procs:
        for name in ("metrics.jsonl", "train_log.jsonl"):
            f = run / name
            if f.is_file():
                for line in f.read_text().splitlines():
                    try:
                        r = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    rows.append({"run": run.name, "file": name, "gpu": gpu, **r})
        logtext = (root / f"{run.name}.log").read_text(errors="replace")
        logs.append(f"==== {run.name} rc={p.poll()} gpu={gpu}\n" + logtext[-1500:])
    tmp = out / "rows.jsonl.tmp"
    tmp.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tmp.replace(out / "rows.jsonl")
    (out / "logs.txt").write_text("\n".join(logs))
    print(
        f"t={time.time() - start:.0f}s collected {len(rows)} rows; "
        f"running {sum(p.poll() is None for p, _, _ in procs)}",
        flush=True,
    )


while time.time() - start < limit and any(p.poll() is None for p, _, _ in procs):
    time.sleep(20)
    collect()
for p, _, _ in procs:
    if p.poll() is None:
        p.terminate()
time.sleep(3)
collect(final=True)
