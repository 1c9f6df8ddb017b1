"""The call lifecycle core, without any broker."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, replace
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.core.call_state import CallState
from processors.core.lifecycle import (
    MAX_FACT_BYTES,
    Applied,
    CallTooLarge,
    LifecycleConfig,
    OtherAppsCall,
    apply,
    next_due,
    settle,
    tick,
)
from schemas.records import AnsweredCallFact, CompletedCall, MissedCallFact
from schemas.timefmt import format_ts
from schemas.webhook import MAX_FIELD_CHARS
from tests.unit.callgen import APP, T0, attempt, ev

CFG = LifecycleConfig(hangup_grace_s=10, idle_timeout_s=600, connected_idle_timeout_s=7200, retention_s=86400,
                      short_abandon_s=5)
NOW = 2_000_000_000.0  # processing wall clock, unrelated to event times on purpose


def roundtrip(state: CallState) -> CallState:
    return CallState.from_json(orjson.loads(orjson.dumps(state.to_json())))


class Run:
    """Feeds events and clock ticks to one call, collecting what it emits."""

    def __init__(self) -> None:
        self.state: CallState | None = None
        self.completed: list[CompletedCall] = []
        self.missed: list[MissedCallFact] = []
        self.answered: list[AnsweredCallFact] = []
        self.raised = 0  # times the call became alerted (an alert-worthy missed fact went out)
        self.duplicates = 0
        self.late = 0

    def _take(self, r: Applied, was_alerted: bool) -> None:
        self.raised += r.state is not None and r.state.alert == "sent" and not was_alerted
        self.state = r.state
        if r.emission.completed:
            self.completed.append(r.emission.completed)
        for f in r.emission.facts:
            if isinstance(f, MissedCallFact):
                self.missed.append(f)
            else:
                self.answered.append(f)
        self.duplicates += r.duplicate
        self.late += r.late

    def _alerted(self) -> bool:
        return self.state is not None and self.state.alert == "sent"

    def feed(self, events: list[dict[str, Any]], now: float = NOW) -> Run:
        for e in events:
            # state goes through its JSON form each time, as it does through the table
            state = None if self.state is None else roundtrip(self.state)
            was = self._alerted()
            self._take(apply(state, e, now, CFG), was)
        return self

    def batch(self, events: list[dict[str, Any]], now: float = NOW) -> Run:
        """The events in one batch, as the calls pipeline applies them: a closed call's revision
        is settled at the batch's end."""
        state = None if self.state is None else roundtrip(self.state)
        for e in events:
            was = self._alerted()
            self._take(apply(state, e, now, CFG, settle_later=True), was)
            state = self.state
        if state is not None:
            was = self._alerted()
            self._take(settle(state, now, CFG), was)
            assert self.state is not None and not self.state.revise
        return self

    def at(self, now: float) -> Run:
        if self.state is not None:
            was = self._alerted()
            self._take(tick(self.state, now, CFG), was)
        return self

    def settle(self, now: float = NOW) -> Run:
        """Tick at every due time until the call is closed and its alert decided."""
        for _ in range(5):
            if self.state is None or (self.state.closed and self.state.alert != "pending"):
                break
            self.at(max(now, next_due(self.state, CFG)))
        return self

    @property
    def record(self) -> CompletedCall:
        return self.completed[-1]


def answered_call(uid: str = "c1") -> list[dict[str, Any]]:
    return [
        ev("IN", uid, T0),
        *attempt(uid, 1, "A1", T0 + 5, "answered", ring=4, talk=60),
        ev("H", uid, None, duration=70, received=T0 + 70.5),
    ]


def test_answered_first_time_closes_at_once_on_hangup() -> None:
    run = Run().feed(answered_call())
    assert len(run.completed) == 1 and run.missed == []
    r = run.record
    assert r.outcome == "answered" and r.missed_reason is None and r.answered_by == "A1"
    assert r.started_at == format_ts(T0) and r.ended_at == format_ts(T0 + 70)  # H placed by IN + duration
    assert (r.wait_s, r.talk_s, r.duration) == (9.0, 61.0, 70.0)
    assert r.close_reason == "hangup" and r.revision == 1 and r.duplicates == 0
    (a,) = r.attempts
    assert (a.result, a.started_at, a.connected_at, a.ring_s) == ("answered", format_ts(T0 + 5), format_ts(T0 + 9), 4)
    assert a.ended_at == format_ts(T0 + 5 + 64)  # TE placed by TA + duration
    assert run.state is not None and run.state.alert == "none"


