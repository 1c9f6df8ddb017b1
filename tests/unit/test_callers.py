"""The callers core: repeat counts, one alert per call, and resolving alerts, without any broker."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.core.callers import (
    MAX_ENTRIES,
    RETENTION_S,
    WINDOW_S,
    CallerOutput,
    CallerState,
    apply_fact,
    caller_key,
    expired,
    forget_at,
    read_fact,
)
from schemas.codec import dumps
from schemas.records import AnsweredCallFact, MissedCallAlert, MissedCallFact, ResolvedAlert, SelfResolution
from schemas.timefmt import format_ts, parse_ts

T0 = 1_700_000_000.0
NOW = 2_000_000_000.0  # processing wall clock, unrelated to event times on purpose
H = 3600.0


def missed(uid: str, at: float, alert: bool = True, cli: str = "98", wait: float = 30) -> MissedCallFact:
    return MissedCallFact(uniqueid=uid, app="app", cli=cli, at=format_ts(at), missed_reason="no_answer",
                          wait_s=wait, attempts=1, agents_tried=["A1"], alert=alert,
                          started_at=format_ts(at - wait), wait_is_lower_bound=False)


def answered(uid: str, started: float, cli: str = "98", how: SelfResolution = "revised_answered",
             start_known: bool = True) -> AnsweredCallFact:
    return AnsweredCallFact(uniqueid=uid, app="app", cli=cli, started_at=format_ts(started), how=how,
                            start_known=start_known)


class Caller:
    """Feeds facts to one caller's state (through its JSON form, as the table does)."""

    def __init__(self) -> None:
        self.state: CallerState | None = None
        self.alerts: list[MissedCallAlert] = []
        self.resolved: list[ResolvedAlert] = []

    def feed(self, *facts: MissedCallFact | AnsweredCallFact, now: float = NOW) -> list[CallerOutput]:
        out: list[CallerOutput] = []
        for f in facts:
            state = None if self.state is None else CallerState.from_json(
                orjson.loads(orjson.dumps(self.state.to_json())))
            # the fact goes through its wire form too
            self.state, emitted = apply_fact(state, read_fact(orjson.loads(dumps(f))), now)
            out += emitted
        self.alerts += [o for o in out if isinstance(o, MissedCallAlert)]
        self.resolved += [o for o in out if isinstance(o, ResolvedAlert)]
        return out

    def counts(self) -> dict[str, int]:
        return {a.uniqueid: a.repeat_count for a in self.alerts}


def test_in_event_order_alerts_count_1_2_3_short_abandons_included() -> None:
    c = Caller()
    c.feed(missed("1", T0), missed("2", T0 + H, alert=False), missed("3", T0 + 2 * H))
    assert c.counts() == {"1": 1, "3": 3}  # the short abandon is counted, but raises no alert
    c.feed(missed("4", T0 + WINDOW_S + 1.5 * H))  # 1 and 2 are more than 24 h before it
    assert c.counts()["4"] == 2
    assert (c.alerts[0].cli, c.alerts[0].at, c.alerts[0].wait_s, c.alerts[0].agents_tried) == (
        "98", format_ts(T0), 30, ["A1"])


def test_late_arrival_counts_the_calls_after_it_too() -> None:
    c = Caller()
    c.feed(missed("late", T0 + 100), missed("later", T0 + WINDOW_S + 50))
    c.feed(missed("early", T0))
    # early: itself and `late` (100 s after); `later` is more than 24 h after it
    assert c.counts() == {"late": 1, "later": 2, "early": 2}


def test_one_alert_per_call_whatever_is_replayed() -> None:
    c = Caller()
    c.feed(missed("1", T0), missed("1", T0), missed("2", T0 + 10, alert=False), missed("2", T0 + 10, alert=False))
    assert [a.uniqueid for a in c.alerts] == ["1"]
    # a revision made the short abandon alert-worthy: its alert now, once
    c.feed(missed("2", T0 + 10), missed("2", T0 + 10), missed("1", T0))
    assert [a.uniqueid for a in c.alerts] == ["1", "2"] and c.counts()["2"] == 2


