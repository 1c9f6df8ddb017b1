"""Faust wiring for metrics: completed calls -> contributions re-keyed by agent / app -> windows.

The windowing and the figures are `processors.core.windows` and `processors.core.call_metrics`;
this module moves bytes. A timer sends a tick for each key whose next record is due; the tick
reaches the worker that owns the key, whose agent flushes it (standby copies never emit).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
import orjson

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.core.call_metrics import (
    Contribution,
    agent_contributions,
    agent_record,
    app_contribution,
    app_record,
    record_key,
)
from processors.core.windows import Window, WindowPolicy, next_flush
from processors.faust_app import Ticker, table_options
from processors.window_store import WindowStore
from schemas.codec import dumps
from schemas.records import CompletedCall, MetricContribution
from schemas.timefmt import format_ts, parse_ts

log = logging.getLogger("processors.metrics")


def window_policy(s: Settings) -> WindowPolicy:
    return WindowPolicy(
        size_s=float(s.agent_window_s),
        grace_s=s.metrics_grace_s,
        idle_close_s=s.metrics_idle_close_s,
        interim_interval_s=s.metrics_interim_interval_s,
        keep_final_s=max(3600.0, s.metrics_grace_s),
    )


def completed_from_json(data: dict[str, Any]) -> CompletedCall:
    from schemas.records import Attempt

    data = dict(data)
    data.pop("v", None)
    data["attempts"] = [Attempt(**a) for a in data["attempts"]]
    return CompletedCall(**data)


def register(app: faust.App, s: Settings) -> None:
    policy = window_policy(s)
    parts = s.topic_partitions
    completed = app.topic(s.topic(topics.CALLS_COMPLETED), partitions=parts)
    by_agent = app.topic(s.topic(topics.ATTEMPTS_BY_AGENT), partitions=parts)
    by_app = app.topic(s.topic(topics.CALLS_BY_APP), partitions=parts)
    agents_out = app.topic(s.topic(topics.METRICS_AGENTS), partitions=parts)
    apps_out = app.topic(s.topic(topics.METRICS_APPS), partitions=parts)

    def contribution(app_id: str, c: Contribution) -> bytes:
        return dumps(MetricContribution(app=app_id, key=c.key, item=c.item_id, at=format_ts(c.t), values=c.values))

    @app.agent(completed, concurrency=1)
    async def fan_out(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for value in stream:
            call = completed_from_json(orjson.loads(value))
            for c in agent_contributions(call):
                await by_agent.send(key=c.key.encode(), value=contribution(call.app, c))
            c = app_contribution(call, s.short_abandon_s, s.service_level_s)
            await by_app.send(key=c.key.encode(), value=contribution(call.app, c))
            yield None

    def aggregate(
        name: str, source: faust.TopicT, ticks_base: str, out: faust.TopicT,
        to_record: Callable[[str, int, Window], Any], late_counter: Any,
    ) -> None:
        table = app.Table(name, default=None, partitions=parts, key_type=bytes, value_type=bytes,
                          options=table_options(s))
        ticker = Ticker(app, s.topic(ticks_base), parts, 1.0)
        due = ticker.due
        windows = WindowStore(table, policy)

        # Every table write happens here, in the key's partition order: the timer only sends ticks
        # (Faust's RocksDB store refuses writes from outside a stream event, and rightly so).
        @app.agent(app.topic(source.get_topic_name(), ticker.name, partitions=parts), concurrency=1,
                   name=f"{name}_aggregate")
        async def aggregate_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                key = (event.key or b"").decode()
                now = time.time()
                if ticker.is_tick(event):
                    records = windows.flush(key, now)
                    due.set(key, next_flush(windows.state(key), policy))
                    for start, w in records:
                        rec = to_record(key, start, w)
                        await out.send(key=record_key(key, start).encode(), value=dumps(rec))
                    yield None
                    continue
                data = orjson.loads(event.value)
                if windows.add(key, data["item"], parse_ts(data["at"]), data["values"], now) == "late":
                    late_counter.inc()
                    log.warning("late contribution for %s at %s: its window's final is out; not counted",
                                key, data["at"])
                due.set(key, next_flush(windows.state(key), policy))
                yield None

        @table.on_recover
        async def index_keys() -> None:
            windows.rebuild(table.items(), time.time())  # standby copies too: their one tick goes to the owner
            due.clear()
            for key, state in windows.cache.items():
                due.set(key, next_flush(state, policy))

    size = float(s.agent_window_s)
    aggregate("agent_windows", by_agent, topics.AGENT_WINDOW_TICKS, agents_out,
              lambda k, st, w: agent_record(k, st, size, w), m.LATE_ATTEMPTS)
    aggregate("app_windows", by_app, topics.APP_WINDOW_TICKS, apps_out,
              lambda k, st, w: app_record(k, st, size, w, s.service_level_s), m.LATE_CALLS)

