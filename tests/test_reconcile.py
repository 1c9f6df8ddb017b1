"""Call-log reconciliation end to end: real broker, real worker, the fake provider under uvicorn.

A small simulated day loses ~10% of its webhooks at random (single events, hang-ups, whole calls)
and every webhook of a two-minute outage; the provider's call log has every call. The provider
answers 429s and 500s, serves slow pages, shows one call still active on the first poll, and the
worker is killed in the middle of a pass.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fake_provider import FakeProvider
from bench.simulator import APP, Loss, Profile, Truth, generate_timed, lose, write_events
from deploy.local_kafka import KafkaBroker
from schemas.timefmt import format_ts
from tests.conftest import PROVIDER_KEY, STACK_TIMINGS, start_worker, wait_worker_ready
from tests.helpers import Service, new_prefix, read_all

pytestmark = pytest.mark.kafka


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M))


def expected(tr: Truth) -> dict[str, Any]:
    return {
        "outcome": tr.outcome, "missed_reason": tr.missed_reason, "answered_by": tr.answered_by,
        "close_reason": "hangup", "started_at": format_ts(tr.start), "ended_at": format_ts(tr.end),
        "attempts": [(a.attemptid, a.agent, a.result, format_ts(int(a.start)), a.agent_name, a.group)
                     for a in tr.attempts],
    }


def actual(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "outcome": rec["outcome"], "missed_reason": rec["missed_reason"], "answered_by": rec["answered_by"],
        "close_reason": rec["close_reason"], "started_at": rec["started_at"], "ended_at": rec["ended_at"],
        "attempts": [(a["attemptid"], a["to"], a["result"], a["started_at"], a["agent_name"], a["group"])
                     for a in rec["attempts"]],
    }


def latest(records: list[tuple[bytes | None, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for _, v in records:
        if v["uniqueid"] not in out or v["revision"] >= out[v["uniqueid"]]["revision"]:
            out[v["uniqueid"]] = v
    return out


def test_lossy_day_is_healed_from_the_call_log(kafka: KafkaBroker, tmp_path: Path,
                                               provider: tuple[FakeProvider, str]) -> None:
    fake, url = provider
    prefix = new_prefix()
    now = time.time()
    span = 1800.0
    start = now - span - 3600  # a finished half hour (calls end within the hour after)
    timed, truth = generate_timed(300, start, span, Profile(), seed=11, prefix=prefix)
    outage = (start + 900, start + 1020)
    kept = lose(timed, Loss(p_event=0.05, p_hangup=0.05, p_call=0.02, outage=outage), seed=5)
    lost_share = 1 - len(kept) / len(timed)
    assert lost_share >= 0.10
    in_outage = {e["uniqueid"] for t, e in timed if outage[0] <= t < outage[1]}
    assert len(in_outage) >= 5
    fake.calls = {APP: sorted(truth, key=lambda t: (t.start, t.uniqueid))}
    by_uid = {t.uniqueid: t for t in truth}
    # faults: throttled, then failing, slow pages, a call still active when first listed
    fake.fail_next(429, 2, retry_after=1)
    fake.fail_next(500, 2)
    fake.faults.slow_s = 0.3
    held = next(t for t in fake.calls[APP][40:] if t.outcome == "missed")
    fake.hold_active(held.uniqueid, 1)

    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
        "WORKER_STORE": "memory://", "WORKER_DATA_DIR": str(tmp_path / "worker"), **STACK_TIMINGS,
        "WORKER_SESSION_TIMEOUT_S": "10",
        "PROVIDER_API_URL": url, "PROVIDER_API_KEY": PROVIDER_KEY, "RECONCILE_INTERVAL_S": "3",
        "RECONCILE_LOOKBACK_S": str(3 * 3600), "PROVIDER_MAX_RPS": "20", "PROVIDER_TIMEOUT_S": "5",
    }
    worker: Service | None = None
    try:
        worker, port = start_worker(env, tmp_path / "worker1.log")
        wait_worker_ready(worker)
        assert "call-log reconciliation is on" in worker.log() and PROVIDER_KEY not in worker.log()
        asyncio.run(write_events(kafka.bootstrap, f"{prefix}ivr.events", kept, progress=False))

        # the worker dies in the middle of a pass (some pages read, not all)
        deadline = time.monotonic() + 120
        while sum(1 for s in fake.served if s.status == 200 and "/calls" in s.path) < 4:
            assert time.monotonic() < deadline, "the reconciler never polled"
            time.sleep(0.1)
        worker.kill()
        fake.faults.slow_s = 0.0
        worker, port = start_worker(env, tmp_path / "worker2.log", web_port=port)
        wait_worker_ready(worker)

        # every call's record says what the ground truth says
        wait_for_truth(kafka, prefix, by_uid)

        # every missed call worth a call-back has its alert, exactly one
        def alerts() -> list[dict[str, Any]]:
            return [v for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.alerts.missed", settle=2.0)]

        want = {t.uniqueid for t in truth if t.outcome == "missed" and t.end - t.start >= 5}
        deadline = time.monotonic() + 180  # ticks wait for their partition to catch up after the restart
        while time.monotonic() < deadline and not want <= {a["uniqueid"] for a in alerts()}:
            time.sleep(1)
        raised = [a["uniqueid"] for a in alerts()]
        assert want <= set(raised) and len(raised) == len(set(raised))
        # alerts raised at the idle timeout before the log came, for calls the log shows answered:
        # each resolved (call_log_answered); short abandons closed by timeout keep theirs
        answered_alerted = {u for u in raised if by_uid[u].outcome == "answered"}
        assert all(by_uid[u].end - by_uid[u].start < 5 for u in set(raised) - want - answered_alerted)
        deadline = time.monotonic() + 120
        resolved: set[str] = set()
        while time.monotonic() < deadline and not answered_alerted <= resolved:
            resolved = {v["uniqueid"] for _, v in read_all(kafka.bootstrap, f"{prefix}ivr.alerts.resolved",
                                                            settle=1.0)}
            time.sleep(1)
        assert answered_alerted <= resolved
        spurious = answered_alerted

        # a further pass changes nothing
        completed_before = read_all(kafka.bootstrap, f"{prefix}ivr.calls.completed", settle=1.0)
        alerts_before = alerts()
        polls = metric(port, "ivr_reconcile_polls_total")
        deadline = time.monotonic() + 90
        while metric(port, "ivr_reconcile_polls_total") < polls + 2:
            assert time.monotonic() < deadline, "no further passes"
            time.sleep(1)
        time.sleep(3)
        completed_after = read_all(kafka.bootstrap, f"{prefix}ivr.calls.completed", settle=1.0)
        assert len(completed_after) == len(completed_before)
        assert len(alerts()) == len(alerts_before)

        # nothing doubled beyond identical replays (the kill may replay a batch: same records)
        per_revision: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _, v in completed_after:
            per_revision.setdefault((v["uniqueid"], v["revision"]), []).append(v)
        differing = {k: vs for k, vs in per_revision.items()
                     if any({**v, "closed_at": ""} != {**vs[0], "closed_at": ""} for v in vs)}
        assert not differing, f"{len(differing)} revisions with different contents"

        # the client behaved: key in the header only, 429 and 500 retried, and it shows
        assert not any(s.key_in_query for s in fake.served)
        assert [s.status for s in fake.served if s.status != 200][:4] == [429, 429, 500, 500]
        assert metric(port, "ivr_reconcile_calls_read_total") > 0
        assert metric(port, "ivr_reconcile_cursor_age_seconds") >= 0
        log = worker.log() + (tmp_path / "worker1.log").read_text(errors="replace")
        assert PROVIDER_KEY not in log
        print(f"\nlost {lost_share:.1%} of {len(timed)} webhooks ({len(in_outage)} calls in the outage); "
              f"{len(fake.served)} provider requests; healed events counted by the second worker: "
              f"{metric(port, 'ivr_reconcile_events_healed_total'):.0f}; alerts raised {len(raised)}, "
              f"of calls the log showed answered (resolved) {len(spurious)}")
    finally:
        if worker is not None:
            worker.stop()


def wait_for_truth(kafka: KafkaBroker, prefix: str, by_uid: dict[str, Truth], timeout: float = 300,
                   ) -> list[tuple[bytes | None, Any]]:
    deadline = time.monotonic() + timeout
    wrong: dict[str, Any] = {}
    while time.monotonic() < deadline:
        completed = read_all(kafka.bootstrap, f"{prefix}ivr.calls.completed", settle=1.0)
        records = latest(completed)
        wrong = {u: (actual(records[u]) if u in records else None, expected(tr))
                 for u, tr in by_uid.items() if u not in records or actual(records[u]) != expected(tr)}
        if not wrong:
            return completed
        time.sleep(2)
    raise AssertionError(f"{len(wrong)} calls differ from the truth, e.g. {next(iter(wrong.items()))}")


def test_leader_change_mid_pass(kafka: KafkaBroker, tmp_path: Path, provider: tuple[FakeProvider, str]) -> None:
    """Two workers: the one reconciling (the leader) is killed in the middle of a pass; the other
    takes over the leadership and the pass, from the durable cursor."""
    fake, url = provider
    prefix = new_prefix()
    start = time.time() - 1800 - 3600
    timed, truth = generate_timed(120, start, 1800, Profile(), seed=21, prefix=prefix)
    kept = lose(timed, Loss(p_event=0.1, p_call=0.05), seed=7)
    fake.calls = {APP: sorted(truth, key=lambda t: (t.start, t.uniqueid))}
    fake.faults.slow_s = 1.0  # 6 pages of 20: a pass takes several seconds
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
        "WORKER_STORE": "memory://", **STACK_TIMINGS, "WORKER_SESSION_TIMEOUT_S": "6",
        "PROVIDER_API_URL": url, "PROVIDER_API_KEY": PROVIDER_KEY, "PROVIDER_APPS": APP, "RECONCILE_INTERVAL_S": "3",
        "RECONCILE_LOOKBACK_S": str(3 * 3600), "PROVIDER_MAX_RPS": "20",
    }
    workers: dict[int, Service] = {}
    try:
        for n in (1, 2):  # one after the other: the second joins a group that has created its topics
            w, port = start_worker({**env, "WORKER_DATA_DIR": str(tmp_path / f"w{n}")}, tmp_path / f"w{n}.log")
            workers[port] = w
            wait_worker_ready(w)
        asyncio.run(write_events(kafka.bootstrap, f"{prefix}ivr.events", kept, progress=False))
        # the leader: the worker whose reconciler reads from now on (the first worker may have led,
        # and read, before the second joined and the group rebalanced)
        read = {p: metric(p, "ivr_reconcile_calls_read_total") for p in workers}
        deadline = time.monotonic() + 120
        leader = None
        while leader is None:
            assert time.monotonic() < deadline, "no worker reconciled"
            leader = next((p for p in workers if metric(p, "ivr_reconcile_calls_read_total") > read[p]), None)
            time.sleep(0.2)
        (other,) = set(workers) - {leader}
        assert metric(other, "ivr_reconcile_calls_read_total") == read[other]  # exactly one reconciles
        read_before = read[other]
        workers.pop(leader).kill()
        fake.faults.slow_s = 0.0
        deadline = time.monotonic() + 120
        while metric(other, "ivr_reconcile_calls_read_total") <= read_before:  # the survivor takes over
            assert time.monotonic() < deadline, "the surviving worker never reconciled"
            time.sleep(0.5)
        completed = wait_for_truth(kafka, prefix, {t.uniqueid: t for t in truth})
        per_revision: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for _, v in completed:
            per_revision.setdefault((v["uniqueid"], v["revision"]), []).append(v)
        assert not [k for k, vs in per_revision.items()
                    if any({**v, "closed_at": ""} != {**vs[0], "closed_at": ""} for v in vs)]
    finally:
        for w in workers.values():
            w.stop()
