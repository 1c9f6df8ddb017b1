"""Callers: caller facts (missed and answered calls) re-keyed by app:cli (+ caller ticks) ->
callers table -> missed-call alerts (with their repeat count) and their resolutions. The rules
are `processors.core.callers`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.core.callers import CallerState, apply_fact, caller_key, expired, forget_at, read_fact
from processors.json_store import JsonStore
from processors.runtime import TICK, Output, Pipeline, Result
from schemas.codec import dumps
from schemas.records import MissedCallAlert, MissedCallFact
from schemas.timefmt import parse_ts


def decode(key: bytes | None, value: bytes) -> Sequence[tuple[str, Any]]:
    """A caller fact of any kind (records without `kind` are missed facts). The key is the
    record's (app:cli, as the fact says)."""
    fact = read_fact(orjson.loads(value))
    return [((key or caller_key(fact.app, fact.cli).encode()).decode("utf-8", "replace"), fact)]


def pipeline(s: Settings) -> Pipeline[CallerState]:
    alerts, resolved = s.topic(topics.ALERTS_MISSED), s.topic(topics.ALERTS_RESOLVED)

    def step(key: str, state: CallerState | None, item: Any, now: float) -> Result[CallerState] | None:
        if item is TICK:
            if state is not None and expired(state, now):
                return Result(None)  # no fact for the retention period: the caller is forgotten
            return None
        state, emitted = apply_fact(state, item, now)
        out = []
        for rec in emitted:
            if isinstance(rec, MissedCallAlert):
                m.ALERTS.inc()
                received = (parse_ts(item.received_at)
                            if isinstance(item, MissedCallFact) and item.received_at is not None else None)
                out.append(Output(alerts, rec.cli.encode(), dumps(rec), received, "alert"))
            else:
                m.RESOLUTIONS.labels(rec.how).inc()
                out.append(Output(resolved, rec.cli.encode(), dumps(rec)))
        return Result(state, out, forget_at(state))

    return Pipeline(
        name="callers", table="callers",
        store=lambda rows: JsonStore(rows, CallerState.from_json, CallerState.to_json),
        source=s.topic(topics.MISSED_BY_CALLER), ticks=s.topic(topics.CALLER_TICKS),
        decode=decode, step=step, due=forget_at, tick_every=10.0,
    )
