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
        assert d["app"] == APP
        assert '"duration":1e308' in d["value"] and d["value_base64"] is None
        assert isinstance(d["partition"], int) and isinstance(d["offset"], int)


def big_call(uid: str, attempts: int) -> list[tuple[bytes, bytes]]:
    """A call that rang agents `attempts` times; the last one answered, then the caller hung up."""
    zone, start = ZoneInfo("Asia/Kolkata"), time.time() - 3000
    fields: list[dict[str, str]] = [{"event": "IN"}]
    for n in range(attempts - 1):
        aid, to = f"{uid}.{n}", f"90000000{n % 10:02d}"
        fields += [{"event": "TA", "attemptid": aid, "to": to},
                   {"event": "TE", "attemptid": aid, "to": to, "result": "noanswer", "duration": "1"}]
    aid, to = f"{uid}.{attempts - 1}", "9000000099"
    fields += [{"event": "TA", "attemptid": aid, "to": to}, {"event": "TC", "attemptid": aid, "to": to},
               {"event": "TE", "attemptid": aid, "to": to, "result": "answered", "duration": "40"}, {"event": "H"}]
    return [(uid.encode(), dumps(normalise({"app": APP, "uniqueid": uid, "cli": "9810000777", **f}, start + i, zone)))
            for i, f in enumerate(fields)]


async def limit_record_size(bootstrap: str, marker: str, max_bytes: int, but: str) -> list[str]:
    """Set max.message.bytes on every topic whose name holds `marker` (a test's own topics) but
    `but`: what the broker then refuses is what a default broker refuses above 1 MB."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if marker in t and t != but]
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name, {"max.message.bytes": str(max_bytes)})
                                   for name in names])
        return names
    finally:
        await admin.close()


def test_a_backlog_larger_than_a_record_holds_and_a_call_too_large_to_keep_stall_nothing(
        kafka: KafkaBroker, tmp_path: Path) -> None:
    """Every topic the worker writes takes records of 8 KiB at most, its producer batches 4 KiB.
    150 calls then close in a few batches: the app's contributions (about 300 bytes each) no
    longer fit one record, nor its window's changes one changelog record; they are split (under
    a quarter of a batch). A call ringing 100 attempts outgrows the state a call may keep (half a
    batch): the events of its later attempts go to the dead letters, but for the answer of the
    last one, and the call closes answered with the attempts it kept. Unsplit, the broker refused
    the records, and the worker retried them for ever: the pipelines stalled (as they would above
    a default broker's 1 MB)."""
    prefix = new_prefix()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
           "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "memory://", "WORKER_DATA_DIR": str(tmp_path / "w"),
           "WORKER_PRODUCE_BATCH_BYTES": "4096", "METRICS_INTERIM_INTERVAL_S": "1", **STACK_TIMINGS}
    topic = f"{prefix}ivr.events"
    profile = Profile(agents=8, p_duplicate=0.0, p_reorder=0.0, p_missing_hangup=0.0, mean_talk_s=30)
    events, truth = generate(150, time.time() - 2400, 300, profile, seed=31, prefix="bk")
    worker, port = start_worker(env, tmp_path / "worker.log")
    try:
        wait_worker_ready(worker)
        limited = asyncio.run(limit_record_size(kafka.bootstrap, prefix.rstrip("."), 8192, but=topic))
        assert f"{prefix}ivr.internal.calls-by-app" in limited and any("changelog" in t for t in limited)
        asyncio.run(write_events(kafka.bootstrap, topic, events, progress=False))
        asyncio.run(produce(kafka.bootstrap, topic, big_call("big-call", 100)))
        assert truth_mismatches(kafka.bootstrap, prefix, truth, timeout=60) == 0
        big: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while not big and time.monotonic() < deadline:
            big = next((v for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.calls.completed", settle=0.5)
                        if v["uniqueid"] == "big-call"), {})
        assert big, "the large call was not closed"
        kept = len(big["attempts"])
        assert 2 < kept < 100 and big["outcome"] == "answered" and big["answered_by"] == "9000000099"
        refused = 2 * (100 - kept) + 1  # the TA and the TE of every attempt past the limit; the answer's TA
        dead = dead_letters(kafka.bootstrap, prefix, refused)
        assert len(dead) == refused
        assert {(d["key"], d["pipeline"], d["error_type"]) for d in dead} == {("big-call", "calls", "CallTooLarge")}
        # the app's window counts every call: its contributions all arrived, and its changelog too
        offered: dict[str, int] = {}
        deadline = time.monotonic() + 60
        while sum(offered.values()) < 151 and time.monotonic() < deadline:
            apps = read_all(kafka.bootstrap, f"{prefix}ivr.metrics.apps", settle=0.5)
            offered = {v["window_start"]: v["offered"] for _, v in apps}
        assert sum(offered.values()) == 151
        assert worker.alive()
        assert unprocessable_count(port) == len(dead)
    finally:
        worker.stop()
    log = (tmp_path / "worker.log").read_text()
    assert "MessageSizeTooLarge" not in log and "RecordListTooLarge" not in log
    assert log.count("refused (CallTooLarge") == refused and "Traceback" not in log  # a warning with its reason


