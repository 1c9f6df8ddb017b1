"""A pipeline's inbox: the records the consumer fetched for its topics, handed over in bulk.

Faust hands a stream one message at a time: per message a task pair in the fetcher (the delivery
raced against a rebalance), an `Event`, a queue put and get, a `sleep(0)` and an acknowledgement
through the event; `take_events` then rebuilds the batch the fetcher had in the first place. The
worker's consumer (`processors.faust_consumer`) puts each partition's fetched run here in one call
instead, and the pipeline takes up to a batch at a time.

Bounded by a count of records, like Faust's stream buffer: a put waits while the inbox is full (a
partition's run may take it past its capacity once). `clear` drops everything buffered: the runtime
calls it when a rebalance starts (the records are read again from the committed offsets; see
`runtime.ClearedByRebalance`). No Faust or Kafka import: a record is anything.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._runs: deque[Sequence[T]] = deque()
        self._head = 0  # records of the first run already taken
        self._size = 0
        self._ready = asyncio.Event()
        self._grown = asyncio.Event()  # set by every put: a batch being filled looks again
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        return self._size

    def has_room(self) -> bool:
        return self._size < self.capacity

    def put_nowait(self, run: Sequence[T]) -> None:
        """Add a run of records (in order) whatever the room left."""
        if not run:
            return
        self._runs.append(run)
        self._size += len(run)
        self._ready.set()
        self._grown.set()
        if self._size >= self.capacity:
            self._room.clear()

    async def put(self, run: Sequence[T]) -> None:
        """Add a run of records once there is room."""
        await self.room()
        self.put_nowait(run)

    async def room(self) -> None:
        """Return once there is room (for a caller that checks something else before it puts)."""
        while not self.has_room():
            await self._room.wait()

    def take_nowait(self, most: int) -> list[T]:
        """Up to `most` records, oldest first (the runs' order, and each run's order, kept)."""
        taken: list[T] = []
        while self._runs and len(taken) < most:
            run = self._runs[0]
            end = min(len(run), self._head + most - len(taken))
            taken.extend(run[self._head:end])
            if end == len(run):
                self._runs.popleft()
                self._head = 0
            else:
                self._head = end
        self._size -= len(taken)
        if not self._runs:
            self._ready.clear()
        if self.has_room():
            self._room.set()
        return taken

    async def take(self, most: int, within: float = 0.0) -> list[T]:
        """Up to `most` records, waiting for the first, then up to `within` seconds for `most`
        (under a backlog they are there at once; a trickle is still handled in batches)."""
        while not self._runs:
            await self._ready.wait()
        if within > 0 and self._size < most:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + within
            while 0 < self._size < most and (left := deadline - loop.time()) > 0:
                self._grown.clear()
                try:
                    await asyncio.wait_for(self._grown.wait(), left)
                except TimeoutError:
                    break
        return self.take_nowait(most)

    def discard(self, which: Callable[[Sequence[T]], bool]) -> None:
        """Drop the runs `which` picks (e.g. a partition's, which is being read again)."""
        kept: deque[Sequence[T]] = deque()
        for i, run in enumerate(self._runs):
            if which(run):
                self._size -= len(run) - (self._head if i == 0 else 0)
                if i == 0:
                    self._head = 0
            else:
                kept.append(run)
        self._runs = kept
        if not self._runs:
            self._ready.clear()
        if self.has_room():
            self._room.set()

    def clear(self) -> None:
        self._runs.clear()
        self._head = 0
        self._size = 0
        self._ready.clear()
        self._room.set()
