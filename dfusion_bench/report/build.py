"""``build_report(inputs, out)``: collect the inputs, then write curves, tables, copied images and ``index.html``.

The report folder is re-runnable: every file is written atomically and listed in ``report.json``; a rebuild removes
the files the previous build listed and this one did not write (a curve for a template no longer among the inputs),
and never touches anything else in the folder.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from dfusion_bench import atomic
from dfusion_bench.errors import UserError
from dfusion_bench.report.collect import Collection, Evaluation, Fuse, ReportWarning, Run, collect
from dfusion_bench.report.curves import curve_points, slug, write_curves
from dfusion_bench.report.html import Gallery, Page, Picture, fmt_score, render_page
from dfusion_bench.report.table_io import write_tables
from dfusion_bench.report.tables import build_tables

INDEX = "index.html"
MANIFEST = "report.json"
IMAGES_DIR = "images"
OWNED_DIRS = ("curves", "tables", IMAGES_DIR)  # the only folders a rebuild deletes stale files from
MAX_TRIPLES = 6


class _Images:
    """Copies images into the report folder under unique names and remembers what it wrote. An image whose bytes
    were copied before is not stored again: the page refers to the first copy (every run of a template and seed
    starts from the same base model and evaluation seeds, so their epoch-0 grids are identical)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: list[Path] = []
        self._names: set[str] = set()
        self._by_content: dict[str, str] = {}

    def folder(self, kind: str, name: str) -> str:
        """A fresh ``images/<kind>/<slug>`` folder name (suffixed ``-2``, ``-3`` ... when taken)."""
        base = f"{IMAGES_DIR}/{kind}/{slug(name)}"
        candidate, i = base, 1
        while candidate in self._names:
            i += 1
            candidate = f"{base}-{i}"
        self._names.add(candidate)
        return candidate

    def copy(self, source: Path, relative: str) -> str:
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest not in self._by_content:
            self.written.append(atomic.write_bytes(self.out / relative, data))
            self._by_content[digest] = relative
        return self._by_content[digest]


def _before_after(runs: Sequence[Run], images: _Images) -> list[Gallery]:
    """Per run and split: the evaluation grid at the first and the last evaluated epoch."""
    galleries = []
    for run in runs:
        folder = images.folder("runs", f"{run.template}-{run.scorer}-{run.label}-seed{run.seed}")
        pictures = []
        for split in ("train", "test"):
            epochs = [e for e in run.eval_dirs if run.eval_grid(e, split) is not None]
            shown = sorted({min(epochs), max(epochs)}) if epochs else []
            for epoch in shown:
                grid = run.eval_grid(epoch, split)
                assert grid is not None
                rows = run.metrics[(run.metrics["split"] == split) & (run.metrics["epoch"] == epoch)]
                score = fmt_score(rows["mean_score"].iloc[0]) if not rows.empty else ""
                when = "before" if epoch == shown[0] and len(shown) > 1 else "after" if len(shown) > 1 else "only"
                src = images.copy(grid, f"{folder}/{split}_epoch-{epoch:04d}.png")
                caption = f"{split}, epoch {epoch} ({when})" + (f": mean score {score}" if score else "")
                pictures.append(Picture(src, caption))
        if pictures:
            title = f"{run.template} · {run.label} · seed {run.seed}"
            galleries.append(Gallery(title, pictures, note=str(run.path)))
    return galleries


def _triples(fuses: Sequence[Fuse], images: _Images, limit: int) -> list[Gallery]:
    """Per fuse folder: its headline numbers and its first ``limit`` triple images."""
    galleries = []
    for fuse in fuses:
        m = fuse.manifest
        facts = {
            "triples": str(m.get("n_triples", "")),
            "samples": str(m.get("n_samples", "")),
            "target beats base": _pct(m.get("target_beats_base_rate")),
            "mean gain target − base": fmt_score(_float(m.get("mean_gain_target_vs_base"))),
            "mean gain reference − base": fmt_score(_float(m.get("mean_gain_reference_vs_base"))),
            "UNet evals per target step": fmt_score(_float(m.get("unet_evals_per_target_step"))),
        }
        facts = {k: v for k, v in facts.items() if v}
        folder = images.folder("fuse", fuse.path.name)
        pictures = []
        for image in fuse.images[:limit]:
            src = images.copy(image, f"{folder}/{image.name}")
            pictures.append(Picture(src, _triple_caption(fuse, image)))
        template = fuse.config.get("template") or ""
        galleries.append(Gallery(f"{fuse.path.name} {template}".strip(), pictures, note=str(fuse.path), facts=facts))
    return galleries


