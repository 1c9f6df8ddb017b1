"""A keyed state stored as one JSON value per key: the `Store` of the calls and callers pipelines.

It may keep the states it saved last (`keep`) as they are, so that a key read again soon (a call's
next events, a batch or two later) is not read from the table and decoded again: about a twentieth
of the worker's CPU under load. A kept state is handed over on `load` and forgotten here (the step
may change it in place, and a failed record's keys are loaded again as saved: from the table);
`save` keeps it again. The table's bytes stay the truth: every state kept was written to it, and
`items` (after a rebalance, when another worker may have written the keys) forgets them all."""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

import orjson

S = TypeVar("S")


class JsonStore(Generic[S]):
    def __init__(self, rows: MutableMapping[bytes, bytes], decode: Callable[[Any], S],
                 encode: Callable[[S], Any], keep: int = 0, reuse: Callable[[S], S] = lambda state: state) -> None:
        self.rows = rows
        self.decode = decode
        self.encode = encode
        self.keep = keep  # how many saved states to keep at most (0: none), the most recently saved
        self.reuse = reuse  # a kept state made as a decoded one would be (e.g. what is not stored reset)
        self.kept: dict[str, S] = {}  # in the order saved, oldest first

    def load(self, key: str) -> S | None:
        kept = self.kept.pop(key, None)
        if kept is not None:
            return self.reuse(kept)
        raw = self.rows.get(key.encode())
        return None if raw is None else self.decode(orjson.loads(raw))

    def save(self, key: str, state: S | None) -> None:
        if state is None:
            self.kept.pop(key, None)
            self.rows.pop(key.encode(), None)
            return
        self.rows[key.encode()] = orjson.dumps(self.encode(state))
        if self.keep:
            self.kept.pop(key, None)  # (a key saved twice without a load between: kept as newest)
            self.kept[key] = state
            if len(self.kept) > self.keep:
                # the older half forgotten at once: forgetting the oldest one by one would find it
                # each time past the holes the keys taken and forgotten leave at the dict's front
                self.kept = dict(list(self.kept.items())[len(self.kept) // 2:])

    def items(self) -> Iterator[tuple[str, S]]:
        self.kept.clear()
        return ((key.decode(), self.decode(orjson.loads(raw))) for key, raw in self.rows.items())
