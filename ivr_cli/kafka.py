"""The Kafka side of `ivr`: following a topic, reading one to its end, offsets and group lag."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from config.kafka_client import aiokafka_kwargs
from config.settings import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """What every Kafka client of `ivr` is built with: brokers and security as every client's."""
    return {**aiokafka_kwargs(settings), "client_id": "ivr-cli"}


async def _started(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # closes what start() opened (no "Unclosed AIOKafkaConsumer")
        raise
    return consumer


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(**client_kwargs(settings), group_id=None, enable_auto_commit=False,
                            isolation_level="read_committed", metadata_max_age_ms=5000)


def _admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_kwargs(settings))


async def partition_map(settings: Settings) -> dict[str, list[int]]:
    """Every topic on the cluster and its partitions. (Metadata for all topics: asking for one by
    name may make a broker with auto-creation on create it, with the wrong settings.)"""
    admin = _admin(settings)
    try:
        await admin.start()
        described = await admin.describe_topics()
    finally:
        await admin.close()
    return {t["topic"]: sorted(p["partition"] for p in t["partitions"]) for t in described if not t["error_code"]}


async def _partitions(settings: Settings, topic: str, wait_s: float | None) -> list[TopicPartition]:
    """The topic's partitions; while it does not exist yet (stack still starting), wait for it."""
    told = False
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        parts = (await partition_map(settings)).get(topic)
        if parts:
            return [TopicPartition(topic, p) for p in parts]
        if deadline is not None and time.monotonic() >= deadline:
            return []
        if not told:
            print(f"waiting for topic {topic} to be created ...", file=sys.stderr, flush=True)
            told = True
        await asyncio.sleep(1.0)


async def follow(settings: Settings, topic: str, from_beginning: bool,
                 idle_exit_s: float | None) -> AsyncIterator[ConsumerRecord]:
    """Records of `topic` as they arrive (after what is there now, or from the start), in order of
    their timestamps within each fetch; ends after `idle_exit_s` without a record (never when None)."""
    consumer = await _started(_consumer(settings))
    try:
        tps = await _partitions(settings, topic, idle_exit_s)
        if not tps:
            return
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the positions now, so that nothing written from here on is missed
            await consumer.position(tp)
        print(f"following {topic} ({len(tps)} partitions){' from the beginning' if from_beginning else ''}; "
              "Ctrl-C to stop", file=sys.stderr, flush=True)
        last = time.monotonic()
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            records = sorted((r for rs in batches.values() for r in rs), key=lambda r: r.timestamp)
            for record in records:
                yield record
            if records:
                last = time.monotonic()
            elif idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                return
    finally:
        await consumer.stop()


async def read_to_end(settings: Settings, topic: str, timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Everything on `topic` now (up to the end offsets read at the start); [] if it does not exist."""
    consumer = await _started(_consumer(settings))
    out: list[ConsumerRecord] = []
    try:
        tps = await _partitions(settings, topic, 0)
        if not tps:
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= end[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
            batches = await consumer.getmany(timeout_ms=500)
            out.extend(r for rs in batches.values() for r in rs)
    finally:
        await consumer.stop()
    return out


@dataclass(frozen=True)
class TopicStats:
    topic: str
    partitions: int
    records: int  # log end minus log start, over all partitions
    lag: int | None  # the worker group's: end minus committed, over the partitions it committed; None: none


async def topic_stats(settings: Settings, topics: list[str], group: str) -> tuple[list[TopicStats], list[str]]:
    """Per topic that exists: partitions, records and the group's lag; and the names that do not exist."""
    admin = _admin(settings)
    try:
        await admin.start()
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    consumer = await _started(_consumer(settings))
    try:
        existing = await partition_map(settings)
        stats, missing = [], []
        for topic in topics:
            if topic not in existing:
                missing.append(topic)
                continue
            tps = [TopicPartition(topic, p) for p in existing[topic]]
            start = await consumer.beginning_offsets(tps)
            end = await consumer.end_offsets(tps)
            mine = [tp for tp in tps if tp in committed and committed[tp].offset >= 0]
            lag = sum(max(0, end[tp] - committed[tp].offset) for tp in mine) if mine else None
            stats.append(TopicStats(topic, len(tps), sum(end[tp] - start[tp] for tp in tps), lag))
        return stats, missing
    finally:
        await consumer.stop()


async def group_topics(settings: Settings, group: str) -> list[str]:
    """The worker group's own topics (table changelogs, repartitions), named `<group>-...`."""
    return sorted(t for t in await partition_map(settings) if t.startswith(f"{group}-"))
