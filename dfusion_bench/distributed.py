"""Splitting work across processes and putting it back in order (a no-op in a single process).

Under ``accelerate launch`` every process samples, scores and fuses its share of a list of work items
(``items[rank::world]``), then :meth:`Distributor.gather` reassembles the full list in the original order on every
process. All processes then hold identical data, so rankings, pairs and advantages agree everywhere, and the amount
of data per epoch does not depend on the number of processes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class Distributor:
    def __init__(self, accelerator: Any | None = None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world = accelerator.num_processes if accelerator is not None else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[T]) -> list[T]:
        return items[self.rank :: self.world]

    def gather(self, local: list[T]) -> list[T]:
        """The full list, in the order the items had before :meth:`shard`."""
        if self.world == 1:
            return list(local)
        from accelerate.utils import gather_object

        parts = gather_object([(self.rank, list(local))])
        by_rank = dict(parts)
        total = sum(len(v) for v in by_rank.values())
        return [by_rank[i % self.world][i // self.world] for i in range(total)]

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()


SINGLE = Distributor()


def requested_processes(environ: dict[str, str] | None = None, parent_cmdline: str | None = None) -> int | None:
    """How many processes the launcher was asked for: ``WORLD_SIZE`` when a multi-process launcher set it, else the
    ``--num_processes`` / ``--nproc_per_node`` of an ``accelerate launch`` or ``torchrun`` parent process (read from
    /proc on Linux), else None. ``accelerate launch --num_processes 2`` on a machine without GPUs quietly runs one
    process unless ``--multi_gpu`` is given too; comparing this with the processes that run catches that."""
    environ = os.environ if environ is None else environ
    if environ.get("WORLD_SIZE", "").isdigit():
        return int(environ["WORLD_SIZE"])
    if parent_cmdline is None:
        try:
            parent_cmdline = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return None
    if not re.search(r"accelerate|torchrun|torch\.distributed\.run", parent_cmdline):
        return None
    found = re.search(r"--(?:num_processes|nproc_per_node|nproc-per-node)[= ](\d+)", parent_cmdline)
    return int(found.group(1)) if found else None


def launch_warning(running: int, requested: int | None) -> str | None:
    """The warning to print when a launcher asked for more processes than run, naming the commands that work."""
    if requested is None or requested <= running:
        return None
    return (
        f"warning: the launcher asked for {requested} processes but {running} runs; on a machine without GPUs use "
        f"`accelerate launch --multi_gpu --num_processes {requested} -m dfusion_bench train ...` or "
        f"`torchrun --nproc_per_node {requested} -m dfusion_bench train ...`"
    )
