"""Metric windows persisted row by row, so a batch writes a few small rows per key, not a blob.

Rows (in one table, changelogged):  KEY\\x1fm\\x1fOWNER         -> [watermark, closed_upto]
                                    KEY\\x1fw\\x1fSTART        -> [final, dirty, changed_at, emitted_at]
                                    KEY\\x1fd\\x1fSTART\\x1fSEQ\\x1fOWNER  -> [watermark when written,
                                                                     {ITEM: contribution or null (removed)}]
A batch writes one `d` (delta) row per window it changed: the items it put or removed there
(SEQ counts a window's delta rows from 0), or several with part of them each where one would be
larger than `row_bytes`. OWNER is `EPOCH.TOKEN`, taken afresh each time the
store is rebuilt, i.e. per ownership of the partition: EPOCH one more than the highest among the
rows rebuilt from, TOKEN random. A worker that lost the partition but still delivers a batch (it
does not know yet) writes rows under its own, older OWNER: its rows and the new owner's, numbered
alike, are both kept (compaction would keep only one of two rows with the same key, and every
change of the other), and its rows are read first, so the new owner's replay wins. Rows are read
by (EPOCH, SEQ); rows without an OWNER (written before it was added) first. Rows such a late batch
leaves for a window the new owner has dropped since are ignored when read, and deleted by the
key's next save. The watermark and `closed_upto` only grow: a key's meta rows (one per owner; a
late batch's would otherwise replace the new owner's, and a `closed_upto` taken back rebuilds
windows dropped, which then get a second final) are read as their maximum, and the key's next
save writes its own and deletes the others. (`KEY\\x1fm`, without OWNER, was written before; it is
read alike, and written while `UPGRADE_FROM=0.1`.) One row per item,
as 0.1 wrote them (`KEY\\x1fi\\x1fSTART\\x1fITEM -> [watermark, contribution]`: still read, and written
while `UPGRADE_FROM=0.1`), cost a changelog record for every contribution: ~1.4 per call for the
agent windows, 1 for the app's, more than the calls pipeline's own changelog.
The owner keeps every key's `Windowed` state in memory, rebuilt from the rows after a rebalance;
`save` writes the rows in which the new state differs from the one saved before.
Works over any MutableMapping[bytes, bytes]: a Faust table in the worker, a dict in unit tests.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import orjson

from processors.core.windows import Window, Windowed

SEP = "\x1f"


def _meta_row(key: str, owner: str | None) -> bytes:
    """A key's meta row, of one owner; None: the row without an owner (0.1's, and before)."""
    return f"{key}{SEP}m".encode() if owner is None else f"{key}{SEP}m{SEP}{owner}".encode()


def _window_row(key: str, start: int) -> bytes:
    return f"{key}{SEP}w{SEP}{start}".encode()


def _delta_row(key: str, start: int, seq: int, owner: str) -> bytes:
    return f"{key}{SEP}d{SEP}{start}{SEP}{seq}{SEP}{owner}".encode()


def _item_row(key: str, start: int, item: str) -> bytes:
    """The row of one item, as written before delta rows (and while `UPGRADE_FROM=0.1`)."""
    return f"{key}{SEP}i{SEP}{start}{SEP}{item}".encode()


def _copy(st: Windowed) -> Windowed:
    """A copy the step may change while the saved state stays as it was (items are replaced by
    the core, never changed in place, so the item dicts are copied shallowly). Its windows keep
    the items the step touches (see `WindowStore.save`)."""
    return Windowed(
        windows={s: Window(dict(w.items), w.final, w.dirty, w.changed_at, w.emitted_at, {})
                 for s, w in st.windows.items()},
        watermark=st.watermark, closed_upto=st.closed_upto,
    )


def _meta(st: Windowed) -> tuple[float | None, float | None]:
    return (None if st.watermark == -math.inf else st.watermark,
            None if st.closed_upto == -math.inf else st.closed_upto)


class WindowStore:
    """The `Store` of the metric pipelines (see `processors.runtime`)."""

    def __init__(self, rows: MutableMapping[bytes, bytes],
                 upgrade: Callable[[Any], Any] = lambda contribution: contribution, item_rows: bool = False,
                 row_bytes: int = 64 * 1024) -> None:
        self.rows = rows
        self.row_bytes = row_bytes  # a delta row's size, above which it is split (see `_encoded`)
        self.upgrade = upgrade  # a contribution as stored -> as the core reads it now (older rows)
        #: write item rows, as 0.1 did (a window that has delta rows already gets deltas: its items
        #: would otherwise be read back in the wrong order)
        self.writes_item_rows = item_rows
        self.cache: dict[str, Windowed] = {}
        self.owner = f"0.{secrets.token_hex(4)}"  # see the module doc; taken again by `rebuild`
        self.orphans: dict[str, list[bytes]] = {}  # key -> rows of windows it had dropped (see `rebuild`)
        self.next_seq: dict[tuple[str, int], int] = {}  # (key, window start) -> its next delta's SEQ
        self.deltas: dict[tuple[str, int], list[bytes]] = {}  # (key, window start) -> its delta rows
        self.item_rows: dict[tuple[str, int], set[str]] = {}  # (key, window start) -> its items' rows
        self.meta_rows: dict[str, list[bytes]] = {}  # key -> the meta rows rebuilt from (see the module doc)

    def load(self, key: str) -> Windowed | None:
        st = self.cache.get(key)
        return None if st is None else _copy(st)

    def save(self, key: str, new: Windowed | None) -> None:
        """Write the rows in which `new` differs from the saved state. Meta rows of open windows
        change only when flushed (their dirty/changed_at are rebuilt, see `rebuild`)."""
        if new is None:
            new = Windowed()
        if self.orphans and key in self.orphans:
            for row in self.orphans.pop(key):
                self.rows.pop(row, None)
        old = self.cache.get(key) or Windowed()
        for s in old.windows.keys() | new.windows.keys():
            ow, nw = old.windows.get(s), new.windows.get(s)
            if nw is None:  # dropped: final and kept long enough
                for row in self._forget(key, s):
                    self.rows.pop(row, None)
                continue
            old_items = {} if ow is None else ow.items
            # changed: items touched since the load (every change of the core's touches one; it does
            # not always move changed_at: see `windows._holds_open`); a state not loaded from here
            # is compared item by item
            if ow is None or nw.touched is None or nw.touched:
                delta: dict[str, Any]
                if ow is not None and nw.touched is not None:
                    # loaded from here: only the touched items (comparing every item of a window of
                    # thousands, in every batch, was most of the save)
                    delta = {}
                    for item in nw.touched:
                        c = nw.items.get(item)
                        if c is not old_items.get(item):
                            delta[item] = c  # None: removed
                else:  # a new window, or a state not loaded from here: every item compared
                    delta = {item: c for item, c in nw.items.items() if old_items.get(item) is not c}
                    for item in old_items.keys() - nw.items.keys():
                        delta[item] = None
                seq = self.next_seq.get((key, s), 0)
                if delta and self.writes_item_rows and not seq:
                    self._write_items(key, s, _meta(new)[0], delta)
                elif delta:
                    rows = self.deltas.setdefault((key, s), [])
                    for raw in self._encoded(_meta(new)[0], delta):
                        row = _delta_row(key, s, seq, self.owner)
                        self.rows[row] = raw
                        rows.append(row)
                        seq += 1
                    self.next_seq[(key, s)] = seq
            before = (False, 0.0) if ow is None else (ow.final, ow.emitted_at)
            if before != (nw.final, nw.emitted_at):
                self.rows[_window_row(key, s)] = orjson.dumps([nw.final, nw.dirty, nw.changed_at, nw.emitted_at])
        rebuilt_from = self.meta_rows.pop(key, None)
        if _meta(old) != _meta(new) or rebuilt_from is not None:
            own = _meta_row(key, None if self.writes_item_rows else self.owner)
            self.rows[own] = orjson.dumps(list(_meta(new)))
            # (a late batch of an earlier owner writing its row again after this reaches only the
            # changelog, not this owner's store: the next rebuild reads it, and takes the greater)
            for row in rebuilt_from or ():
                if row != own:
                    self.rows.pop(row, None)
        for w in new.windows.values():
            w.touched = None  # written: a backlog's batch would keep thousands of ids here
        self.cache[key] = new

    def _encoded(self, watermark: float | None, delta: dict[str, Any]) -> list[bytes]:
        """A delta's rows: one, or, where it would exceed `row_bytes`, several, each with part of
        the items (read back in SEQ order, they add up to the same). A window that takes thousands
        of contributions in one batch (a backlog read after an outage) otherwise wrote a
        changelog record larger than the broker takes: refused, and retried for ever."""
        raw = orjson.dumps([watermark, delta])
        if len(raw) <= self.row_bytes or len(delta) == 1:
            return [raw]
        items = list(delta.items())
        half = len(items) // 2
        return self._encoded(watermark, dict(items[:half])) + self._encoded(watermark, dict(items[half:]))

    def _forget(self, key: str, start: int) -> list[bytes]:
        """Forget a window's rows: the keys of all of them (deltas, items, the window's own)."""
        self.next_seq.pop((key, start), None)
        items = self.item_rows.pop((key, start), ())
        return [*self.deltas.pop((key, start), ()), *(_item_row(key, start, i) for i in items), _window_row(key, start)]

    def _write_items(self, key: str, start: int, watermark: float | None, delta: dict[str, Any]) -> None:
        """A delta as item rows, one per item (0.1's rows)."""
        written = self.item_rows.setdefault((key, start), set())
        for item, contribution in delta.items():
            if contribution is None:
                self.rows.pop(_item_row(key, start, item), None)
                written.discard(item)
            else:
                self.rows[_item_row(key, start, item)] = orjson.dumps([watermark, contribution])
                written.add(item)

    def items(self) -> Iterable[tuple[str, Windowed]]:
        self.rebuild(self.rows.items(), time.time())
        return list(self.cache.items())

    def rebuild(self, rows: Iterable[tuple[bytes, bytes]], now: float) -> None:
        """Rebuild the in-memory states from the table's rows (after a rebalance)."""
        self.cache.clear()
        self.orphans.clear()
        self.next_seq.clear()
        self.deltas.clear()
        self.item_rows.clear()
        self.meta_rows.clear()
        deltas: list[tuple[str, int, int, int, str, bytes, Any]] = []
        for raw_key, raw in rows:
            parts = raw_key.decode().split(SEP)
            st = self.cache.setdefault(parts[0], Windowed())
            value = orjson.loads(raw)
            if parts[1] == "m":  # the greatest of its owners' (older rows: a late count after the two)
                st.watermark = max(st.watermark, -math.inf if value[0] is None else value[0])
                st.closed_upto = max(st.closed_upto, -math.inf if value[1] is None else value[1])
                self.meta_rows.setdefault(parts[0], []).append(raw_key)
            elif parts[1] == "w":
                w = st.windows.setdefault(int(parts[2]), Window())
                if len(value) == 5:  # rows written before late counts were dropped: [final, late, ...]
                    del value[1]
                w.final, w.dirty, w.changed_at, w.emitted_at = value
            elif parts[1] == "d":
                epoch, _, token = SEP.join(parts[4:]).partition(".")
                deltas.append((parts[0], int(parts[2]), int(epoch) if token and epoch.isdigit() else -1,
                               int(parts[3]), token, raw_key, value))
            else:  # an item row, written before delta rows
                t, contribution = value
                start, item = int(parts[2]), SEP.join(parts[3:])
                st.windows.setdefault(start, Window()).items[item] = self.upgrade(contribution)
                self.item_rows.setdefault((parts[0], start), set()).add(item)
                if t is not None:
                    st.watermark = max(st.watermark, t)
        # a window's deltas after its item rows (older), by ownership then in the order written:
        # the newest wins
        for key, start, _epoch, seq, _token, raw_key, (t, delta) in sorted(deltas, key=lambda d: d[2:5]):
            st, w = self.cache[key], self.cache[key].windows.setdefault(start, Window())
            for item, contribution in delta.items():
                if contribution is None:
                    w.items.pop(item, None)
                else:
                    w.items[item] = self.upgrade(contribution)
            self.next_seq[(key, start)] = max(self.next_seq.get((key, start), 0), seq + 1)
            self.deltas.setdefault((key, start), []).append(raw_key)
            if t is not None:
                st.watermark = max(st.watermark, t)
        self.owner = f"{1 + max((d[2] for d in deltas), default=-1)}.{secrets.token_hex(4)}"
        # A window that ends before the key's `closed_upto` was dropped (see `Windowed`): rows of
        # it can only be a late batch's of an earlier owner (see the module doc). Not rebuilt;
        # deleted by the key's next save (rebuilding happens outside any event, writes do not).
        for key, st in self.cache.items():
            for start in [s for s in st.windows if s < st.closed_upto]:
                del st.windows[start]
                self.orphans.setdefault(key, []).extend(self._forget(key, start))
        # Meta rows of open windows are written at flush only, so an open window may have changed
        # since: treat it as changed now (this can delay its final by one quiet period, never make
        # it premature).
        for st in self.cache.values():
            for w in st.windows.values():
                if not w.final:
                    w.dirty, w.changed_at = True, max(w.changed_at, now)
