"""The catalogue: bad input and faults across every command, one parametrised test.

Each case states its command line, the exit code, and a regular expression that the ONE line on stderr must match
(no traceback, no "Usage:" block; only ``warning:`` lines about skipped input may come before it). Unless a case
says otherwise, it must also leave its folder exactly as it found it: a refusal writes nothing. Kinds:

* ``usage``: what click/typer reject while parsing — run through the installed ``dfusion`` entry point, so that a
  dependency's change of exception classes fails here;
* ``bounds``: a value outside its option's domain (the domains are declared with the options,
  :mod:`dfusion_bench.options`; ``tests/test_options.py`` walks every option) — one through the entry point;
* ``input``: bad values and folders that a command refuses before any work;
* ``place``: an output folder in a place that cannot be written;
* ``run``: bad resumes and damaged checkpoints of a finished training run (a copy of one made once per worker);
* ``lock``: a run folder that another process holds;
* ``fault``: a file-size limit, Ctrl-C, two writers at once — through the entry point.

``fast`` cases run in the fast tier (``pytest -m "not slow"``): they are refused before any model work. To add a
case (e.g. an option's bounds), append a :class:`Case` to ``CASES``.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from entry_point import dfusion_command, entry_env, make_read_only

from dfusion_bench import runlock
from dfusion_bench.cli import main
from dfusion_bench.models.loading import EMBEDDED_MODEL
from dfusion_bench.rl import checkpoint

pytestmark = pytest.mark.skipif(
    not (EMBEDDED_MODEL / "model_index.json").is_file(), reason="the embedded model is not installed"
)

SMALL = ("--prompts", "1", "--samples-per-prompt", "4", "--steps", "2")
FUSE = ("fuse", "--template", "shapes-objects", "--split", "train", "--out", "{out}", *SMALL)
TRAIN = ("train", "--method", "pg", "--out", "{out}", *SMALL, "--eval-samples-per-prompt", "1", "--epochs", "1")
EVAL = ("eval", "--template", "shapes-objects", "--split", "test", "--out", "{out}", "--prompts", "1")
EVAL += ("--samples-per-prompt", "1", "--steps", "2")
RESUME = ("train", "--method", "pg", "--out", "{run}", "--resume")
EVAL_RUN = ("eval", "--run", "{run}", "--split", "test", "--out", "{out}", "--samples-per-prompt", "1")
LORA2 = "run/checkpoints/epoch-0002/lora.safetensors"


Setup = Callable[[Path], Callable[[], None] | None]


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    argv: tuple[str, ...]  # after `dfusion`; {tmp}: the case's folder, {out} = {tmp}/out, {run}: a finished run
    code: int
    line: str  # regular expression the one stderr line must match
    fast: bool = True
    process: bool = False  # through the installed entry point (else dfusion_bench.cli.main, in this process)
    setup: tuple[Setup, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    fault: tuple = ()  # ("fsize", bytes) | ("sigint", glob to wait for) | ("held", folder) | ("twice",)
    check: Callable[[Path], None] | None = None  # replaces "the folder is unchanged"

    @property
    def param(self):
        marks = [] if self.fast else [pytest.mark.slow]
        return pytest.param(self, id=f"{self.kind}-{self.id}", marks=marks)


def usage(id: str, argv: tuple[str, ...], line: str) -> Case:
    return Case(id, "usage", argv, 2, line, process=True)


# ---- setups: prepare {tmp} before the command ---------------------------------------------------------------------


def non_empty_out(tmp: Path) -> None:
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")


def out_is_file(tmp: Path) -> None:
    (tmp / "out").write_text("a file")


def a_file(tmp: Path) -> None:
    (tmp / "file.txt").write_text("a file")


def empty_folder(name: str) -> Setup:
    return lambda tmp: (tmp / name).mkdir()


def empty_split(split: str) -> Setup:
    """A suite file ``{tmp}/empty-SPLIT.json`` whose SPLIT list is empty."""

    def setup(tmp: Path) -> None:
        entry = {"prompt": "a red circle and a blue square", "items": ["circle", "square"], "thresholds": [None, None]}
        other = "test" if split == "train" else "train"
        suite = {"name": f"empty-{split}", "description": "d", "source": "s", split: [], other: [entry]}
        (tmp / f"empty-{split}.json").write_text(json.dumps(suite))

    return setup


def broken_weights(tmp: Path) -> None:
    """A copy of the embedded pipeline whose UNet weights are cut in half."""
    shutil.copytree(EMBEDDED_MODEL, tmp / "model")
    weights = next((tmp / "model" / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def junk_folder(tmp: Path) -> None:
    (tmp / "junk").mkdir()
    (tmp / "junk" / "manifest.json").write_text("{}")
    (tmp / "junk" / "notes.txt").write_text("not a dfusion folder")


def read_only(name: str) -> Setup:
    def setup(tmp: Path):
        (tmp / name).mkdir()
        undo = make_read_only(tmp / name)
        if undo is None:
            pytest.skip("cannot make a read-only folder here")
        return undo

    return setup


def flip(relative: str, n: int = 64) -> Setup:
    """Flip ``n`` bytes near the end of a file (same size: only a checksum can tell)."""

    def setup(tmp: Path) -> None:
        path = tmp / relative
        data = bytearray(path.read_bytes())
        for i in range(n):
            data[-100 - i] ^= 0xFF
        path.write_bytes(bytes(data))

    return setup


def write(relative: str, text: str) -> Setup:
    return lambda tmp: (tmp / relative).write_text(text) and None


def remove(relative: str) -> Setup:
    def setup(tmp: Path) -> None:
        path = tmp / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


# ---- checks after a fault -----------------------------------------------------------------------------------------


def no_leftovers(tmp: Path) -> None:
    """No staging folder or temporary file anywhere under the case's folder."""
    left = [p for p in tmp.rglob(".*") if p.name.endswith((".partial", ".tmp", ".old"))]
    assert not left, left


