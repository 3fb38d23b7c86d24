"""The option reference of ``train``, ``fuse`` and ``eval``, generated from their configuration classes.

``python -m dfusion_bench.cli.reference`` prints it; ``--write FILE`` replaces the block between the markers
``<!-- options:begin -->`` and ``<!-- options:end -->`` in FILE (``docs/options.md``), and ``--check FILE`` exits 1
when that block is out of date (a test runs the check).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dfusion_bench.cli.derive import command_leaves
from dfusion_bench.options import reference

BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def commands() -> dict[str, dict[str, type]]:
    """Each derived command's sections."""
    from dfusion_bench.cli import eval as eval_cli
    from dfusion_bench.cli import fuse, train

    return {"train": train.SECTIONS, "fuse": fuse.SECTIONS, "eval": eval_cli.SECTIONS}


def generated() -> str:
    return reference({name: command_leaves(sections) for name, sections in commands().items()})


def replaced(text: str) -> str:
    """``text`` with its options block replaced by the generated reference."""
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"no {BEGIN} ... {END} block")
    return f"{head}{BEGIN}\n{generated()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] in ("--write", "--check"):
        path = Path(argv[1])
        text = path.read_text()
        new = replaced(text)
        if argv[0] == "--check":
            if new != text:
                print(f"{path}: the option reference is out of date; run python -m {__spec__.name} --write {path}")
                return 1
            return 0
        path.write_text(new)
        return 0
    print(generated())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