def test_round_robin_with_misses_before_an_answer() -> None:
    uid = "rr"
    events = [
        ev("IN", uid, T0),
        *attempt(uid, 1, "A1", T0 + 2, "noanswer", ring=15),
        *attempt(uid, 2, "A2", T0 + 18, "busy", ring=0.5),
        *attempt(uid, 3, "A3", T0 + 20, "congestion", ring=0.2),
        *attempt(uid, 4, "A1", T0 + 22, "answered", ring=3, talk=30),
        ev("H", uid, None, duration=60),
    ]
    r = Run().feed(events).record
    assert r.outcome == "answered" and r.answered_by == "A1"
    assert [a.result for a in r.attempts] == ["noanswer", "busy", "congestion", "answered"]
    assert [a.attemptid for a in r.attempts] == ["rr.1", "rr.2", "rr.3", "rr.4"]
    assert r.wait_s == 25.0 and r.talk_s == 35.0


@pytest.mark.parametrize("result", ["noanswer", "busy", "congestion"])
def test_missed_after_unanswered_attempts_alerts_after_the_grace(result: str) -> None:
    uid = "m"
    events = [ev("IN", uid, T0), *attempt(uid, 1, "A1", T0 + 3, result, ring=10), ev("H", uid, None, duration=20)]
    run = Run().feed(events)
    assert len(run.completed) == 1 and run.missed == []  # record at once, alert waits for the grace
    r = run.record
    assert (r.outcome, r.missed_reason, r.answered_by, r.wait_s) == ("missed", "no_answer", None, 20.0)
    run.at(NOW + CFG.hangup_grace_s - 0.1)
    assert run.missed == []
    run.at(NOW + CFG.hangup_grace_s)
    (m,) = run.missed
    assert (m.missed_reason, m.attempts, m.agents_tried, m.alert, m.wait_s) == ("no_answer", 1, ["A1"], True, 20.0)
    assert m.at == r.ended_at and m.cli == "9800000001"
    run.at(NOW + 3600)
    assert len(run.missed) == 1  # decided once


def test_abandoned_in_ivr_and_short_abandon() -> None:
    long_wait = Run().feed([ev("IN", "a", T0), ev("H", "a", None, duration=30)]).settle()
    assert long_wait.record.missed_reason == "abandoned_in_ivr" and long_wait.record.attempts == []
    assert [m.alert for m in long_wait.missed] == [True]
    short = Run().feed([ev("IN", "s", T0), ev("H", "s", None, duration=2)]).settle()
    assert short.record.outcome == "missed" and short.record.wait_s == 2.0
    assert [m.alert for m in short.missed] == [False]  # counted as missed, but no alert


def test_caller_hung_up_while_it_rang() -> None:
    uid = "ch"
    run = Run().feed([ev("IN", uid, T0), ev("TA", uid, T0 + 5, attempt="ch.1", to="A1"), ev("H", uid, T0 + 12)])
    assert run.completed == []  # an attempt is still ringing: wait for its TE
    run.at(NOW + CFG.hangup_grace_s)
    r = run.record
    (a,) = r.attempts
    assert a.result == "caller_hangup" and a.ended_at == format_ts(T0 + 12) and a.ring_s == 7
    assert r.missed_reason == "no_answer" and r.close_reason == "hangup"
    assert [m.alert for m in run.missed] == [True]


def test_te_within_grace_closes_without_waiting() -> None:
    uid = "g"
    run = Run().feed([ev("IN", uid, T0), ev("TA", uid, T0 + 1, attempt="g.1", to="A1"), ev("H", uid, T0 + 9)])
    run.feed([ev("TE", uid, None, attempt="g.1", to="A1", result="noanswer", duration=8)], now=NOW + 1)
    assert len(run.completed) == 1 and run.record.attempts[0].result == "noanswer"


def test_no_hangup_closes_by_idle_timeout() -> None:
    uid = "t"
    run = Run().feed([ev("IN", uid, T0), *attempt(uid, 1, "A1", T0 + 2, "noanswer", ring=20)])
    run.at(NOW + CFG.idle_timeout_s - 1)
    assert run.completed == []
    run.at(NOW + CFG.idle_timeout_s)
    r = run.record
    assert r.close_reason == "timeout" and r.outcome == "missed" and r.ended_at == format_ts(T0 + 22)
    assert len(run.missed) == 1  # a timeout close has no grace to wait for


def test_timeout_end_is_placed_by_durations_not_receive_time() -> None:
    uid = "tr"
    late_te = ev("TE", uid, None, attempt="tr.1", to="A1", result="noanswer", duration=15, received=T0 + 900)
    run = Run().feed([ev("IN", uid, T0), ev("TA", uid, T0 + 5, attempt="tr.1", to="A1"), late_te])
    run.at(NOW + CFG.idle_timeout_s)
    assert run.record.ended_at == format_ts(T0 + 20) and run.record.attempts[0].ended_at == format_ts(T0 + 20)


def test_connected_call_without_hangup_waits_the_longer_timeout() -> None:
    uid = "ct"
    run = Run().feed([ev("IN", uid, T0), ev("TA", uid, T0 + 1, attempt="ct.1", to="A1"),
                      ev("TC", uid, T0 + 3, attempt="ct.1", to="A1")])
    run.at(NOW + CFG.idle_timeout_s + 1)
    assert run.completed == []
    run.at(NOW + CFG.connected_idle_timeout_s)
    assert run.record.outcome == "answered" and run.record.close_reason == "timeout"
    assert run.record.attempts[0].result == "answered"


