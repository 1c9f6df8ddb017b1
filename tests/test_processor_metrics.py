"""Agent and app metrics through the real broker, checked against counts made from the posted events."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from bench.simulator import APP, Profile, Truth, expected_agent_windows, generate, post_events
from deploy.local_kafka import KafkaBroker
from schemas.timefmt import format_ts, parse_provider_time
from tests.conftest import TOKEN, Stack, start_ingress, start_worker, wait_ready, wait_worker_ready
from tests.helpers import read_all

pytestmark = pytest.mark.kafka
KOLKATA = ZoneInfo("Asia/Kolkata")
WINDOW = 3600
RATE = 100.0  # webhooks per second


def parse(t: str) -> float:
    return parse_provider_time(t, KOLKATA)


def _metrics_stack(kafka: KafkaBroker, prefix: str, tmp_path: Path, grace_s: int,
                   idle_close_s: int = 12) -> Iterator[Stack]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
        "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "memory://", "WORKER_DATA_DIR": str(tmp_path / "worker"),
        "WORKER_SESSION_TIMEOUT_S": "10",
        "HANGUP_GRACE_S": "2", "CALL_IDLE_TIMEOUT_S": "5", "CONNECTED_IDLE_TIMEOUT_S": "30", "SHORT_ABANDON_S": "5",
        "AGENT_WINDOW_S": str(WINDOW), "METRICS_GRACE_S": str(grace_s), "METRICS_IDLE_CLOSE_S": str(idle_close_s),
        "METRICS_INTERIM_INTERVAL_S": "2",
    }
    ingress, base = start_ingress(env, tmp_path / "ingress.log")
    worker, port = start_worker(env, tmp_path / "worker.log")
    env["WORKER_WEB_PORT"] = str(port)
    wait_ready(base)
    wait_worker_ready(worker)
    stack = Stack(env, base, ingress, worker, tmp_path)
    yield stack
    stack.worker.stop()
    ingress.stop()


@pytest.fixture
def metrics_stack(kafka: KafkaBroker, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    """A grace of 20 h: windows wait for their calls on the watermark too, not only on the quiet rule."""
    yield from _metrics_stack(kafka, prefix, tmp_path, grace_s=72000)


@pytest.fixture
def short_grace_stack(kafka: KafkaBroker, prefix: str, tmp_path: Path) -> Iterator[Stack]:
    """A grace of a minute: every window of `a_day` is past it on the wall clock from the start,
    and past it on the watermark as soon as a later hour's call is read. Windows go final after
    30 s quiet (a slow machine may take more than 12 s between two partitions' closes)."""
    yield from _metrics_stack(kafka, prefix, tmp_path, grace_s=60, idle_close_s=30)


def a_day(seed: int) -> tuple[list[dict[str, str]], list[Truth]]:
    """A day of calls for 4 agents, which ended two days ago, delivered messily.

    Posting it takes ~20 s, so event time runs ~4000 times faster than the wall clock: the
    hang-up grace and idle timeout (seconds of wall clock) then span hours of event time, and
    the grace is set to 20 h to cover them. Windows close by watermark (the day's first hours)
    and by the wall-clock rule (the rest).
    """
    start = (time.time() // WINDOW) * WINDOW - 72 * 3600
    profile = Profile(agents=4, p_duplicate=0.05, p_reorder=0.05, p_missing_hangup=0.02, mean_talk_s=90)
    return generate(300, start, 24 * 3600, profile, seed=seed, prefix=f"s{seed}-")


def finals(stack: Stack, topic: str, want: int, timeout: float = 120) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [v for _, v in read_all(stack.bootstrap, stack.topic(topic), settle=1.0) if v["final"]]
        if len(found) >= want:
            time.sleep(3)  # any duplicate final would show up now
            return [v for _, v in read_all(stack.bootstrap, stack.topic(topic), settle=1.0) if v["final"]]
    raise AssertionError(f"{want} finals expected on {topic}, got {len(found)}")


def check_agent_finals(stack: Stack, events: list[dict[str, str]]) -> None:
    expected = expected_agent_windows(events, WINDOW, parse)
    got = finals(stack, "ivr.metrics.agents", len(expected))
    keys = Counter((r["app"], r["agent"], r["window_start"]) for r in got)
    assert [k for k, n in keys.items() if n > 1] == []  # exactly one final per agent and window
    assert set(keys) == {(app, agent, format_ts(start)) for app, agent, start in expected}
    for r in got:
        exp = expected[(r["app"], r["agent"], int(parse(r["window_start"])))]
        assert {k: r[k] for k in exp} == exp, (r, _calls_in(stack, r), [
            (e["attemptid"], e["event"], e.get("time"), e.get("result")) for e in events
            if e["event"] in ("TA", "TE", "TC") and e["to"] == r["agent"] and any(
                x["event"] == "TA" and x["attemptid"] == e["attemptid"]
                and int(parse(x["time"]) // WINDOW * WINDOW) == int(parse(r["window_start"])) for x in events)])
        assert r["answer_rate"] == round(exp["answered"] / exp["offered"], 4)


def _calls_in(stack: Stack, r: dict[str, Any]) -> list[Any]:
    """For a failure message: the completed records with an attempt in this agent window."""
    start = parse(r["window_start"])
    return [(v["uniqueid"], v["revision"], v["closed_at"], [(a["attemptid"], a["started_at"], a["result"])
             for a in v["attempts"] if a["to"] == r["agent"]])
            for _, v in read_all(stack.bootstrap, stack.topic("ivr.calls.completed"))
            if any(a["to"] == r["agent"] and a["started_at"] and start <= parse(a["started_at"]) < start + WINDOW
                   for a in v["attempts"])]


def check_app_finals(stack: Stack, truth: list[Truth]) -> None:
    by_window: dict[int, Counter[str]] = {}
    for t in truth:
        c = by_window.setdefault(int(t.start // WINDOW * WINDOW), Counter())
        c["offered"] += 1
        c[t.outcome] += 1
        c["abandoned_in_ivr"] += t.missed_reason == "abandoned_in_ivr"
    got = finals(stack, "ivr.metrics.apps", len(by_window))
    assert len(got) == len(by_window)
    for r in got:
        c = by_window[int(parse(r["window_start"]))]
        assert (r["offered"], r["answered"], r["missed"], r["abandoned_in_ivr"]) == (
            c["offered"], c["answered"], c["missed"], c["abandoned_in_ivr"]), r


def test_a_day_of_calls_gives_exact_final_agent_and_app_metrics(metrics_stack: Stack) -> None:
    events, truth = a_day(seed=7)
    statuses = asyncio.run(post_events(f"{metrics_stack.base}/webhooks/ivr", TOKEN, events, rate=RATE,
                                       progress=False))
    assert statuses == {202: len(events)}
    check_agent_finals(metrics_stack, events)
    check_app_finals(metrics_stack, truth)
    interims = [v for _, v in read_all(metrics_stack.bootstrap, metrics_stack.topic("ivr.metrics.agents"))
                if not v["final"]]
    assert interims  # live figures came before the finals
    # the completed records match the simulator's ground truth
    records = {v["uniqueid"]: v for _, v in read_all(metrics_stack.bootstrap,
                                                     metrics_stack.topic("ivr.calls.completed"))}
    mismatches = [t.uniqueid for t in truth if (
        records[t.uniqueid]["outcome"], records[t.uniqueid]["missed_reason"], records[t.uniqueid]["answered_by"],
        records[t.uniqueid]["close_reason"], [a["result"] for a in records[t.uniqueid]["attempts"]],
    ) != (t.outcome, t.missed_reason, t.answered_by, t.close_reason, [a.result for a in t.attempts])]
    assert mismatches == []


def test_worker_restart_mid_window_keeps_final_counts_exact(metrics_stack: Stack) -> None:
    events, _ = a_day(seed=11)
    half = len(events) // 2
    url = f"{metrics_stack.base}/webhooks/ivr"
    asyncio.run(post_events(url, TOKEN, events[:half], rate=RATE, progress=False))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not read_all(metrics_stack.bootstrap,
                                                       metrics_stack.topic("ivr.metrics.agents"), settle=0.5):
        pass  # windows are open and have sent interims
    metrics_stack.worker.kill()
    asyncio.run(post_events(url, TOKEN, events[half:], rate=RATE, progress=False))
    port = int(metrics_stack.env["WORKER_WEB_PORT"])
    metrics_stack.worker, _ = start_worker(metrics_stack.env, metrics_stack.tmp / "worker2.log", web_port=port)
    wait_worker_ready(metrics_stack.worker)
    check_agent_finals(metrics_stack, events)


def test_a_backlog_past_every_grace_still_gives_exact_finals(short_grace_stack: Stack) -> None:
    """The worker is down while a whole day of calls is posted, then reads it as one backlog, with
    a one-minute grace. Its calls close on wall-clock timers (hang-up grace, idle timeout, ticks
    held until each partition is read), so a window's last calls close after calls hours later
    in event time have moved the watermark on. A window goes final only once it has been quiet
    for METRICS_IDLE_CLOSE_S: none of its calls is counted late, and every final is exact."""
    stack = short_grace_stack
    events, truth = a_day(seed=5)
    stack.worker.kill()
    statuses = asyncio.run(post_events(f"{stack.base}/webhooks/ivr", TOKEN, events, rate=0, progress=False))
    assert statuses == {202: len(events)}
    port = int(stack.env["WORKER_WEB_PORT"])
    stack.worker, _ = start_worker(stack.env, stack.tmp / "worker2.log", web_port=port)
    wait_worker_ready(stack.worker)
    check_agent_finals(stack, events)
    check_app_finals(stack, truth)
    log = (stack.tmp / "worker2.log").read_text()
    assert "late contribution" not in log
    assert "Traceback" not in log


def test_worker_metrics_endpoint(metrics_stack: Stack) -> None:
    events, _ = a_day(seed=3)
    asyncio.run(post_events(f"{metrics_stack.base}/webhooks/ivr", TOKEN, events[:600], rate=0, progress=False))
    port = metrics_stack.env["WORKER_WEB_PORT"]
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        if "ivr_worker_alerts_raised_total 0.0" not in text and "ivr_worker_consumer_lag{" in text:
            break
        time.sleep(1)
    for name in ("ivr_worker_events_total{event=\"IN\"}", "ivr_worker_duplicates_total",
                 "ivr_worker_late_events_total", "ivr_worker_calls_open", "ivr_worker_calls_closed_total{reason=",
                 "ivr_worker_alerts_raised_total", "ivr_worker_processing_latency_seconds_bucket{",
                 "ivr_worker_consumer_lag{", "ivr_worker_batch_events_bucket{", "ivr_worker_deliver_seconds_bucket{",
                 'ivr_worker_parked_ticks{pipeline="calls"}',
                 # at 0 before the first dead letter, so that the alert rules see the first one
                 'ivr_worker_unprocessable_events_total{pipeline="callers"} 0.0'):
        assert name in text, name
    assert float(re.search(r"^ivr_worker_events_total\{event=\"IN\"\} (\S+)$", text, re.M).group(1)) > 0  # type: ignore[union-attr]
    # bounded labels: no call id or caller number anywhere
    # (a caller number as a whole token: float values such as a histogram's sum hold any digits)
    assert not re.search(r"uniqueid|cli=|(?<![\d.e+-])98\d{8}(?![\d.])", text)
    # nor are the tables served (Faust's /table/ views are on by default)
    assert [httpx.get(f"http://127.0.0.1:{port}/table/{name}").status_code for name in ("", "callers/")] == [404, 404]


def test_a_hangup_long_before_its_in_does_not_close_old_windows_early(metrics_stack: Stack) -> None:
    """H delivered more than HANGUP_GRACE_S before its IN closes the call without its start: that
    must not move the app's watermark to the wall clock (closing the day's windows early and
    making the IN's revision late), and the revision lands in the hour the call began."""
    hour = (time.time() // WINDOW) * WINDOW - 72 * 3600
    url = f"{metrics_stack.base}/webhooks/ivr"

    def call(uid: str, at: float, wait: int) -> list[dict[str, str]]:
        return [{"app": APP, "event": "IN", "uniqueid": uid, "cli": "9812345678", "time": str(int(at))},
                {"app": APP, "event": "H", "uniqueid": uid, "cli": "9812345678", "duration": str(wait)}]

    late_in, late_h = call("early-h", hour + 600, 12)
    asyncio.run(post_events(url, TOKEN, [late_h], rate=0, progress=False))
    deadline = time.monotonic() + 60
    while not any(v["uniqueid"] == "early-h" for _, v in read_all(
            metrics_stack.bootstrap, metrics_stack.topic("ivr.calls.completed"), settle=0.5)):
        assert time.monotonic() < deadline, "the call never closed on its hang-up grace"
    others = [*call("on-time-1", hour + 100, 20), *call("on-time-2", hour + 3000, 30)]
    asyncio.run(post_events(url, TOKEN, [*others, late_in], rate=0, progress=False))
    got = finals(metrics_stack, "ivr.metrics.apps", 1)
    assert [(r["window_start"], r["offered"], r["abandoned_in_ivr"]) for r in got] == [(format_ts(hour), 3, 3)]
    revised = [v for _, v in read_all(metrics_stack.bootstrap, metrics_stack.topic("ivr.calls.completed"))
               if v["uniqueid"] == "early-h"]
    assert [(v["revision"], v["duration"]) for v in revised] == [(1, 12), (2, 12)]
    assert revised[-1]["started_at"] == format_ts(hour + 600)
    assert "late contribution" not in (metrics_stack.tmp / "worker.log").read_text()
