"""A worker frozen (SIGSTOP) past its session timeout is evicted by the broker while events keep
arriving: on SIGCONT its /healthz says so (503, with the reason) until it has rejoined and caught
up; or, with a short exit grace, it exits non-zero and a fresh worker finishes the work."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.run_all import truth_mismatches
from bench.simulator import Profile, Truth, generate, write_events
from deploy.local_kafka import ROOT, KafkaBroker
from tests.conftest import TOKEN, start_worker, wait_worker_ready
from tests.helpers import Service, new_prefix, read_all

pytestmark = pytest.mark.kafka

SESSION_S = 6.0


def env_for(kafka: KafkaBroker, tmp: Path, exit_after: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "3",
        "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "rocksdb://", "WORKER_DATA_DIR": str(tmp / "worker"),
        "HANGUP_GRACE_S": "2", "CALL_IDLE_TIMEOUT_S": "6", "SHORT_ABANDON_S": "5", "CONNECTED_IDLE_TIMEOUT_S": "30",
        "WORKER_SESSION_TIMEOUT_S": str(SESSION_S), "WORKER_STALL_TIMEOUT_S": "4", "WORKER_STALL_EXIT_S": exit_after,
    }


def calls(n: int, seed: int, tag: str) -> tuple[list[dict[str, str]], list[Truth]]:
    profile = Profile(agents=20, p_duplicate=0.02, p_missing_hangup=0.0)
    return generate(n, time.time() - 7200, 600, profile, seed=seed, prefix=tag)


def assert_truth(kafka: KafkaBroker, prefix: str, truth: list[Truth]) -> None:
    if truth_mismatches(kafka.bootstrap, prefix, truth) == 0:
        return
    latest: dict[str, Any] = {}
    for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.calls.completed", settle=1.0):
        if v["uniqueid"] not in latest or v["revision"] > latest[v["uniqueid"]]["revision"]:
            latest[v["uniqueid"]] = v
    off = [(t.uniqueid, t.outcome, t.close_reason, [a.result for a in t.attempts],
            None if (r := latest.get(t.uniqueid)) is None else
            (r["outcome"], r["close_reason"], [a["result"] for a in r["attempts"]], r["revision"]))
           for t in truth]
    off = [o for o in off if o[4] is None or (o[1], o[2], o[3]) != o[4][:3]]
    raise AssertionError(f"{len(off)} of {len(truth)} calls off (truth, then record): {off[:8]}")


def health(port: int) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    return r.status_code, r.json()


def members(bootstrap: str, group: str) -> int:
    async def go() -> int:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            (resp,) = await admin.describe_consumer_groups([group])
            return len(resp.groups[0][5])
        finally:
            await admin.close()

    return asyncio.run(go())


def wait_members(bootstrap: str, group: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while members(bootstrap, group) != want:
        assert time.monotonic() < deadline, f"the group never had {want} member(s)"
        time.sleep(0.5)


def exited_evicted(worker: Service) -> bool:
    """The worker woke with a batch in hand, learnt it had been evicted and exited without
    delivering it (`processors.membership`)."""
    assert worker.proc is not None
    if worker.proc.wait(timeout=60) != 70:
        return False
    assert re.search(r"CRITICAL.*Evicted: no heartbeat accepted for \d+s \(session 6s\)", worker.log())
    return True


def assert_each_record_once(kafka: KafkaBroker, prefix: str) -> None:
    """No crash here, so no replay: a record written twice is the frozen worker's batch delivered
    on waking, after its partitions had been read again from the commit."""
    seen = Counter((v["uniqueid"], v["revision"]) for _, v in
                   read_all(kafka.bootstrap, f"{prefix}ivr.calls.completed", settle=1.0))
    assert not [k for k, n in seen.items() if n > 1], [k for k, n in seen.items() if n > 1][:5]


def freeze_until_evicted(kafka: KafkaBroker, worker: Service, group: str, more: list[dict[str, str]],
                         topic: str) -> None:
    """SIGSTOP the worker; events arrive; the broker drops the silent member from the group."""
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        asyncio.run(write_events(kafka.bootstrap, topic, more, progress=False))
        wait_members(kafka.bootstrap, group, 0, timeout=SESSION_S * 10)
    except BaseException:
        os.killpg(worker.proc.pid, signal.SIGCONT)
        raise


def start(env: dict[str, str], tmp: Path, name: str, port: int | None = None) -> tuple[Service, int]:
    worker, port = start_worker(env, tmp / f"{name}.log", web_port=port)
    wait_worker_ready(worker)
    return worker, port


def test_healthz_fails_while_evicted_and_stalled_then_recovers(kafka: KafkaBroker, tmp_path: Path) -> None:
    """After the eviction the worker rejoins by itself; it does not always consume again (Faust
    sometimes stays idle after such a rejoin, lag held): then it exits 3 after the grace and the
    restarted worker finishes. Either way /healthz said so meanwhile, and no call is lost."""
    env = env_for(kafka, tmp_path, exit_after="20")
    prefix, group = env["TOPIC_PREFIX"], f"{env['TOPIC_PREFIX']}ivr-processor"
    topic = f"{prefix}ivr.events"
    first, truth1 = calls(200, 1, "a")
    second, truth2 = calls(300, 2, "b")
    worker, port = start(env, tmp_path, "worker")
    try:
        asyncio.run(write_events(kafka.bootstrap, topic, first, progress=False))
        assert_truth(kafka, prefix, truth1)
        time.sleep(3)  # the monitor has seen the caught-up partitions
        code, body = health(port)
        assert code == 200 and body["in_group"] is True, body
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=10).status_code == 200
        freeze_until_evicted(kafka, worker, group, second, topic)
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGCONT)
        seen: list[tuple[int, dict[str, Any]]] = []
        deadline = time.monotonic() + 120
        while worker.alive() and (not seen or seen[-1][0] != 200 or all(c == 200 for c, _ in seen)):
            assert time.monotonic() < deadline, f"/healthz answers: {seen[-5:]}"
            with contextlib.suppress(httpx.HTTPError):  # it may be exiting
                seen.append(health(port))
            time.sleep(0.2)
        failed = [body for code, body in seen if code == 503]
        evicted = not worker.alive() and exited_evicted(worker)
        if not evicted:  # an evicted worker with a batch in hand exits before it answers again
            assert failed and {b["reason"] for b in failed} <= {"stalled", "out_of_group"}, seen
            assert failed[0]["status"] == "unhealthy" and failed[0]["lag"] > 0
        if not worker.alive():  # it could not resume: it said so and gave up, as a supervisor expects
            if not evicted:
                assert worker.proc.wait() == 3
                assert "exiting with status 3" in worker.log()
            worker, port = start(env, tmp_path, "worker2", port)
        wait_members(kafka.bootstrap, group, 1, timeout=60)
        assert_truth(kafka, prefix, truth1 + truth2)
        assert_each_record_once(kafka, prefix)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert re.search(r"^ivr_worker_in_group 1\.0$", metrics, re.M)
        assert re.search(r"^ivr_worker_seconds_since_progress ", metrics, re.M)
    finally:
        worker.stop()


def test_a_worker_stalled_past_the_exit_grace_exits_non_zero(kafka: KafkaBroker, tmp_path: Path) -> None:
    env = env_for(kafka, tmp_path, exit_after="1")
    prefix, group = env["TOPIC_PREFIX"], f"{env['TOPIC_PREFIX']}ivr-processor"
    topic = f"{prefix}ivr.events"
    first, truth1 = calls(150, 3, "c")
    second, truth2 = calls(150, 4, "d")
    worker, port = start(env, tmp_path, "worker")
    try:
        asyncio.run(write_events(kafka.bootstrap, topic, first, progress=False))
        assert_truth(kafka, prefix, truth1)
        time.sleep(3)
        freeze_until_evicted(kafka, worker, group, second, topic)
        assert worker.proc is not None
        os.killpg(worker.proc.pid, signal.SIGCONT)
        assert worker.proc.wait(timeout=60) in (3, 70)
        if not exited_evicted(worker):
            assert re.search(r"CRITICAL.*worker stalled for \d+ s .*exiting with status 3", worker.log())
        worker, port = start(env, tmp_path, "worker2", port)  # what a supervisor does
        assert_truth(kafka, prefix, truth1 + truth2)
        assert_each_record_once(kafka, prefix)
        assert health(port)[0] == 200
    finally:
        worker.stop()


def test_a_group_error_faust_never_reads_is_read_and_the_worker_joins(kafka: KafkaBroker, tmp_path: Path) -> None:
    """A consumer of another kind holds the worker's group: the worker's JoinGroup is refused
    (InconsistentGroupProtocol), which aiokafka hands to its user and waits on. Faust never reads
    it: unrepaired, the worker would never join even after the other consumer left."""
    env = env_for(kafka, tmp_path, exit_after="0")
    prefix, group = env["TOPIC_PREFIX"], f"{env['TOPIC_PREFIX']}ivr-processor"
    topic = f"{prefix}ivr.events"
    events, truth = calls(100, 5, "e")
    subprocess.run([sys.executable, "-c", "import asyncio; from config.settings import load; "
                    "from config.topics import ensure_topics; asyncio.run(ensure_topics(load()))"],
                   env={**os.environ, **env}, check=True, cwd=ROOT)
    asyncio.run(write_events(kafka.bootstrap, topic, events, progress=False))
    squatter_joined = threading.Event()
    leave = threading.Event()

    async def squat() -> None:
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(topic, bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
        await c.start()
        try:
            while not leave.is_set():
                await c.getmany(timeout_ms=200)
                if c.assignment():
                    squatter_joined.set()
        finally:
            await c.stop()  # leaves the group

    squatter = threading.Thread(target=lambda: asyncio.run(squat()))
    squatter.start()
    worker: Service | None = None
    try:
        assert squatter_joined.wait(60)
        worker, port = start_worker(env, tmp_path / "worker.log")
        deadline = time.monotonic() + 90
        while "consumer group error left unread by Faust: InconsistentGroupProtocolError" not in worker.log():
            assert time.monotonic() < deadline, worker.log()[-3000:]
            time.sleep(0.5)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert re.search(r"^ivr_worker_group_errors_total [1-9]", metrics, re.M)
        leave.set()
        squatter.join()
        wait_worker_ready(worker, timeout=90)
        assert_truth(kafka, prefix, truth)
        deadline = time.monotonic() + 60
        while health(port)[0] != 200:
            assert time.monotonic() < deadline, health(port)
            time.sleep(0.5)
    finally:
        leave.set()
        squatter.join()
        if worker is not None:
            worker.stop()


def test_a_peers_partitions_held_without_progress_are_not_this_workers_stall(kafka: KafkaBroker,
                                                                             tmp_path: Path) -> None:
    """Two workers; one is killed (SIGKILL: it does not leave the group) and keeps its partitions
    until its session times out, while events keep coming to every partition. The survivor's
    partitions move: it is healthy, whatever the lag on the dead one's (that lag once made every
    survivor 'stalled', and, after the exit grace, exit: the whole cluster restarted for one
    worker's crash). Then it takes the dead one's partitions over and every call is right."""
    # the exit grace is long: a survivor judged stalled fails the test by its 503s already
    env = {**env_for(kafka, tmp_path, exit_after="60"), "WORKER_SESSION_TIMEOUT_S": "30"}
    prefix, group = env["TOPIC_PREFIX"], f"{env['TOPIC_PREFIX']}ivr-processor"
    topic = f"{prefix}ivr.events"
    first, truth1 = calls(150, 6, "f")
    second, truth2 = calls(300, 7, "g")
    survivor, port = start(env, tmp_path, "survivor")
    doomed, _ = start_worker({**env, "WORKER_DATA_DIR": str(tmp_path / "doomed")}, tmp_path / "doomed.log")
    try:
        wait_worker_ready(doomed)  # joined: the partitions are shared
        wait_members(kafka.bootstrap, group, 2, timeout=60)
        asyncio.run(write_events(kafka.bootstrap, topic, first, progress=False))
        assert_truth(kafka, prefix, truth1)
        doomed.kill()
        killed_at = time.monotonic()
        asyncio.run(write_events(kafka.bootstrap, topic, second, progress=False))
        seen: list[tuple[int, dict[str, Any]]] = []
        while time.monotonic() < killed_at + 14:  # well past the stall timeout (4 s); the session lasts 30 s
            seen.append(health(port))
            time.sleep(0.5)
        assert members(kafka.bootstrap, group) == 2  # the dead worker still held its partitions meanwhile
        assert survivor.alive(), survivor.log()[-3000:]
        assert [body for code, body in seen if code != 200] == []
        assert_truth(kafka, prefix, truth1 + truth2)
        assert health(port)[0] == 200
    finally:
        doomed.kill()
        survivor.stop()