def test_answered_call_whose_conversation_ended_waits_only_the_short_timeout() -> None:
    uid = "ce"
    run = Run().feed([ev("IN", uid, T0), *attempt(uid, 1, "A1", T0 + 1, "answered", ring=2, talk=50)])
    run.at(NOW + CFG.idle_timeout_s)  # the TE ended the conversation; only the H is missing
    assert run.record.outcome == "answered" and run.record.close_reason == "timeout"
    assert run.record.ended_at == format_ts(T0 + 53) and run.record.talk_s == 50


def test_duplicates_are_absorbed_and_counted() -> None:
    events = answered_call()
    run = Run().feed([events[0], events[0], *events[1:3], events[1]])
    assert run.duplicates == 2
    run.feed(events[3:])
    assert run.record.duplicates == 2 and len(run.completed) == 1
    run.feed([events[-1], events[2]])  # duplicates after close: nothing emitted
    assert len(run.completed) == 1 and run.duplicates == 4


def test_reversed_delivery_gives_the_same_record() -> None:
    events = answered_call()
    ordered = Run().feed(events).settle().record
    reverse = Run().feed(list(reversed(events))).settle()
    assert _content(reverse.record) == _content(ordered)


def test_late_event_after_close_makes_a_revision_not_an_alert() -> None:
    uid = "late"
    run = Run().feed([ev("IN", uid, T0), ev("H", uid, None, duration=40)]).settle()
    assert run.record.missed_reason == "abandoned_in_ivr" and len(run.missed) == 1
    run.feed([*attempt(uid, 1, "A1", T0 + 5, "noanswer", ring=10)], now=NOW + 600)
    assert run.late == 2
    # the late TA adds an attempt (ringing when the call ended: caller_hangup); its TE makes it noanswer
    assert [c.revision for c in run.completed] == [1, 2, 3]
    assert run.completed[1].attempts[0].result == "caller_hangup"
    assert run.record.missed_reason == "no_answer" and run.record.attempts[0].result == "noanswer"
    # each revision refreshes the callers agent's copy of the missed call; the alert was raised once
    assert run.raised == 1 and [m.alert for m in run.missed] == [True, True, True]
    assert run.missed[-1].missed_reason == "no_answer"


def test_revision_only_when_content_changes() -> None:
    events = answered_call()
    run = Run().feed(events)
    # a TE for the answered attempt that says nothing new (same end as before)
    same = dict(events[3], id="other-delivery")
    run.feed([same], now=NOW + 5)
    assert len(run.completed) == 1


def test_answer_arriving_within_grace_cancels_the_alert() -> None:
    uid = "x"
    run = Run().feed([ev("IN", uid, T0), *attempt(uid, 1, "A1", T0 + 1, "noanswer", ring=5),
                      ev("H", uid, None, duration=90)])
    assert run.record.outcome == "missed"
    run.feed(attempt(uid, 2, "A2", T0 + 7, "answered", ring=2, talk=60), now=NOW + 3)
    run.settle(NOW + 3)
    assert run.record.outcome == "answered" and run.record.revision >= 2
    assert run.missed == []


def test_closed_call_is_forgotten_after_retention() -> None:
    run = Run().feed(answered_call())
    assert run.state is not None
    assert next_due(run.state, CFG) == NOW + CFG.retention_s
    run.at(NOW + CFG.retention_s)
    assert run.state is None


def test_state_round_trips_through_json() -> None:
    run = Run().feed(answered_call()[:3])
    assert run.state is not None
    again = CallState.from_json(orjson.loads(orjson.dumps(run.state.to_json())))
    assert again == run.state


def test_withheld_cli_and_missing_in() -> None:
    uid = "w"
    events = [ev("TA", uid, T0 + 5, attempt="w.1", to="A1", cli=""),
              ev("TE", uid, None, attempt="w.1", to="A1", result="noanswer", duration=10, cli="", received=T0 + 15),
              ev("H", uid, T0 + 20, cli="")]
    run = Run().feed(events).settle()
    r = run.record
    assert r.cli == "" and r.started_at == format_ts(T0 + 5)  # no IN: the earliest event starts the call
    assert r.close_reason == "hangup" and run.missed[0].cli == ""


def test_receive_time_stands_in_when_there_is_no_anchor() -> None:
    uid = "r"
    run = Run().feed([ev("H", uid, None, duration=None, received=T0 + 50), ev("IN", uid, T0)]).settle()
    assert run.record.ended_at == format_ts(T0 + 50)


# ---- the property: order and duplication do not matter --------------------------------------

def _content(r: CompletedCall) -> dict[str, Any]:
    d = asdict(r)
    for k in ("revision", "duplicates", "closed_at"):
        d.pop(k)
    return d


