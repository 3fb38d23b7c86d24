"""Find training runs, eval folders and fuse folders among the report's inputs and read them into DataFrames.

The folder formats are fixed by ``dfusion train``, ``dfusion eval`` and ``dfusion fuse``; this module only reads them.
A folder is recognised by its marker files (``run.json`` with its ``command``, ``metrics.jsonl``, ``summary.json``,
``manifest.json``); a folder that is none of these is searched one or two levels down, so ``dfusion report runs/``
works. Damaged input that can be skipped (a truncated last line of ``metrics.jsonl``, a run with no metrics yet) is
skipped with a :class:`ReportWarning`; input that yields nothing usable is a :class:`UserError`.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from dfusion_bench.errors import UserError

SPLITS = ("train", "test")
SEARCH_DEPTH = 2  # levels below a given folder searched for run/eval/fuse folders
_EPOCH_DIR = re.compile(r"^epoch-(\d+)$")
_METRIC_KEYS = ("epoch", "split", "mean_score")


class ReportWarning(UserWarning):
    """Input that the report skipped or could only partly use (the report is still built)."""


def warn(message: str) -> None:
    """Emit a :class:`ReportWarning` (the CLI prints these as one line each)."""
    warnings.warn(message, ReportWarning, stacklevel=2)


def method_label(method: str | None, fusion: bool | None) -> str:
    """The legend/table name of a configuration: ``"dpo + D-Fusion"``, ``"dpo"`` or ``"base"``."""
    name = method or "base"
    return f"{name} + D-Fusion" if fusion else name


@dataclass
class Run:
    """One ``dfusion train`` folder: its configuration, evaluation metrics, training log and eval epochs."""

    path: Path
    template: str
    method: str
    fusion: bool
    seed: int
    scorer: str
    metrics: pd.DataFrame
    train_log: pd.DataFrame
    eval_dirs: dict[int, Path]

    @property
    def label(self) -> str:
        return method_label(self.method, self.fusion)

    def last_epoch(self, split: str) -> int | None:
        """The last epoch evaluated on ``split`` (None when the split was never evaluated)."""
        rows = self.metrics[self.metrics["split"] == split]
        return None if rows.empty else int(rows["epoch"].max())

    def eval_csv(self, epoch: int, split: str) -> Path | None:
        path = self.eval_dirs.get(epoch)
        return path / f"{split}.csv" if path is not None and (path / f"{split}.csv").is_file() else None

    def eval_grid(self, epoch: int, split: str) -> Path | None:
        path = self.eval_dirs.get(epoch)
        return path / f"{split}.png" if path is not None and (path / f"{split}.png").is_file() else None


@dataclass
class Evaluation:
    """One ``dfusion eval`` folder: its summary, per-sample rows and image grid."""

    path: Path
    summary: dict[str, Any]
    samples: pd.DataFrame | None
    grid: Path | None
    model_weights: str | None = None  # the evaluated pipeline's weights digest (run.json's model_digest)
    sampler: dict[str, Any] | None = None  # steps, eta, guidance (summary.json; absent in older folders)


@dataclass
class Fuse:
    """One ``dfusion fuse`` folder: its manifest, triples table, triple images and run configuration."""

    path: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    triples: pd.DataFrame | None
    images: list[Path]


@dataclass
class Collection:
    """Everything found among the inputs."""

    runs: list[Run] = field(default_factory=list)
    evals: list[Evaluation] = field(default_factory=list)
    fuses: list[Fuse] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.runs or self.evals or self.fuses)


# ---- reading files -------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None (with a warning) when it is unreadable or not an object."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warn(f"{path}: unreadable JSON ({exc.__class__.__name__}); skipped")
        return None
    if not isinstance(obj, dict):
        warn(f"{path}: expected a JSON object; skipped")
        return None
    return obj


def read_jsonl(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; unparsable lines and objects lacking ``required`` keys are skipped.

    A killed run can leave its last line half written; that line (or any other bad one) costs a warning, not the run.
    """
    records: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        warn(f"{path}: unreadable ({exc.__class__.__name__}); skipped")
        return records
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            warn(f"{path}:{number}: unparsable line skipped (truncated by a killed run?)")
            continue
        if not isinstance(obj, dict) or any(obj.get(key) is None for key in required):
            warn(f"{path}:{number}: line lacks {', '.join(required)}; skipped")
            continue
        records.append(obj)
    return records


