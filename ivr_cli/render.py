"""What `ivr` shows: one line per record, filters, open alerts. Pure: no Kafka, no terminal."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text

from config import topics

# `ivr tail NAME`: short names for the topics a person reads (full names work too)
TOPICS: dict[str, str] = {
    "calls": topics.CALLS_COMPLETED,
    "alerts": topics.ALERTS_MISSED,
    "resolved": getattr(topics, "ALERTS_RESOLVED", "ivr.alerts.resolved"),
    "agents": topics.METRICS_AGENTS,
    "apps": topics.METRICS_APPS,
    "events": topics.EVENTS,
    "invalid": topics.EVENTS_INVALID,
    "unprocessable": topics.EVENTS_UNPROCESSABLE,
}
KIND_OF = {base: kind for kind, base in TOPICS.items()}


def topic_base(name: str, prefix: str = "") -> str:
    """`calls` -> `ivr.calls.completed`; a full name is kept as it is, less `prefix` (TOPIC_PREFIX)
    when it starts with it."""
    if name in TOPICS:
        return TOPICS[name]
    if name in KIND_OF:
        return name
    if prefix and name.startswith(prefix) and name[len(prefix):] in KIND_OF:
        return name[len(prefix):]
    raise KeyError(name)


def mask_cli(cli: str) -> str:
    """All but the last 4 digits hidden (enough to tell callers apart on a screen)."""
    if len(cli) <= 4:
        return cli
    return "*" * (len(cli) - 4) + cli[-4:]


def record_cli(record: dict[str, Any]) -> str | None:
    """The caller number a record is about, if it has one (invalid events: as sent, when readable)."""
    cli = record.get("cli")
    if isinstance(cli, str):
        return cli
    event = record.get("event")
    if isinstance(event, dict) and isinstance(event.get("cli"), str):
        return str(event["cli"])
    return None


def matches(record: dict[str, Any], app: str | None, cli: str | None) -> bool:
    """The --app / --cli filters: a record without the field never matches a filter on it."""
    if app is not None and str(record.get("app", "")).lower() != app.lower():
        return False
    return cli is None or record_cli(record) == cli


def _short_time(ts: Any) -> str:
    """`2017-06-22T05:47:18.000Z` -> `2017-06-22 05:47:18Z` (UTC, as on the topics)."""
    if not isinstance(ts, str) or len(ts) < 19:
        return str(ts)
    return f"{ts[:10]} {ts[11:19]}Z"


def _app(record: dict[str, Any]) -> str:
    return str(record.get("app", ""))[:8] or "-"


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:g}" if x == int(x) else f"{x:.2f}".rstrip("0").rstrip(".")
    return str(x)


def _secs(x: Any) -> str:
    """Seconds with their unit; `-` alone when unknown (no answered attempt to average)."""
    return "-" if x is None else f"{_num(x)}s"


def _rate(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.0f}%"


def _caller(record: dict[str, Any], mask: bool) -> str:
    cli = record_cli(record)
    if not cli:
        return "(withheld)"
    return mask_cli(cli) if mask else cli


def summary(kind: str, record: dict[str, Any], mask: bool = False) -> Text:
    """One line for a record of topic `kind` (a key of TOPICS); unknown shapes fall back to key=value."""
    t = Text()
    if kind == "calls":
        t.append(_short_time(record.get("started_at")), "dim")
        t.append(f"  {_app(record)}  {_caller(record, mask):<12} ")
        outcome = str(record.get("outcome"))
        t.append(f"{outcome:<8}", "green" if outcome == "answered" else "red")
        if outcome == "answered":
            t.append(f" by {record.get('answered_by')}")
        else:
            t.append(f" ({record.get('missed_reason')})")
        t.append(f"  wait {_secs(record.get('wait_s'))}  talk {_secs(record.get('talk_s'))}"
                 f"  attempts {len(record.get('attempts') or [])}  rev {record.get('revision')}")
        if record.get("close_reason") == "timeout":
            t.append("  closed by timeout", "yellow")
        t.append(f"  {record.get('uniqueid')}", "dim")
    elif kind == "alerts":
        t.append(_short_time(record.get("at")), "dim")
        t.append(f"  {_app(record)}  ")
        t.append(f"{_caller(record, mask):<12}", "bold")
        t.append(f"  {record.get('missed_reason')}  waited {_secs(record.get('wait_s'))}"
                 f"  attempts {record.get('attempts')}")
        repeat = record.get("repeat_count")
        t.append(f"  repeat {repeat}", "red" if isinstance(repeat, int) and repeat > 1 else "")
        t.append(f"  {record.get('uniqueid')}", "dim")
    elif kind == "resolved":
        t.append(_short_time(record.get("resolved_at")), "dim")
        t.append(f"  {_app(record)}  {_caller(record, mask):<12}  ")
        t.append(str(record.get("how")), "green")
        t.append(f"  {record.get('uniqueid')}", "dim")
        if record.get("by_uniqueid"):
            t.append(f"  by call {record.get('by_uniqueid')}", "dim")
    elif kind in ("agents", "apps"):
        t.append(f"{_short_time(record.get('window_start'))} +{_window_len(record)}", "dim")
        t.append(f"  {_app(record)}  ")
        if kind == "agents":
            t.append(f"agent {record.get('agent')}  offered {record.get('offered')}  answered {record.get('answered')}"
                     f"  noanswer {record.get('noanswer')}  busy {record.get('busy')}"
                     f"  congestion {record.get('congestion')}  caller_hangup {record.get('caller_hangup')}"
                     f"  answer_rate {_rate(record.get('answer_rate'))}"
                     f"  avg_ring {_secs(record.get('avg_ring_s'))}")
        else:
            t.append(f"offered {record.get('offered')}  answered {record.get('answered')}"
                     f"  missed {record.get('missed')}  abandoned_in_ivr {record.get('abandoned_in_ivr')}"
                     f"  short_abandons {record.get('short_abandons')}"
                     f"  service_level {_rate(record.get('service_level'))}"
                     f"  asa {_secs(record.get('avg_speed_of_answer_s'))}")
        t.append("  final" if record.get("final") else "  interim", "bold" if record.get("final") else "dim")
    elif kind == "events":
        t.append(_short_time(record.get("time")), "dim")
        t.append(f"  {record.get('event', '?'):<2}", "bold")
        t.append(f"  {record.get('uniqueid')}  {_app(record)}  cli {_caller(record, mask)}")
        for name in ("attemptid", "to", "result", "duration"):
            if record.get(name) is not None:
                t.append(f"  {name} {_num(record.get(name))}")
        if record.get("time_source") == "received":
            t.append("  (time: received)", "dim")
        if record.get("origin") not in (None, "webhook"):
            t.append(f"  origin {record.get('origin')}", "dim")
    elif kind == "invalid":
        t.append(_short_time(record.get("received_at")), "dim")
        t.append(f"  {record.get('method')}  app {_app(record)}  ")
        errors = record.get("errors") or []
        t.append("; ".join(f"{e.get('field')}: {e.get('reason')}" for e in errors if isinstance(e, dict)), "red")
    else:
        t.append(_generic(record, mask))
    return t


def _window_len(record: dict[str, Any]) -> str:
    from datetime import datetime

    try:
        start = datetime.fromisoformat(str(record["window_start"]).replace("Z", "+00:00"))
        end = datetime.fromisoformat(str(record["window_end"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return "?"
    seconds = int((end - start).total_seconds())
    return f"{seconds // 60}m" if seconds % 3600 else f"{seconds // 3600}h"


def _generic(record: dict[str, Any], mask: bool) -> str:
    parts = []
    for name, value in record.items():
        if name in ("v", "raw"):
            continue
        if name == "cli" and isinstance(value, str):
            value = mask_cli(value) if mask else value
        if isinstance(value, dict | list):
            value = _generic(value, mask) if isinstance(value, dict) else f"[{len(value)}]"
            value = "{" + value + "}" if not value.startswith("[") else value
        parts.append(f"{name}={value}")
    return "  ".join(parts)


def open_alerts(alerts: Iterable[dict[str, Any]], resolved: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alerts without a resolution for their call (`uniqueid`), newest first; a replayed alert once."""
    done = {r.get("uniqueid") for r in resolved}
    latest: dict[Any, dict[str, Any]] = {}
    for a in alerts:
        if a.get("uniqueid") not in done:
            latest[a.get("uniqueid")] = a
    return sorted(latest.values(), key=lambda a: str(a.get("at", "")), reverse=True)
