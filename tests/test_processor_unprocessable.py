"""A record the worker cannot process goes to ivr.events.unprocessable; every other call is exact."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from bench.run_all import truth_mismatches
from bench.simulator import APP, Profile, generate, write_events
from deploy.local_kafka import KafkaBroker
from schemas.codec import dumps
from schemas.webhook import normalise
from tests.conftest import STACK_TIMINGS, TOKEN, start_worker, wait_worker_ready
from tests.helpers import new_prefix, read_all

pytestmark = pytest.mark.kafka


def poison_call(uid: str) -> list[tuple[bytes, bytes]]:
    """IN and H without provider times and an H duration of 1e308: placing the hang-up at
    IN + duration overflows when the call is closed (an OverflowError in the core). Written
    straight to ivr.events: the ingress refuses such a duration (or may, one day, not)."""
    zone = ZoneInfo("Asia/Kolkata")
    out = []
    for fields in ({"app": APP, "event": "IN", "uniqueid": uid, "cli": "9810000999"},
                   {"app": APP, "event": "H", "uniqueid": uid, "cli": "9810000999", "duration": "1"}):
        out.append((uid.encode(), dumps(normalise(fields, time.time(), zone))))
    out[1] = (out[1][0], out[1][1].replace(b'"duration":1.0', b'"duration":1e308'))
    assert b"1e308" in out[1][1]
    return out


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


def unprocessable_count(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(r'^ivr_worker_unprocessable_events_total\{pipeline="calls"\} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def dead_letters(bootstrap: str, prefix: str, n: int, timeout: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [v for _, v in read_all(bootstrap, f"{prefix}ivr.events.unprocessable", settle=0.5)]
        if len(found) >= n:
            return found
    raise AssertionError(f"{n} dead letters expected, got {found}")


def test_a_poison_event_alone_and_inside_a_backlog_batch_affects_no_other_call(
        kafka: KafkaBroker, tmp_path: Path) -> None:
    prefix = new_prefix()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
           "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "memory://", "WORKER_DATA_DIR": str(tmp_path / "w"),
           **STACK_TIMINGS}
    topic = f"{prefix}ivr.events"
    profile = Profile(agents=8, p_duplicate=0.0, p_reorder=0.0, p_missing_hangup=0.0, mean_talk_s=30)
    events, truth = generate(100, time.time() - 7200, 600, profile, seed=23, prefix="pz")
    # the backlog: 100 calls, the poison's IN first and its H among the others' hang-ups
    asyncio.run(produce(kafka.bootstrap, topic, poison_call("poison-in-batch")[:1]))
    hangups = [i for i, e in enumerate(events) if e["event"] == "H"]
    middle = hangups[len(hangups) // 2]
    asyncio.run(write_events(kafka.bootstrap, topic, events[:middle], progress=False))
    asyncio.run(produce(kafka.bootstrap, topic, poison_call("poison-in-batch")[1:]))
    asyncio.run(write_events(kafka.bootstrap, topic, events[middle:], progress=False))
    worker, port = start_worker(env, tmp_path / "worker.log")
    try:
        wait_worker_ready(worker)
        assert truth_mismatches(kafka.bootstrap, prefix, truth) == 0
        first = dead_letters(kafka.bootstrap, prefix, 1)
        # alone: a poison call on its own, then an ordinary call that must still be processed
        asyncio.run(produce(kafka.bootstrap, topic, poison_call("poison-alone")))
        later, later_truth = generate(1, time.time() - 600, 60, profile, seed=24, prefix="after")
        asyncio.run(write_events(kafka.bootstrap, topic, later, progress=False))
        assert truth_mismatches(kafka.bootstrap, prefix, truth + later_truth) == 0
        dead = dead_letters(kafka.bootstrap, prefix, 2)
        assert worker.alive()
        assert unprocessable_count(port) == 2
    finally:
        worker.stop()
    assert [d["key"] for d in first] == ["poison-in-batch"]
    assert sorted(d["key"] for d in dead) == ["poison-alone", "poison-in-batch"]
    for d in dead:
        assert d["topic"] == topic and d["pipeline"] == "calls" and d["error_type"] == "OverflowError"
        assert '"duration":1e308' in d["value"] and d["value_base64"] is None
        assert isinstance(d["partition"], int) and isinstance(d["offset"], int)
