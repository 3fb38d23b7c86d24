"""``python -m dfusion_bench`` is the ``dfusion`` command."""

from dfusion_bench.cli import main

main()
