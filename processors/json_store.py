"""A keyed state stored as one JSON value per key: the `Store` of the calls and callers pipelines.

It may keep the states it saved last (up to `keep_bytes` of their stored size) as they are, so
that a key read again soon (a call's next events, a batch or two later) is not read from the table
and decoded again (reads and decoding were about 4% of the worker's CPU under load). A kept state
is handed over on `load` and forgotten here: the step may change it in place, and a failed
record's keys are loaded again as saved, from the table. `save` keeps it again. The table's bytes
stay the truth: every state kept was written to it, and `items` (after a rebalance, when another
worker may have written the keys) forgets them all."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

import orjson

S = TypeVar("S")


class JsonStore(Generic[S]):
    def __init__(self, rows: MutableMapping[bytes, bytes], decode: Callable[[Any], S],
                 encode: Callable[[S], Any], keep_bytes: int = 0,
                 reuse: Callable[[S], S] = lambda state: state) -> None:
        self.rows = rows
        self.decode = decode
        self.encode = encode
        #: how much to keep (0: nothing), counted as the kept states' stored (JSON) size: the most
        #: recently saved are kept
        self.keep_bytes = keep_bytes
        self.reuse = reuse  # a kept state made as a decoded one would be (e.g. what is not stored reset)
        self.kept: dict[str, tuple[S, int]] = {}  # key -> (state, its stored size), oldest saved first
        self.kept_bytes = 0

    def load(self, key: str) -> S | None:
        kept = self.kept.pop(key, None)
        if kept is not None:
            self.kept_bytes -= kept[1]
            return self.reuse(kept[0])
        raw = self.rows.get(key.encode())
        return None if raw is None else self.decode(orjson.loads(raw))

    def save(self, key: str, state: S | None) -> None:
        old = self.kept.pop(key, None)  # (saved twice without a load between: kept as the newest)
        if old is not None:
            self.kept_bytes -= old[1]
        if state is None:
            self.rows.pop(key.encode(), None)
            return
        raw = orjson.dumps(self.encode(state))
        self.rows[key.encode()] = raw
        if self.keep_bytes:
            self.kept[key] = (state, len(raw))
            self.kept_bytes += len(raw)
            if self.kept_bytes > self.keep_bytes:
                self._forget_older()

    def _forget_older(self) -> None:
        """Forget the oldest states, down to half of `keep_bytes`, at once: forgetting the oldest one
        by one would find it each time past the holes that keys taken and forgotten leave at the
        dict's front."""
        newest = list(self.kept.items())
        total, cut = 0, len(newest)
        while cut and total + newest[cut - 1][1][1] <= self.keep_bytes // 2:
            cut -= 1
            total += newest[cut][1][1]
        self.kept, self.kept_bytes = dict(newest[cut:]), total

    def items(self) -> Iterator[tuple[str, S]]:
        self.kept.clear()
        self.kept_bytes = 0
        return ((key.decode(), self.decode(orjson.loads(raw))) for key, raw in self.rows.items())
