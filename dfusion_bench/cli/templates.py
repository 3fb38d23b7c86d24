"""``dfusion templates``: the prompt-template suites (train and test prompts with their D-Fusion items)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Prompt-template suites: list them and show their prompts.", no_args_is_help=True)


def _thresholds(values: tuple[float | None, ...]) -> str:
    return ", ".join("auto" if t is None else f"{t:g}" for t in values)


@app.command("list")
def list_() -> None:
    """Print the name of every suite in the templates folder ($DFUSION_TEMPLATES or templates/), one per line."""
    from dfusion_bench.suites import list_suites

    for name in list_suites():
        typer.echo(name)


@app.command()
def show(
    name: str = typer.Argument(..., help="Suite name (see 'dfusion templates list') or a path to a suite .json file."),
    split: str = typer.Option(None, help="Show only this split: train or test (default: both)."),
) -> None:
    """Show a suite: its description, counts, and a table of prompts, items and thresholds ('auto' = null)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from dfusion_bench.suites import SPLITS, load_suite

    suite = load_suite(name)
    splits = SPLITS if split is None else (split,)
    entries = {s: suite.split(s) for s in splits}
    console = Console()
    console.print(f"[bold]{escape(suite.name)}[/bold]: {escape(suite.description)}")
    console.print(f"source: {escape(suite.source)}")
    console.print(", ".join(f"{s}: {len(suite.split(s))} prompts" for s in SPLITS))
    for s, rows in entries.items():
        table = Table(title=f"{s} ({len(rows)})", title_justify="left")
        table.add_column("prompt")
        table.add_column("items")
        table.add_column("thresholds")
        for entry in rows:
            table.add_row(escape(entry.prompt), escape(", ".join(entry.items)), _thresholds(entry.thresholds))
        console.print(table)
