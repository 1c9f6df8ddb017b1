"""A table's writes on their way to its store: taken for delivery, not yet acknowledged.

The runtime delivers a batch while it runs the next (`processors.runtime`), and a table's store is
written only once the batch's changelog is acknowledged (`processors.batched_table`): until then
the next batch must read the value on its way, not the store's older one. Keyed by the table key;
the newest record taken for a key wins, and a delivery only clears a key whose newest record it
carried (a later batch's may still be on its way). No Faust or Kafka import.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from processors.output_producer import Placed


class PendingWrites:
    def __init__(self) -> None:
        self._newest: dict[bytes, Placed] = {}

    def __len__(self) -> int:
        return len(self._newest)

    def taken(self, records: Iterable[Placed]) -> None:
        """Records taken for delivery, in write order."""
        newest = self._newest
        for record in records:
            assert record[2] is not None  # a table key
            newest[record[2]] = record

    def get(self, key: bytes) -> Placed | None:
        """The newest record on its way for `key` (its value None: a deletion), or None."""
        return self._newest.get(key)

    def delivered(self, records: Iterable[Placed]) -> None:
        """Records acknowledged (and written to the store): no longer on their way."""
        newest = self._newest
        for record in records:
            key = record[2]
            if key is not None and newest.get(key) is record:
                del newest[key]
