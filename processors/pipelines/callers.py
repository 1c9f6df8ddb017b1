"""Callers: caller facts (missed and answered calls) re-keyed by app:cli (+ caller ticks) ->
callers table -> missed-call alerts (with their repeat count) and their resolutions; a missed
call whose caller was reached again also goes to the app metrics (calls-by-app). The rules
are `processors.core.callers`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.core.call_metrics import reached_contribution
from processors.core.callers import (
    CallerState,
    apply_fact,
    caller_key,
    expired,
    forget_at,
    in_call_order,
    reached_again_start,
    read_fact,
)
from processors.json_store import JsonStore
from processors.runtime import TICK, Output, Pipeline, Result
from schemas.codec import contribution_json, dumps
from schemas.records import MissedCallAlert, MissedCallFact
from schemas.timefmt import parse_ts


def decode(key: bytes | None, value: bytes) -> Sequence[tuple[str, Any]]:
    """The caller facts of a bundle (see `processors.bundles`), in their calls' order (see
    `in_call_order`), each keyed app:cli as it says, or
    the one fact of a record written before bundles, keyed as the record is. Facts of any kind
    (those without `kind` are missed facts)."""
    data = orjson.loads(value)
    if isinstance(data, list):
        return [(caller_key(fact.app, fact.cli), fact) for fact in in_call_order([read_fact(item) for item in data])]
    fact = read_fact(data)
    return [((key or caller_key(fact.app, fact.cli).encode()).decode("utf-8", "replace"), fact)]


def pipeline(s: Settings) -> Pipeline[CallerState]:
    alerts, resolved = s.topic(topics.ALERTS_MISSED), s.topic(topics.ALERTS_RESOLVED)
    calls_by_app = s.topic(topics.CALLS_BY_APP)
    resolutions: dict[str, Any] = {}  # the counter's children, by how (`labels` takes a lock, builds a tuple)

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
                counter = resolutions.get(rec.how)
                if counter is None:
                    counter = resolutions[rec.how] = m.RESOLUTIONS.labels(rec.how)
                counter.inc()
                out.append(Output(resolved, rec.cli.encode(), dumps(rec)))
                started = reached_again_start(state, rec)
                if started is not None:
                    # the start as known here may be a receive-time stand-in: it must not move
                    # the app's watermark (the missed call's own contribution does, if clocked)
                    c = reached_contribution(rec.app, rec.uniqueid, started)
                    out.append(Output(calls_by_app, c.key.encode(),
                                      contribution_json(rec.app, c.key, c.item_id, c.at, c.values, at_received=True)))
        return Result(state, out)

    return Pipeline(
        name="callers", table="callers",
        store=lambda rows: JsonStore(rows, CallerState.from_json, CallerState.to_json),
        source=s.topic(topics.MISSED_BY_CALLER), ticks=s.topic(topics.CALLER_TICKS),
        decode=decode, step=step, due=forget_at, tick_every=10.0,
        bundled=frozenset({calls_by_app}),
    )