async def produce_to(bootstrap: str, records: list[tuple[str, int, bytes, bytes]]) -> None:
    """(topic, partition, key, value), each to the partition given."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for topic, partition, key, value in records:
            await producer.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await producer.stop()


# what a bundled internal topic may hold that no pipeline can read: not JSON, a contribution without
# its fields, a bundle one of whose facts is no caller fact
POISON_BUNDLES = {
    "ivr.internal.attempts-by-agent": ("agent_metrics", [b"{not json", b'[{"key": "app:A1"}]', b"[1, 2]"]),
    "ivr.internal.calls-by-app": ("app_metrics", [b'[{"app": "a"', b'[{"item": "x"}]', b'"a string"']),
    "ivr.internal.missed-by-caller": ("callers", [b"\xff\xfe", b'[{"kind": "neither"}]', b"[[]]"]),
}


def test_poison_bundles_on_every_internal_partition_stall_no_pipeline(kafka: KafkaBroker, tmp_path: Path) -> None:
    """A record on a repartition topic that its pipeline cannot read (on every partition, before the
    calls' own bundles) is dead-lettered, and every call's alert and metrics still come out: no
    partition of the callers or metric pipelines stalls behind it."""
    from processors.core.rules import alert_worthy
    from tests.helpers import create_topics

    prefix = new_prefix()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
           "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "memory://", "WORKER_DATA_DIR": str(tmp_path / "w"),
           "METRICS_INTERIM_INTERVAL_S": "1", **STACK_TIMINGS}
    create_topics(env)
    poison = [(f"{prefix}{topic}", p, b"poison", values[p])
              for topic, (_, values) in POISON_BUNDLES.items() for p in range(3)]
    asyncio.run(produce_to(kafka.bootstrap, poison))
    profile = Profile(agents=9, p_duplicate=0.0, p_reorder=0.0, p_missing_hangup=0.0, mean_talk_s=30)
    events, truth = generate(60, time.time() - 1200, 600, profile, seed=31, prefix="pb")
    asyncio.run(write_events(kafka.bootstrap, f"{prefix}ivr.events", events, progress=False))
    worker, port = start_worker(env, tmp_path / "worker.log")
    try:
        wait_worker_ready(worker)
        assert truth_mismatches(kafka.bootstrap, prefix, truth) == 0
        dead = dead_letters(kafka.bootstrap, prefix, len(poison))
        records = {v["uniqueid"]: v for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.calls.completed", settle=0.5)}
        short_s = float(STACK_TIMINGS["SHORT_ABANDON_S"])
        worthy = {u for u, r in records.items() if alert_worthy(r["outcome"], r["close_reason"], r["wait_s"], short_s)}
        agents = {a.agent for t in truth for a in t.attempts}
        assert worthy and len(agents) > 3  # the calls reach every partition of the callers' and agents' topics
        deadline = time.monotonic() + 90
        while True:
            alerted = {v["uniqueid"] for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.alerts.missed", settle=0.5)}
            counted = {v["agent"] for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.metrics.agents", settle=0.5)}
            apps = [v for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.metrics.apps", settle=0.5)]
            if (alerted, counted, bool(apps)) == (worthy, agents, True) or time.monotonic() > deadline:
                break
        assert alerted == worthy
        assert counted == agents
        assert apps and max(a["offered"] for a in apps) > 0
        assert worker.alive()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        worker.stop()
    by_pipeline = {p: 0 for p, _ in POISON_BUNDLES.values()}
    for d in dead:
        pipeline, values = POISON_BUNDLES[d["topic"].removeprefix(prefix)]
        assert d["pipeline"] == pipeline and d["key"] == "poison"
        assert (d["value"] or "").encode() in values or d["value_base64"] is not None
        by_pipeline[pipeline] += 1
    assert by_pipeline == {p: 3 for p in by_pipeline}
    for pipeline in by_pipeline:
        assert f'ivr_worker_unprocessable_events_total{{pipeline="{pipeline}"}} 3.0' in text
