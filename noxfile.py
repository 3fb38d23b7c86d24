"""Developer sessions. They run in the current environment (``pip install -e '.[dev]'`` first): re-installing
torch into a fresh virtual environment per session would cost gigabytes and minutes for nothing."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (the README's test command)."""
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "dfusion_bench", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "dfusion_bench", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Fusion cost and per-epoch training time split, as ratios on this machine (see benchmarks/bench.py)."""
    session.run("python", "benchmarks/bench.py", *session.posargs)
