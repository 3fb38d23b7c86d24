"""Rich progress bars, one style for every long loop of the toolkit."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(transient: bool = False, disable: bool = False) -> Progress:
    """A progress display; use as a context manager and add one task per loop (``disable``: other processes)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=transient,
        disable=disable,
    )


def advance_callback(progress: Progress | None, description: str, total: int):
    """A task on ``progress`` and a callback ``advance(n)`` for it; a no-op callback when ``progress`` is None."""
    if progress is None:
        return lambda n=1: None
    task = progress.add_task(description, total=total)
    return lambda n=1: progress.advance(task, n)