def test_withheld_numbers_count_one_and_are_never_called_again() -> None:
    c = Caller()
    c.feed(missed("1", T0, cli=""), missed("2", T0 + 1, cli=""), answered("3", T0 + 60, cli=""))
    assert c.counts() == {"1": 1, "2": 1} and c.resolved == []
    c.feed(answered("2", T0 - 29, cli=""))  # but an alerted withheld call revised answered is resolved
    assert [(r.uniqueid, r.how, r.cli) for r in c.resolved] == [("2", "revised_answered", "")]


def test_revised_answered_resolves_once_and_leaves_the_count() -> None:
    c = Caller()
    c.feed(missed("1", T0))
    (r,) = c.feed(answered("1", T0 - 30))
    assert isinstance(r, ResolvedAlert)
    assert (r.uniqueid, r.app, r.cli, r.how, r.by_uniqueid, r.resolved_at) == (
        "1", "app", "98", "revised_answered", None, format_ts(NOW))
    assert c.feed(answered("1", T0 - 30), missed("1", T0), answered("1", T0 - 30)) == []  # replays: nothing
    c.feed(missed("2", T0 + 60))
    assert c.counts()["2"] == 1  # the answered call is no longer a missed one


def test_call_log_answered_is_passed_through() -> None:
    c = Caller()
    c.feed(missed("1", T0))
    (r,) = c.feed(answered("1", T0 - 30, how="call_log_answered"))
    assert isinstance(r, ResolvedAlert) and r.how == "call_log_answered"


def test_called_again_and_answered_resolves_every_open_alert_it_follows() -> None:
    c = Caller()
    c.feed(missed("1", T0), missed("2", T0 + H), missed("short", T0 + 2 * H, alert=False))
    out = c.feed(answered("3", T0 + 3 * H))
    assert [(r.uniqueid, r.how, r.by_uniqueid) for r in out if isinstance(r, ResolvedAlert)] == [
        ("1", "called_again_answered", "3"), ("2", "called_again_answered", "3")]
    # at most one resolution per alert: a later answer of the call itself resolves nothing more
    assert c.feed(answered("1", T0 - 30), answered("4", T0 + 4 * H)) == []


def test_one_answer_resolves_open_alerts_oldest_end_first_whatever_their_arrival_order() -> None:
    c = Caller()
    c.feed(missed("b", T0 + H), missed("a2", T0), missed("a1", T0))  # arrived newest first; two ended alike
    out = c.feed(answered("later", T0 + 2 * H))
    assert [r.uniqueid for r in out if isinstance(r, ResolvedAlert)] == ["a1", "a2", "b"]  # by end, then id


@pytest.mark.parametrize(("started", "resolves"), [
    (T0 - 30, False),  # started with the missed call: not again
    (T0 - 31, False),  # started before it
    (T0 - 29, True),  # started after it began (still ringing while the first was lost)
    (T0 + WINDOW_S, True),
    (T0 + WINDOW_S + 1, False),  # more than 24 h after the missed call ended
])
def test_called_again_means_started_later_within_24_hours(started: float, resolves: bool) -> None:
    c = Caller()
    c.feed(missed("1", T0), answered("2", started))
    assert [r.uniqueid for r in c.resolved] == (["1"] if resolves else [])


def test_an_answer_without_its_in_waits_for_it_and_a_moved_miss_is_checked_again() -> None:
    c = Caller()
    c.feed(missed("1", T0), answered("2", T0 + 60, start_known=False))
    assert c.resolved == []  # it may have started before the missed call: not evidence yet
    c.feed(answered("2", T0 + 50))  # its revision with the IN
    assert [(r.uniqueid, r.by_uniqueid) for r in c.resolved] == [("1", "2")]
    c2 = Caller()
    c2.feed(answered("2", T0 + 60), missed("1", T0 + 100))  # missed call's IN not known yet: its start later
    assert c2.resolved == []
    c2.feed(missed("1", T0 + 40, wait=60))  # the revision that moved its start before the answered call
    assert [(r.uniqueid, r.how, r.by_uniqueid) for r in c2.resolved] == [("1", "called_again_answered", "2")]
    assert len(c2.alerts) == 1


