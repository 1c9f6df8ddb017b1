"""Callers: missed-call facts re-keyed by app:cli (+ caller ticks) -> callers table -> missed-call
alerts with their repeat count. The rule is `processors.core.repeat_callers`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.core.repeat_callers import CallerHistory, forget, forget_at, record_missed
from processors.json_store import JsonStore
from processors.runtime import TICK, Output, Pipeline, Result
from schemas.codec import dumps
from schemas.records import MissedCallFact
from schemas.timefmt import parse_ts


def decode(key: bytes | None, value: bytes) -> Sequence[tuple[str, Any]]:
    data = orjson.loads(value)
    data.pop("v", None)
    return [((key or b"").decode("utf-8", "replace"), MissedCallFact(**data))]


def pipeline(s: Settings) -> Pipeline[CallerHistory]:
    alerts = s.topic(topics.ALERTS_MISSED)

    def step(key: str, history: CallerHistory | None, item: Any, now: float) -> Result[CallerHistory] | None:
        if item is TICK:
            if history is not None and forget(history, now):
                return Result(None)  # nothing in the last 24 h: the caller is forgotten
            return None
        history = history or CallerHistory()
        alert = record_missed(history, item)
        out = []
        if alert is not None:
            m.ALERTS.inc()
            received = None if item.received_at is None else parse_ts(item.received_at)
            out.append(Output(alerts, alert.cli.encode(), dumps(alert), received, "alert"))
        return Result(history, out, forget_at(history))

    return Pipeline(
        name="callers", table="callers",
        store=lambda rows: JsonStore(rows, CallerHistory.from_json, CallerHistory.to_json),
        source=s.topic(topics.MISSED_BY_CALLER), ticks=s.topic(topics.CALLER_TICKS),
        decode=decode, step=step, due=forget_at, tick_every=10.0,
    )
