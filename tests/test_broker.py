"""The broker is a real Apache Kafka: durable across a restart of its process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.local_kafka import KafkaBroker

pytestmark = pytest.mark.kafka


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for v in values:
            await producer.send_and_wait(topic, v, key=b"k")
    finally:
        await producer.stop()


async def _consume_group(bootstrap: str, topic: str, group: str, want: int, rounds: int = 100) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        for _ in range(rounds):
            for records in (await consumer.getmany(timeout_ms=300)).values():
                got.extend(r.value for r in records)
            if len(got) >= want:
                break
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


def test_acked_record_survives_broker_restart(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", partitions=1)
    broker.start()
    try:
        values = [f"durable-{i}".encode() for i in range(5)]
        asyncio.run(_produce(broker.bootstrap, "durability", values))
        pid_before = broker.proc.pid if broker.proc else None
        broker.restart()
        assert broker.proc is not None and broker.proc.pid != pid_before
        got = asyncio.run(_consume_group(broker.bootstrap, "durability", "g1", len(values)))
        assert got == values
        # the group's committed offset is durable too: a second read by the same group gets nothing new
        broker.restart()
        assert asyncio.run(_consume_group(broker.bootstrap, "durability", "g1", 1, rounds=10)) == []
    finally:
        broker.stop()