def test_answer_known_before_the_alert_resolves_it_at_once() -> None:
    c = Caller()
    out = c.feed(answered("2", T0 + H), missed("1", T0))
    assert [type(o).__name__ for o in out] == ["MissedCallAlert", "ResolvedAlert"]
    assert (c.resolved[0].how, c.resolved[0].by_uniqueid) == ("called_again_answered", "2")
    c2 = Caller()
    c2.feed(answered("1", T0 - 30), missed("1", T0))  # its own answer came first (out of order)
    assert [(r.uniqueid, r.how) for r in c2.resolved] == [("1", "revised_answered")]


def test_older_state_format_and_facts_without_kind_still_read() -> None:
    state = CallerState.from_json([[T0, "old"]])
    assert state.missed["old"].status == "closed"
    state, out = apply_fact(state, missed("old", T0), NOW)  # replayed: alert already decided
    assert out == [] and (state.app, state.cli) == ("app", "98")
    legacy = {k: v for k, v in orjson.loads(dumps(missed("x", T0))).items()
              if k not in ("kind", "started_at", "wait_is_lower_bound")}
    fact = read_fact(legacy)
    assert isinstance(fact, MissedCallFact) and fact.started_at is None
    _, out = apply_fact(state, fact, NOW)
    assert [o.uniqueid for o in out] == ["x"]
    with pytest.raises(ValueError):
        read_fact({**legacy, "kind": "other"})


def test_state_round_trips_and_expires_after_retention() -> None:
    c = Caller()
    c.feed(missed("1", T0), answered("2", T0 + H), now=NOW)
    assert c.state is not None
    assert CallerState.from_json(orjson.loads(orjson.dumps(c.state.to_json()))) == c.state
    assert forget_at(c.state) == NOW + RETENTION_S
    assert not expired(c.state, NOW + RETENTION_S - 1) and expired(c.state, NOW + RETENTION_S)



def test_calls_not_heard_of_for_the_retention_are_dropped_and_at_most_500_of_each_kind_kept() -> None:
    c = Caller()
    c.feed(missed("old-m", T0), answered("old-a", T0), now=NOW)
    c.feed(missed("new-m", T0 + H), now=NOW + RETENTION_S / 2)
    assert c.state is not None and set(c.state.missed) == {"old-m", "new-m"} and set(c.state.answered) == {"old-a"}
    c.feed(answered("new-a", T0 + 2 * H), now=NOW + RETENTION_S)  # the first two were last heard of RETENTION_S ago
    assert set(c.state.missed) == {"new-m"} and set(c.state.answered) == {"new-a"}
    for stale, fresh in ((answered("a", T0), missed("m", T0, alert=False)),
                         (missed("m", T0, alert=False), answered("a", T0))):  # one kind stale, the other not
        state, _ = apply_fact(None, stale, NOW)
        state, _ = apply_fact(state, fresh, NOW + RETENTION_S - 1)
        state, _ = apply_fact(state, missed("m2", T0 + H, alert=False), NOW + RETENTION_S)
        assert set(state.missed) == ({"m", "m2"} if fresh.uniqueid == "m" else {"m2"})
        assert set(state.answered) == ({"a"} if fresh.uniqueid == "a" else set())

    state = CallerState("app", "98")  # a caller with more calls than MAX_ENTRIES (500) keeps the newest, by time
    for i in range(MAX_ENTRIES):
        state, _ = apply_fact(state, missed(f"m{i}", T0 + i * 60, alert=False), NOW)
        state, _ = apply_fact(state, answered(f"a{i}", T0 + i * 60), NOW)
    assert len(state.missed) == len(state.answered) == MAX_ENTRIES
    state, _ = apply_fact(state, missed("m-new", T0 + MAX_ENTRIES * 60, alert=False), NOW)
    assert len(state.missed) == MAX_ENTRIES and "m0" not in state.missed and "m-new" in state.missed
    state, _ = apply_fact(state, answered("a-new", T0 + MAX_ENTRIES * 60), NOW)
    assert len(state.answered) == MAX_ENTRIES and "a0" not in state.answered and "a-new" in state.answered

# ---- properties: arrival order -------------------------------------------------------------

