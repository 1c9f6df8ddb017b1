"""Two workers on one broker, each stopped with SIGTERM and restarted in turn while webhooks keep
coming: every call posted gets a completed record equal to the ground truth, and nothing is
dead-lettered (a worker stopping or rebalancing is not a poison record)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.simulator import Profile, generate
from deploy.local_kafka import KafkaBroker
from tests.conftest import STACK_TIMINGS, TOKEN, Stack, start_ingress, start_worker, wait_ready, wait_worker_ready
from tests.helpers import new_prefix, read_all
from tests.test_cluster import Load, _differences, roll_two_workers

pytestmark = [pytest.mark.kafka, pytest.mark.long]

RATE = 75.0  # webhooks/s: more than a worker keeps up with here, so both lag through the restarts


@pytest.fixture
def rolling_stack(kafka: KafkaBroker, tmp_path: Path) -> Iterator[Stack]:
    """Ingress + worker with the timings of the cluster tests: calls stay open across the restarts."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "3",
        "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "memory://", "WORKER_DATA_DIR": str(tmp_path / "worker"),
        "WORKER_SESSION_TIMEOUT_S": "10", **STACK_TIMINGS,
        "CALL_IDLE_TIMEOUT_S": "45", "CONNECTED_IDLE_TIMEOUT_S": "60", "HANGUP_GRACE_S": "20",
    }
    ingress, base = start_ingress(env, tmp_path / "ingress.log")
    worker, _ = start_worker(env, tmp_path / "worker.log")
    stack = Stack(env, base, ingress, worker, tmp_path)
    try:
        wait_ready(base)
        wait_worker_ready(worker, timeout=120)
        yield stack
    finally:
        stack.worker.stop()
        ingress.stop()


def test_rolling_restart_of_two_workers_on_one_broker_loses_nothing(rolling_stack: Stack) -> None:
    stack = rolling_stack
    profile = Profile(agents=10, p_duplicate=0.02, p_reorder=0.02, p_missing_hangup=0.0, mean_talk_s=60)
    events, truth = generate(4000, time.time() - 7200, 3600, profile, seed=31, prefix="rl")
    events = [{k: str(v) for k, v in e.items()} for e in events]
    load_run = Load(f"{stack.base}/webhooks/ivr", events, RATE)
    b = roll_two_workers(stack, load_run)
    try:
        statuses = collections.Counter(r.status for r in load_run.requests)
        completed, diffs = _differences(stack, load_run, events, truth)
        mine = {k: v for k, v in completed.items() if k[0] in load_run.posted}
        without = set(load_run.posted) - {u for u, _ in mine}
        dead = [v for _, v in read_all(stack.bootstrap, stack.topic("ivr.events.unprocessable"), settle=2.0)]
        print(f"FIGURES rolling restart, one broker: {sum(load_run.posted.values())} webhooks, responses "
              f"{dict(statuses)}; {len(load_run.posted) - len(without)}/{len(load_run.posted)} calls have a record; "
              f"{len(diffs)} differ; {len(dead)} dead letters")
        assert set(statuses) <= {0, 202, 503}, statuses  # 0: no answer on a starved machine (retried)
        assert not dead, [(d.get("error_type"), d.get("error")) for d in dead[:5]]
        assert not without and not diffs, (sorted(without)[:5], diffs[:5])
    finally:
        b.stop()
