"""Webhooks posted to the ingress, completed records and alerts read back from the real broker."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import TOKEN, Stack
from tests.helpers import read_all

pytestmark = pytest.mark.kafka

APP = "4e11fe2082b044b4a3b55718c79c29d5"
SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "json"


def uid() -> str:
    return f"{int(time.time())}.{uuid.uuid4().hex[:6]}"


def post(stack: Stack, events: list[dict[str, Any]], how: str = "form") -> None:
    with httpx.Client(base_url=stack.base, params={"token": TOKEN}) as c:
        for e in events:
            fields = {"app": APP, **{k: str(v) for k, v in e.items()}}
            r = c.post("/webhooks/ivr", data=fields) if how == "form" else c.get("/webhooks/ivr", params=fields)
            assert r.status_code == 202, r.text


def call(u: str, cli: str = "9810000001", *steps: dict[str, Any], t0: str = "2026-03-02 10:00:00",
         hangup: float | None = None) -> list[dict[str, Any]]:
    events = [{"event": "IN", "uniqueid": u, "cli": cli, "time": t0}, *steps]
    if hangup is not None:
        events.append({"event": "H", "uniqueid": u, "cli": cli, "duration": hangup})
    return events


def ta(u: str, n: int, agent: str, t: str) -> dict[str, Any]:
    return {"event": "TA", "uniqueid": u, "attemptid": f"{u}.{n}", "to": agent, "time": t}


def tc(u: str, n: int, agent: str, t: str) -> dict[str, Any]:
    return {"event": "TC", "uniqueid": u, "attemptid": f"{u}.{n}", "to": agent, "time": t}


def te(u: str, n: int, agent: str, result: str, duration: float) -> dict[str, Any]:
    return {"event": "TE", "uniqueid": u, "attemptid": f"{u}.{n}", "to": agent, "result": result,
            "duration": duration}


def wait_for(stack: Stack, topic: str, pred: Any, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [v for _, v in read_all(stack.bootstrap, stack.topic(topic), settle=0.5) if pred(v)]
        if len(found) >= count:
            return found
    raise AssertionError(f"{count} record(s) expected on {topic}, got {found}")


def completed(stack: Stack, u: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
    return wait_for(stack, "ivr.calls.completed", lambda v: v["uniqueid"] == u, count, timeout)


def alerts(stack: Stack, u: str) -> list[dict[str, Any]]:
    return [v for _, v in read_all(stack.bootstrap, stack.topic("ivr.alerts.missed"), settle=0.5)
            if v["uniqueid"] == u]


def validate(topic: str, records: list[dict[str, Any]]) -> None:
    import jsonschema

    schema = orjson.loads((SCHEMAS / f"{topic}.schema.json").read_bytes())
    v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for r in records:
        v.validate(r)


def test_answered_first_time(stack: Stack) -> None:
    u = uid()
    post(stack, call(u, "9810000001", ta(u, 1, "A1", "2026-03-02 10:00:05"), tc(u, 1, "A1", "2026-03-02 10:00:09"),
                     te(u, 1, "A1", "answered", 64), hangup=70))
    (r,) = completed(stack, u)
    validate("ivr.calls.completed", [r])
    assert r["outcome"] == "answered" and r["answered_by"] == "A1" and r["close_reason"] == "hangup"
    assert r["started_at"] == "2026-03-02T04:30:00.000Z"  # naive time read in Asia/Kolkata
    assert (r["wait_s"], r["talk_s"], r["duration"]) == (9.0, 61.0, 70.0)
    time.sleep(3)
    assert alerts(stack, u) == []


def test_round_robin_then_answered(stack: Stack) -> None:
    u = uid()
    post(stack, call(u, "9810000002",
                     ta(u, 1, "A1", "2026-03-02 10:00:02"), te(u, 1, "A1", "noanswer", 15),
                     ta(u, 2, "A2", "2026-03-02 10:00:18"), te(u, 2, "A2", "busy", 1),
                     ta(u, 3, "A3", "2026-03-02 10:00:20"), tc(u, 3, "A3", "2026-03-02 10:00:24"),
                     te(u, 3, "A3", "answered", 40), hangup=60))
    (r,) = completed(stack, u)
    assert [a["result"] for a in r["attempts"]] == ["noanswer", "busy", "answered"]
    assert r["answered_by"] == "A3" and r["wait_s"] == 24.0


@pytest.mark.parametrize("result", ["noanswer", "busy", "congestion"])
def test_missed_after_unanswered_attempt_alerts(stack: Stack, result: str) -> None:
    u = uid()
    cli = f"98200{uuid.uuid4().int % 100000:05d}"
    post(stack, call(u, cli, ta(u, 1, "A1", "2026-03-02 10:00:03"), te(u, 1, "A1", result, 10), hangup=25))
    (r,) = completed(stack, u)
    assert (r["outcome"], r["missed_reason"]) == ("missed", "no_answer")
    (a,) = wait_for(stack, "ivr.alerts.missed", lambda v: v["uniqueid"] == u)
    validate("ivr.alerts.missed", [a])
    assert (a["cli"], a["missed_reason"], a["attempts"], a["agents_tried"], a["repeat_count"]) == (
        cli, "no_answer", 1, ["A1"], 1)
    assert a["at"] == "2026-03-02T04:30:25.000Z" and a["wait_s"] == 25.0


def test_abandoned_in_ivr_and_short_abandon(stack: Stack) -> None:
    long_u, short_u = uid(), uid()
    post(stack, call(long_u, "9830000001", hangup=40) + call(short_u, "9830000002", hangup=2))
    (r,) = completed(stack, long_u)
    assert r["missed_reason"] == "abandoned_in_ivr" and r["attempts"] == []
    (s,) = completed(stack, short_u)
    assert s["outcome"] == "missed" and s["wait_s"] == 2.0
    wait_for(stack, "ivr.alerts.missed", lambda v: v["uniqueid"] == long_u)
    time.sleep(1)
    assert alerts(stack, short_u) == []  # a record, but no alert


def test_caller_hung_up_while_ringing(stack: Stack) -> None:
    u = uid()
    post(stack, call(u, "9840000001", ta(u, 1, "A1", "2026-03-02 10:00:05"), hangup=12))
    (r,) = completed(stack, u)  # after HANGUP_GRACE_S
    (a,) = r["attempts"]
    assert a["result"] == "caller_hangup" and a["ended_at"] == "2026-03-02T04:30:12.000Z"


def test_no_hangup_closed_by_timeout(stack: Stack) -> None:
    u = uid()
    post(stack, call(u, "9850000001", ta(u, 1, "A1", "2026-03-02 10:00:05"), te(u, 1, "A1", "noanswer", 15)))
    time.sleep(3)
    assert [v for _, v in read_all(stack.bootstrap, stack.topic("ivr.calls.completed"), settle=0.5)
            if v["uniqueid"] == u] == []
    (r,) = completed(stack, u, timeout=40)  # CALL_IDLE_TIMEOUT_S=6 in the test stack
    assert r["close_reason"] == "timeout" and r["ended_at"] == "2026-03-02T04:30:20.000Z"
    wait_for(stack, "ivr.alerts.missed", lambda v: v["uniqueid"] == u)


def test_duplicated_and_reversed_delivery(stack: Stack) -> None:
    ordered_u, messy_u = uid(), uid()

    def events(u: str) -> list[dict[str, Any]]:
        return call(u, "9860000001", ta(u, 1, "A1", "2026-03-02 10:00:02"), te(u, 1, "A1", "noanswer", 15),
                    ta(u, 2, "A2", "2026-03-02 10:00:18"), tc(u, 2, "A2", "2026-03-02 10:00:22"),
                    te(u, 2, "A2", "answered", 30), hangup=50)

    post(stack, events(ordered_u))
    messy = list(reversed(events(messy_u)))
    post(stack, messy[:3] + messy[:3] + messy[3:] + messy[-2:], how="get")
    (a,) = completed(stack, ordered_u)
    (b,) = completed(stack, messy_u)

    def content(r: dict[str, Any]) -> dict[str, Any]:
        text = orjson.dumps({k: v for k, v in r.items() if k not in ("closed_at", "duplicates", "revision")})
        return dict(orjson.loads(text.replace(ordered_u.encode(), b"U").replace(messy_u.encode(), b"U")))

    assert content(a) == content(b)
    # 3 duplicates before the call closed (on its IN); the 2 after it emit nothing, so are not in this revision
    assert b["duplicates"] == 3 and a["duplicates"] == 0


def test_epoch_times_and_repeat_callers(stack: Stack) -> None:
    cli = f"98700{uuid.uuid4().int % 100000:05d}"
    first, second = uid(), uid()
    post(stack, [{"event": "IN", "uniqueid": first, "cli": cli, "time": "1772425800"},
                 {"event": "H", "uniqueid": first, "cli": cli, "duration": 30}])
    (a1,) = wait_for(stack, "ivr.alerts.missed", lambda v: v["uniqueid"] == first)
    # the caller tries again (in wall-clock time too: a repeat call comes after the first one ended)
    post(stack, [{"event": "IN", "uniqueid": second, "cli": cli, "time": "1772427600000"},
                 {"event": "H", "uniqueid": second, "cli": cli, "duration": 20}])
    (r,) = completed(stack, second)
    assert r["started_at"] == "2026-03-02T05:00:00.000Z"  # epoch milliseconds
    (a2,) = wait_for(stack, "ivr.alerts.missed", lambda v: v["uniqueid"] == second)
    assert (a1["repeat_count"], a2["repeat_count"]) == (1, 2)


def test_late_event_after_close_makes_a_revision_not_a_second_alert(stack: Stack) -> None:
    u = uid()
    post(stack, call(u, "9880000001", hangup=40))
    (r1,) = completed(stack, u)
    assert r1["revision"] == 1 and r1["missed_reason"] == "abandoned_in_ivr"
    wait_for(stack, "ivr.alerts.missed", lambda v: v["uniqueid"] == u)
    post(stack, [ta(u, 1, "A1", "2026-03-02 10:00:05"), te(u, 1, "A1", "noanswer", 10)])
    # (a revision from the TA alone says no_answer too, its attempt caller_hangup: wait for the TE's)
    wait_for(stack, "ivr.calls.completed",
             lambda v: v["uniqueid"] == u and bool(v["attempts"]) and v["attempts"][0]["result"] == "noanswer")
    revisions = completed(stack, u, count=2)
    # one revision for both if the worker read them in one batch, else one each
    assert [r["revision"] for r in revisions] in ([1, 2], [1, 2, 3])
    assert revisions[-1]["missed_reason"] == "no_answer" and revisions[-1]["attempts"][0]["result"] == "noanswer"
    post(stack, [te(u, 1, "A1", "noanswer", 10)])  # a duplicate of a seen event: nothing
    time.sleep(2)
    assert len(completed(stack, u, count=len(revisions))) == len(revisions)
    assert len(alerts(stack, u)) == 1
    validate("ivr.calls.completed", revisions)
