"""Topic creation on a real broker: the topics the worker reads must have TOPIC_PARTITIONS partitions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from config import topics
from config.settings import Settings, load
from config.topics import PartitionMismatch, TopicSpec, ensure_topics
from deploy.local_kafka import ROOT, KafkaBroker, free_port
from ingress.writer import KafkaWriter
from tests.helpers import new_prefix

pytestmark = pytest.mark.kafka


def _settings(kafka: KafkaBroker, prefix: str, partitions: int) -> Settings:
    return load({"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix,
                 "TOPIC_PARTITIONS": str(partitions)})


@contextlib.asynccontextmanager
async def _admin(kafka: KafkaBroker) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


def _partitions(kafka: KafkaBroker, names: list[str]) -> dict[str, int]:
    async def go() -> dict[str, int]:
        async with _admin(kafka) as admin:
            return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}

    return asyncio.run(go())


def _create(kafka: KafkaBroker, name: str, partitions: int) -> None:
    async def go() -> None:
        async with _admin(kafka) as admin:
            await admin.create_topics([NewTopic(name, partitions, 1)])

    asyncio.run(go())


def test_a_topic_the_worker_reads_with_other_partitions_is_refused_by_name(kafka: KafkaBroker) -> None:
    prefix = new_prefix()
    asyncio.run(ensure_topics(_settings(kafka, prefix, 3)))
    assert _partitions(kafka, [f"{prefix}{topics.EVENTS}"]) == {f"{prefix}{topics.EVENTS}": 3}
    asyncio.run(ensure_topics(_settings(kafka, prefix, 3)))  # again: as they are
    with pytest.raises(PartitionMismatch) as refused:
        asyncio.run(ensure_topics(_settings(kafka, prefix, 4)))
    message = str(refused.value)
    assert "TOPIC_PARTITIONS=4" in message and f"{prefix}{topics.EVENTS} has 3" in message
    assert f"{prefix}{topics.CALL_TICKS} has 3" in message
    assert f"{prefix}{topics.CALLS_COMPLETED}" not in message  # an output: any count will do


def test_an_output_topic_may_have_its_own_partitions(kafka: KafkaBroker) -> None:
    prefix = new_prefix()
    _create(kafka, f"{prefix}{topics.CALLS_COMPLETED}", 5)  # e.g. sized for its consumers
    asyncio.run(ensure_topics(_settings(kafka, prefix, 3)))
    counts = _partitions(kafka, [f"{prefix}{topics.CALLS_COMPLETED}", f"{prefix}{topics.EVENTS}"])
    assert counts == {f"{prefix}{topics.CALLS_COMPLETED}": 5, f"{prefix}{topics.EVENTS}": 3}


def test_the_ingress_starts_and_says_why_the_workers_will_not(kafka: KafkaBroker,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    prefix = new_prefix()
    _create(kafka, f"{prefix}{topics.EVENTS}", 2)

    async def go() -> None:
        writer = KafkaWriter(_settings(kafka, prefix, 3))
        await writer.start()  # does not raise: webhooks are still kept
        try:
            await writer.write(f"{prefix}{topics.EVENTS}", b"u1", b"{}")
        finally:
            await writer.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(go())
    assert any(r.levelno == logging.ERROR and f"{prefix}{topics.EVENTS} has 2" in r.getMessage()
               for r in caplog.records)
    # the ingress's other topic was created all the same
    assert _partitions(kafka, [f"{prefix}{topics.EVENTS_INVALID}"]) == {f"{prefix}{topics.EVENTS_INVALID}": 3}


def test_more_partitions_than_the_setting_are_refused_too(kafka: KafkaBroker) -> None:
    """The case that went through unnoticed before: records would meet the wrong table partition."""
    prefix = new_prefix()
    changelog = TopicSpec(f"{prefix}worker-calls-changelog", (("cleanup.policy", "compact"),), prefixed=False,
                          co_partitioned=True)
    asyncio.run(ensure_topics(_settings(kafka, prefix, 4), extra=(changelog,)))
    with pytest.raises(PartitionMismatch) as refused:
        asyncio.run(ensure_topics(_settings(kafka, prefix, 3), extra=(changelog,)))
    message = str(refused.value)
    assert "TOPIC_PARTITIONS=3" in message and f"{prefix}{topics.EVENTS} has 4" in message
    assert f"{changelog.base} has 4" in message  # the worker's changelogs are checked as well


def test_created_meanwhile_by_another_process_with_more_is_refused(kafka: KafkaBroker) -> None:
    """Another process won the race to create a topic, with another TOPIC_PARTITIONS: the check of
    the topics that existed before did not see it; waiting for its leaders does."""
    from config.topics import _until_led

    prefix = new_prefix()
    name = f"{prefix}{topics.CALL_TICKS}"
    _create(kafka, name, 4)

    async def go() -> None:
        async with _admin(kafka) as admin:
            await _until_led(admin, {name: 3}, 30, exact={name})

    with pytest.raises(PartitionMismatch, match=f"{name} has 4"):
        asyncio.run(go())


def test_a_worker_started_on_topics_of_another_partition_count_says_so_in_one_line(kafka: KafkaBroker,
                                                                                     tmp_path: Path) -> None:
    """It printed Faust's traceback of the error (a fault trial, TOPIC_PARTITIONS=12 on topics of 6)."""
    prefix = new_prefix()
    _create(kafka, f"{prefix}{topics.EVENTS}", 2)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
           "WORKER_DATA_DIR": str(tmp_path / "w"), "WORKER_WEB_PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "faust", "-A", "processors.app", "worker", "-l", "info"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"error: topics the worker reads must have TOPIC_PARTITIONS=3 partitions; found: {prefix}{topics.EVENTS} " \
           "has 2" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