results = st.sampled_from(["answered", "noanswer", "busy", "congestion", "caller_hangup"])


@st.composite
def calls(draw: st.DrawFn) -> list[dict[str, Any]]:
    uid = "p"
    n = draw(st.integers(0, 4))
    t = T0 + draw(st.floats(0, 30))
    events = [ev("IN", uid, T0)]
    answered = False
    for i in range(n):
        result = draw(results)
        if answered:
            result = draw(st.sampled_from(["noanswer", "busy"]))
        ring = draw(st.floats(0, 20)).__round__(3)
        talk = draw(st.floats(0, 300)).__round__(3) if result == "answered" else 0.0
        events += attempt(uid, i + 1, draw(st.sampled_from(["A1", "A2", "A3"])), t, result, ring, talk,
                          with_tc=draw(st.booleans()))
        t += ring + talk + 1
        answered |= result == "answered"
    if draw(st.booleans()):
        events.append(ev("H", uid, None, duration=round(t - T0, 3), received=t))
    return events


@settings(max_examples=400, deadline=None)
@given(events=calls(), data=st.data())
def test_any_order_and_duplication_give_the_same_record_and_alert(events: list[dict[str, Any]],
                                                                    data: st.DataObject) -> None:
    ordered = Run().feed(events).settle()
    shuffled = data.draw(st.permutations(events))
    dupes = data.draw(st.lists(st.sampled_from(events), max_size=6))
    stream = list(shuffled)
    for d in dupes:
        stream.insert(data.draw(st.integers(0, len(stream))), d)
    messy = Run().feed(stream).settle()
    assert _content(messy.record) == _content(ordered.record)
    assert messy.missed == ordered.missed
    assert messy.duplicates == len(dupes)
    assert [c.revision for c in messy.completed] == list(range(1, len(messy.completed) + 1))
    assert ordered.record.app == APP


# ---- alerts converge: raised at the first alert-worthy revision, resolved when answered --------

def test_timeout_closed_missed_call_always_alerts_and_says_its_wait_is_a_lower_bound() -> None:
    from processors.core.call_metrics import app_contribution

    uid = "to"
    run = Run().feed([ev("IN", uid, T0), *attempt(uid, 1, "A1", T0 + 0.5, "noanswer", ring=0.5)])
    run.at(NOW + CFG.idle_timeout_s)
    r = run.record
    assert (r.close_reason, r.outcome, r.wait_s, r.wait_is_lower_bound) == ("timeout", "missed", 1.0, True)
    (m,) = run.missed
    assert m.alert and m.wait_is_lower_bound and m.wait_s == 1.0  # under SHORT_ABANDON_S, yet alerted
    assert app_contribution(r, short_abandon_s=5, service_level_s=20).values["short_abandon"] is False
    short = Run().feed([ev("IN", "s", T0), ev("H", "s", None, duration=2)]).settle().record
    assert short.wait_is_lower_bound is False
    assert app_contribution(short, short_abandon_s=5, service_level_s=20).values["short_abandon"] is True


def test_wait_is_a_lower_bound_without_in_or_without_tc() -> None:
    no_tc = Run().feed([ev("IN", "n", T0), *attempt("n", 1, "A1", T0 + 2, "answered", ring=3, talk=9,
                                                     with_tc=False), ev("H", "n", None, duration=20)]).settle().record
    assert no_tc.outcome == "answered" and no_tc.wait_is_lower_bound
    assert Run().feed(answered_call()).record.wait_is_lower_bound is False


def test_alert_raised_at_the_first_alert_worthy_revision() -> None:
    uid = "rv"
    # the H arrives, its IN is delayed (an outage): closed after the grace with no known wait
    run = Run().feed([ev("H", uid, T0 + 40)]).settle()
    assert run.record.outcome == "missed" and run.record.wait_s == 0
    (counted,) = run.missed
    assert counted.alert is False  # a short abandon as far as we know: counted, no alert
    run.feed([ev("IN", uid, T0)], now=NOW + 60).settle(NOW + 60)
    assert run.record.revision == 2 and run.record.wait_s == 40
    assert [m.alert for m in run.missed] == [False, True]  # raised with this revision
    run.feed([ev("TA", uid, T0 + 5, attempt="rv.1", to="A1")], now=NOW + 120).settle(NOW + 120)
    assert run.record.revision == 3 and run.raised == 1  # never twice
    assert [m.alert for m in run.missed] == [False, True, True]  # the last one refreshes the copy


