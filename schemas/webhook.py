"""Validate and normalise one provider webhook into an `IvrEvent`.

Pure: no I/O. The ingress calls `normalise` on every authenticated request; the processor reads
the result. Field names are the provider's: app, event, uniqueid, cli, time, attemptid, to,
duration, result.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any, cast
from zoneinfo import ZoneInfo

import orjson

from schemas.records import EventOrigin, EventType, FieldError, IvrEvent, ProviderResult
from schemas.timefmt import format_ts, parse_provider_time

EVENT_TYPES: frozenset[str] = frozenset({"IN", "TA", "TC", "TE", "H"})
RESULTS: frozenset[str] = frozenset({"answered", "busy", "congestion", "noanswer"})
ATTEMPT_EVENTS: frozenset[str] = frozenset({"TA", "TC", "TE"})
MAX_FIELD_CHARS = 256
# The longest `duration` accepted (TE: one attempt, H: the whole call), in seconds: two days. No
# call lasts that long; the bound keeps every later sum and timestamp finite and in range.
MAX_DURATION_S = 2 * 86400
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
# Fields never stored: the token may also arrive inside a body.
SECRET_FIELDS: frozenset[str] = frozenset({"token"})


class InvalidWebhook(ValueError):
    """The request was authenticated but does not hold a valid event: unreadable fields or bad values."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.reason}" for e in errors))
        self.errors = errors


def event_id(raw: Mapping[str, Any]) -> str:
    """Deterministic id of a delivery: a hash of its fields, whatever their order."""
    canonical = orjson.dumps({k: raw[k] for k in sorted(raw)})
    return hashlib.blake2b(canonical, digest_size=16).hexdigest()


def _text(raw: Mapping[str, Any], name: str, errors: list[FieldError]) -> str | None:
    """A field as text; None when absent or empty. Numbers are accepted (JSON bodies)."""
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errors.append(FieldError(name, "must be a string or a number"))
        return None
    text = value.strip() if isinstance(value, str) else repr(value)
    if text == "":
        return None
    if len(text) > MAX_FIELD_CHARS:
        errors.append(FieldError(name, f"longer than {MAX_FIELD_CHARS} characters"))
        return None
    if any(ord(c) < 32 for c in text):
        errors.append(FieldError(name, "contains control characters"))
        return None
    return text


def _duration(text: str | None, errors: list[FieldError]) -> float | None:
    """Seconds: a decimal number, finite, from 0 to MAX_DURATION_S."""
    if text is None:
        return None
    if not _DECIMAL.fullmatch(text):
        errors.append(FieldError("duration", "must be a number of seconds"))
        return None
    value = float(text)
    if not math.isfinite(value) or value < 0:
        errors.append(FieldError("duration", "must be a finite, non-negative number of seconds"))
        return None
    if value > MAX_DURATION_S:
        errors.append(FieldError("duration", f"must be at most {MAX_DURATION_S} seconds (two days)"))
        return None
    return value


def normalise(
    raw: Mapping[str, Any], received_at: float, tz: ZoneInfo, origin: EventOrigin = "webhook"
) -> IvrEvent:
    """Build the normalised event, or raise `InvalidWebhook` naming every bad field.

    `origin` says where the fields came from: the ingress (`webhook`) or events rebuilt from the
    provider's call log (`call_log`), which go through the same checks.
    """
    raw = {k: v for k, v in raw.items() if not (isinstance(k, str) and k.strip().lower() in SECRET_FIELDS)}
    errors: list[FieldError] = []
    app = _text(raw, "app", errors)
    event = _text(raw, "event", errors)
    uniqueid = _text(raw, "uniqueid", errors)
    cli = _text(raw, "cli", errors) or ""
    attemptid = _text(raw, "attemptid", errors)
    to = _text(raw, "to", errors)
    result = _text(raw, "result", errors)
    duration_text = _text(raw, "duration", errors)
    time_text = _text(raw, "time", errors)

    for name, value in (("app", app), ("event", event), ("uniqueid", uniqueid)):
        if value is None and not any(e.field == name for e in errors):
            errors.append(FieldError(name, "required"))
    if event is not None:
        event = event.upper()
        if event not in EVENT_TYPES:
            errors.append(FieldError("event", f"unknown event {event!r}: expected one of IN, TA, TC, TE, H"))
        elif event in ATTEMPT_EVENTS:
            for name, value in (("attemptid", attemptid), ("to", to)):
                if value is None and not any(e.field == name for e in errors):
                    errors.append(FieldError(name, f"required for {event}"))
    if event == "TE":
        if result is None:
            if not any(e.field == "result" for e in errors):
                errors.append(FieldError("result", "required for TE"))
        elif result.lower() not in RESULTS:
            errors.append(FieldError("result", f"{result!r} is not one of answered, busy, congestion, noanswer"))
    duration = _duration(duration_text, errors)
    event_time: float | None = None
    if time_text is not None:
        time_value = raw["time"]
        try:
            event_time = parse_provider_time(time_value if not isinstance(time_value, str) else time_text, tz)
        except ValueError as e:
            errors.append(FieldError("time", str(e)))
    if errors:
        raise InvalidWebhook(errors)

    assert app is not None and uniqueid is not None and event is not None
    is_attempt = event in ATTEMPT_EVENTS
    return IvrEvent(
        # a call-log event never shares an id with a webhook delivery of the same fields
        id=event_id(raw) if origin == "webhook" else event_id({**raw, "\x00origin": origin}),
        app=app,
        event=cast(EventType, event),
        uniqueid=uniqueid,
        cli=cli,
        attemptid=attemptid if is_attempt else None,
        to=to if is_attempt else None,
        result=cast(ProviderResult, result.lower()) if event == "TE" and result else None,
        duration=duration,
        time=format_ts(event_time if event_time is not None else received_at),
        time_source="provider" if event_time is not None else "received",
        received_at=format_ts(received_at),
        raw=dict(raw),
        origin=origin,
    )