def _triple_caption(fuse: Fuse, image: Path) -> str:
    caption = f"triple {image.stem.lstrip('t') or '0'}"
    table = fuse.triples
    try:
        index = int(image.stem[1:])
    except ValueError:
        return caption
    if table is None or "triple" not in table or not (table["triple"] == index).any():
        return caption
    row = table[table["triple"] == index].iloc[0]
    parts = [f"{role} {fmt_score(row.get(f'{role}_score'))}" for role in ("reference", "base", "target")]
    prompt = f"“{row['prompt']}”: " if "prompt" in row and isinstance(row["prompt"], str) else ""
    return f"{caption}: {prompt}" + " | ".join(p for p in parts if not p.endswith(" "))


def _evals(evals: Sequence[Evaluation], images: _Images) -> list[Gallery]:
    galleries = []
    for ev in evals:
        if ev.grid is None:
            continue
        s = ev.summary
        folder = images.folder("evals", ev.path.name)
        scores = "; ".join(
            f"{name}: {fmt_score(_float(v.get('mean_score')))}"
            for name, v in s["scorers"].items()
            if isinstance(v, dict)
        )
        caption = f"{s.get('template', '')} {s.get('split', '')} prompts — {scores}"
        picture = Picture(images.copy(ev.grid, f"{folder}/grid.png"), caption)
        galleries.append(Gallery(ev.path.name, [picture], note=str(ev.path)))
    return galleries


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _pct(value: object) -> str:
    number = _float(value)
    return "" if number is None or number != number else f"{number:.0%}"


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete files the previous build listed in ``report.json`` that this build did not write (owned folders only)."""
    try:
        previous = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return
    root = out.resolve()
    emptied: set[Path] = set()
    for name in previous:
        if not isinstance(name, str) or name in keep or name.split("/")[0] not in OWNED_DIRS:
            continue
        path = (out / name).resolve()
        if root not in path.parents or not path.is_file():
            continue
        path.unlink()
        emptied.update(p for p in path.parents if root in p.parents)
    for folder in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def _relay(caught: list[warnings.WarningMessage]) -> list[str]:
    """Re-emit recorded warnings to the caller (report warnings once each); return the report warnings' texts."""
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, ReportWarning)))
    for w in caught:
        if not issubclass(w.category, ReportWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for note in notes:
        warnings.warn(note, ReportWarning, stacklevel=3)
    return notes


def _build(
    collection: Collection, inputs: Sequence[Path], out: Path, x: str, max_triples: int
) -> tuple[list[Path], Page]:
    """Write curves, tables and images; return the files written and the page that shows them."""
    points = curve_points(collection.runs)
    curves = write_curves(points, out, x=x)
    tables = build_tables(collection.runs, collection.evals, collection.fuses, curves=points)
    written = write_tables(tables, out)
    written += [out / c.png for c in curves] + [out / c.svg for c in curves]
    images = _Images(out)
    before_after = _before_after(collection.runs, images)
    triples = _triples(collection.fuses, images, max_triples)
    evals = _evals(collection.evals, images)
    written += images.written
    return written, Page(
        title="dfusion report",
        generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        inputs=[str(p) for p in inputs],
        counts={"runs": len(collection.runs), "evals": len(collection.evals), "fuse folders": len(collection.fuses)},
        notes=[],
        curves=curves,
        tables=tables,
        triples=triples,
        before_after=before_after,
        evals=evals,
    )


def build_report(
    inputs: Sequence[str | Path],
    out: str | Path = "results/report",
    *,
    x: str = "epoch",
    max_triples: int = MAX_TRIPLES,
) -> Path:
    """Build the report of ``inputs`` (run, eval and fuse folders, or folders holding them) in ``out``.

    Returns the path of ``index.html``. Skipped or partly used input is reported as :class:`ReportWarning` (and
    listed on the page); nothing usable, a missing input or ``out`` being a file is a :class:`UserError`.
    """
    out = Path(out)
    paths = [Path(p) for p in inputs]
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for the report")
    if x not in ("epoch", "samples_seen"):
        raise UserError(f"x axis must be epoch or samples_seen, not {x!r}")
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recording:
            warnings.simplefilter("always", ReportWarning)
            try:
                collection = collect(paths, exclude=[out])
                written, page = _build(collection, paths, out, x, max_triples)
            finally:
                caught = list(recording)
    finally:
        notes = _relay(caught)  # also when the build fails: the warnings say what was skipped and why
    page.notes = notes
    index = atomic.write_text(out / INDEX, render_page(page))
    files = sorted({p.relative_to(out).as_posix() for p in [*written, index]})
    _remove_stale(out, set(files))
    record = {"format": "dfusion-report/1", "generated": page.generated, "inputs": page.inputs, "notes": notes}
    atomic.write_json(out / MANIFEST, {**record, "files": files})
    return index