def nothing_at_out(tmp: Path) -> None:
    assert not (tmp / "out").exists()
    no_leftovers(tmp)


def checkpoints_complete(tmp: Path) -> None:
    """Every checkpoint folder under --out is complete and verifies; latest.json names one of them."""
    run = tmp / "out"
    epochs = sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("epoch-*"))
    assert epochs and checkpoint.latest_epoch(run) == epochs[-1]
    for epoch in epochs:
        checkpoint.check_complete(run, epoch)
    assert (run / runlock.LOCK_NAME).read_text() == ""  # released cleanly
    no_leftovers(tmp)


def one_run(tmp: Path) -> None:
    """Exactly one writer's complete run: one config, one row per (epoch, split)."""
    rows = [json.loads(line) for line in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in rows] == [(e, s) for e in (0, 1) for s in ("train", "test")]
    checkpoints_complete(tmp)


# ---- the catalogue ------------------------------------------------------------------------------------------------

HELP = r".* \(see: dfusion {} --help\)$"
# fmt: off
# one case per line: a table (E501 is off for this file)
CASES = [
    # usage errors: one line, exit 2, for every command and group
    usage("unknown-flag", ("--nope",), r"^error: No such option: --nope \(see: dfusion --help\)$"),
    usage("unknown-command", ("nope",), r"No such command 'nope'"),
    usage("train-missing-method", ("train",), r"Missing option '--method'" + HELP.format("train")),
    usage("train-epochs-word", ("train", "--method", "dpo", "--epochs", "two"), r"'--epochs'.*two"),
    usage("train-lr-word", ("train", "--method", "dpo", "--lr", "abc"), r"'--lr'.*abc"),
    usage("train-prompts-fraction", ("train", "--method", "dpo", "--prompts", "1.5"), r"'--prompts'.*1\.5"),
    Case("train-epochs-0", "bounds", ("train", "--method", "dpo", "--epochs", "0"), 2, r"^error: --epochs 0\b.*>= 1", fast=False, process=True),
    Case("train-steps-0", "bounds", ("train", "--method", "dpo", "--steps", "0"), 2, r"^error: --steps 0\b.*>= 1"),
    Case("train-samples-0", "bounds", ("train", "--method", "dpo", "--samples-per-prompt", "0"), 2, r"^error: --samples-per-prompt 0\b.*>= 2"),
    Case("train-batch-size-0", "bounds", ("train", "--method", "dpo", "--batch-size", "0"), 2, r"^error: --batch-size 0\b.*>= 1"),
    Case("train-eval-every-0", "bounds", ("train", "--method", "dpo", "--eval-every", "0"), 2, r"^error: --eval-every 0\b.*>= 1"),
    Case("train-inner-epochs-0", "bounds", ("train", "--method", "dpo", "--inner-epochs", "0"), 2, r"^error: --inner-epochs 0\b.*>= 1"),
    Case("train-lora-rank-0", "bounds", ("train", "--method", "dpo", "--lora-rank", "0"), 2, r"^error: --lora-rank 0\b.*>= 1"),
    usage("train-seed-word", ("train", "--method", "dpo", "--seed", "x"), r"'--seed'.*\bx\b"),
    usage("train-flag-value", ("train", "--method", "dpo", "--fusion=yes"), r"'--fusion' does not take a value"),
    usage("train-no-value", ("train", "--method"), r"'--method' requires an argument" + HELP.format("train")),
    usage("train-extra-argument", ("train", "--method", "dpo", "extra"), r"unexpected extra argument.*extra"),
    usage("fuse-missing-template", ("fuse", "--split", "train", "--out", "o"), r"Missing option '--template'"),
    usage("fuse-missing-out", ("fuse", "--template", "paper-t1", "--split", "train"), r"Missing option '--out'"),
    usage("fuse-samples-word", (*FUSE, "--samples-per-prompt", "abc"), r"'--samples-per-prompt'.*abc"),
    Case("fuse-prompts-0", "bounds", (*FUSE, "--prompts", "0"), 2, r"^error: --prompts 0\b.*>= 1"),
    usage("fuse-guidance-word", (*FUSE, "--guidance", "high"), r"'--guidance'.*high"),
    usage("eval-missing-split", ("eval", "--out", "o"), r"Missing option '--split'" + HELP.format("eval")),
    usage("eval-epoch-word", (*EVAL, "--epoch", "last"), r"'--epoch'.*last"),
    Case("eval-samples-0", "bounds", (*EVAL, "--samples-per-prompt", "0"), 2, r"^error: --samples-per-prompt 0\b.*>= 1"),
    usage("report-missing-dir", ("report",), r"Missing argument 'DIR" + r".*" + HELP.format("report")),
    usage("report-no-value", ("report", "--x"), r"'--x' requires an argument" + HELP.format("report")),
    usage("model-unknown", ("model", "nope"), r"No such command 'nope'" + HELP.format("model")),
    usage("model-tiny-missing-out", ("model", "tiny"), r"Missing option '--out'" + HELP.format("model tiny")),
    usage("model-tiny-seed-word", ("model", "tiny", "--out", "o", "--seed", "x"), r"'--seed'.*\bx\b"),
    usage("templates-show-missing", ("templates", "show"), r"Missing argument" + HELP.format("templates show")),
    usage("templates-list-extra", ("templates", "list", "extra"), r"unexpected extra argument.*extra"),
    usage("world-unknown", ("world", "nope"), r"No such command 'nope'" + HELP.format("world")),
    usage("world-pretrain-minutes", ("world", "pretrain", "--out", "o", "--minutes", "soon"), r"'--minutes'.*soon"),
    usage("world-study-per-prompt", ("world", "study", "--template", "t", "--out", "o", "--per-prompt", "x"), r"'--per-prompt'"),
    usage("world-quality-per-prompt", ("world", "quality", "--out", "o", "--per-prompt", "x"), r"'--per-prompt'"),
    # values outside their option's domain (the list), refused before anything is written
    Case("lr-0", "bounds", (*TRAIN, "--lr", "0"), 2, r"^error: --lr 0(\.0)?: must be > 0"),
    Case("lr-negative", "bounds", (*TRAIN, "--lr", "-1"), 2, r"^error: --lr -1(\.0)?: must be > 0"),
    Case("lr-nan", "bounds", (*TRAIN, "--lr", "nan"), 2, r"^error: --lr nan: must be a finite number"),
    Case("beta-0", "bounds", (*TRAIN, "--method", "dpo", "--beta", "0"), 2, r"^error: --beta 0(\.0)?: must be > 0"),
    Case("beta-negative", "bounds", (*TRAIN, "--method", "dpo", "--beta", "-1"), 2, r"^error: --beta -1(\.0)?: must be > 0"),
    Case("clip-range-negative", "bounds", (*TRAIN, "--method", "ddpo", "--clip-range", "-1"), 2, r"^error: --clip-range -1(\.0)?: must be > 0"),
    Case("eta-above-1", "bounds", (*TRAIN, "--eta", "1.5"), 2, r"^error: --eta 1\.5: must be in \(0, 1\]"),
    Case("guidance-negative", "bounds", (*FUSE, "--guidance", "-1"), 2, r"^error: --guidance -1(\.0)?: must be >= 0"),
    Case("mask-resolution-0", "bounds", (*FUSE, "--mask-resolution", "0"), 2, r"^error: --mask-resolution 0: must be >= 1"),
    Case("threshold-above-1", "bounds", (*FUSE, "--threshold", "1.5"), 2, r"^error: --threshold 1\.5: must be .*a number in \[0, 1\]"),
    Case("threshold-negative", "bounds", (*TRAIN, "--fusion", "--threshold", "-0.2"), 2, r"^error: --threshold -0\.2: must be"),
    Case("seed-negative", "bounds", (*TRAIN, "--seed", "-1"), 2, r"^error: --seed -1: must be >= 0"),
    Case("lora-targets-unknown", "bounds", (*TRAIN, "--lora-targets", "nope"), 2, r"^error: --lora-targets: no module named 'nope' in this UNet"),
    # bad input refused by the command, before any work
    Case("unknown-suite", "input", (*FUSE, "--template", "no-such-suite"), 2, r"^error: unknown suite 'no-such-suite'"),
    Case("unknown-split", "input", (*FUSE, "--split", "validation"), 2, r"^error: (--split: )?unknown split 'validation'"),
    Case("unknown-scorer", "input", (*FUSE, "--scorer", "aesthetic"), 2, r"^error: (--scorer: )?unknown scorer 'aesthetic'"),
    Case("eta-0", "input", (*FUSE, "--eta", "0"), 2, r"^error: .*eta"),
    Case("too-few-samples", "input", (*FUSE, "--samples-per-prompt", "2"), 2, r"--samples-per-prompt: .*too few"),
    Case("no-model", "input", (*FUSE, "--model", "{tmp}/nope"), 2, r"no such model folder"),
    Case("not-a-pipeline", "input", (*FUSE, "--model", "{tmp}/model"), 2, r"no model_index\.json", setup=(empty_folder("model"),)),
    Case("truncated-weights", "input", (*FUSE, "--model", "{tmp}/model"), 2, r"^error: .*model.*(corrupt|truncat|damaged|incomplete)", setup=(broken_weights,)),
    Case("fuse-out-file", "input", FUSE, 2, r"--out .*out is a file", setup=(out_is_file,)),
    Case("fuse-out-not-empty", "input", FUSE, 2, r"--out .*out is not empty.*--overwrite", setup=(non_empty_out,)),
    Case("fuse-out-under-file", "input", (*FUSE, "--out", "{tmp}/file.txt/out"), 2, r"file\.txt is a file", setup=(a_file,)),
    Case("unknown-device", "input", (*FUSE, "--device", "tpu9"), 2, r"^error: --device tpu9: use cpu, cuda or cuda:N"),
    Case("unknown-dtype", "input", (*FUSE, "--dtype", "fp8"), 2, r"unknown dtype 'fp8'"),
    Case("threshold-word", "input", (*FUSE, "--threshold", "abc"), 2, r"^error: --threshold abc: must be 'suite', 'auto' or a number"),
    Case("fuse-empty-train", "input", (*FUSE, "--template", "{tmp}/empty-train.json"), 2, r"has no train prompts", setup=(empty_split("train"),)),
    Case("eval-empty-test", "input", (*EVAL, "--template", "{tmp}/empty-test.json"), 2, r"has no test prompts", setup=(empty_split("test"),)),
    Case("train-empty-train", "input", (*TRAIN, "--template", "{tmp}/empty-train.json"), 2, r"has no train prompts", setup=(empty_split("train"),)),
    Case("train-empty-test", "input", (*TRAIN, "--template", "{tmp}/empty-test.json"), 2, r"has no test prompts", setup=(empty_split("test"),)),
    Case("eval-run-and-model", "input", (*EVAL, "--run", "{tmp}", "--model", "{tmp}"), 2, r"--run .*--model.*not both"),
    Case("eval-epoch-without-run", "input", (*EVAL, "--epoch", "1"), 2, r"--epoch needs --run"),
    Case("eval-no-template", "input", ("eval", "--split", "test", "--out", "{out}"), 2, r"--template is required"),
    Case("eval-run-not-a-run", "input", ("eval", "--run", "{tmp}/junk", "--split", "test", "--out", "{out}"), 2, r"--run .*junk: not a training run folder", setup=(junk_folder,)),
    Case("train-unknown-method", "input", ("train", "--method", "ppo", "--out", "{out}"), 2, r"^error: --method: unknown method 'ppo'"),
    Case("train-eval-splits", "input", (*TRAIN, "--eval-splits", "val"), 2, r"^error: --eval-splits: unknown eval splits 'val'"),
    Case("train-timestep-fraction", "input", (*TRAIN, "--timestep-fraction", "0"), 2, r"--timestep-fraction"),
    Case("train-exclude-all-steps", "input", (*TRAIN, "--exclude-last-steps", "2"), 2, r"--exclude-last-steps"),
    Case("train-resume-nothing", "input", (*TRAIN, "--resume"), 2, r"--resume: .*holds no run"),
    Case("train-out-not-empty", "input", TRAIN, 2, r"--out .*out is not empty.*--overwrite", setup=(non_empty_out,)),
    Case("train-out-file", "input", TRAIN, 2, r"--out .*out is a file", setup=(out_is_file,)),
    Case("report-missing", "input", ("report", "{tmp}/nope", "--out", "{out}"), 2, r"nope does not exist"),
    Case("report-file", "input", ("report", "{tmp}/file.txt", "--out", "{out}"), 2, r"file\.txt is a file", setup=(a_file,)),
    Case("report-junk", "input", ("report", "{tmp}/junk", "--out", "{out}"), 2, r"^error: nothing to report in .*junk", setup=(junk_folder,)),
    Case("templates-unknown", "input", ("templates", "show", "no-such-suite"), 2, r"unknown suite 'no-such-suite'"),
    Case("templates-folder", "input", ("templates", "list"), 2, r"templates folder .* does not exist", env={"DFUSION_TEMPLATES": "/no/such/dir"}),
    Case("world-variant", "input", ("world", "study", "--template", "shapes-objects", "--out", "{out}", "--variants", "bogus"), 2, r"unknown variant 'bogus'"),
    Case("model-tiny-not-empty", "input", ("model", "tiny", "--out", "{out}"), 2, r"out already exists", setup=(non_empty_out,)),
    # places that cannot be written: refused before any work, naming the place
    Case("fuse-read-only", "place", (*FUSE, "--out", "{tmp}/ro/out"), 2, r"cannot write in .*/ro \(read-only", setup=(read_only("ro"),)),
    Case("train-read-only", "place", (*TRAIN, "--out", "{tmp}/ro/run"), 2, r"cannot write in .*/ro \(read-only", setup=(read_only("ro"),)),
    Case("eval-read-only", "place", (*EVAL, "--out", "{tmp}/ro/deep/out"), 2, r"cannot write in .*/ro \(read-only", setup=(read_only("ro"),)),
    # a finished 2-epoch run, resumed or evaluated badly
    Case("resume-fewer-epochs", "run", (*RESUME, "--epochs", "1"), 2, r"--resume --epochs 1: the run has finished epoch 2 already", fast=False),
    Case("resume-changed-option", "run", (*RESUME, "--epochs", "3", "--seed", "7"), 2, r"--resume: --seed differs", fast=False),
    Case("resume-flipped-lora", "run", (*RESUME, "--epochs", "3"), 2, r"epoch-0002: lora\.safetensors does not match its SHA-256", fast=False, setup=(flip(LORA2),)),
    Case("resume-flipped-state", "run", (*RESUME, "--epochs", "3"), 2, r"trainer_state\.pt does not match its SHA-256", fast=False, setup=(flip("run/checkpoints/epoch-0002/trainer_state.pt"),)),
    Case("resume-flipped-unlisted", "run", (*RESUME, "--epochs", "3"), 2, r"LoRA weights do not match the SHA-256 train_log\.jsonl recorded for epoch 2", fast=False, setup=(flip(LORA2), remove("run/checkpoints/epoch-0002/checksums.json"))),
    Case("resume-bad-checksums", "run", (*RESUME, "--epochs", "3"), 2, r"checksums\.json is unreadable", fast=False, setup=(write("run/checkpoints/epoch-0002/checksums.json", "{"),)),
    Case("resume-truncated-lora", "run", (*RESUME, "--epochs", "3"), 2, r"epoch-0002.*lora\.safetensors", fast=False, setup=(write(LORA2, "not weights"),)),
    Case("resume-bad-latest", "run", (*RESUME, "--epochs", "3"), 2, r"latest\.json is corrupt", fast=False, setup=(write("run/checkpoints/latest.json", "{nope"),)),
    Case("resume-bad-config", "run", (*RESUME, "--epochs", "3"), 2, r"config\.json: not a readable training configuration", fast=False, setup=(write("run/config.json", "[1,"),)),
    Case("resume-no-checkpoints", "run", (*RESUME, "--epochs", "3"), 2, r"holds no checkpoint yet.*--overwrite", fast=False, setup=(remove("run/checkpoints"),)),
    Case("rerun-finished", "run", (*TRAIN, "--out", "{run}"), 2, r"run is not empty.*--overwrite", fast=False),
    Case("eval-flipped-lora", "run", EVAL_RUN, 2, r"epoch-0002: lora\.safetensors does not match its SHA-256", fast=False, setup=(flip(LORA2),)),
    Case("eval-flipped-unlisted", "run", EVAL_RUN, 2, r"LoRA weights do not match the SHA-256", fast=False, setup=(flip(LORA2), remove("run/checkpoints/epoch-0002/checksums.json"))),
    Case("eval-missing-epoch", "run", (*EVAL_RUN, "--epoch", "7"), 2, r"--epoch 7: .* no checkpoint of that epoch \(latest: 2\)", fast=False),
    # another process holds the run folder
    Case("train-held", "lock", TRAIN, 2, r"out is in use by process \d+ on .*; wait for it", fault=("held", "out")),
    Case("resume-held", "lock", (*RESUME, "--epochs", "3"), 2, r"run is in use by process \d+ on ", fast=False, fault=("held", "run")),
    # faults, through the entry point
    Case("train-file-size-limit", "fault", ("train", "--method", "pg", "--out", "{out}", *SMALL, "--eval-samples-per-prompt", "1", "--epochs", "3"), 1, r"^error: cannot write .*out/checkpoints/epoch-0001/trainer_state\.pt: File too large; raise the file-size limit .*; the last complete checkpoint is epoch 0 .*resume with: dfusion train --out .*out --resume$", fast=False, process=True, fault=("fsize", 200_000), check=checkpoints_complete),
    Case("fuse-file-size-limit", "fault", FUSE, 1, r"^error: cannot write .*/out/samples\.safetensors: File too large", fast=False, process=True, fault=("fsize", 20_000), check=nothing_at_out),
    Case("eval-file-size-limit", "fault", EVAL, 1, r"^error: cannot write .*/out/grid\.png: File too large", fast=False, process=True, fault=("fsize", 1_000), check=nothing_at_out),
    Case("train-interrupted", "fault", (*TRAIN, "--epochs", "50"), 130, r"^interrupted at (the first evaluation \(epoch 0\)|epoch \d+ of 50); the last complete checkpoint is epoch \d+ \(.*out/checkpoints/epoch-\d{4}\); resume with: dfusion train --out .*out --resume$", fast=False, process=True, fault=("sigint", "out/checkpoints/epoch-0000/checksums.json"), check=checkpoints_complete),
    Case("train-interrupted-early", "fault", ("train", "--method", "pg", "--out", "{out}", "--prompts", "4", "--steps", "10", "--eval-samples-per-prompt", "8"), 130, r"^interrupted (before training started|at the first evaluation \(epoch 0\)); no checkpoint was complete, so nothing was kept in .*out; run the same command again$", fast=False, process=True, fault=("sigint", "out/config.json"), check=nothing_at_out),
    Case("fuse-interrupted", "fault", (*FUSE, "--prompts", "4", "--samples-per-prompt", "8", "--steps", "10"), 130, r"^interrupted; nothing was written to --out .*out$", fast=False, process=True, fault=("sigint", ".out.*.partial"), check=nothing_at_out),
    Case("eval-interrupted", "fault", (*EVAL, "--prompts", "8", "--samples-per-prompt", "8", "--steps", "10"), 130, r"^interrupted; nothing was written to --out .*out$", fast=False, process=True, fault=("sigint", ".out.*.partial"), check=nothing_at_out),
    Case("two-writers", "fault", TRAIN, 2, r"out is in use by process \d+|out is not empty", fast=False, process=True, fault=("twice",), check=one_run),
]
# fmt: on