@st.composite
def caller_calls(draw: st.DrawFn) -> list[MissedCallFact | AnsweredCallFact]:
    """One caller's calls over up to three days: missed (alerting or short) and answered."""
    n = draw(st.integers(1, 8))
    facts: list[MissedCallFact | AnsweredCallFact] = []
    for i in range(n):
        at = T0 + draw(st.integers(0, 72)) * H + i  # distinct times
        kind = draw(st.sampled_from(["missed", "missed", "short", "answered"]))
        if kind == "answered":
            facts.append(answered(f"c{i}", at))
        else:
            facts.append(missed(f"c{i}", at, alert=kind == "missed"))
    return facts


def _at(f: MissedCallFact | AnsweredCallFact) -> float:
    return parse_ts(f.at) if isinstance(f, MissedCallFact) else parse_ts(f.started_at) + 30


@settings(max_examples=300, deadline=None)
@given(facts=caller_calls(), data=st.data())
def test_repeat_count_of_the_last_alert_counts_every_missed_call_within_24_hours(
        facts: list[MissedCallFact | AnsweredCallFact], data: st.DataObject) -> None:
    order: list[Any] = data.draw(st.permutations(facts))
    c = Caller()
    c.feed(*order)
    alerting = [f for f in facts if isinstance(f, MissedCallFact) and f.alert]
    assert sorted(a.uniqueid for a in c.alerts) == sorted(f.uniqueid for f in alerting)  # one each
    if c.alerts:
        # the alert raised last counts every missed call known by then (short abandons too) within
        # 24 h either side: all of them when no short abandon arrives after it
        last = c.alerts[-1]
        upto = next(i for i, f in enumerate(order) if f.uniqueid == last.uniqueid)
        known = [f for f in order[:upto + 1] if isinstance(f, MissedCallFact)]
        at = parse_ts(last.at)
        assert last.repeat_count == sum(1 for f in known if abs(parse_ts(f.at) - at) <= WINDOW_S)
    # resolutions: at most one per alert, and which alerts end resolved does not depend on the order
    assert len({r.uniqueid for r in c.resolved}) == len(c.resolved)
    in_order = Caller()
    in_order.feed(*sorted(facts, key=_at))
    assert {r.uniqueid for r in c.resolved} == {r.uniqueid for r in in_order.resolved}


@settings(max_examples=200, deadline=None)
@given(facts=caller_calls())
def test_alerts_raised_in_event_order_count_the_calls_up_to_them(facts: list[MissedCallFact | AnsweredCallFact],
                                                                 ) -> None:
    missed_calls = sorted((f for f in facts if isinstance(f, MissedCallFact)), key=lambda f: parse_ts(f.at))
    c = Caller()
    c.feed(*missed_calls)
    for a in c.alerts:
        at = parse_ts(a.at)
        assert a.repeat_count == sum(1 for f in missed_calls if at - WINDOW_S <= parse_ts(f.at) <= at)


# ---- the callers pipeline's wiring, without Kafka -----------------------------------------------