def test_alerted_call_revised_answered_sends_its_answer_to_the_alerted_caller() -> None:
    uid = "ra"
    run = Run().feed([ev("IN", uid, T0), *attempt(uid, 1, "A1", T0 + 1, "noanswer", ring=5),
                      ev("H", uid, None, duration=60)]).settle()
    assert [m.alert for m in run.missed] == [True] and run.answered == []
    late = attempt(uid, 2, "A2", T0 + 7, "answered", ring=2, talk=40)
    run.feed(late, now=NOW + 300)
    assert run.record.outcome == "answered"
    assert {(a.uniqueid, a.cli, a.how, a.started_at) for a in run.answered} == {
        (uid, "9800000001", "revised_answered", format_ts(T0))}
    assert run.raised == 1  # no second alert (the late TA alone made a missed revision: a refresh)
    from_log = Run().feed([ev("IN", "cl", T0), ev("H", "cl", None, duration=30)]).settle()
    from_log.feed([dict(ev("TA", "cl", T0 + 2, attempt="cl.1", to="A1"), origin="call_log"),
                   dict(ev("TE", "cl", None, attempt="cl.1", to="A1", result="answered", duration=20),
                        origin="call_log")], now=NOW + 400)
    assert from_log.answered[-1].how == "call_log_answered"


def test_answered_calls_tell_the_callers_agent_unless_withheld() -> None:
    run = Run().feed(answered_call())
    assert [(a.uniqueid, a.cli, a.started_at) for a in run.answered] == [("c1", "9800000001", format_ts(T0))]
    withheld = [dict(e, cli="") for e in answered_call("w")]
    assert Run().feed(withheld).answered == []
    # an alerted withheld call revised answered still reports, to resolve its own alert
    run = Run().feed([ev("IN", "wa", T0, cli=""), ev("H", "wa", None, duration=30, cli="")]).settle()
    run.feed(attempt("wa", 1, "A1", T0 + 2, "answered", ring=2, talk=10), now=NOW + 100)
    # (its late events carry a number: the answer also goes to that caller, who may have alerts open)
    # (every answered revision reports: the callers agent keeps one answer per call)
    assert {(a.uniqueid, a.cli) for a in run.answered} == {("wa", ""), ("wa", "9800000001")}


BIG = LifecycleConfig(hangup_grace_s=10, idle_timeout_s=600, connected_idle_timeout_s=7200, retention_s=86400,
                      short_abandon_s=5, max_state_bytes=40_000)


def size(state: CallState) -> int:
    return len(orjson.dumps(state.to_json()))


def ringing(uid: str, attempts: int, cfg: LifecycleConfig = BIG) -> tuple[CallState, list[str]]:
    """A call that rang agents `attempts` times (unanswered): its state, and the refusals."""
    state = apply(None, ev("IN", uid, T0), NOW, cfg).state
    refused: list[str] = []
    for n in range(attempts):
        for e in attempt(uid, n, "9000000001", T0 + 1 + n, "noanswer", 2):
            try:
                state = apply(state, e, NOW, cfg).state
            except CallTooLarge as error:
                refused.append(f"{e['event']} {e['attemptid']}: {error}")
    assert state is not None
    return state, refused


NAMES = {"agent_name": "Priya_Venkataraman_Iyer", "group": "Customer_Care_Tier_2_North"}


def named(state: CallState, uid: str, kinds: tuple[str, ...]) -> tuple[CallState, int]:
    """The call log's reports of the attempts the call holds, in their order, each with its agent's
    name and group: the state, and how many were refused."""
    refused = 0
    for a in sorted({k.split("|")[1] for k in state.facts if "|" in k}, key=lambda a: int(a.split(".")[1])):
        for kind in kinds:
            e = ev(kind, uid, T0, attempt=a, to="9000000001", result="noanswer" if kind == "TE" else None,
                   duration=2 if kind == "TE" else None)
            e.update(origin="call_log", **NAMES)
            try:
                state = apply(state, e, NOW, BIG).state or state
            except CallTooLarge:
                refused += 1
    return state, refused


def test_a_large_call_refuses_new_attempts_past_three_quarters_of_its_bound() -> None:
    """A call that rings agents for hours can gather thousands of attempts: past `max_state_bytes`
    its state and record could not be written to Kafka (and the worker would fail the same batch
    on every restart). Past three quarters, the first event of a new attempt is refused (the
    worker dead-letters it); the IN, the H and the events of attempts already held are taken, and
    the call closes."""
    state, refused = ringing("big", 400)
    taken = {k.split("|")[1] for k in state.facts if "|" in k}
    assert 100 < len(taken) < 400 and len(refused) == 2 * (400 - len(taken))
    assert all(f"TA|{a}" in state.facts and f"TE|{a}" in state.facts for a in taken)  # no attempt half-taken
    assert "new attempts stop at 30000" in refused[0] and "this TA is not taken" in refused[0]
    assert 30_000 - 500 < size(state) <= 30_000  # within one attempt of three quarters
    # an attempt it holds still gets its late events (a TC), and the hang-up closes the call
    held = sorted(taken)[0]
    answered = apply(roundtrip(state), ev("TC", "big", T0 + 2, attempt=held, to="9000000001"), NOW, BIG).state
    assert answered is not None and f"TC|{held}" in answered.facts
    closed = apply(answered, ev("H", "big", T0 + 500), NOW, BIG)
    assert closed.emission.completed is not None
    assert len(closed.emission.completed.attempts) == len(taken)
    assert len(orjson.dumps(closed.emission.completed)) < 40_000  # its record fits as well
    # a late TE of a new attempt, after the close: refused too (the record would grow)
    with pytest.raises(CallTooLarge):
        apply(closed.state, ev("TE", "big", T0 + 499, attempt="big.999", to="9000000001", result="busy",
                               duration=1), NOW, BIG)


