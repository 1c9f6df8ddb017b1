"""Anything `normalise` accepts goes through the pure call lifecycle without raising.

Hypothesis builds webhook field dicts (one call, any order, hostile numbers), keeps those the
ingress would accept, and plays them through apply / tick until the call is closed and forgotten,
encoding every record and state as the worker does.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.core.call_state import CallState
from processors.core.callers import CallerState, apply_fact, caller_key, read_fact
from processors.core.lifecycle import Applied, LifecycleConfig, apply, next_due, tick
from schemas.codec import dumps
from schemas.records import IvrEvent
from schemas.webhook import MAX_DURATION_S, InvalidWebhook, normalise

TZ = ZoneInfo("Asia/Kolkata")
CFG = LifecycleConfig(hangup_grace_s=10, idle_timeout_s=900, connected_idle_timeout_s=14400, retention_s=86400,
                      short_abandon_s=5)
RECEIVED = 1_700_000_000.0

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 0.0, 1e-300, MAX_DURATION_S, MAX_DURATION_S + 0.001, 1e308, -0.0, 2**63]),
)
number_text = st.one_of(
    numbers.map(repr), numbers.map(str),
    st.sampled_from(["1e308", "1e309", "-1", "nan", "inf", "Infinity", " 30 ", "30.", ".5", "1_000", "0x10", "1e-400",
                     "172800", "172800.0001", "00000000000000000003"]),
)
times = st.one_of(
    numbers, number_text,
    st.integers(946_684_800, 4_102_444_799), st.integers(946_684_800_000, 4_102_444_799_999),
    st.sampled_from(["2017-06-22T11:17:18+05:30", "2017-06-22 11:17:18", "2099-12-31T23:59:59-14:00",
                     "2000-01-01T00:00:00+14:00", "9999-12-31T23:59:59", "0001-01-01T00:00:00+05:30",
                     "2017-06-22T11:17:18.999999+05:30"]),
)


@st.composite
def call_events(draw: st.DrawFn) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 8))
    out = []
    for _ in range(n):
        fields: dict[str, Any] = {"app": "a" * 32, "uniqueid": "u1", "event": draw(st.sampled_from(
            ["IN", "TA", "TC", "TE", "H", "te", "h"]))}
        fields["attemptid"] = draw(st.sampled_from(["u1.1", "u1.2", "1", "u1.10"]))
        fields["to"] = draw(st.sampled_from(["9800000001", "9800000002", "1"]))
        fields["cli"] = draw(st.sampled_from(["", "9716700271", "0"]))
        fields["result"] = draw(st.sampled_from(["answered", "BUSY", "congestion", "NoAnswer"]))
        if draw(st.booleans()):
            fields["time"] = draw(times)
        if draw(st.booleans()):
            fields["duration"] = draw(st.one_of(numbers, number_text))
        out.append(fields)
    return out


def _accepted(fields: dict[str, Any], received: float) -> IvrEvent | None:
    try:
        return normalise(fields, received, TZ)
    except InvalidWebhook:
        return None


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(events=call_events(), gaps=st.lists(st.floats(0, 100_000), min_size=8, max_size=8),
       clock=st.floats(946_684_800, 4_102_444_799))
def test_whatever_the_ingress_accepts_the_core_processes(
    events: list[dict[str, Any]], gaps: list[float], clock: float
) -> None:
    state: CallState | None = None
    callers: dict[str, CallerState] = {}
    now = clock
    for fields, gap in zip(events, gaps, strict=False):
        event = _accepted(fields, RECEIVED + gap)
        if event is None:
            continue
        decoded = orjson.loads(dumps(event))  # as the worker reads it from ivr.events
        now += gap
        state = None if state is None else CallState.from_json(orjson.loads(orjson.dumps(state.to_json())))
        result = apply(state, decoded, now, CFG)
        callers = _through(result, callers, now)
        state = result.state
    for _ in range(6):  # close, alert, forget
        if state is None:
            break
        now = max(now, next_due(state, CFG))
        result = tick(state, now, CFG)
        callers = _through(result, callers, now)
        state = result.state


def _through(result: Applied, callers: dict[str, CallerState], now: float) -> dict[str, CallerState]:
    """Every record the emission makes is encoded, and its caller facts go through the callers
    core as the worker would send them (encoded, decoded)."""
    if result.emission.completed is not None:
        dumps(result.emission.completed)
    for fact in result.emission.facts:
        key = caller_key(fact.app, fact.cli)
        callers[key], outputs = apply_fact(callers.get(key), read_fact(orjson.loads(dumps(fact))), now)
        for o in outputs:
            dumps(o)
    return callers


@pytest.mark.parametrize("value", ["1e308", 1e308, "172800.5", 10**30, "nan", "inf", "-1", -0.5, "1_000", "0x10"])
def test_duration_out_of_bounds_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(InvalidWebhook) as e:
        normalise({"app": "a", "event": "H", "uniqueid": "u", "duration": value}, RECEIVED, TZ)
    assert [err.field for err in e.value.errors] == ["duration"]


@pytest.mark.parametrize("value", ["0", 0, "172800", MAX_DURATION_S, "30.5", " 40 "])
def test_duration_within_bounds_is_kept(value: object) -> None:
    ev = normalise({"app": "a", "event": "H", "uniqueid": "u", "duration": value}, RECEIVED, TZ)
    assert ev.duration is not None and 0 <= ev.duration <= MAX_DURATION_S
