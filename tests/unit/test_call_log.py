"""The call log as a second source: translation to events, and how the lifecycle merges them."""

from __future__ import annotations

from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.core.call_log import CallLogError, call_events, is_active
from schemas.records import CompletedCall
from schemas.timefmt import format_ts
from schemas.webhook import normalise
from tests.unit.test_lifecycle import CFG, NOW, Run

KOLKATA = ZoneInfo("Asia/Kolkata")
APP = "4e11fe2082b044b4a3b55718c79c29d5"
SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "json" / "ivr.events.schema.json"

# the call of the provider's API reference, as its call log returns it (attempts newest first)
REFERENCE_CALL: dict[str, Any] = {
    "log": [{"desc": "TRANSFER SOON", "id": "TRANSFER_INIT"}], "hot": 0, "cli": "9716700271",
    "uid": "1498110438.13", "time": "2017-06-22T11:17:18+05:30", "active": False, "duration": "19",
    "transfer": [
        {"attemptId": "1498110438.13.2", "du": "3", "name": "Anil Gupta", "seq": "7",
         "time": "2017-06-22T11:17:36+05:30", "to": "971670XXXX", "group": "default", "disposition": "answered"},
        {"attemptId": "1498110438.13.1", "du": "0", "name": "Anil Gupta", "seq": "5",
         "time": "2017-06-22T11:17:20+05:30", "to": "971670XXXX", "group": "default", "disposition": "noanswer"},
    ],
}


def as_record(events: list[Any]) -> list[dict[str, Any]]:
    """Events as the processor reads them back from the topic (decoded JSON)."""
    return [orjson.loads(orjson.dumps(e)) for e in events]


def test_reference_call_becomes_the_webhook_events() -> None:
    events = call_events(REFERENCE_CALL, APP, 1_900_000_000.0, KOLKATA)
    assert [(e.event, e.attemptid) for e in events] == [
        ("IN", None), ("TA", "1498110438.13.1"), ("TE", "1498110438.13.1"),
        ("TA", "1498110438.13.2"), ("TE", "1498110438.13.2"), ("H", None)]
    inn, _ta1, te1, ta2, te2, h = events
    assert inn.time == "2017-06-22T05:47:18.000Z" and inn.time_source == "provider" and inn.cli == "9716700271"
    assert ta2.time == "2017-06-22T05:47:36.000Z" and ta2.to == "971670XXXX"
    assert te1.result == "noanswer" and te1.duration == 0 and te2.result == "answered" and te2.duration == 3
    assert te2.time_source == "received"  # the log gives no end time: placed from TA time + du downstream
    assert h.duration == 19 and h.attemptid is None
    assert all(e.origin == "call_log" and e.app == APP and e.uniqueid == "1498110438.13" for e in events)
    assert [(e.agent_name, e.group) for e in events] == [
        (None, None), *[("Anil Gupta", "default")] * 4, (None, None)]
    assert not any(e.event == "TC" for e in events)  # no connect time is invented


def test_events_validate_against_the_topic_schema() -> None:
    import jsonschema

    schema = orjson.loads(SCHEMA.read_bytes())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for e in as_record(call_events(REFERENCE_CALL, APP, 1_900_000_000.0, KOLKATA)):
        validator.validate(e)


def test_ids_are_stable_across_polls_and_distinct_from_webhooks() -> None:
    first = call_events(REFERENCE_CALL, APP, 1_900_000_000.0, KOLKATA)
    again = call_events(orjson.loads(orjson.dumps(REFERENCE_CALL)), APP, 1_900_000_300.0, KOLKATA)
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first}) == len(first)
    webhook = normalise(first[0].raw, 1_900_000_000.0, KOLKATA)
    assert webhook.origin == "webhook" and webhook.id != first[0].id


def test_a_name_filled_in_later_is_a_different_event() -> None:
    bare = {**REFERENCE_CALL, "transfer": [{k: v for k, v in t.items() if k != "name"}
                                           for t in REFERENCE_CALL["transfer"]]}
    a = call_events(bare, APP, 0.0, KOLKATA)
    b = call_events(REFERENCE_CALL, APP, 0.0, KOLKATA)
    assert a[1].agent_name is None and b[1].agent_name == "Anil Gupta" and a[1].id != b[1].id


def test_active_and_broken_calls_are_refused() -> None:
    assert is_active({"active": True}) and is_active({"active": "true"}) and not is_active({"active": False})
    with pytest.raises(CallLogError, match="active"):
        call_events({**REFERENCE_CALL, "active": True}, APP, 0.0, KOLKATA)
    with pytest.raises(CallLogError, match="duration"):
        call_events({**REFERENCE_CALL, "duration": ""}, APP, 0.0, KOLKATA)
    with pytest.raises(CallLogError, match="time"):
        call_events({**REFERENCE_CALL, "time": "yesterday"}, APP, 0.0, KOLKATA)
    broken = {**REFERENCE_CALL, "transfer": [{**REFERENCE_CALL["transfer"][0], "to": ""}]}
    with pytest.raises(CallLogError, match="to"):
        call_events(broken, APP, 0.0, KOLKATA)


