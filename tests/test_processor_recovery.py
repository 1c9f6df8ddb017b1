"""Workers crash (SIGKILL) and restart, and two workers share the load: nothing lost, nothing doubled."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.local_kafka import KafkaBroker
from tests.conftest import STACK_TIMINGS, TOKEN, start_ingress, start_worker, wait_ready, wait_worker_ready
from tests.helpers import Service, new_prefix, read_all

pytestmark = pytest.mark.kafka
APP = "4e11fe2082b044b4a3b55718c79c29d5"


def env_for(kafka: KafkaBroker, tmp: Path, store: str = "memory://") -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "4",
        "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": store, "WORKER_SESSION_TIMEOUT_S": "10", **STACK_TIMINGS,
        # every call here gets its hang-up: the idle timeout must not race the test's own steps
        # (posting the openings, waiting, killing a worker took over 6 s on a loaded machine)
        "CALL_IDLE_TIMEOUT_S": "30",
    }


def post_all(base: str, events: list[dict[str, Any]]) -> None:
    with httpx.Client(base_url=base, params={"token": TOKEN}) as c:
        for e in events:
            r = c.post("/webhooks/ivr", data={"app": APP, **{k: str(v) for k, v in e.items()}})
            assert r.status_code == 202, r.text


def opening(u: str) -> list[dict[str, Any]]:
    return [{"event": "IN", "uniqueid": u, "cli": "9900000001", "time": "2026-03-02 10:00:00"},
            {"event": "TA", "uniqueid": u, "attemptid": f"{u}.1", "to": "A1", "time": "2026-03-02 10:00:02"}]


def closing(u: str, answered: bool) -> list[dict[str, Any]]:
    end: list[dict[str, Any]] = []
    if answered:
        end.append({"event": "TC", "uniqueid": u, "attemptid": f"{u}.1", "to": "A1", "time": "2026-03-02 10:00:06"})
    end.append({"event": "TE", "uniqueid": u, "attemptid": f"{u}.1", "to": "A1",
                "result": "answered" if answered else "noanswer", "duration": 40 if answered else 10})
    end.append({"event": "H", "uniqueid": u, "cli": "9900000001", "duration": 50})
    return end


def events_seen(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r'^ivr_worker_events_total\{event="\w+"\} ([0-9.e+]+)$', text, re.M))


def wait_events(port: int, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events_seen(port) >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"worker saw {events_seen(port)} events, expected {n}")


def completed_by_call(kafka: KafkaBroker, prefix: str, want: int, timeout: float = 90) -> dict[str, list[Any]]:
    deadline = time.monotonic() + timeout
    by_call: dict[str, list[Any]] = {}
    while time.monotonic() < deadline:
        by_call = {}
        for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.calls.completed", settle=1.0):
            by_call.setdefault(v["uniqueid"], []).append(v)
        if len(by_call) >= want:
            break
    return by_call


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_sigkill_with_open_calls_then_restart(kafka: KafkaBroker, tmp_path: Path, store: str) -> None:
    env = env_for(kafka, tmp_path, store)
    env["WORKER_DATA_DIR"] = str(tmp_path / "worker")
    prefix = env["TOPIC_PREFIX"]
    ingress, base = start_ingress(env, tmp_path / "ingress.log")
    worker: Service | None = None
    try:
        worker, port = start_worker(env, tmp_path / "worker.log")
        wait_ready(base)
        wait_worker_ready(worker)
        done_before = [f"pre.{i}" for i in range(10)]
        open_calls = [f"open.{i}" for i in range(30)]
        post_all(base, [e for u in done_before for e in opening(u) + closing(u, answered=True)])
        post_all(base, [e for u in open_calls for e in opening(u)])
        wait_events(port, 10 * 5 + 30 * 2)
        time.sleep(2.5)  # past a commit (every second): what was processed is committed
        worker.kill()
        # the calls go on while the worker is dead; the ingress keeps accepting
        post_all(base, [e for i, u in enumerate(open_calls) for e in closing(u, answered=i % 2 == 0)])
        worker, port = start_worker(env, tmp_path / "worker2.log", web_port=port)
        wait_worker_ready(worker)
        by_call = completed_by_call(kafka, prefix, 40)
        assert set(by_call) == set(done_before) | set(open_calls)  # nothing lost
        per_revision = Counter((u, r["revision"]) for u, rs in by_call.items() for r in rs)
        assert [k for k, n in per_revision.items() if n > 1] == []  # exactly one record per revision
        for i, u in enumerate(open_calls):
            (r,) = by_call[u]
            # the IN and TA came before the crash: the state survived it
            assert r["started_at"] == "2026-03-02T04:30:00.000Z" and r["attempts"][0]["started_at"] is not None
            assert r["outcome"] == ("answered" if i % 2 == 0 else "missed")
        missed = {v["uniqueid"] for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.alerts.missed", settle=3)}
        assert missed == {u for i, u in enumerate(open_calls) if i % 2 == 1}
    finally:
        if worker is not None:
            worker.stop()
        ingress.stop()


def test_two_workers_share_partitions_and_survive_one_dying(kafka: KafkaBroker, tmp_path: Path) -> None:
    env = env_for(kafka, tmp_path)
    prefix = env["TOPIC_PREFIX"]
    ingress, base = start_ingress(env, tmp_path / "ingress.log")
    workers: list[Service] = []
    try:
        a, port_a = start_worker({**env, "WORKER_DATA_DIR": str(tmp_path / "a")}, tmp_path / "a.log")
        workers.append(a)
        wait_worker_ready(a)
        b, port_b = start_worker({**env, "WORKER_DATA_DIR": str(tmp_path / "b")}, tmp_path / "b.log")
        workers.append(b)
        wait_worker_ready(b)
        wait_worker_ready(a, occurrence=2)  # a rebalanced to make room for b
        wait_ready(base)
        calls = [f"c2.{i}" for i in range(40)]
        post_all(base, [e for u in calls for e in opening(u)])
        wait_events(port_a, 1)
        wait_events(port_b, 1)  # both workers got partitions of ivr.events
        time.sleep(2.5)
        a.kill()
        post_all(base, [e for u in calls for e in closing(u, answered=True)])
        by_call = completed_by_call(kafka, prefix, len(calls), timeout=120)
        assert set(by_call) == set(calls)
        bad = {u: [(r["revision"], r["outcome"], r["close_reason"], [a["result"] for a in r["attempts"]]) for r in rs]
               for u, rs in by_call.items() if len(rs) != 1 or rs[0]["outcome"] != "answered"}
        assert bad == {}
    finally:
        for w in workers:
            w.stop()
        ingress.stop()
