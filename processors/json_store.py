"""A keyed state stored as one JSON value per key: the `Store` of the calls and callers pipelines."""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, Generic, TypeVar

import orjson

S = TypeVar("S")


class JsonStore(Generic[S]):
    def __init__(self, rows: MutableMapping[bytes, bytes], decode: Callable[[Any], S],
                 encode: Callable[[S], Any]) -> None:
        self.rows = rows
        self.decode = decode
        self.encode = encode

    def load(self, key: str) -> S | None:
        raw = self.rows.get(key.encode())
        return None if raw is None else self.decode(orjson.loads(raw))

    def save(self, key: str, state: S | None) -> None:
        if state is None:
            self.rows.pop(key.encode(), None)
        else:
            self.rows[key.encode()] = orjson.dumps(self.encode(state))

    def items(self) -> Iterable[tuple[str, S]]:
        for key, raw in self.rows.items():
            yield key.decode(), self.decode(orjson.loads(raw))
