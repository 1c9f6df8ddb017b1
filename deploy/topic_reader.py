"""Read a topic back from the start: for tests, benchmarks and checks by hand."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson


async def _read(
    bootstrap: str, topic: str, count: int, wait_s: float, isolation: str
) -> list[tuple[bytes | None, Any]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        isolation_level=isolation,
        metadata_max_age_ms=1000,
    )
    await consumer.start()
    out: list[tuple[bytes | None, Any]] = []
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and len(out) < count:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                out.extend((r.key, orjson.loads(r.value)) for r in records)
    finally:
        await consumer.stop()
    return out


def read_topic(
    bootstrap: str, topic: str, count: int, timeout: float = 20.0, isolation: str = "read_committed"
) -> list[tuple[bytes | None, Any]]:
    """Read a topic from the start until `count` records (or `timeout`): key and decoded JSON value."""
    return asyncio.run(_read(bootstrap, topic, count, timeout, isolation))


def read_all(bootstrap: str, topic: str, settle: float = 2.0) -> list[tuple[bytes | None, Any]]:
    """Everything on a topic, reading until nothing new arrives for `settle` seconds."""
    return asyncio.run(_read(bootstrap, topic, 10**9, settle, "read_committed"))
