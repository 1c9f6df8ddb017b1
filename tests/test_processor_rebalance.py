"""A second worker joins while the first is working through a backlog: the records still match the truth."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from bench.run_all import truth_mismatches
from bench.simulator import Profile, generate, write_events
from deploy.local_kafka import KafkaBroker
from tests.conftest import STACK_TIMINGS, TOKEN, start_worker, wait_worker_ready
from tests.helpers import Service, create_topics, new_prefix
from tests.test_processor_recovery import events_seen

pytestmark = pytest.mark.kafka


def test_a_worker_joining_mid_backlog_changes_no_record(kafka: KafkaBroker, tmp_path: Path) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "4",
        "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "rocksdb://", "WORKER_SESSION_TIMEOUT_S": "10", **STACK_TIMINGS,
    }
    prefix = env["TOPIC_PREFIX"]
    profile = Profile(agents=10, p_duplicate=0.05, p_reorder=0.05, p_missing_hangup=0.02, mean_talk_s=60)
    events, truth = generate(1500, time.time() - 7200, 3600, profile, seed=11, prefix="rb")
    create_topics(env)
    topic = f"{prefix}ivr.events"
    backlog, rest = events[: len(events) * 2 // 5], events[len(events) * 2 // 5:]
    asyncio.run(write_events(kafka.bootstrap, topic, backlog, progress=False))

    def keep_calling() -> None:  # the rest arrives over ~12 s: a is busy whenever b joins
        for i in range(0, len(rest), len(rest) // 12 + 1):
            asyncio.run(write_events(kafka.bootstrap, topic, rest[i:i + len(rest) // 12 + 1], progress=False))
            time.sleep(1.0)

    workers: list[Service] = []
    writer = threading.Thread(target=keep_calling)
    try:
        a, port_a = start_worker({**env, "WORKER_DATA_DIR": str(tmp_path / "a")}, tmp_path / "a.log")
        workers.append(a)
        deadline = time.monotonic() + 60
        while events_seen(port_a) < len(backlog) // 2:  # a is into the backlog
            assert time.monotonic() < deadline, "worker a did not start on the backlog"
            time.sleep(0.05)
        writer.start()
        b, port_b = start_worker({**env, "WORKER_DATA_DIR": str(tmp_path / "b")}, tmp_path / "b.log")
        workers.append(b)
        wait_worker_ready(b)
        writer.join()
        deadline = time.monotonic() + 120
        while events_seen(port_a) + events_seen(port_b) < len(events):  # replays may count twice
            assert time.monotonic() < deadline, "the two workers did not get through the backlog"
            time.sleep(0.5)
        assert events_seen(port_b) > 0  # b did take partitions over
        assert truth_mismatches(kafka.bootstrap, prefix, truth) == 0
    finally:
        if writer.is_alive():
            writer.join()
        for w in workers:
            w.stop()


def test_two_workers_of_a_new_group_started_together_handle_every_event(kafka: KafkaBroker, tmp_path: Path) -> None:
    """`make bench`'s two-worker case: a new group whose two workers start together on a filled topic.
    Its first rebalances race the first fetches: records fetched for an assignment that had ended,
    or for a partition never committed whose position was left where the last owner stopped, once
    let the group commit past ~10% of the events unhandled (lag 0, events missing); such records
    must be read again (see `processors.read_order`). Each round is a new group on the same topics
    (round 1 reads the internal topics round 0 filled)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "6",
        "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "rocksdb://", "WORKER_SESSION_TIMEOUT_S": "10",
        "HANGUP_GRACE_S": "1", "CALL_IDLE_TIMEOUT_S": "3", "CONNECTED_IDLE_TIMEOUT_S": "30",
    }
    prefix = env["TOPIC_PREFIX"]
    profile = Profile(agents=20, p_duplicate=0.02, p_reorder=0.02, p_missing_hangup=0.01, mean_talk_s=60)
    events, truth = generate(3000, time.time() - 7200, 3600, profile, seed=5, prefix="ng")
    create_topics(env)
    asyncio.run(write_events(kafka.bootstrap, f"{prefix}ivr.events", events, progress=False))
    for round_ in range(2):
        group = {**env, "PROCESSOR_ID": f"new-group-{round_}"}
        workers = [start_worker({**group, "WORKER_DATA_DIR": str(tmp_path / f"{round_}{w}")},
                                tmp_path / f"{round_}{w}.log") for w in "ab"]
        try:
            ports = [port for _, port in workers]
            deadline, last, since = time.monotonic() + 180, -1.0, time.monotonic()
            while (seen := sum(events_seen(p) for p in ports)) < len(events):  # replays may count twice
                if seen != last:
                    last, since = seen, time.monotonic()
                assert time.monotonic() - since < 45 and time.monotonic() < deadline, \
                    f"round {round_}: {seen:.0f} of {len(events)} events handled, and no more"
                time.sleep(0.5)
            # while the workers run: the last calls close a grace period after their last event
            assert truth_mismatches(kafka.bootstrap, prefix, truth) == 0, f"round {round_}"
        finally:
            for w, _ in workers:
                w.stop()


def test_more_workers_than_partitions_the_idle_one_waits(kafka: KafkaBroker, tmp_path: Path) -> None:
    """One partition, three workers: one holds it, one its tables' standbys, the third nothing. That
    one must wait, healthy, for a share: it exited 70 (aiokafka's seek to the committed offsets of
    no partition raised), and under a supervisor rejoined, rebalancing the group, and exited again."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "1",
        "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "rocksdb://", "WORKER_SESSION_TIMEOUT_S": "10",
        "HANGUP_GRACE_S": "1", "CALL_IDLE_TIMEOUT_S": "3", "CONNECTED_IDLE_TIMEOUT_S": "30",
    }
    create_topics(env)
    workers = [start_worker({**env, "WORKER_DATA_DIR": str(tmp_path / w)}, tmp_path / f"{w}.log") for w in "abc"]
    try:
        for w, _ in workers:
            wait_worker_ready(w)
        events, truth = generate(200, time.time() - 7200, 600, Profile(agents=5), seed=8, prefix="mw")
        asyncio.run(write_events(kafka.bootstrap, f"{env['TOPIC_PREFIX']}ivr.events", events, progress=False))
        assert truth_mismatches(kafka.bootstrap, env["TOPIC_PREFIX"], truth) == 0
        assert all(w.alive() for w, _ in workers), [w.log()[-2000:] for w, _ in workers if not w.alive()]
        assert not any("could not be completed" in w.log() for w, _ in workers)
        # the idle one is counted in: a rollout waiting on its readiness must not wait for ever
        ready = [httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10) for _, port in workers]
        assert [r.status_code for r in ready] == [200, 200, 200], [r.text for r in ready]
        assert sorted(r.json()["assigned"] for r in ready) == [False, True, True]
    finally:
        for w, _ in workers:
            w.stop()
