"""Splitting work across processes and putting it back in order (a no-op in a single process).

Under ``accelerate launch`` every process samples, scores and fuses its share of a list of work items
(``items[rank::world]``), then :meth:`Distributor.gather` reassembles the full list in the original order on every
process. All processes then hold identical data, so rankings, pairs and advantages agree everywhere, and the amount
of data per epoch does not depend on the number of processes.
"""

from __future__ import annotations

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
