"""From one call of the provider's call log to the events its webhooks would have delivered.

Pure: no I/O. A finished call (`active: false`) becomes
  * IN at the call's `time`;
  * per `transfer[]` entry, in attempt order: a TA (`attemptId`, `to`, `time`) and a TE
    (`disposition` as result, `du` as duration). The log gives no connect time, so no TC is
    invented: a TE `answered` is what makes the attempt connected. An entry whose disposition is
    not one of the provider's four results gets no TE (the caller hung up while it rang);
  * H with the call's `duration`.
The agent's `name` and `group` travel on the attempt's TA and TE. Each event is normalised and
validated exactly like a webhook, with `origin: call_log`; its id is a hash of what it says, so
reading the same call again yields the same events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

from processors.core.call_record import natural_key
from schemas.records import IvrEvent
from schemas.timefmt import parse_provider_time
from schemas.webhook import MAX_FIELD_CHARS, RESULTS, InvalidWebhook, normalise


class CallLogError(ValueError):
    """A call-log entry that cannot be turned into events (says which field and why)."""


def is_active(call: Mapping[str, Any]) -> bool:
    """The provider's `active` flag; the log may send it as a JSON boolean or as text."""
    value = call.get("active")
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


def _label(value: Any) -> str | None:
    """An agent name or group as kept on the record: short printable text, else unknown (None)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > MAX_FIELD_CHARS or any(ord(c) < 32 for c in text):
        return None
    return text


def _field(entry: Mapping[str, Any], name: str, where: str) -> Any:
    value = entry.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CallLogError(f"{where}{name}: required")
    return value


def _attempts(call: Mapping[str, Any], tz: ZoneInfo) -> list[Mapping[str, Any]]:
    """`transfer[]` in attempt order (the log lists them newest first): by time, then attempt id."""
    transfers = call.get("transfer") or []
    if not isinstance(transfers, list) or not all(isinstance(t, Mapping) for t in transfers):
        raise CallLogError("transfer: must be a list of objects")

    def order(t: Mapping[str, Any]) -> tuple[float, tuple[tuple[int, int | str], ...]]:
        where = f"transfer[{t.get('attemptId')!r}]."
        try:
            at = parse_provider_time(_field(t, "time", where), tz)
        except ValueError as e:
            raise CallLogError(f"{where}time: {e}") from None
        return at, natural_key(str(_field(t, "attemptId", where)))

    keyed = [(order(t), t) for t in transfers]
    keyed.sort(key=lambda kt: kt[0])
    return [t for _, t in keyed]


def call_events(call: Mapping[str, Any], app: str, received_at: float, tz: ZoneInfo) -> list[IvrEvent]:
    """The events of one finished call, in the order the webhooks would have come.

    `received_at` is when the log was read (the events' receive time). Raises `CallLogError`
    for an active call or an entry that is not a valid call."""
    if is_active(call):
        raise CallLogError("active: the call has not finished")
    uid = str(_field(call, "uid", ""))
    common = {"app": app, "uniqueid": uid, "cli": call.get("cli") or ""}
    raws: list[tuple[dict[str, Any], str | None, str | None]] = [
        ({**common, "event": "IN", "time": _field(call, "time", "")}, None, None)]
    for t in _attempts(call, tz):
        name, group = _label(t.get("name")), _label(t.get("group"))
        labels = {k: v for k, v in (("name", name), ("group", group)) if v is not None}
        attempt = {**common, "attemptid": t["attemptId"], "to": _field(t, "to", f"transfer[{t['attemptId']!r}].")}
        raws.append(({**attempt, "event": "TA", "time": t["time"], **labels}, name, group))
        disposition = t.get("disposition")
        if isinstance(disposition, str) and disposition.strip().lower() in RESULTS:
            raws.append(({**attempt, "event": "TE", "result": disposition, "duration": t.get("du"), **labels},
                         name, group))
    raws.append(({**common, "event": "H", "duration": _field(call, "duration", "")}, None, None))
    events = []
    for raw, name, group in raws:
        try:
            event = normalise({k: v for k, v in raw.items() if v is not None}, received_at, tz, origin="call_log")
        except InvalidWebhook as e:
            raise CallLogError(f"{raw['event']} of call {uid}: {e}") from None
        events.append(replace(event, agent_name=name, group=group))
    return events
