"""A Faust table whose changelog records leave in bulk, and whose store follows its changelog.

A Faust table write sends its changelog record through Faust's per-message producer path and
writes the record's offset back to RocksDB from a delivery callback: ~80 µs a write here, two
writes per input event, the largest cost in the worker. This table keeps Faust's store, its
changelog topic, recovery and standbys as they are, and changes how a write happens: it queues
its changelog record (same topic, same partition, same bytes); the runtime hands the queue to
`OutputProducer.send_all` with the batch's outputs (see `processors.runtime`) and, once all of it
is delivered, the writes reach the local store with the persisted offsets, as Faust's callback
would have recorded them.

So the local store is never ahead of the delivery: a worker that dies before its batch is
delivered and restarts on the same disk starts from a state that has not seen the batch, and the
batch's replay emits its outputs again. (Written at once, as Faust does, the store would keep the
batch's state while its outputs were lost, and the replay would find every event a duplicate.)
The send itself is not atomic: a worker killed mid-send can have part of the changelog delivered
and outputs not (README "Delivery guarantee").

A batch's changelog may still be on its way while the next batch runs (the runtime prepares the
next batch meanwhile, and sends it once this one is acknowledged): reads see the newest value taken
for delivery, then the store. Reads during a
batch see the state from before it, which is what the runtime expects (it loads each key once per
batch, and puts a failed record's keys back from it; its writes are taken at the batch's end).
"""

from __future__ import annotations

from typing import Any, cast

from faust import Table
from faust.stores import rocksdb as faust_rocksdb
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP

from processors.output_producer import Offsets, Placed
from processors.pending_writes import PendingWrites

_ABSENT = object()


class BatchedTable(Table):  # type: ignore[type-arg]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: list[Placed] = []  # written, changelog not yet taken for delivery
        self._pending = PendingWrites()  # taken for delivery, not yet in the store
        self._changelog_name: str | None = None
        #: the partition reads and writes go to: the partition of the record whose keys are handled
        #: (set by the runtime before each load and save: see `at`)
        self.partition: int | None = None

    def at(self, partition: int) -> None:
        """Reads and writes from here on go to `partition` (Faust's table takes it from the event
        being processed, a context variable it reads on every access; a batch has no such event)."""
        self.partition = partition

    def _place(self, key: bytes, value: bytes | None) -> None:
        partition = self.partition
        if partition is None:  # (not an assert: `python -O` would drop it)
            raise RuntimeError("a table write with no partition to write to")
        name = self._changelog_name
        if name is None:
            name = self._changelog_name = self.changelog_topic.get_topic_name()
        self._unsent.append((name, partition, key, value))

    def __setitem__(self, key: Any, value: Any) -> None:
        self._place(key, value)  # the store is written once the changelog record is delivered

    def __delitem__(self, key: Any) -> None:
        self._place(key, None)

    def get(self, key: Any, default: Any = None) -> Any:
        """The value on its way to the store, else one store read (Faust's table reads a present
        key twice: `in`, then the value)."""
        pending = self._pending.get(key)
        if pending is not None:
            return default if pending[3] is None else pending[3]
        value = read(self.data, self.partition, key)
        return default if value is None else value

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _ABSENT) is not _ABSENT

    def pop(self, key: Any, default: Any = None) -> Any:
        """Removes `key` (a tombstone goes out) when present, in the store or on its way to it."""
        value = self.get(key, _ABSENT)
        if value is _ABSENT:
            return default
        self._place(key, None)
        return value

    def take_changelog(self) -> list[Placed]:
        """The changelog records written since the last call, in write order: read from here on
        until `delivered` is called with them."""
        unsent, self._unsent = self._unsent, []
        self._pending.taken(unsent)
        return unsent

    def delivered(self, offsets: Offsets, records: list[Placed]) -> None:
        """`records` (taken by `take_changelog`; batches in the order taken) are delivered: write
        them to the local store, and remember, per partition, how far it is backed by the changelog
        (Faust resumes its recovery from there)."""
        store = self.data
        write_all(store, records)
        self._pending.delivered(records)
        topic = self.changelog_topic.get_topic_name()
        for (t, partition), offset in offsets.items():
            if t == topic:
                store.set_persisted_offset(TP(topic, partition), offset)


def read(store: Any, partition: int | None, key: bytes) -> bytes | None:
    """A read from the store's partition: what Faust's `table[key]` does, without its serializer
    calls for keys and values that are bytes already. (Faust's store also keeps a key -> partition
    index, an LRU cache that takes a lock per entry, for its own reads that do not know the
    partition; the worker's always do, so it is not kept here or in `write_all`.)"""
    if isinstance(store, RocksDBStore):
        if partition is None:  # (not an assert: `python -O` would drop it, and read partition None)
            raise RuntimeError("a table read with no partition to read from")
        value: bytes | None = store._db_for_partition(partition).get(key)
        return value
    return cast("bytes | None", store.get(key))  # the memory store: one dict for every partition


def write_all(store: Any, records: list[Placed]) -> None:
    """Writes to the store's partitions, in order (Faust's store takes the partition from the
    event being handled, and the batch is over). RocksDB: one write batch per partition, as Faust's
    own changelog recovery writes (`apply_changelog_batch`), not a write each (a third of the cost
    a key here)."""
    if not isinstance(store, RocksDBStore):  # the memory store: one dict for every partition
        for _, _, key, value in records:
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
        return
    binding: Any = faust_rocksdb  # the RocksDB binding Faust found (rocksdict, else python-rocksdb)
    new_batch = ((lambda: binding.rocksdict.WriteBatch(raw_mode=True)) if store.use_rocksdict
                 else binding.rocksdb.WriteBatch)
    batches: dict[int, Any] = {}
    for _, partition, key, value in records:
        assert key is not None  # a table key
        batch = batches.get(partition)
        if batch is None:
            batch = batches[partition] = new_batch()
        if value is None:
            batch.delete(key)
        else:
            batch.put(key, value)
    for partition, batch in batches.items():
        store._db_for_partition(partition).write(batch)
