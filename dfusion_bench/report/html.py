"""``index.html``: one self-contained page (inline CSS, no script, no network) showing the whole report.

Everything it shows lives inside the report folder and is referenced by a relative path, so the folder can be zipped,
moved, or opened from disk with ``file://`` in any browser. Tables are rendered from their display DataFrames.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import pandas as pd

from dfusion_bench.report.curves import CurveFile
from dfusion_bench.report.facts import metric_label, order_metrics
from dfusion_bench.report.table_io import TABLES_DIR, Table

HIDDEN_TABLES = ("curves",)  # too long to show; linked instead

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24; margin: 0;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin-top: 36px; border-bottom: 2px solid #dde1e6;
padding-bottom: 4px; } h3 { font-size: 16px; margin: 22px 0 6px; } h4 { font-size: 14px; margin: 14px 0 4px; }
p.meta, p.desc, figcaption, .links { color: #57606a; font-size: 13px; }
nav a { margin-right: 14px; }
.notes { background: #fff8e5; border: 1px solid #f0d58a; padding: 8px 14px; border-radius: 4px; }
.notes li { font-size: 13px; }
table.data { border-collapse: collapse; margin: 6px 0 4px; font-size: 13px; font-variant-numeric: tabular-nums; }
table.data th, table.data td { padding: 3px 9px; border-bottom: 1px solid #e4e7eb; text-align: left; }
table.data th { background: #eef1f4; }
table.data tr:nth-child(even) td { background: #fafbfc; }
.scroll { overflow-x: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; } figure img { max-width: 100%; border: 1px solid #d0d7de; image-rendering: pixelated; }
.curves figure { width: 540px; } .curves img { width: 100%; image-rendering: auto; border: none; }
.pair figure { max-width: 540px; }
"""


@dataclass
class Picture:
    """An image in the report folder (``src`` relative to it), with a caption and an optional link."""

    src: str
    caption: str
    link: str | None = None


@dataclass
class Gallery:
    """A titled group of pictures, optionally with a small key/value table above them."""

    title: str
    pictures: list[Picture]
    note: str = ""
    facts: dict[str, str] = field(default_factory=dict)


@dataclass
class Page:
    """Everything ``index.html`` shows."""

    title: str
    generated: str
    inputs: list[str]
    counts: dict[str, int]
    notes: list[str]
    curves: list[CurveFile]
    tables: dict[str, Table]
    triples: list[Gallery]
    before_after: list[Gallery]
    evals: list[Gallery]


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _attr_path(path: str) -> str:
    """A relative path as a safe attribute value (each segment percent-escaped where needed)."""
    return esc(quote(path, safe="/._-"))


def render_table(table: Table) -> str:
    frame = table.display
    body = frame.to_html(index=False, escape=True, border=0, classes="data", na_rep="")
    links = " · ".join(
        f'<a href="{_attr_path(f"{TABLES_DIR}/{table.name}.{ext}")}">{label}</a>'
        for ext, label in (("csv", "CSV"), ("parquet", "parquet"), ("md", "Markdown"), ("tex", "LaTeX"))
    )
    return (
        f'<h3 id="table-{esc(table.name)}">{esc(table.title)}</h3>\n<p class="desc">{esc(table.description)}</p>\n'
        f'<div class="scroll">{body}</div>\n<p class="links">{links}</p>'
    )


def _figure(picture: Picture) -> str:
    img = f'<img src="{_attr_path(picture.src)}" alt="{esc(picture.caption)}">'
    if picture.link:
        img = f'<a href="{_attr_path(picture.link)}">{img}</a>'
    return f"<figure>{img}<figcaption>{esc(picture.caption)}</figcaption></figure>"


def render_gallery(gallery: Gallery, css_class: str = "gallery") -> str:
    parts = [f"<h4>{esc(gallery.title)}</h4>"]
    if gallery.note:
        parts.append(f'<p class="desc">{esc(gallery.note)}</p>')
    if gallery.facts:
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in gallery.facts.items())
        parts.append(f'<table class="data">{rows}</table>')
    parts.append(f'<div class="{css_class}">' + "".join(_figure(p) for p in gallery.pictures) + "</div>")
    return "\n".join(parts)