def test_an_answer_past_three_quarters_is_taken_so_an_answered_call_is_not_missed() -> None:
    """The attempt an agent answers may come after the call stopped taking new attempts: its TA is
    refused, but its TC and its answered TE are taken, so the call is answered and nobody is asked
    to call back."""
    state, _ = ringing("ans", 400)
    refused = 0
    for e in attempt("ans", 500, "9000000002", T0 + 600, "answered", ring=3, talk=60):
        try:
            state = apply(roundtrip(state), e, NOW, BIG).state or state
        except CallTooLarge:
            refused += 1
    assert refused == 1 and "TA|ans.500" not in state.facts and "TC|ans.500" in state.facts
    run = Run()
    run.state = state
    run.feed([ev("H", "ans", T0 + 700)]).settle()
    assert run.record.outcome == "answered" and run.missed == [] and run.raised == 0


def test_a_call_full_to_its_bound_still_takes_its_hang_up_and_closes() -> None:
    """The TAs first (new attempts stop at three quarters), then their TEs fill the next eighth:
    past it a held attempt's TE is refused too, but the H is taken and the call closes (at the
    grace: the attempts left without a TE end then)."""
    state = apply(None, ev("IN", "full", T0), NOW, BIG).state
    attempts = [attempt("full", n, "9000000001", T0 + 1 + n, "noanswer", 2) for n in range(400)]
    refused = {"TA": 0, "TE": 0}
    for e in [a[0] for a in attempts] + [a[1] for a in attempts]:
        try:
            state = apply(state, e, NOW, BIG).state
        except CallTooLarge:
            refused[e["event"]] += 1
    assert state is not None and refused["TA"] > 0 and refused["TE"] > refused["TA"]  # some held TEs too
    assert 35_000 - 200 < size(state) <= 35_000
    hung_up = apply(roundtrip(state), ev("H", "full", T0 + 900, cli="9" * 200), NOW, BIG)  # more than the room left
    assert hung_up.state is not None and "H" in hung_up.state.facts and hung_up.emission.completed is None
    closed = tick(hung_up.state, next_due(hung_up.state, BIG), BIG).emission.completed
    assert closed is not None and closed.close_reason == "hangup" and closed.outcome != "answered"


def test_the_last_eighth_is_kept_for_the_answer_whatever_filled_the_rest() -> None:
    """The call log reports a call's attempts in order, the answered one last, each with its
    agent's name and group: those merges grow every held attempt. When the webhooks of the answer
    were lost, the call log's answer comes after all of them; it still finds room."""
    state, refused = named(ringing("log", 400)[0], "log", ("TA", "TE"))
    assert refused > 0 and 35_000 - 200 < size(state) <= 35_000  # the names filled their share
    answer = attempt("log", 999, "9000000002", T0 + 800, "answered", ring=3, talk=60)
    for e in answer:
        e.update(origin="call_log", **NAMES)
        try:
            state = apply(state, e, NOW, BIG).state or state
        except CallTooLarge:
            assert e["event"] == "TA"  # a new attempt: past three quarters
    assert "TC|log.999" in state.facts and "TE|log.999" in state.facts
    run = Run()
    run.state = state
    run.feed([ev("H", "log", T0 + 900)]).settle()
    assert run.record.outcome == "answered" and run.missed == [] and run.raised == 0


def test_a_refusal_changes_nothing() -> None:
    """Not the facts, the duplicates counted, the last activity (the idle deadline) or the size."""
    state, _ = named(ringing("same", 400)[0], "same", ("TA",))  # the call log's names: up to 7/8
    full = size(state)
    before = orjson.dumps(state.to_json())
    later = NOW + 300
    new_attempt = ev("TA", "same", T0 + 900, attempt="same.new", to="9000000001")
    # a repeated webhook of a held TA, received earlier (so it would replace the fact), its fields longer
    repeat = ev("TA", "same", T0 + 1, attempt="same.0", to="9" * 200, received=T0 - 5)
    for e in (new_attempt, repeat):
        with pytest.raises(CallTooLarge):
            apply(state, e, later, BIG)
        assert orjson.dumps(state.to_json()) == before and state.size == full


