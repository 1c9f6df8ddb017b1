"""Records built by the core validate against the JSON Schema files in schemas/json/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import orjson

from config import topics
from schemas.codec import dumps
from schemas.webhook import normalise
from tests.unit.callgen import T0, ev
from tests.unit.test_lifecycle import Run, answered_call

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas" / "json"


def validator(topic: str) -> Any:
    schema = orjson.loads((SCHEMAS / f"{topic}.schema.json").read_bytes())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def test_completed_and_missed_records_validate() -> None:
    run = Run().feed(answered_call()).feed([ev("IN", "m", T0), ev("H", "m", None, duration=30)]).settle()
    for rec in run.completed:
        validator(topics.CALLS_COMPLETED).validate(orjson.loads(dumps(rec)))
    for m in run.missed:
        validator(topics.MISSED_BY_CALLER).validate(orjson.loads(dumps(m)))


def test_event_record_validates_and_bad_record_does_not() -> None:
    from zoneinfo import ZoneInfo

    e = normalise({"app": "a", "event": "IN", "uniqueid": "u", "time": "1498110438"}, T0, ZoneInfo("UTC"))
    data = orjson.loads(dumps(e))
    validator(topics.EVENTS).validate(data)
    data["time"] = "2017-06-22 05:47:18"
    assert not validator(topics.EVENTS).is_valid(data)
