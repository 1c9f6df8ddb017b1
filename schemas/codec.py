"""JSON bytes for topics: orjson, which serialises the record dataclasses natively."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(record: Any) -> bytes:
    return orjson.dumps(record)


def contribution_json(app: str, key: str, item: str, at: str, values: dict[str, Any],
                      at_received: bool = False) -> bytes:
    """`dumps(MetricContribution(...))`, byte for byte (same fields, same order: a unit test holds
    the two equal), without making the frozen dataclass first: that costs ~1.8 µs a contribution,
    and the calls pipeline writes two or three for every completed call."""
    return orjson.dumps({"app": app, "key": key, "item": item, "at": at, "values": values,
                         "at_received": at_received, "v": 1})