def test_pipeline_decodes_every_fact_kind_and_routes_alerts_and_resolutions() -> None:
    from config import topics
    from config.settings import Settings
    from processors.pipelines.callers import decode, pipeline
    from processors.runtime import Result

    s = Settings(topic_prefix="p.")
    p = pipeline(s)
    first = dumps(replace_received(missed("1", T0), T0 + 2))
    legacy = orjson.dumps({k: v for k, v in orjson.loads(dumps(missed("0", T0 - 60))).items()
                           if k not in ("kind", "started_at", "wait_is_lower_bound", "received_at")})
    again = dumps(answered("2", T0 + 60))
    items = [decode(b"app:98", raw)[0] for raw in (legacy, first, again)]
    assert [k for k, _ in items] == ["app:98"] * 3
    state: CallerState | None = None
    outputs = []
    for key, item in items:
        r = p.step(key, state, item, NOW)
        assert isinstance(r, Result) and r.state is not None and p.due(r.state) == NOW + RETENTION_S
        state = r.state
        outputs += list(r.outputs)
    resolved, by_app = "p." + topics.ALERTS_RESOLVED, "p." + topics.CALLS_BY_APP
    assert [(o.topic, o.key) for o in outputs] == [
        ("p." + topics.ALERTS_MISSED, b"98"), ("p." + topics.ALERTS_MISSED, b"98"),
        (resolved, b"98"), (by_app, b"app"), (resolved, b"98"), (by_app, b"app")]
    assert outputs[1].received == T0 + 2 and outputs[1].latency == "alert"
    assert [orjson.loads(o.value)["repeat_count"] for o in outputs[:2]] == [1, 2]
    # each missed call reached again is an item of its own in the window of its start (the
    # legacy record knew no start: its end stands in), never advancing the app's watermark
    reached = [orjson.loads(o.value) for o in outputs if o.topic == by_app]
    assert [(c["key"], c["item"], c["at"], c["values"], c["at_received"]) for c in reached] == [
        ("app", "0|reached", format_ts(T0 - 60), {"v": 1, "reached_again": True}, True),
        ("app", "1|reached", format_ts(T0 - 30), {"v": 1, "reached_again": True}, True)]
    assert by_app in p.bundled  # the metrics pipeline reads calls-by-app as bundles
    from processors.runtime import TICK

    assert p.step("app:98", state, TICK, NOW + RETENTION_S) == Result(None)  # forgotten


def test_caller_facts_travel_in_bundles_each_keyed_by_its_caller() -> None:
    from config import topics
    from config.kafka_producer import partition_for
    from config.settings import Settings
    from processors.bundles import bundle
    from processors.pipelines import calls
    from processors.pipelines.callers import decode

    s = Settings(topic_prefix="p.")
    topic = s.topic(topics.MISSED_BY_CALLER)
    assert topic in calls.pipeline(s).bundled  # the calls pipeline sends them bundled
    # one record each, as 0.1 reads them, while workers of 0.1 may still run (README "Upgrading")
    assert topic not in calls.pipeline(Settings(topic_prefix="p.", upgrade_from="0.1")).bundled
    facts: list[MissedCallFact | AnsweredCallFact] = [
        missed("1", T0), answered("2", T0 + 60), missed("3", T0 + 90, cli="77"), missed("4", T0 + 120)]
    placed = bundle([(topic, caller_key(f.app, f.cli).encode(), dumps(f)) for f in facts], 6)
    decoded = {part: decode(None, value or b"") for _, part, _, value in placed}
    for part, items in decoded.items():
        assert all(partition_for(key.encode(), 6) == part for key, _ in items)  # co-partitioned
    by_key: dict[str, list[object]] = {}
    for items in decoded.values():
        for key, fact in items:
            by_key.setdefault(key, []).append(fact)
    # every fact once, keyed app:cli, in the order sent for each caller
    assert by_key == {"app:98": [facts[0], facts[1], facts[3]], "app:77": [facts[2]]}
    with pytest.raises(ValueError):  # one bad fact: the bundle is the runtime's to dead-letter
        decode(None, orjson.dumps([orjson.loads(dumps(facts[0])), {**orjson.loads(dumps(facts[1])), "kind": "x"}]))


def replace_received(fact: MissedCallFact, received: float) -> MissedCallFact:
    from dataclasses import replace

    return replace(fact, received_at=format_ts(received))


def test_only_called_again_reaches_a_caller_again_and_the_start_outlives_retention() -> None:
    from processors.core.callers import reached_again_start

    c = Caller()
    c.feed(missed("own", T0 - 100), missed("m", T0))
    c.feed(answered("own", T0 - 130))  # its own answer (started before m): revised_answered only
    assert c.state is not None
    (own,) = c.resolved
    assert own.how == "revised_answered" and reached_again_start(c.state, own) is None
    # an answer a day and a half (wall clock) later still finds the missed call's start
    c.feed(answered("again", T0 + 600), now=NOW + 1.5 * WINDOW_S)
    assert c.state is not None
    (again,) = c.resolved[1:]
    assert again.how == "called_again_answered" and reached_again_start(c.state, again) == T0 - 30
    state, _ = apply_fact(c.state, answered("x", T0 + 700), NOW + 1.5 * WINDOW_S + RETENTION_S - 1)
    assert "m" in state.missed  # resolving it was a fact about it: kept from then on
