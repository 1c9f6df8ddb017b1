"""`ivr`: its one-line summaries (pure), and the command itself against the real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.truth import Difference, check, latest
from config.settings import load
from config.topics import ensure_topics
from deploy.local_kafka import KafkaBroker
from ivr_cli.render import mask_cli, matches, open_alerts, summary, topic_base
from tests.helpers import ROOT, interruptible

APP = "4e11fe2082b044b4a3b55718c79c29d5"
OTHER_APP = "0123456789abcdef0123456789abcdef"


def call(uid: str, cli: str = "9716700271", app: str = APP, outcome: str = "answered", **kw: Any) -> dict[str, Any]:
    answered = outcome == "answered"
    return {"v": 1, "uniqueid": uid, "app": app, "cli": cli, "started_at": "2017-06-22T05:47:18.000Z",
            "ended_at": "2017-06-22T05:49:40.000Z", "duration": 142.0, "outcome": outcome,
            "missed_reason": None if answered else "no_answer", "answered_by": "9000000001" if answered else None,
            "wait_s": 16.0, "talk_s": 120.0 if answered else 0.0,
            "attempts": [{"attemptid": f"{uid}.1", "to": "9000000001"}], "close_reason": "hangup",
            "revision": 1, "duplicates": 0, "closed_at": "2026-11-27T10:00:00.000Z", **kw}


def alert(uid: str, at: str, cli: str = "9812345678", repeat: int = 1) -> dict[str, Any]:
    return {"v": 1, "uniqueid": uid, "app": APP, "cli": cli, "at": at, "missed_reason": "no_answer",
            "wait_s": 31.0, "attempts": 2, "agents_tried": ["9000000001", "9000000002"], "repeat_count": repeat}


# --- pure ------------------------------------------------------------------------------------------

def test_call_summary_has_what_an_operator_scans_for() -> None:
    line = summary("calls", call("1498110438.13")).plain
    for part in ("2017-06-22 05:47:18Z", APP[:8], "9716700271", "answered", "by 9000000001", "wait 16s",
                 "talk 120s", "rev 1", "1498110438.13"):
        assert part in line, (part, line)
    missed = summary("calls", call("2.2", outcome="missed", close_reason="timeout"), mask=True).plain
    assert "missed" in missed and "(no_answer)" in missed and "closed by timeout" in missed
    assert "******0271" in missed and "9716700271" not in missed


def test_other_summaries() -> None:
    a = summary("alerts", alert("1.1", "2017-06-22T05:49:40.000Z", repeat=3)).plain
    assert all(p in a for p in ("2017-06-22 05:49:40Z", "9812345678", "no_answer", "repeat 3", "1.1"))
    r = summary("resolved", {"uniqueid": "1.1", "app": APP, "cli": "9812345678", "how": "called_again_answered",
                             "resolved_at": "2017-06-22T06:00:00.000Z", "by_uniqueid": "1.9"}).plain
    assert "called_again_answered" in r and "by call 1.9" in r
    m = summary("agents", {"app": APP, "agent": "9000000001", "window_start": "2017-06-22T05:00:00.000Z",
                           "window_end": "2017-06-22T06:00:00.000Z", "offered": 4, "answered": 3, "noanswer": 1,
                           "busy": 0, "congestion": 0, "caller_hangup": 0, "answer_rate": 0.75,
                           "avg_ring_s": 4.5, "final": True}).plain
    assert "+1h" in m and "agent 9000000001" in m and "answer_rate 75%" in m and "final" in m
    assert "avg_ring 4.5s" in m
    unanswered = summary("agents", {"agent": "9000000001", "offered": 1, "answered": 0, "avg_ring_s": None}).plain
    assert "avg_ring -" in unanswered and "-s" not in unanswered  # no answer to average: no unit either
    e = summary("events", {"app": APP, "event": "TE", "uniqueid": "1.1", "cli": "", "attemptid": "1.1.1",
                           "to": "9000000001", "result": "noanswer", "duration": 15.0,
                           "time": "2017-06-22T05:48:00.000Z", "time_source": "received"}).plain
    assert "TE" in e and "(withheld)" in e and "result noanswer" in e and "duration 15" in e
    i = summary("invalid", {"app": APP, "method": "POST", "received_at": "2017-06-22T05:48:00.000Z",
                            "errors": [{"field": "time", "reason": "not a time"}]}).plain
    assert "time: not a time" in i
    u = summary("unprocessable", {"error": "KeyError", "cli": "9716700271"}, mask=True).plain
    assert "error=KeyError" in u and "******0271" in u


def test_filters_masking_and_open_alerts() -> None:
    assert topic_base("calls") == "ivr.calls.completed" and topic_base("ivr.alerts.missed") == "ivr.alerts.missed"
    assert topic_base("c3.ivr.calls.completed", "c3.") == "ivr.calls.completed"  # as `ivr topics` names it
    for name, prefix in (("nope", ""), ("c3.ivr.calls.completed", ""), ("c3.ivr.internal.call-ticks", "c3.")):
        with pytest.raises(KeyError):
            topic_base(name, prefix)
    assert mask_cli("9716700271") == "******0271" and mask_cli("") == ""
    assert matches(call("1"), APP.upper(), "9716700271") and not matches(call("1"), OTHER_APP, None)
    assert not matches({"app": APP}, None, "9716700271")  # no caller number: a --cli filter excludes it
    alerts = [alert("a", "2017-06-22T05:00:00.000Z"), alert("b", "2017-06-22T06:00:00.000Z"),
              alert("c", "2017-06-22T07:00:00.000Z"), alert("a", "2017-06-22T05:00:00.000Z")]  # a replayed
    assert [x["uniqueid"] for x in open_alerts(alerts, [{"uniqueid": "b"}])] == ["c", "a"]


def test_check_against_the_truth() -> None:
    truth: list[dict[str, Any]] = [
        {"uniqueid": "1.1", "outcome": "answered", "missed_reason": None, "answered_by": "9000000001",
         "close_reason": "hangup", "attempts": [{"result": "answered"}]},
        {"uniqueid": "1.2", "outcome": "missed", "missed_reason": "no_answer", "answered_by": None,
         "close_reason": "hangup", "attempts": [{"result": "noanswer"}, {"result": "busy"}]},
        {"uniqueid": "1.3", "outcome": "missed", "missed_reason": "no_answer", "answered_by": None,
         "close_reason": "timeout", "attempts": []}]
    first = {**truth[0], "revision": 1, "attempts": [{"result": "noanswer"}]}
    records = latest([{**truth[1], "revision": 1, "attempts": [{"result": "noanswer"}, {"result": "busy"}]},
                      {**first, "revision": 2, "attempts": [{"result": "answered"}]}, first,  # revision 2 wins
                      {"uniqueid": "1.9"}, {"revision": 1}])  # unreadable ones skipped
    assert set(records) == {"1.1", "1.2"} and records["1.1"]["revision"] == 2
    checked = check(truth, records)
    assert (checked.calls, checked.right, checked.wrong, checked.missing) == (3, 2, 0, ["1.3"])
    records["1.2"] = {**records["1.2"], "missed_reason": "busy", "attempts": [{"result": "noanswer"}]}
    checked = check(truth, records)
    assert (checked.right, checked.wrong) == (1, 1)
    assert checked.differences == [Difference("1.2", "missed_reason", "no_answer", "busy"),
                                   Difference("1.2", "attempts", ["noanswer", "busy"], ["noanswer"])]


# --- against the broker ----------------------------------------------------------------------------

def test_simulate_without_any_token_says_so_and_posts_nothing(tmp_path: Path) -> None:
    """No WEBHOOK_TOKENS, no --token, no `make run` token: every webhook would get 401."""
    env = {k: v for k, v in os.environ.items() if k != "WEBHOOK_TOKENS"}
    r = ivr({**env, "RUN_DIR": str(tmp_path), "INGRESS_PORT": "9"}, "simulate", "--calls", "1")
    assert r.returncode == 2 and "no webhook token" in r.stderr, r.stderr
    assert "HTTP statuses" not in r.stderr


def _env(kafka: KafkaBroker, prefix: str) -> dict[str, str]:
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix,
            "TOPIC_PARTITIONS": "3", "COLUMNS": "200"}


def ivr(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ivr_cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def produce(bootstrap: str, topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(topic, orjson.dumps(value), key=key.encode())
        finally:
            await producer.stop()

    asyncio.run(go())


def create_topics(kafka: KafkaBroker, prefix: str) -> None:
    asyncio.run(ensure_topics(load({"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix,
                                    "TOPIC_PARTITIONS": "3"})))


@pytest.mark.kafka
def test_check_compares_the_latest_records_with_a_truth_file(kafka: KafkaBroker, prefix: str, tmp_path: Path) -> None:
    create_topics(kafka, prefix)
    env = _env(kafka, prefix)
    truth = tmp_path / "truth.json"
    answered = {k: call("5.1")[k] for k in ("uniqueid", "outcome", "missed_reason", "answered_by", "close_reason")}
    missed = {**answered, "uniqueid": "5.2", "outcome": "missed", "missed_reason": "no_answer", "answered_by": None}
    truth.write_bytes(orjson.dumps([{**answered, "attempts": [{"result": "answered"}]},
                                    {**missed, "attempts": [{"result": "noanswer"}]}]))
    topic = f"{prefix}ivr.calls.completed"
    produce(kafka.bootstrap, topic, [("5.1", call("5.1", attempts=[{"result": "answered"}])),
                                     ("5.2", call("5.2", attempts=[{"result": "answered"}]))])
    wrong = ivr(env, "check", str(truth), "--wait", "0")
    assert wrong.returncode == 1, wrong.stderr
    assert "2 calls in the truth: 1 right, 1 different, 0 without a record" in wrong.stdout, wrong.stdout
    assert "outcome" in wrong.stdout and "no_answer" in wrong.stdout
    produce(kafka.bootstrap, topic, [("5.2", call("5.2", outcome="missed", revision=2,
                                                  attempts=[{"result": "noanswer"}]))])
    right = ivr(env, "check", str(truth), "--wait", "0")
    assert right.returncode == 0 and "2 right" in right.stdout, (right.stdout, right.stderr)
    truth.write_text("{}")
    assert ivr(env, "check", str(truth)).returncode == 2


@pytest.mark.kafka
def test_tail_prints_records_filters_and_raw_json(kafka: KafkaBroker, prefix: str) -> None:
    create_topics(kafka, prefix)
    calls = [call("1.1"), call("1.2", cli="9812345678", outcome="missed"), call("1.3", app=OTHER_APP),
             call("1.1", revision=2)]
    produce(kafka.bootstrap, f"{prefix}ivr.calls.completed", [(c["uniqueid"], c) for c in calls])
    env = _env(kafka, prefix)

    out = ivr(env, "tail", "calls", "--from-beginning", "--idle-exit", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 4, out.stdout
    assert sum("1.1" in x for x in lines) == 2 and any("rev 2" in x for x in lines)
    assert any("9812345678" in x and "missed" in x for x in lines)

    only = ivr(env, "tail", "calls", "-b", "--app", APP, "--cli", "9716700271", "--json", "--idle-exit", "3")
    assert only.returncode == 0, only.stderr
    got = [orjson.loads(x) for x in only.stdout.splitlines()]
    assert [(g["uniqueid"], g["revision"]) for g in got] == [("1.1", 1), ("1.1", 2)]
    assert got[0] == calls[0]

    first = ivr(env, "tail", "calls", "-b", "--max-records", "1", "--mask")
    assert first.returncode == 0 and len(first.stdout.splitlines()) == 1
    assert "******" in first.stdout

    unknown = ivr(env, "tail", "nope")
    assert unknown.returncode == 2 and "one of: calls" in unknown.stderr


@pytest.mark.kafka
def test_tail_follows_new_records_and_ctrl_c_exits_cleanly(kafka: KafkaBroker, prefix: str, tmp_path: Path) -> None:
    create_topics(kafka, prefix)
    produce(kafka.bootstrap, f"{prefix}ivr.alerts.missed", [("9812345678", alert("old", "2017-06-22T05:00:00.000Z"))])
    err_path = tmp_path / "stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ivr_cli", "tail", "alerts"], env=_env(kafka, prefix),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=interruptible)
    try:
        deadline = time.monotonic() + 60
        while "following" not in err_path.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, err_path.read_text()
            time.sleep(0.2)
        produce(kafka.bootstrap, f"{prefix}ivr.alerts.missed", [("9812345678", alert("new", "2017-06-22T06:00:00.000Z",
                                                                                     repeat=2))])
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the record is printed
        assert "new" in line and "repeat 2" in line and "old" not in line
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130)
    assert "Traceback" not in err_path.read_text()


@pytest.mark.kafka
def test_alerts_lists_open_ones_newest_first(kafka: KafkaBroker, prefix: str) -> None:
    create_topics(kafka, prefix)
    produce(kafka.bootstrap, f"{prefix}ivr.alerts.missed", [
        ("9812345678", alert("a", "2017-06-22T05:00:00.000Z")),
        ("9812345679", alert("b", "2017-06-22T06:00:00.000Z", cli="9812345679")),
        ("9812345678", alert("c", "2017-06-22T07:00:00.000Z", repeat=2)),
    ])
    produce(kafka.bootstrap, f"{prefix}ivr.alerts.resolved", [("9812345679", {
        "v": 1, "uniqueid": "b", "app": APP, "cli": "9812345679", "resolved_at": "2017-06-22T06:30:00.000Z",
        "how": "called_again_answered", "by_uniqueid": "d"})])
    env = _env(kafka, prefix)
    out = ivr(env, "alerts")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [x.split()[-1] for x in lines] == ["c", "a"], out.stdout
    assert "2 open alerts" in out.stderr
    raw = ivr(env, "alerts", "--json", "--limit", "1")
    assert [orjson.loads(x)["uniqueid"] for x in raw.stdout.splitlines()] == ["c"]
    assert "1 shown of 2 open alerts" in ivr(env, "alerts", "--limit", "1").stderr


@pytest.mark.kafka
def test_topics_shows_counts_and_the_worker_groups_lag(kafka: KafkaBroker, prefix: str) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.structs import OffsetAndMetadata

    create_topics(kafka, prefix)
    events = f"{prefix}ivr.events"
    produce(kafka.bootstrap, events, [(f"u{i}", {"v": 1, "app": APP, "event": "IN", "uniqueid": f"u{i}"})
                                      for i in range(10)])

    async def commit_some() -> int:
        """The worker group commits each partition's offset 1: lag = 10 - (partitions with a record)."""
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=f"{prefix}ivr-processor",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            tps = [TopicPartition(events, p) for p in range(3)]
            consumer.assign(tps)
            ends = await consumer.end_offsets(tps)
            done = {tp: OffsetAndMetadata(1, "") for tp in tps if ends[tp] > 0}
            await consumer.commit(done)
            return 10 - len(done)
        finally:
            await consumer.stop()

    lag = asyncio.run(commit_some())
    out = ivr(_env(kafka, prefix), "topics")
    assert out.returncode == 0, out.stderr
    row = next(x for x in out.stdout.splitlines() if f"{events} " in x)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells == [events, "3", "10", str(lag)], row
    calls = next(x for x in out.stdout.splitlines() if f"{prefix}ivr.calls.completed " in x)
    assert [c.strip() for c in calls.split("│") if c.strip()][1:] == ["3", "0", "-"]


@pytest.mark.kafka
def test_simulate_writes_calls_that_tail_shows(kafka: KafkaBroker, prefix: str) -> None:
    create_topics(kafka, prefix)
    env = _env(kafka, prefix)
    sim = ivr(env, "simulate", "--calls", "3", "--seed", "7", "--kafka", kafka.bootstrap, "--topic-prefix", prefix)
    assert sim.returncode == 0, sim.stderr
    assert "3 calls" in sim.stderr
    out = ivr(env, "tail", "events", "-b", "--idle-exit", "3")
    ins = [x for x in out.stdout.splitlines() if "  IN " in x]
    assert len(ins) == 3, out.stdout
    assert ivr(env, "simulate", "--help").stdout.startswith("usage: ivr simulate")
