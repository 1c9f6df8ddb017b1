"""The broker restarts under a running worker: every call still gets its record, right, once per content."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.local_kafka import KafkaBroker
from tests.conftest import STACK_TIMINGS, TOKEN, start_ingress, start_worker, wait_ready, wait_worker_ready
from tests.helpers import Service, new_prefix
from tests.test_processor_recovery import closing, completed_by_call, opening, post_all, wait_events

pytestmark = pytest.mark.kafka


def test_broker_restart_under_a_running_worker(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", partitions=3)
    broker.start()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "3",
        "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "rocksdb://", "WORKER_DATA_DIR": str(tmp_path / "worker"),
        **STACK_TIMINGS,
    }
    prefix = env["TOPIC_PREFIX"]
    ingress: Service | None = None
    worker: Service | None = None
    try:
        ingress, base = start_ingress(env, tmp_path / "ingress.log")
        worker, port = start_worker(env, tmp_path / "worker.log")
        wait_ready(base)
        wait_worker_ready(worker)
        before = [f"before.{i}" for i in range(15)]
        across = [f"across.{i}" for i in range(15)]  # opened before the restart, closed after it
        after = [f"after.{i}" for i in range(15)]
        post_all(base, [e for u in before for e in opening(u) + closing(u, answered=True)])
        post_all(base, [e for u in across for e in opening(u)])
        wait_events(port, 15 * 5 + 15 * 2)
        broker.restart()  # same data, same port; the worker and the ingress stay up
        wait_ready(base)
        post_all(base, [e for i, u in enumerate(across) for e in closing(u, answered=i % 2 == 0)])
        post_all(base, [e for u in after for e in opening(u) + closing(u, answered=False)])
        wait_events(port, 15 * 5 + 15 * 2 + (8 * 3 + 7 * 2) + 15 * 4, timeout=120)
        by_call = completed_by_call(broker, prefix, 45, timeout=120)
        assert set(by_call) == set(before) | set(across) | set(after)  # nothing lost
        for u, records in by_call.items():
            by_revision: dict[int, list[object]] = {}
            for r in records:
                by_revision.setdefault(r["revision"], []).append(r)
            # at-least-once: a replay may repeat a revision, never with other content
            assert all(all(c == copies[0] for c in copies) for copies in by_revision.values()), u
        outcomes = {u: rs[-1]["outcome"] for u, rs in by_call.items()}
        assert {u for u, o in outcomes.items() if o == "answered"} == set(before) | set(across[::2])
    finally:
        if worker is not None:
            worker.stop()
        if ingress is not None:
            ingress.stop()
        broker.stop()
