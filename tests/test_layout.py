"""The package's architecture as rules a change cannot break silently: no import loop, and no module importing
from a floor above its own (the domain of the shapes world knows nothing of fusion or training; the library knows
nothing of the studies or the command line)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dfusion_bench"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports (at the top or inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. the import loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _without_packages(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Imports of a package's ``__init__`` that only re-export its own submodules are not loops."""
    return {m: {t for t in ts if not (m.startswith(t + ".") or t.startswith(m + "."))} for m, ts in graph.items()}


def test_no_import_loops() -> None:
    assert _cycles(_without_packages(import_graph())) == []


#: (modules, prefixes they must not import): each floor imports only from floors below it.
FLOORS = [
    (
        "dfusion_bench.world.",
        ("dfusion_bench.fusion", "dfusion_bench.pairs", "dfusion_bench.rollout", "dfusion_bench.rl",
         "dfusion_bench.evaluation", "dfusion_bench.studies", "dfusion_bench.cli", "dfusion_bench.report"),
    ),
    ("dfusion_bench.fusion", ("dfusion_bench.pairs", "dfusion_bench.rollout", "dfusion_bench.rl",
                              "dfusion_bench.evaluation", "dfusion_bench.studies", "dfusion_bench.cli",
                              "dfusion_bench.report")),
    ("dfusion_bench.models", ("dfusion_bench.fusion", "dfusion_bench.pairs", "dfusion_bench.rl",
                              "dfusion_bench.studies", "dfusion_bench.cli", "dfusion_bench.report")),
    ("dfusion_bench.rl", ("dfusion_bench.studies", "dfusion_bench.cli", "dfusion_bench.report")),
    ("dfusion_bench.report", ("dfusion_bench.studies", "dfusion_bench.cli")),
    ("dfusion_bench.studies", ("dfusion_bench.cli",)),
]  # fmt: skip
#: The library (everything but the command line and the studies) never imports those two.
TOP = ("dfusion_bench.cli", "dfusion_bench.studies")


def test_no_module_imports_from_a_floor_above() -> None:
    problems = []
    for module, targets in import_graph().items():
        for prefix, forbidden in FLOORS:
            if module.startswith(prefix):
                problems += [f"{module} imports {t}" for t in targets if t.startswith(forbidden)]
        if not module.startswith(TOP) and module != "dfusion_bench.__main__":
            problems += [f"{module} imports {t}" for t in targets if t.startswith(TOP)]
    assert problems == []


def test_the_rules_catch_a_loop_and_a_floor_violation() -> None:
    loop = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(loop) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_readme_is_a_users_guide() -> None:
    """Research findings live in docs/findings.md and results/ READMEs; the README stays a guide a user reads."""
    readme = PACKAGE.parent / "README.md"
    assert readme.stat().st_size <= 25 * 1024
    for target in ("docs/options.md", "docs/design.md", "docs/findings.md"):
        assert target in readme.read_text() and (PACKAGE.parent / target).is_file()


def _imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_the_library_never_imports_the_experiments() -> None:
    """experiments/ (the lab: probes and drivers behind results/) imports the package, never the other way round."""
    problems = [
        f"{_module_name(path)} imports {name}"
        for path in PACKAGE.rglob("*.py")
        for name in _imports(path)
        if name == "experiments" or name.startswith("experiments.")
    ]
    assert problems == []


def test_results_hold_data_not_code() -> None:
    """results/ is data with a README per folder; the code that made it lives in experiments/ (linted and tested)."""
    results = PACKAGE.parent / "results"
    code = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.suffix in {".py", ".sh", ".ipynb"})
    assert code == [], "move these to experiments/"
    folders = [p for p in results.iterdir() if p.is_dir()]
    assert [p.name for p in folders if not (p / "README.md").is_file()] == []
