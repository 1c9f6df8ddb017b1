"""Records built by the core validate against the JSON Schema files in schemas/json/."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from config import topics
from schemas.codec import dumps
from schemas.timefmt import format_ts
from schemas.webhook import normalise
from tests.unit.callgen import T0, ev
from tests.unit.test_lifecycle import Run, answered_call

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "json"


def validator(topic: str) -> Any:
    schema = orjson.loads((SCHEMAS / f"{topic}.schema.json").read_bytes())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_completed_and_missed_records_validate() -> None:
    answered = Run().feed(answered_call())
    missed = Run().feed([ev("IN", "m", T0), ev("H", "m", None, duration=30)]).settle()
    for rec in [*answered.completed, *missed.completed]:
        validator(topics.CALLS_COMPLETED).validate(orjson.loads(dumps(rec)))
    assert missed.missed and answered.answered
    # the callers' repartition topic carries bundles: a JSON array of facts of any kind
    facts = [orjson.loads(dumps(f)) for f in [*missed.missed, *answered.answered]]
    validator(topics.MISSED_BY_CALLER).validate(facts)
    for fact in facts:  # ... or, as 0.1 wrote them (and 0.2 while UPGRADE_FROM=0.1), one by one
        validator(topics.MISSED_BY_CALLER).validate(fact)
    for bad in ([{**facts[0], "kind": "maybe"}], {**facts[0], "kind": "maybe"}, [facts]):
        assert not validator(topics.MISSED_BY_CALLER).is_valid(bad)


def test_alert_and_resolution_records_validate() -> None:
    from processors.core.callers import CallerOutput, CallerState, apply_fact
    from schemas.records import CallerFact, MissedCallAlert

    missed = Run().feed([ev("IN", "m", T0), ev("H", "m", None, duration=30)]).settle()
    again = Run().feed(answered_call("a"))  # the same caller again, answered (same start: shift it)
    facts: list[CallerFact] = [*missed.missed, *(replace(a, started_at=format_ts(T0 + 60)) for a in again.answered)]
    state: CallerState | None = None
    out: list[CallerOutput] = []
    for f in facts:
        state, emitted = apply_fact(state, f, T0)
        out += emitted
    assert [type(o).__name__ for o in out] == ["MissedCallAlert", "ResolvedAlert"]
    for o in out:
        topic = topics.ALERTS_MISSED if isinstance(o, MissedCallAlert) else topics.ALERTS_RESOLVED
        validator(topic).validate(orjson.loads(dumps(o)))


def test_event_record_validates_and_bad_record_does_not() -> None:
    from zoneinfo import ZoneInfo

    e = normalise({"app": "a", "event": "IN", "uniqueid": "u", "time": "1498110438"}, T0, ZoneInfo("UTC"))
    data = orjson.loads(dumps(e))
    validator(topics.EVENTS).validate(data)
    data["time"] = "2017-06-22 05:47:18"
    assert not validator(topics.EVENTS).is_valid(data)


def test_contribution_json_is_the_records_json() -> None:
    """The calls and callers pipelines write contributions without the dataclass: the bytes must
    stay those of `MetricContribution`, whatever fields it gains (a default too)."""
    from dataclasses import fields

    from schemas.codec import contribution_json
    from schemas.records import MetricContribution

    cases: list[tuple[str, str, str, str, dict[str, Any], bool]] = [
        ("app-1", "app-1:agent-7", "c1|a1", format_ts(T0), {"v": 1, "result": "answered", "ring_s": 4.2,
                                                          "talk_s": 61.0}, False),
        ("app-1", "app-1", "c1", format_ts(T0 + 0.5), {"v": 1, "outcome": "missed", "missed_reason": None,
                                                       "wait_s": 3.0, "short_abandon": True,
                                                       "within_service_level": False}, True),
        ("app-1", "app-1", "c1|reached", format_ts(T0), {"v": 1, "reached_again": True}, True),
    ]
    for app, key, item, at, values, at_received in cases:
        record = MetricContribution(app=app, key=key, item=item, at=at, values=values, at_received=at_received)
        written = contribution_json(app, key, item, at, values, at_received)
        assert written == dumps(record)
        assert list(orjson.loads(written)) == [f.name for f in fields(MetricContribution)]
        # the topics carry bundles: JSON arrays of contributions
        validator(topics.ATTEMPTS_BY_AGENT if ":" in key else topics.CALLS_BY_APP).validate([orjson.loads(written)])
