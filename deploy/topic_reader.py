"""Read a topic back from the start: for tests, benchmarks and checks by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import orjson

Kafka = str | Mapping[str, Any]  # a bootstrap list, or a client's settings (config.kafka_client.aiokafka_kwargs)


def client_kwargs(kafka: Kafka) -> dict[str, Any]:
    return {"bootstrap_servers": kafka} if isinstance(kafka, str) else dict(kafka)


async def _read(
    bootstrap: Kafka, topic: str, count: int, wait_s: float, isolation: str
) -> list[tuple[bytes | None, Any]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        **client_kwargs(bootstrap),
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
    bootstrap: Kafka, topic: str, count: int, timeout: float = 20.0, isolation: str = "read_committed"
) -> list[tuple[bytes | None, Any]]:
    """Read a topic from the start until `count` records (or `timeout`): key and decoded JSON value."""
    return asyncio.run(_read(bootstrap, topic, count, timeout, isolation))


def read_all(bootstrap: Kafka, topic: str, settle: float = 2.0) -> list[tuple[bytes | None, Any]]:
    """Everything on a topic, reading until nothing new arrives for `settle` seconds."""
    return asyncio.run(_read(bootstrap, topic, 10**9, settle, "read_committed"))
