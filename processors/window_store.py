"""Metric windows persisted row by row, so a contribution writes a few small rows, not a blob.

Rows (in one table, changelogged):  KEY\\x1fm               -> [watermark, closed_upto, late_dropped]
                                    KEY\\x1fw\\x1fSTART       -> the window's meta (final, late, ...)
                                    KEY\\x1fi\\x1fSTART\\x1fITEM -> that item's contribution
The owner keeps every key's `Windowed` state in memory, rebuilt from the rows after a rebalance.
Works over any MutableMapping[bytes, bytes]: a Faust table in the worker, a dict in unit tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableMapping
from typing import Any

import orjson

from processors.core.windows import Window, Windowed, WindowPolicy, add, flush, window_start

SEP = "\x1f"


def _meta_row(key: str) -> bytes:
    return f"{key}{SEP}m".encode()


def _window_row(key: str, start: int) -> bytes:
    return f"{key}{SEP}w{SEP}{start}".encode()


def _item_row(key: str, start: int, item: str) -> bytes:
    return f"{key}{SEP}i{SEP}{start}{SEP}{item}".encode()


class WindowStore:
    def __init__(self, rows: MutableMapping[bytes, bytes], policy: WindowPolicy) -> None:
        self.rows = rows
        self.policy = policy
        self.cache: dict[str, Windowed] = {}

    def state(self, key: str) -> Windowed:
        st = self.cache.get(key)
        if st is None:
            st = self.cache[key] = Windowed()
        return st

    def add(self, key: str, item: str, t: float, values: list[Any], now: float) -> str:
        """One row written per contribution (the item, with its time); meta rows change only when
        a window is flushed or an item is late. After a rebalance, windows with items and no meta
        row are rebuilt as changed "now", the watermark as the latest item time."""
        st = self.state(key)
        before = {s for s, w in st.windows.items() if item in w.items}
        result = add(st, item, t, values, now, self.policy)
        for s in before | {window_start(t, self.policy.size_s)}:
            w = st.windows.get(s)
            if w is None:
                continue
            if item in w.items:
                self.rows[_item_row(key, s, item)] = orjson.dumps([t, w.items[item]])
            else:
                self.rows.pop(_item_row(key, s, item), None)
            if result == "late":
                self._write_window(key, s, w)
        if result == "late":
            self._write_meta(key, st)
        return result

    def flush(self, key: str, now: float) -> list[tuple[int, Window]]:
        st = self.state(key)
        kept = dict(st.windows)
        due = flush(st, now, self.policy)
        for s, w in due:
            self._write_window(key, s, w)
        for s, w in kept.items():
            if s not in st.windows:  # dropped: final and kept long enough
                for item in w.items:
                    self.rows.pop(_item_row(key, s, item), None)
                self.rows.pop(_window_row(key, s), None)
        if due or len(kept) != len(st.windows):
            self._write_meta(key, st)
        return due

    def _write_window(self, key: str, start: int, w: Window) -> None:
        self.rows[_window_row(key, start)] = orjson.dumps([w.final, w.late, w.dirty, w.changed_at, w.emitted_at])

    def _write_meta(self, key: str, st: Windowed) -> None:
        self.rows[_meta_row(key)] = orjson.dumps([
            None if st.watermark == -math.inf else st.watermark,
            None if st.closed_upto == -math.inf else st.closed_upto,
            st.late_dropped,
        ])

    def rebuild(self, rows: Iterable[tuple[bytes, bytes]], now: float) -> None:
        """Rebuild the in-memory states from the table's rows (after a rebalance)."""
        self.cache.clear()
        for raw_key, raw in rows:
            parts = raw_key.decode().split(SEP)
            st = self.state(parts[0])
            value = orjson.loads(raw)
            if parts[1] == "m":
                st.watermark = -math.inf if value[0] is None else value[0]
                st.closed_upto = -math.inf if value[1] is None else value[1]
                st.late_dropped = value[2]
            elif parts[1] == "w":
                w = st.windows.setdefault(int(parts[2]), Window())
                w.final, w.late, w.dirty, w.changed_at, w.emitted_at = value
            else:
                t, contribution = value
                st.windows.setdefault(int(parts[2]), Window()).items[SEP.join(parts[3:])] = contribution
                st.watermark = max(st.watermark, t)
        # Meta rows are written at flush only, so an open window may have changed since: treat it
        # as changed now (this can delay its final by one quiet period, never make it premature).
        for st in self.cache.values():
            for w in st.windows.values():
                if not w.final:
                    w.dirty, w.changed_at = True, max(w.changed_at, now)
