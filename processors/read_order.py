"""Per source partition, the next offset to handle: a worker never handles a record past one it did not get.

Kafka hands a partition's records in offset order from wherever the consumer was positioned.
Between the fetch and the step, Faust's consumer and the rebalances it races can drop some (a
fetch made for an assignment that has just ended, a buffer cleared as the flow stops or resumes,
a partition never committed whose position was never reset). Acknowledging the records after
them would commit over them, and nobody would ever handle them. So a record is admitted only if
it is the next one expected for its partition:

* the positions are set after each rebalance, once the tables are recovered (`start`): the
  committed offset, or the log's first offset for a partition this group never committed; until
  then nothing is admitted (what is dropped is read again from those positions);
* a record before the position was handled already (read again after a seek): dropped;
* a record past it means records were lost on the way: its partition is blocked (its records
  dropped) until the caller has read it again from the position (`reread`), or from the log's
  first offset if retention deleted the missing records meanwhile;
* a partition read again from the same offset `rereads_max` times that still starts further on
  holds no such records (e.g. a compacted topic): the gap is taken as absent and reported.

Pure: a partition is any hashable, a record anything `where` maps to (partition, offset).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

P = TypeVar("P", bound=Hashable)
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Gap(Generic[P]):
    """Records `expected` to `seen - 1` of `partition` did not arrive. `absent`: read again
    `rereads_max` times and still missing, so taken as gone (`seen` was admitted); otherwise the
    partition is blocked until it is read again (`ReadOrder.reread`)."""

    partition: P
    expected: int
    seen: int
    absent: bool = False


class ReadOrder(Generic[P]):
    def __init__(self, rereads_max: int = 5) -> None:
        self.rereads_max = rereads_max
        self.generation: int | None = None  # the assignment the positions hold for
        self._next: dict[P, int] = {}
        self._blocked: set[P] = set()
        self._rereads: dict[P, tuple[int, int]] = {}  # partition -> (offset read again from, times)

    def start(self, generation: int, positions: Mapping[P, int]) -> None:
        """After the rebalance to `generation`: each assigned partition's next offset to handle."""
        self.generation = generation
        self._next = dict(positions)
        self._blocked.clear()
        self._rereads.clear()

    def next_offset(self, partition: P) -> int | None:
        return self._next.get(partition)

    def admit(self, batch: Sequence[R], where: Callable[[R], tuple[P, int]],
              generation: int) -> tuple[list[R], list[Gap[P]]]:
        """The records of `batch` to handle now (in order), and the gaps found in it."""
        if generation != self.generation:
            return [], []  # positions not set for this assignment yet: read again once they are
        admitted: list[R] = []
        gaps: list[Gap[P]] = []
        nexts, blocked = self._next, self._blocked
        for record in batch:
            partition, offset = where(record)
            expected = nexts.get(partition)
            if expected is None or partition in blocked or offset < expected:
                continue  # not assigned here, waiting to be read again, or handled already
            if offset > expected:
                at, times = self._rereads.get(partition, (expected, 0))
                if at != expected or times < self.rereads_max:
                    blocked.add(partition)
                    gaps.append(Gap(partition, expected, offset))
                    continue
                gaps.append(Gap(partition, expected, offset, absent=True))
            nexts[partition] = offset + 1
            admitted.append(record)
        return admitted, gaps

    def reread(self, partition: P, start: int) -> None:
        """`partition` is positioned again at `start` (the position expected, or the log's first
        offset if that is further on): admit its records from there."""
        if partition not in self._next:
            return  # moved away meanwhile
        at, times = self._rereads.get(partition, (start, 0))
        self._rereads[partition] = (start, times + 1 if at == start else 1)
        self._next[partition] = start
        self._blocked.discard(partition)

    def unblock(self, partition: P) -> None:
        """The partition could not be read again: let its next record find the gap again."""
        self._blocked.discard(partition)
