"""Developer sessions. They run in the current environment (``pip install -e '.[dev]'`` first): re-installing
torch into a fresh virtual environment per session would cost gigabytes and minutes for nothing."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]

#: What ruff checks: every Python file of the repository (results/ holds none).
LINTED = ("dfusion_bench", "tests", "benchmarks", "experiments", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (the README's test command)."""
    session.run("pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check on every Python file of the repository (LINTED)."""
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)


@nox.session
def bench(session: nox.Session) -> None:
    """Fusion cost, per-epoch time split and training throughput, as ratios on this machine (benchmarks/)."""
    session.run("python", "benchmarks/bench.py", *session.posargs)
    session.run("python", "benchmarks/throughput.py")


@nox.session
def regression(session: nox.Session) -> None:
    """Fuse + DPO with/without fusion on a short fixed configuration; fails on a regression.

    With DFUSION_SD_MODEL and DFUSION_CLIP_CHECKPOINT set: SD 2.1-base + CLIPScore (a GPU runner). Without: the
    embedded shapes model + verifier on CPU. See dfusion_bench/studies/regression.py.
    """
    session.run("dfusion", "regression", *session.posargs)


@nox.session
def grid(session: nox.Session) -> None:
    """Every method x fusion x suite on the embedded model, then the report (``nox -s grid -- --seeds 0,1``)."""
    session.run("dfusion", "grid", *session.posargs)