def test_unknown_disposition_means_the_caller_hung_up_while_it_rang() -> None:
    ringing = {**REFERENCE_CALL, "transfer": [{**REFERENCE_CALL["transfer"][1], "disposition": ""}]}
    events = call_events(ringing, APP, 0.0, KOLKATA)
    assert [e.event for e in events] == ["IN", "TA", "H"]
    record = Run().feed(as_record(events)).settle().record
    assert record.attempts[0].result == "caller_hangup" and record.close_reason == "hangup"


def test_bad_agent_labels_are_unknown_not_refused() -> None:
    odd = {**REFERENCE_CALL, "transfer": [{**REFERENCE_CALL["transfer"][1], "name": "x\x00y", "group": 7}]}
    ta = call_events(odd, APP, 0.0, KOLKATA)[1]
    assert ta.agent_name is None and ta.group is None


# ---- one call described once, delivered as webhooks and as the call log ------------------------

T0 = 1_800_000_000.0  # whole seconds, as the provider's times are


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, KOLKATA).isoformat(timespec="seconds")


def described(uid: str, attempts: list[tuple[str, str, int, int]], hangup_at: int,
              names: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(webhooks, call-log entry) of one call. attempts: (agent, result, start offset, ring s);
    answered attempts talk until the hang-up."""
    hooks: list[dict[str, Any]] = [{"app": APP, "event": "IN", "uniqueid": uid, "cli": "981", "time": iso(T0)}]
    transfers = []
    for n, (agent, result, start, ring) in enumerate(attempts, 1):
        aid = f"{uid}.{n}"
        base = {"app": APP, "uniqueid": uid, "cli": "981", "attemptid": aid, "to": agent}
        hooks.append({**base, "event": "TA", "time": iso(T0 + start)})
        du = hangup_at - start if result == "answered" else ring
        if result == "answered":
            hooks.append({**base, "event": "TC", "time": iso(T0 + start + ring)})
        if result != "caller_hangup":
            hooks.append({**base, "event": "TE", "result": result, "duration": str(du)})
        transfers.append({"attemptId": aid, "to": agent, "time": iso(T0 + start), "du": str(du),
                          "disposition": "" if result == "caller_hangup" else result,
                          **({"name": f"Agent {agent}", "group": "sales"} if names else {})})
    hooks.append({"app": APP, "event": "H", "uniqueid": uid, "cli": "981", "duration": str(hangup_at)})
    log = {"uid": uid, "cli": "981", "time": iso(T0), "active": False, "duration": str(hangup_at),
           "transfer": list(reversed(transfers))}
    return hooks, log


def webhook_records(hooks: list[dict[str, Any]], received: float = T0 + 1000) -> list[dict[str, Any]]:
    return as_record([normalise(h, received, KOLKATA) for h in hooks])


def log_records(log: dict[str, Any], received: float = T0 + 2000) -> list[dict[str, Any]]:
    return as_record(call_events(log, APP, received, KOLKATA))


def content(r: CompletedCall) -> dict[str, Any]:
    d = asdict(r)
    for k in ("revision", "duplicates", "closed_at"):
        d.pop(k)
    return d


def unnamed(r: CompletedCall) -> dict[str, Any]:
    return content(replace(r, attempts=[replace(a, agent_name=None, group=None) for a in r.attempts]))


ROUND_ROBIN = [("A1", "noanswer", 10, 15), ("A2", "busy", 26, 1), ("A3", "answered", 28, 5)]


def test_a_call_known_only_from_the_log_closes_at_once_as_hangup() -> None:
    hooks, log = described("u1", ROUND_ROBIN, 90)
    from_log = Run().feed(log_records(log))
    assert from_log.state is not None and from_log.state.closed  # no grace, no timeout to wait for
    record = from_log.record
    assert record.close_reason == "hangup" and record.outcome == "answered" and record.answered_by == "A3"
    assert [(a.agent_name, a.group) for a in record.attempts] == [(f"Agent {x}", "sales") for x in ("A1", "A2", "A3")]
    assert record.ended_at == format_ts(T0 + 90)
    # what the webhooks would have said, the TC's connect time aside (the log has none)
    without_tc = [h for h in hooks if h["event"] != "TC"]
    assert unnamed(record) == unnamed(Run().feed(webhook_records(without_tc)).settle().record)
    assert record.attempts[2].connected_at is None and record.wait_s == 28


def test_log_after_all_webhooks_only_adds_the_agent_names() -> None:
    hooks, log = described("u2", ROUND_ROBIN, 90)
    run = Run().feed(webhook_records(hooks))
    before = run.record
    run.feed(log_records(log))
    after = run.record
    assert after.revision > before.revision  # filling in names alone is a change
    assert unnamed(after) == unnamed(before)
    assert all(a.agent_name and a.group == "sales" for a in after.attempts)
    assert after.duplicates == 0  # the call log confirming an event is not a repeated delivery
    emitted = len(run.completed)
    run.feed(log_records(log, received=T0 + 9000))  # the next poll: nothing changes
    assert len(run.completed) == emitted and run.missed == []


def test_log_never_overrides_what_a_webhook_said() -> None:
    hooks, log = described("u3", [("A1", "noanswer", 10, 15)], 40)
    log["transfer"][0]["disposition"] = "busy"  # the two sources disagree: the webhook stands
    run = Run().feed(webhook_records(hooks)).feed(log_records(log)).settle()
    assert run.record.attempts[0].result == "noanswer"
    reverse = Run().feed(log_records(log)).feed(webhook_records(hooks)).settle()
    assert content(reverse.record) == content(run.record)


def test_timeout_closed_call_gets_a_revision_with_the_truth() -> None:
    hooks, log = described("u4", ROUND_ROBIN, 90)
    lost = [h for h in hooks if h["event"] in ("IN", "TA")]  # every TE and the hang-up lost
    run = Run().feed(webhook_records(lost)).settle()
    first = run.record
    assert first.close_reason == "timeout" and first.outcome == "missed" and run.raised == 1
    run.feed(log_records(log), now=NOW + 5000)
    revisions = [c.revision for c in run.completed]
    assert revisions == list(range(1, len(revisions) + 1)) and len(revisions) > 1  # revised, numbered in turn
    final = run.record
    assert final.close_reason == "hangup" and final.outcome == "answered" and final.answered_by == "A3"
    assert content(final) == content(Run().feed(log_records(log)).settle().record)
    assert run.raised == 1  # the alert already raised stays decided (its resolution is another step)


def test_whole_call_lost_then_healed_raises_its_alert() -> None:
    _, log = described("u5", [("A1", "noanswer", 10, 15), ("A2", "noanswer", 26, 15)], 45)
    run = Run().feed(log_records(log)).settle()
    assert run.record.outcome == "missed" and run.record.close_reason == "hangup"
    assert run.raised == 1 and run.missed[-1].alert and run.missed[-1].missed_reason == "no_answer"


def test_healed_flag_marks_only_facts_the_webhooks_missed() -> None:
    from processors.core.lifecycle import apply

    hooks, log = described("u6", [("A1", "noanswer", 10, 15)], 40)
    web = webhook_records(hooks)
    state = None
    for e in web[:-1]:  # the hang-up is lost
        state = apply(state, e, NOW, CFG).state
    healed = []
    for e in log_records(log):
        r = apply(state, e, NOW, CFG)
        state = r.state
        healed.append((e["event"], r.healed))
    assert healed == [("IN", False), ("TA", False), ("TE", False), ("H", True)]


# ---- the property: any loss, any order, any repeat -> the same final record ----------------------

@st.composite
def described_calls(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    attempts = []
    t = draw(st.integers(3, 20))
    for _ in range(draw(st.integers(0, 3))):
        result = draw(st.sampled_from(["answered", "noanswer", "busy", "congestion", "caller_hangup"]))
        ring = draw(st.integers(0, 15))
        attempts.append((draw(st.sampled_from(["A1", "A2"])), result, t, ring))
        t += ring + (60 if result == "answered" else 1)
        if result in ("answered", "caller_hangup"):
            break
    return described("p", attempts, t + 1, names=draw(st.booleans()))


@settings(max_examples=300, deadline=None)
@given(call=described_calls(), data=st.data())
def test_any_loss_order_and_repeat_of_webhooks_and_log_give_one_record(
        call: tuple[list[dict[str, Any]], dict[str, Any]], data: st.DataObject) -> None:
    hooks, log = call
    web, from_log = webhook_records(hooks), log_records(log)
    reference = Run().feed(web).feed(from_log).settle().record
    kept = [e for e in web if data.draw(st.booleans())]
    polls = data.draw(st.integers(1, 2))
    stream = data.draw(st.permutations(kept + from_log * polls))
    run = Run()
    # the call may be closed by timeout between arrivals: tick far ahead at a random point
    cut = data.draw(st.integers(0, len(stream)))
    run.feed(stream[:cut])
    if data.draw(st.booleans()):
        run.settle(NOW + 100_000)
    run.feed(stream[cut:], now=NOW + 200_000).settle(NOW + 200_000)
    lost_tcs = {e["attemptid"] for e in web if e["event"] == "TC" and e not in kept}
    expected = reference
    if lost_tcs:  # a lost connect time cannot be healed: the record says what the log says
        expected = Run().feed([e for e in web if e["event"] != "TC" or e in kept]).feed(from_log).settle().record
    assert content(run.record) == content(expected)
    assert run.record.duplicates == 0
    assert [c.revision for c in run.completed] == list(range(1, len(run.completed) + 1))
    assert run.raised <= 1

