"""Which calls have something due, and when: a heap with lazy deletion."""

from __future__ import annotations

import heapq


class DeadlineIndex:
    def __init__(self) -> None:
        self._due: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._due)

    def set(self, key: str, due: float | None) -> None:
        if due is None:
            self._due.pop(key, None)
            return
        if self._due.get(key) == due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))
        if len(self._heap) > 4 * len(self._due) + 1024:  # too many stale entries: rebuild
            self._heap = [(d, k) for k, d in self._due.items()]
            heapq.heapify(self._heap)

    def pop_due(self, now: float, limit: int = 10_000) -> list[str]:
        """Keys due at `now`, removed from the index (the caller re-adds what is still pending)."""
        out: list[str] = []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            due, key = heapq.heappop(self._heap)
            if self._due.get(key) == due:
                del self._due[key]
                out.append(key)
        return out

    def clear(self) -> None:
        self._due.clear()
        self._heap.clear()
