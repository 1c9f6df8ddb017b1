"""The worker's writes to, and reads from, a real Faust RocksDB table store (and the memory
store): no broker, the store's own database files in a temporary directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
import pytest

from processors.batched_table import read, write_all
from processors.output_producer import Placed


def store_of(tmp_path: Path, url: str) -> Any:
    app = faust.App("store-test", broker="kafka://127.0.0.1:1", store=url, datadir=str(tmp_path))  # never started
    return app.Table("calls", partitions=2).data


RECORDS: list[Placed] = [
    ("cl", 0, b"a", b"1"), ("cl", 1, b"b", b"2"), ("cl", 0, b"a", None),  # a deleted ...
    ("cl", 0, b"c", b"3"), ("cl", 0, b"a", b"4"),  # ... and written again: the last write wins
    ("cl", 1, b"d", b"5"), ("cl", 1, b"d", None),  # d written, then deleted
]


def test_writes_reach_each_partition_in_order(tmp_path: Path) -> None:
    store = store_of(tmp_path, "rocksdb://")
    write_all(store, RECORDS)
    assert [read(store, 0, k) for k in (b"a", b"c", b"b", b"d")] == [b"4", b"3", None, None]
    assert [read(store, 1, k) for k in (b"a", b"b", b"d")] == [None, b"2", None]
    # Faust's own reads that know no partition (no current event) find them too: they look
    # through every partition when its key index (not kept by these writes) has no entry
    assert [store._get(k) for k in (b"a", b"b", b"c", b"d")] == [b"4", b"2", b"3", None]
    assert sorted(store._visible_items(store._dbs[0])) == [(b"a", b"4"), (b"c", b"3")]
    write_all(store, [("cl", 0, b"c", None)])
    assert read(store, 0, b"c") is None and store._get(b"c") is None


def test_a_read_needs_a_partition(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no partition"):
        read(store_of(tmp_path, "rocksdb://"), None, b"a")


def test_the_memory_store_takes_the_same_writes(tmp_path: Path) -> None:
    store = store_of(tmp_path, "memory://")
    write_all(store, RECORDS)
    assert [read(store, None, k) for k in (b"a", b"b", b"c", b"d")] == [b"4", b"2", b"3", None]