def _curve_order(curve: CurveFile, ranks: dict[str, int]) -> tuple[object, ...]:
    """Held-out prompts first, then train; within a split the aligned rate, each fact rate, then the mean score."""
    split = {"test": 0, "train": 1}.get(curve.split, 2)
    return (curve.scorer, split, curve.split, ranks.get(curve.metric, len(ranks)), curve.metric)


def render_curves(curves: Sequence[CurveFile]) -> str:
    parts = []
    ranks = {m: i for i, m in enumerate(order_metrics(c.metric for c in curves))}
    for template in sorted({c.template for c in curves}):
        parts.append(f"<h3>{esc(template)}</h3>")
        mine = sorted((c for c in curves if c.template == template), key=lambda c: _curve_order(c, ranks))
        figures = [
            Picture(
                c.png,
                f"{c.split} prompts, {metric_label(c.metric)} ({c.scorer})"
                + (f"; {c.note}" if c.note else "")
                + "; click for SVG",
                c.svg,
            )
            for c in mine
        ]
        parts.append('<div class="gallery curves">' + "".join(_figure(f) for f in figures) + "</div>")
    return "\n".join(parts)


def render_page(page: Page) -> str:
    """The whole ``index.html``."""
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, body)
    if page.curves:
        note = (
            '<p class="desc">The fully aligned rate first, then each fact the verifier checks, then the mean score. '
            "Line: mean over seeds. Band: 95% percentile bootstrap over the per-image evaluations of every seed at "
            "that epoch, resampling seeds (when there are 3 or more), prompts and images; with 1 or 2 seeds it covers "
            "prompts and images only, not seed-to-seed spread; no band where per-image CSVs are missing. The legend "
            "gives each line's seeds and evaluation points; runs with fewer than 6 are listed in the notes. "
            "Solid: with D-Fusion; dashed: without.</p>"
        )
        sections.append(("curves", "Alignment curves", note + render_curves(page.curves)))
    shown = [t for name, t in page.tables.items() if name not in HIDDEN_TABLES]
    if shown:
        body = "\n".join(render_table(t) for t in shown)
        hidden = [t for name, t in page.tables.items() if name in HIDDEN_TABLES]
        for t in hidden:
            body += f'\n<p class="links">{esc(t.title)}: <a href="{_attr_path(f"{TABLES_DIR}/{t.name}.csv")}">CSV</a>'
            body += f' · <a href="{_attr_path(f"{TABLES_DIR}/{t.name}.parquet")}">parquet</a></p>'
        sections.append(("tables", "Tables", body))
    if page.before_after:
        note = '<p class="desc">The same evaluation seeds at the first and the last evaluated epoch of each run.</p>'
        body = note + "\n".join(render_gallery(g, "gallery pair") for g in page.before_after)
        sections.append(("before-after", "Before / after", body))
    if page.triples:
        note = '<p class="desc">Each image: reference | base | target (base re-generated with D-Fusion) | mask.</p>'
        sections.append(("triples", "D-Fusion triples", note + "\n".join(render_gallery(g) for g in page.triples)))
    if page.evals:
        sections.append(("evals", "Evaluation grids", "\n".join(render_gallery(g) for g in page.evals)))

    counts = ", ".join(f"{n} {what}" for what, n in page.counts.items() if n)
    inputs = ", ".join(f"<code>{esc(i)}</code>" for i in page.inputs)
    head = [
        f"<h1>{esc(page.title)}</h1>",
        f'<p class="meta">Generated {esc(page.generated)} from {inputs}: {counts}.</p>',
    ]
    head.append("<nav>" + "".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections) + "</nav>")
    if page.notes:
        items = "".join(f"<li>{esc(n)}</li>" for n in page.notes)
        head.append(f'<div class="notes"><strong>Notes</strong><ul>{items}</ul></div>')
    body = "\n".join(head + [f'<h2 id="{a}">{esc(h)}</h2>\n{b}' for a, h, b in sections])
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(page.title)}</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def fmt_score(value: float | None) -> str:
    """A score for a caption (empty when missing)."""
    if value is None or pd.isna(value):
        return ""
    return f"{float(value):.3f}"