def _metrics_frame(path: Path, scorer: str) -> pd.DataFrame:
    """``metrics.jsonl`` as a DataFrame, one row per (epoch, split); a repeated pair keeps its last line. ``facts``
    holds the line's ``{fact: rate}`` dict (NA in lines written before facts were recorded)."""
    columns = ["epoch", "split", "mean_score", "aligned_rate", "samples_seen", "wall_time_s", "scorer", "n", "facts"]
    records = read_jsonl(path, _METRIC_KEYS) if path.is_file() else []
    frame = pd.DataFrame.from_records(records)
    for column in columns:
        if column not in frame:
            frame[column] = pd.NA
    frame = frame[columns].copy()
    frame["scorer"] = frame["scorer"].fillna(scorer).astype(str)
    frame["split"] = frame["split"].astype(str)
    frame["epoch"] = frame["epoch"].astype(int)
    for column in ("mean_score", "aligned_rate", "samples_seen", "wall_time_s", "n"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame = frame[frame["split"].isin(SPLITS)]
    frame = frame.drop_duplicates(["epoch", "split"], keep="last")
    return frame.sort_values(["split", "epoch"]).reset_index(drop=True)


def _train_log_frame(path: Path) -> pd.DataFrame:
    """``train_log.jsonl`` as a DataFrame; the ``timing`` dict is flattened into ``<phase>`` columns."""
    records = read_jsonl(path, ("epoch",)) if path.is_file() else []
    rows = []
    for record in records:
        timing = record.get("timing") if isinstance(record.get("timing"), dict) else {}
        rows.append({**{k: v for k, v in record.items() if k != "timing"}, **timing})
    frame = pd.DataFrame.from_records(rows)
    if not frame.empty:
        frame = frame.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)
    return frame


def _eval_dirs(path: Path) -> dict[int, Path]:
    eval_root = path / "eval"
    if not eval_root.is_dir():
        return {}
    found = {}
    for child in eval_root.iterdir():
        match = _EPOCH_DIR.match(child.name)
        if match and child.is_dir():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def read_run(path: Path) -> Run | None:
    """A training run folder, or None (with a warning) when it has no usable configuration or metrics."""
    info = _read_json(path / "run.json") if (path / "run.json").is_file() else None
    if info is None:
        warn(f"{path}: training run without a readable run.json; skipped")
        return None
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    missing = [key for key in ("method", "template") if not config.get(key)]
    if missing:
        warn(f"{path}/run.json: config lacks {', '.join(missing)}; skipped")
        return None
    metrics = _metrics_frame(path / "metrics.jsonl", str(config.get("scorer") or "score"))
    if metrics.empty:
        warn(f"{path}: no complete line in metrics.jsonl yet; skipped")
        return None
    scorer = str(config.get("scorer") or metrics["scorer"].iloc[0])
    seed = config.get("seed", info.get("seeds", {}).get("seed") if isinstance(info.get("seeds"), dict) else None)
    return Run(
        path=path,
        template=str(config["template"]),
        method=str(config["method"]),
        fusion=_as_bool(config.get("fusion", False)),
        seed=int(seed) if seed is not None else 0,
        scorer=scorer,
        metrics=metrics,
        train_log=_train_log_frame(path / "train_log.jsonl"),
        eval_dirs=_eval_dirs(path),
    )


def read_samples_csv(path: Path) -> pd.DataFrame | None:
    """A per-sample CSV (prompt_index, prompt, seed, scorer, score, aligned, facts), or None when unreadable."""
    try:
        frame = pd.read_csv(path, keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        warn(f"{path}: unreadable CSV ({exc.__class__.__name__}); skipped")
        return None
    if not {"prompt_index", "score"} <= set(frame.columns):
        warn(f"{path}: lacks prompt_index/score columns; skipped")
        return None
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    if "aligned" in frame:
        frame["aligned"] = frame["aligned"].map(_aligned_value).astype(float)
    return frame


def _aligned_value(value: Any) -> float:
    if value is None or (isinstance(value, float) and value != value):
        return float("nan")
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "1.0", "yes"):
            return 1.0
        if lowered in ("false", "0", "0.0", "no"):
            return 0.0
        return float("nan")
    return float(bool(value))


def read_eval(path: Path) -> Evaluation | None:
    """An eval folder, or None (with a warning) when its summary is unusable."""
    summary = _read_json(path / "summary.json")
    if summary is None or not isinstance(summary.get("scorers"), dict) or not summary["scorers"]:
        if summary is not None:
            warn(f"{path}/summary.json: no scorers; skipped")
        return None
    samples = read_samples_csv(path / "samples.csv") if (path / "samples.csv").is_file() else None
    grid = path / "grid.png"
    info = _read_json(path / "run.json") if (path / "run.json").is_file() else None
    digest = info.get("model_digest") if info is not None else None
    weights = digest.get("weights") if isinstance(digest, dict) else None
    sampler = summary.get("sampler")
    return Evaluation(
        path=path,
        summary=summary,
        samples=samples,
        grid=grid if grid.is_file() else None,
        model_weights=str(weights) if weights else None,
        sampler=sampler if isinstance(sampler, dict) else None,
    )


def is_fuse_manifest(manifest: dict[str, Any]) -> bool:
    """Whether a manifest is ``dfusion fuse``'s: its format tag, or (older folders) its counts and triples."""
    tagged = str(manifest.get("format", "")).startswith("dfusion-fuse/")
    return tagged or (isinstance(manifest.get("triples"), list) and {"n_samples", "n_triples"} <= manifest.keys())