def test_the_size_kept_is_the_size_measured() -> None:
    """Kept in memory across many events and merges (no reload between them), the size the bound
    reads is the state's JSON size, byte for byte (the call open: no bookkeeping changed)."""
    state = apply(None, ev("IN", "kept", T0), NOW, BIG).state
    assert state is not None
    for n in range(400):
        for e in attempt("kept", n, "9000000001", T0 + 1 + n, "noanswer", 2):
            copies = [e, {**e, "origin": "call_log", "agent_name": "Asha", "group": "Sales"}] if n % 3 else [e]
            for copy in copies:  # the call log's copy: names added to the fact
                with contextlib.suppress(CallTooLarge):
                    state = apply(state, copy, NOW, BIG).state or state
    assert state.size is not None and state.size == size(state)


# field values: the longest the ingress takes (in characters of 1 and 4 bytes) often, any text else
LONG = st.sampled_from(["", "9000000001", "x" * MAX_FIELD_CHARS, "\U0001F600" * MAX_FIELD_CHARS]) | st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=MAX_FIELD_CHARS)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["TA", "TC", "TE", "log", "IN", "H"]), st.integers(0, 80), LONG),
                min_size=150, max_size=300))
def test_no_event_takes_a_call_past_its_bound(steps: list[tuple[str, int, str]]) -> None:
    """Whatever arrives (new attempts, late events of held ones, answers, the call log's agent
    names and groups, with the longest fields the ingress takes), a call's state stays within
    `max_state_bytes` (give or take its bookkeeping: times, counters, an alert's number; and its IN
    and H, always taken), and a refused event changes nothing. The state goes through its JSON
    between events, as it does through the table, so its size is measured again after each load."""
    cfg = replace(BIG, max_state_bytes=20_000)
    state: CallState | None = None
    for kind, n, text in steps:
        aid = f"a{n}"
        if kind == "log":  # the call log's report of a TE: adds the agent's name and group
            e = ev("TE", "p", T0 + n, attempt=aid, to=text, result="noanswer", duration=1)
            e.update(origin="call_log", agent_name=text, group=text)
        elif kind in ("IN", "H"):
            e = ev(kind, "p", T0 + n, cli=text)
        else:
            e = ev(kind, "p", T0 + n, attempt=aid, to=text, cli=text,
                   result=None if kind != "TE" else "answered" if n % 3 == 0 else "busy",
                   duration=None if kind != "TE" else 1.5)
        before = None if state is None else orjson.dumps(state.to_json())
        try:
            state = apply(None if state is None else roundtrip(state), e, NOW, cfg).state
        except CallTooLarge:
            assert state is not None and orjson.dumps(state.to_json()) == before
        assert state is not None
        ends = sum(len(orjson.dumps({k: state.facts[k].to_json()})) for k in ("IN", "H") if k in state.facts)
        assert size(state) - ends <= cfg.max_state_bytes + 1_500


def test_no_fact_is_larger_than_the_size_below_which_calls_are_not_measured() -> None:
    """A call is measured from three quarters of `max_state_bytes // MAX_FACT_BYTES` facts: no fact
    may be larger, or a call of long fields could outgrow the limit unmeasured. The longest fields
    the ingress takes, in characters of four UTF-8 bytes, from a webhook and then from the call log."""
    long = "\U0001F600" * MAX_FIELD_CHARS
    state = None
    for e in [ev("IN", "long", T0, cli=long), ev("TA", "long", T0 + 1, attempt=long, to=long, cli=long)]:
        state = apply(state, e, NOW, CFG).state
    assert state is not None
    fact = state.facts[f"TA|{long}"]
    fact.result, fact.agent_name, fact.group, fact.duration = "noanswer", long, long, 1e300
    one = len(orjson.dumps({f"TA|{long}": fact.to_json()}))
    assert MAX_FIELD_CHARS * 4 * 5 < one <= MAX_FACT_BYTES  # the key and four strings


def test_a_tc_arriving_after_its_answered_te_and_the_h_makes_no_second_revision() -> None:
    """TE `answered` and H before the TC (sent before both): the call waits for it, within the
    hang-up grace, and its one record is the one the events in order give."""
    uid = "late-tc"
    in_order = answered_call(uid)
    tc = next(e for e in in_order if e["event"] == "TC")
    run = Run().feed([e for e in in_order if e is not tc])
    assert run.completed == []  # not closed on the H: the answered attempt's TC is still to come
    run.feed([tc]).settle()
    ordered = Run().feed(in_order)
    assert [r.revision for r in run.completed] == [1]
    assert _content(run.record) == _content(ordered.record)
    assert run.record.attempts[0].connected_at is not None and run.record.wait_is_lower_bound is False


def test_an_answered_call_whose_tc_never_comes_closes_after_the_grace() -> None:
    uid = "lost-tc"
    events = [e for e in answered_call(uid) if e["event"] != "TC"]
    run = Run().feed(events)
    assert run.completed == []
    run.at(NOW + CFG.hangup_grace_s)
    (r,) = run.completed
    assert (r.outcome, r.close_reason, r.wait_is_lower_bound) == ("answered", "hangup", True)


