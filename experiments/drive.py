"""Run training processes side by side on a machine lent for a limited time, and copy what they have written so far
to ``$OUT`` every ``poll_s`` seconds, so that a session cut short still brings its rows back.

The device drivers (``experiments.device_pg_kl.drive``, ``experiments.preview_h100.drive``) only decide which
``dfusion train`` commands to run; starting them, collecting their ``metrics.jsonl`` and ``train_log.jsonl`` rows
into ``$OUT/rows.jsonl`` (one JSON object per row, with the run's name and the file's) and the tail of each log into
``$OUT/logs.txt``, and stopping them at the deadline happen here.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

#: The files of a run folder whose rows are collected.
ROW_FILES = ("metrics.jsonl", "train_log.jsonl")
LOG_TAIL = 1500  # characters of each process's output kept in logs.txt


@dataclass
class Job:
    """One training process: its command, its run folder, the file its output goes to, and extra columns that every
    row of its (and its log header) carries, e.g. ``{"gpu": True}``."""

    cmd: list[str]
    run: Path
    log: Path
    tags: dict[str, object] = field(default_factory=dict)


def child_env() -> dict[str, str]:
    """One CPU thread per process (several share the machine), unbuffered output (the logs are read while running)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def rows_of(job: Job) -> list[dict]:
    """The rows written so far by ``job``'s run; a line still being written (not yet valid JSON) is skipped."""
    rows = []
    for name in ROW_FILES:
        path = job.run / name
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                rows.append({"run": job.run.name, "file": name, **job.tags, **json.loads(line)})
            except json.JSONDecodeError:
                continue
    return rows


def log_entry(job: Job, returncode: int | None) -> str:
    tags = "".join(f" {k}={v}" for k, v in job.tags.items())
    text = job.log.read_text(errors="replace") if job.log.is_file() else ""
    return f"==== {job.run.name} rc={returncode}{tags}\n{text[-LOG_TAIL:]}"


def collect(procs: list[tuple[subprocess.Popen, Job]], out: Path) -> int:
    """Write every job's rows to ``out/rows.jsonl`` (replaced whole, never half-written) and the logs' tails to
    ``out/logs.txt``; return the number of rows."""
    rows = [row for _, job in procs for row in rows_of(job)]
    tmp = out / "rows.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out / "rows.jsonl")
    (out / "logs.txt").write_text("\n".join(log_entry(job, proc.poll()) for proc, job in procs))
    return len(rows)


def drive(jobs: list[Job], limit_s: float, out: Path, poll_s: float = 20.0, grace_s: float = 3.0) -> None:
    """Start every job, collect every ``poll_s`` seconds until all have ended or ``limit_s`` has passed, terminate
    those still running, and collect once more after ``grace_s`` seconds."""
    out.mkdir(parents=True, exist_ok=True)
    env, start, logs = child_env(), time.time(), []
    procs: list[tuple[subprocess.Popen, Job]] = []
    try:
        for job in jobs:
            job.log.parent.mkdir(parents=True, exist_ok=True)
            log: TextIO = open(job.log, "w")  # noqa: SIM115 - closed below, after the process has ended
            logs.append(log)
            procs.append((subprocess.Popen(job.cmd, env=env, stdout=log, stderr=subprocess.STDOUT), job))

        def report() -> None:
            n = collect(procs, out)
            running = sum(p.poll() is None for p, _ in procs)
            print(f"t={time.time() - start:.0f}s rows={n} running={running}", flush=True)

        while time.time() - start < limit_s and any(p.poll() is None for p, _ in procs):
            time.sleep(poll_s)
            report()
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        time.sleep(grace_s)
        report()
    finally:
        for log in logs:
            log.close()
