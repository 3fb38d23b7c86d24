"""Table plumbing shared by every report table: the :class:`Table` record, number formatting, and the writers
(CSV, parquet, Markdown, LaTeX) with :func:`load_report_tables` to read a built report back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dfusion_bench import atomic
from dfusion_bench.errors import UserError

TABLES_DIR = "tables"


@dataclass
class Table:
    """A report table: ``data`` is saved as-is (CSV, parquet); ``display`` holds the formatted strings."""

    name: str
    title: str
    description: str
    data: pd.DataFrame
    display: pd.DataFrame


# ---- formatting ----------------------------------------------------------------------------------------------------


def fmt(value: object, digits: int = 3) -> str:
    """A number for display: fixed ``digits`` decimals; empty for missing values."""
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return ""
    if isinstance(value, int | np.integer):
        return str(int(value))
    return f"{float(value):.{digits}f}"


def fmt_ci(mean: object, half: object, digits: int = 3) -> str:
    """``mean ± half`` (just the mean when the interval is undefined, e.g. one seed)."""
    text = fmt(mean, digits)
    half_text = fmt(half, digits)
    return f"{text} ± {half_text}" if text and half_text else text


def fmt_p(p: object) -> str:
    if p is None or p is pd.NA or not math.isfinite(float(p)):  # type: ignore[arg-type]
        return "–"
    return "<0.001" if float(p) < 0.001 else f"{float(p):.3f}"


def key_cells(row: pd.Series, who: str = "Model", name: object = None) -> dict[str, object]:
    """The leading cells of a formatted table row: template, scorer, split, then the configuration (column ``who``,
    ``name`` or the row's own ``who.lower()`` value)."""
    return {
        "Template": row["template"],
        "Scorer": row["scorer"],
        "Split": row["split"],
        who: row[who.lower()] if name is None else name,
    }


def display_numbers(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Every float column fixed to ``digits`` decimals, everything else as text; for the simpler tables."""
    out = pd.DataFrame(index=frame.index)
    for column in frame.columns:
        if pd.api.types.is_float_dtype(frame[column]):
            out[column] = [fmt(v, digits) for v in frame[column]]
        else:
            out[column] = ["" if pd.isna(v) else str(v) for v in frame[column]]
    return out.reset_index(drop=True)


# ---- writers -------------------------------------------------------------------------------------------------------


def to_markdown(frame: pd.DataFrame) -> str:
    """A GitHub-style pipe table (``|`` in cells escaped)."""

    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "−": r"$-$",
    "–": "--",
    "<": r"$<$",
    ">": r"$>$",
}


def latex_escape(text: object) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(frame: pd.DataFrame, caption: str = "", label: str = "") -> str:
    """A booktabs ``table``/``tabular`` with every cell escaped."""
    spec = "l" * len(frame.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(c) for c in frame.columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(latex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_tables(tables: dict[str, Table], out: Path) -> list[Path]:
    """Write each table as ``tables/<name>.{csv,parquet,md,tex}``; return the files written."""
    folder = out / TABLES_DIR
    written = []
    for name, table in tables.items():
        data = table.data
        written.append(atomic.write_text(folder / f"{name}.csv", data.to_csv(index=False)))
        written.append(atomic.write_with(folder / f"{name}.parquet", lambda p, d=data: d.to_parquet(p, index=False)))
        heading = f"## {table.title}\n\n{table.description}\n\n"
        written.append(atomic.write_text(folder / f"{name}.md", heading + to_markdown(table.display)))
        tex = to_latex(table.display, caption=f"{table.title}. {table.description}", label=f"tab:{name}")
        written.append(atomic.write_text(folder / f"{name}.tex", tex))
    return written


def load_report_tables(out: str | Path) -> dict[str, pd.DataFrame]:
    """Every table of a built report as a DataFrame, keyed by name (from parquet; CSV where parquet is missing)."""
    folder = Path(out) / TABLES_DIR
    if not folder.is_dir():
        raise UserError(f"{out} holds no report tables (no {TABLES_DIR}/ folder); build it with dfusion report")
    tables: dict[str, pd.DataFrame] = {}
    for path in sorted(folder.glob("*.parquet")):
        tables[path.stem] = pd.read_parquet(path)
    for path in sorted(folder.glob("*.csv")):
        if path.stem not in tables:
            tables[path.stem] = pd.read_csv(path)
    return tables
