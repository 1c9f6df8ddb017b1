"""JSON bytes for topics: orjson, which serialises the record dataclasses natively."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(record: Any) -> bytes:
    return orjson.dumps(record)