def read_fuse(path: Path) -> Fuse | None:
    """A fuse folder, or None (with a warning) when its manifest is unusable."""
    manifest = _read_json(path / "manifest.json")
    if manifest is None:
        return None
    if not is_fuse_manifest(manifest):
        if not str(manifest.get("format", "")).startswith("dfusion-report/"):  # a report folder is no input
            warn(f"{path}/manifest.json: not written by dfusion fuse (no format, counts or triples); skipped")
        return None
    info = _read_json(path / "run.json") if (path / "run.json").is_file() else None
    config = info.get("config", {}) if info and isinstance(info.get("config"), dict) else {}
    triples = None
    if (path / "triples.csv").is_file():
        try:
            triples = pd.read_csv(path / "triples.csv")
        except (OSError, ValueError, pd.errors.ParserError):
            warn(f"{path}/triples.csv: unreadable; triples table left out")
    images = sorted((path / "images" / "triples").glob("t*.png"))
    return Fuse(path=path, manifest=manifest, config=config, triples=triples, images=images)


# ---- finding folders -----------------------------------------------------------------------------------------------


def folder_kind(path: Path) -> str | None:
    """``"run"``, ``"eval"``, ``"fuse"`` or None, from the folder's marker files."""
    command, has_info, readable = None, (path / "run.json").is_file(), True
    if has_info:
        try:
            info = json.loads((path / "run.json").read_text(encoding="utf-8"))
            command = info.get("command") if isinstance(info, dict) else None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            readable = False
    if command == "train" or (command is None and (path / "metrics.jsonl").is_file()):
        return "run"
    if command == "eval" or (path / "summary.json").is_file():
        return "eval"
    if command == "fuse" or (path / "manifest.json").is_file():
        return "fuse"
    if has_info and not readable:
        return "run"  # a damaged run.json: read_run says so, rather than the folder being silently passed over
    return None


def _candidates(path: Path, depth: int, exclude: set[Path]) -> Iterable[tuple[Path, str]]:
    """Report folders at ``path`` or up to ``depth`` levels below it (hidden and excluded folders skipped)."""
    kind = folder_kind(path)
    if kind is not None:
        yield path, kind
        return
    if depth == 0:
        return
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return
    for child in children:
        if child.resolve() in exclude:
            continue
        yield from _candidates(child, depth - 1, exclude)


def collect(inputs: Sequence[Path], exclude: Sequence[Path] = ()) -> Collection:
    """Read every run, eval and fuse folder among ``inputs`` (each a folder of one kind, or a folder holding them).

    ``exclude`` (the report's own output folder) is never searched. A missing path, or inputs holding nothing
    usable, is a :class:`UserError`.
    """
    if not inputs:
        raise UserError("no input folders; give run, eval or fuse folders (or a folder holding them)")
    skip = {Path(p).resolve() for p in exclude}
    found = Collection()
    seen: set[Path] = set()
    readers = {"run": (read_run, found.runs), "eval": (read_eval, found.evals), "fuse": (read_fuse, found.fuses)}
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise UserError(f"{path} does not exist; give a run, eval or fuse folder")
        if not path.is_dir():
            raise UserError(f"{path} is a file; give a run, eval or fuse folder (or a folder holding them)")
        hits = list(_candidates(path, SEARCH_DEPTH, skip))
        if not hits:
            warn(f"{path}: no run, eval or fuse folder within {SEARCH_DEPTH} levels; ignored")
        for folder, kind in hits:
            key = folder.resolve()
            if key in seen:
                continue
            seen.add(key)
            reader, into = readers[kind]
            item = reader(folder)
            if item is not None:
                into.append(item)
    if not found:
        names = ", ".join(str(p) for p in inputs)
        raise UserError(f"nothing to report in {names}: no usable dfusion train/eval/fuse folder found")
    found.runs = _dedupe_runs(found.runs)
    return found


def _dedupe_runs(runs: list[Run]) -> list[Run]:
    """One run per (template, scorer, method, fusion, seed): seeds are the replicates, so a repeat would count twice.

    The run that reached the latest epoch wins (ties: the later path); the others are reported and left out.
    """
    best: dict[tuple[Any, ...], Run] = {}
    for run in sorted(runs, key=lambda r: str(r.path)):
        key = (run.template, run.scorer, run.method, run.fusion, run.seed)
        if key in best:
            old = best[key]
            keep = run if int(run.metrics["epoch"].max()) >= int(old.metrics["epoch"].max()) else old
            drop = old if keep is run else run
            warn(f"{drop.path}: same template, method, fusion and seed as {keep.path}; left out")
            best[key] = keep
        else:
            best[key] = run
    return sorted(best.values(), key=lambda r: (r.template, r.scorer, r.method, r.fusion, r.seed, str(r.path)))
