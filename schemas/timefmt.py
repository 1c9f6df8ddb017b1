"""Timestamps: the provider's three formats in, one ISO 8601 UTC format out."""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

_MIN_EPOCH = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
_MAX_EPOCH = datetime(2100, 1, 1, tzinfo=UTC).timestamp()
_ENDS_WITH_TIME = re.compile(r"\d\d:\d\d(:\d\d([.,]\d+)?)?$")
_OFFSET = re.compile(r"\d\d(:?\d\d)?")
_DATE = re.compile(r"\d{4}-\d\d-\d\d")


def format_ts(epoch: float) -> str:
    """Epoch seconds -> `2017-06-22T05:47:18.000Z` (fixed width, so it sorts as text)."""
    second, ms = divmod(round(epoch * 1000), 1000)
    return _second(second) + _MILLIS[ms]


# ".000Z" to ".999Z": the end of every `format_ts`, made once (formatting it each time cost a
# third of the call)
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


@functools.lru_cache(maxsize=4096)
def _second(epoch_s: int) -> str:
    # cached: a worker formats the same few seconds many times (datetime formatting is slow)
    return f"{datetime.fromtimestamp(epoch_s, UTC):%Y-%m-%dT%H:%M:%S}"


def parse_ts(text: str) -> float:
    """Our own ISO 8601 UTC format (or any ISO string with offset) -> epoch seconds."""
    return datetime.fromisoformat(text).timestamp()


def parse_provider_time(value: str | int | float, tz: ZoneInfo) -> float:
    """Provider `time` -> epoch seconds. Raises ValueError with a reason.

    Accepts ISO 8601 with an offset, naive ISO (read in `tz`, e.g. Asia/Kolkata), and epoch
    seconds or milliseconds (13 digits and up are milliseconds).
    """
    if isinstance(value, bool):
        raise ValueError("must be a timestamp, not a boolean")
    if isinstance(value, int | float):
        epoch = float(value)
    else:
        text = value.strip()
        if _is_number(text):
            epoch = float(text)
        else:
            if _DATE.fullmatch(text):
                raise ValueError("a date without a time of day")
            try:
                dt = datetime.fromisoformat(_plus_restored(text))
            except ValueError:
                raise ValueError(
                    "not a timestamp: expected ISO 8601 (with or without offset) or epoch seconds/milliseconds"
                ) from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=tz)
            epoch = dt.timestamp()
            return _checked(epoch)
    if epoch >= 1e11:  # milliseconds: 1e11 s would be the year 5138
        epoch /= 1000.0
    return _checked(epoch)


def _plus_restored(text: str) -> str:
    """`2017-06-22T11:17:18 05:30` -> `...+05:30`: an offset's `+` sent unencoded in a query
    string is read as a space (a naive `2017-06-22 11:17:18` is left as it is)."""
    head, space, offset = text.rpartition(" ")
    if space and _OFFSET.fullmatch(offset) and _ENDS_WITH_TIME.search(head):
        return f"{head}+{offset}"
    return text


def _is_number(text: str) -> bool:
    if not text or text[0] in "+-":
        return False
    head, _, tail = text.partition(".")
    return head.isdigit() and (tail == "" or tail.isdigit())


def _checked(epoch: float) -> float:
    if not (_MIN_EPOCH <= epoch < _MAX_EPOCH):
        raise ValueError("out of range: must fall between the years 2000 and 2100")
    return epoch
