"""/readyz: "can write to Kafka". The writer's readiness over a stand-in producer (no broker)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import PartitionMetadata

from config.settings import load
from ingress import writer as w
from ingress.writer import KafkaWriter, NotDurable

SETTINGS = load({"TOPIC_REPLICATION": "3", "TOPIC_PREFIX": "r."})


class Producer:
    """The producer as the writer uses it: metadata of ivr.events' partitions, and writes that the
    broker acknowledges or not."""

    def __init__(self) -> None:
        self.isr = [[1, 2, 3], [2, 3, 1]]
        self.acknowledges = True
        self.client = SimpleNamespace(fetch_all_metadata=self.metadata)

    async def metadata(self) -> Any:
        parts = {i: PartitionMetadata("r.ivr.events", i, isr[0] if isr else -1, [1, 2, 3], isr, None)
                 for i, isr in enumerate(self.isr)}
        return SimpleNamespace(_partitions={"r.ivr.events": parts})

    async def send_and_wait(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        if not self.acknowledges:
            raise KafkaTimeoutError()


def writer() -> tuple[KafkaWriter, Producer]:
    kafka, producer = KafkaWriter(SETTINGS), Producer()
    kafka._producer = producer  # type: ignore[assignment]
    return kafka, producer


def ready(kafka: KafkaWriter) -> bool:
    kafka._ready_checked_at = 0.0  # (answers are kept a second)
    return asyncio.run(kafka.ready())


def test_ready_needs_enough_replicas_in_sync_for_acks_all() -> None:
    """Two of three brokers hung, then dropped from the in-sync set: one in sync is not enough
    (min.insync.replicas 2); a partition without a leader neither."""
    kafka, producer = writer()
    assert ready(kafka)
    producer.isr = [[1], [1, 3]]
    assert not ready(kafka)
    producer.isr = [[1, 2], [1, 3]]
    assert ready(kafka)
    producer.isr = [[], [1, 3]]
    assert not ready(kafka)


def test_a_failed_write_makes_it_not_ready_until_one_is_acknowledged_or_a_while_passes() -> None:
    """Brokers that hang still answer metadata, with the in-sync set unchanged for ~30 s: the
    failed writes tell meanwhile."""
    kafka, producer = writer()
    producer.acknowledges = False

    async def write() -> bool:
        try:
            await kafka.write("r.ivr.events", b"k", b"v")
        except NotDurable:
            return False
        return True

    assert not asyncio.run(write())
    assert not ready(kafka)
    kafka._failed_at = (kafka._failed_at or 0.0) - w.FAILED_RECENTLY_S  # a while later, no write since
    assert ready(kafka)
    assert not asyncio.run(write())
    producer.acknowledges = True
    assert asyncio.run(write())
    assert ready(kafka)