@pytest.mark.parametrize("origins", [("call_log", "call_log"), ("call_log", None), (None, "call_log"), (None, None)])
def test_a_batch_of_late_events_makes_one_revision_as_they_would_have_ended(origins: tuple[str | None, ...]) -> None:
    """An alerted call's late TA and answered TE in one batch: one revision, answered, and one
    resolution of its alert (`call_log_answered` when the answer, its TE here, came from the call
    log), not a missed revision first. The revision and the resolution are the last of those the
    events would have made one by one."""
    uid = "lb"

    def alerted() -> Run:
        return Run().feed([ev("IN", uid, T0), *attempt(uid, 1, "A1", T0 + 1, "noanswer", ring=5),
                           ev("H", uid, None, duration=60)]).settle()

    late = [{**e, "origin": o} if o else e for e, o in
            zip(attempt(uid, 2, "A2", T0 + 7, "answered", ring=2, talk=40, with_tc=False), origins, strict=True)]
    batched, one_by_one = alerted().batch(late, NOW + 300), alerted().feed(late, NOW + 300)
    assert [r.revision for r in batched.completed] == [1, 2]
    assert [r.revision for r in one_by_one.completed] == [1, 2, 3]
    assert replace(batched.record, revision=3) == one_by_one.record
    assert batched.record.outcome == "answered" and len(batched.missed) == 1  # no refresh before the answer
    how = "call_log_answered" if origins[1] == "call_log" else "revised_answered"
    assert [(a.cli, a.how) for a in batched.answered] == [("9800000001", how)]
    assert [(a.cli, a.how) for a in one_by_one.answered] == [("9800000001", how)]
    assert batched.batch(late, NOW + 400).completed[-1].revision == 2  # the same again: nothing


def test_the_call_logs_latest_read_of_an_agents_name_wins() -> None:
    """The call log renamed the agent between two reads. On the call log's own fact: the later
    read's name and group, in either order of arrival (a report's `received_at` is when the
    reconciler read it). On a webhook's fact, which keeps the webhook's receipt: the read that came
    last (the reconciler writes its reads in order). A webhook's repeat after them changes neither."""
    uid = "rn"
    webhooks = [ev("IN", uid, T0), *attempt(uid, 1, "A1", T0 + 1, "answered", ring=2, talk=30),
                ev("H", uid, None, duration=40)]
    te = webhooks[-2]

    def read(name: str, group: str | None, at: float) -> dict[str, Any]:
        return {**te, "origin": "call_log", "agent_name": name, "group": group, "received_at": format_ts(at)}

    first, second = read("Asha", "Sales", T0 + 100), read("Asha R.", None, T0 + 200)
    for order in ([first, second], [second, first]):
        run = Run().feed([w for w in webhooks if w is not te]).settle().feed(order)
        assert (run.record.attempts[0].agent_name, run.record.attempts[0].group) == ("Asha R.", "Sales")
    run = Run().feed(webhooks).settle().feed([first, second, te])
    assert (run.record.attempts[0].agent_name, run.record.attempts[0].group) == ("Asha R.", "Sales")
    assert [r.revision for r in run.completed] == [1, 2, 3]


def test_an_event_of_another_apps_call_with_the_same_uniqueid_is_refused() -> None:
    """Calls are keyed by `uniqueid`: another app's event with it is refused (the worker
    dead-letters it with the reason), not counted into this app's call as a duplicate."""
    run = Run().feed([ev("IN", "same", T0), ev("H", "same", None, duration=30)]).settle()
    before = roundtrip(run.state) if run.state is not None else None
    other = {**ev("IN", "same", T0 + 5, cli="9800000002"), "app": "d" * 32}
    with pytest.raises(OtherAppsCall, match=f"call same is a call of app {APP}, not of app d{{32}}"):
        apply(run.state, other, NOW, CFG)
    assert run.state == before and run.record.cli == "9800000001"


def test_a_revision_left_for_the_batchs_end_is_not_forgotten_by_a_retention_tick_before_it() -> None:
    """The call log naming the agent of a call near its retention, then the call's retention tick,
    in one batch: the name is a change (a revision), and the call is forgotten only after it."""
    run = Run().feed([ev("IN", "rt", T0), *attempt("rt", 1, "A1", T0 + 1, "answered", ring=2, talk=30),
                      ev("H", "rt", None, duration=40)]).settle()
    assert run.state is not None and run.state.closed_at is not None
    later = run.state.closed_at + CFG.retention_s
    te = attempt("rt", 1, "A1", T0 + 1, "answered", ring=2, talk=30)[-1]
    state = apply(roundtrip(run.state), {**te, "origin": "call_log", "agent_name": "Asha"}, later, CFG,
                  settle_later=True).state
    assert state is not None and state.revise
    assert tick(state, later, CFG).state is state  # not forgotten yet
    revised = settle(state, later, CFG)
    assert revised.emission.completed is not None and revised.emission.completed.revision == 2
    assert tick(state, later, CFG).state is None  # then it is
