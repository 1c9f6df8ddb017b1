"""Faust wiring for metrics: contributions re-keyed by agent / app (sent by the calls agent) -> windows.

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
from faust.types import EventT

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.bundles import unbundle
from processors.core.call_metrics import agent_record, app_record, record_key
from processors.core.windows import Window, WindowPolicy, next_flush
from processors.faust_app import IvrApp, Ticker, acting_for, batches, skip_unreadable
from processors.output_producer import Record
from processors.window_store import WindowStore
from schemas.codec import dumps
from schemas.timefmt import parse_ts

log = logging.getLogger("processors.metrics")


def window_policy(s: Settings) -> WindowPolicy:
    return WindowPolicy(
        size_s=float(s.agent_window_s),
        grace_s=s.metrics_grace_s,
        idle_close_s=s.metrics_idle_close_s,
        interim_interval_s=s.metrics_interim_interval_s,
        keep_final_s=max(3600.0, s.metrics_grace_s),
    )


def contributions(event: EventT[bytes]) -> list[dict[str, Any]]:
    try:
        return unbundle(event.value)
    except (KeyError, TypeError, ValueError) as e:
        skip_unreadable(event, e)
        return []


def register(app: IvrApp, s: Settings) -> None:
    policy = window_policy(s)
    parts = s.topic_partitions
    by_agent = app.topic(s.topic(topics.ATTEMPTS_BY_AGENT), partitions=parts)
    by_app = app.topic(s.topic(topics.CALLS_BY_APP), partitions=parts)
    agents_out = s.topic(topics.METRICS_AGENTS)
    apps_out = s.topic(topics.METRICS_APPS)

    def aggregate(
        name: str, source: faust.TopicT, ticks_base: str, out_name: str,
        to_record: Callable[[str, int, Window], Any], late_counter: Any,
    ) -> None:
        table = app.batched_table(name)
        ticker = Ticker(app, s.topic(ticks_base), parts, 1.0)
        due = ticker.due
        windows = WindowStore(table, policy)

        # Every table write happens here, in the key's partition order: the timer only sends ticks
        # (Faust's RocksDB store refuses writes from outside a stream event, and rightly so).
        @app.agent(app.topic(source.get_topic_name(), ticker.name, partitions=parts), concurrency=1,
                   name=f"{name}_aggregate")
        async def aggregate_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for events in batches(stream, s):
                now = time.time()
                records: list[Record] = []
                for event in events:
                    with acting_for(event):
                        if ticker.is_tick(event):
                            key = (event.key or b"").decode()
                            for start, w in windows.flush(key, now):
                                records.append((out_name, record_key(key, start).encode(),
                                                dumps(to_record(key, start, w))))
                            due.set(key, next_flush(windows.state(key), policy))
                            continue
                        for data in contributions(event):
                            key = data["key"]
                            if windows.add(key, data["item"], parse_ts(data["at"]), data["values"], now) == "late":
                                late_counter.inc()
                                log.warning("late contribution for %s at %s: its window's final is out; "
                                            "not counted", key, data["at"])
                            due.set(key, next_flush(windows.state(key), policy))
                await app.deliver(records, table)
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