# ---- running a case -----------------------------------------------------------------------------------------------


def _snapshot(tmp: Path) -> dict[str, tuple[int, int] | None]:
    """Every file's size and modification time, and every folder, under ``tmp`` (lock files aside: taking a lock to
    learn that a run is damaged is no write)."""
    shot = {}
    for path in tmp.rglob("*"):
        if path.name == runlock.LOCK_NAME:
            continue
        stat = path.lstat()
        shot[str(path.relative_to(tmp))] = None if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return shot


def _wait_for(tmp: Path, pattern: str, proc: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.time() + limit
    while not list(tmp.glob(pattern)):
        assert proc.poll() is None, f"the command ended before {pattern} appeared"
        assert time.time() < deadline, f"{pattern} did not appear"
        time.sleep(0.02)


def _in_process(argv: list[str], capsys, monkeypatch, env: dict[str, str]) -> tuple[int, str]:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def _through_entry_point(case: Case, argv: list[str], tmp: Path) -> tuple[int, str]:
    command, env = [*dfusion_command(), *argv], entry_env(**case.env)
    kind = case.fault[0] if case.fault else None
    if kind == "twice":
        procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        results = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
        assert results[0][0] == 0, results[0][1]  # one writer finishes its run ...
        return results[1]  # ... the other is refused
    limit = None
    if kind == "fsize":
        size = case.fault[1]

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=limit
    )
    if kind == "sigint":
        _wait_for(tmp, case.fault[1], proc)
        proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=600)[1]
    return proc.returncode, err


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A pg run of two epochs on the embedded model (made once per worker; cases get a copy)."""
    run = tmp_path_factory.mktemp("catalogue") / "run"
    argv = [a.format(out=run) for a in TRAIN]
    try:
        main([*argv[:-1], "2"])  # --epochs 2
    except SystemExit as exc:
        assert not exc.code
    return run


@pytest.mark.parametrize("case", [c.param for c in CASES])
def test_catalogue(case: Case, tmp_path: Path, request, capsys, monkeypatch) -> None:
    if "{run}" in " ".join(case.argv):
        shutil.copytree(request.getfixturevalue("finished_run"), tmp_path / "run")
    for setup in case.setup:
        undo = setup(tmp_path)
        if undo is not None:
            request.addfinalizer(undo)
    holder = None
    if case.fault and case.fault[0] == "held":
        holder, created = runlock.acquire(tmp_path / case.fault[1])
        request.addfinalizer(lambda: runlock.free(tmp_path / case.fault[1], holder, created))
    before = _snapshot(tmp_path)
    argv = [a.format(tmp=tmp_path, out=tmp_path / "out", run=tmp_path / "run") for a in case.argv]
    if case.process:
        code, err = _through_entry_point(case, argv, tmp_path)
    else:
        code, err = _in_process(argv, capsys, monkeypatch, case.env)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert code == case.code, err[-3000:]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err[-3000:]  # one line last: no traceback, no usage
    assert re.search(case.line, lines[0]), lines[0]
    if case.check is not None:
        case.check(tmp_path)
    else:
        assert _snapshot(tmp_path) == before  # refused: nothing written, nothing removed


def test_the_catalogue_is_large_and_covers_every_command() -> None:
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv[0] for c in CASES} | {" ".join(c.argv[:2]) for c in CASES}
    for command in ("fuse", "train", "eval", "report", "model", "templates", "world"):
        assert command in commands
