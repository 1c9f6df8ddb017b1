"""`format_ts`'s cached pieces give what formatting the whole datetime gives."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from schemas.timefmt import format_ts, parse_ts


def _formatted(epoch: float) -> str:
    ms = round(epoch * 1000)
    return f"{datetime.fromtimestamp(ms // 1000, UTC):%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def test_format_ts_is_the_datetime_format_to_the_millisecond() -> None:
    rnd = random.Random(16)
    epochs = [0.0, 0.0004, 0.0005, 0.9995, 1.9999, 946684800.0, 1796010012.345, 4102444799.9996]
    epochs += [rnd.uniform(0, 4.1e9) for _ in range(20_000)]
    epochs += [rnd.randrange(0, 4_100_000_000_000) / 1000 for _ in range(20_000)]
    for epoch in epochs:
        text = format_ts(epoch)
        assert text == _formatted(epoch), epoch
        assert parse_ts(text) == datetime.fromisoformat(text).timestamp()
