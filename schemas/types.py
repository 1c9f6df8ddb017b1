"""Annotated scalar types that carry their JSON Schema meaning."""

from __future__ import annotations

from typing import Annotated


class Format:
    """JSON Schema `format` (and an optional pattern) attached to a `str` field."""

    def __init__(self, fmt: str | None = None, pattern: str | None = None) -> None:
        self.fmt = fmt
        self.pattern = pattern


class Minimum:
    def __init__(self, value: float) -> None:
        self.value = value


# ISO 8601 UTC with milliseconds, e.g. 2017-06-22T05:47:18.000Z (sortable as text)
Timestamp = Annotated[str, Format("date-time", r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")]
Seconds = Annotated[float, Minimum(0)]
Count = Annotated[int, Minimum(0)]
Rate = Annotated[float, Minimum(0)]
PositiveCount = Annotated[int, Minimum(1)]
