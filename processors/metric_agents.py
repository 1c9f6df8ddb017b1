"""Faust wiring for metrics: completed calls -> contributions re-keyed by agent / app -> windows.

The windowing and the figures are `processors.core.windows` and `processors.core.call_metrics`;
this module moves bytes. A timer flushes interim and final records for the keys of partitions
this worker actively owns (standby copies never emit).
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
from processors.core.windows import Window, Windowed, WindowPolicy, add, flush
from processors.faust_app import survives
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
        name: str, source: faust.TopicT, out: faust.TopicT, to_record: Callable[[str, int, Window], Any],
        late_counter: Any,
    ) -> None:
        table = app.Table(name, default=None, partitions=parts, key_type=bytes, value_type=bytes,
                          use_partitioner=True)  # the timer writes too, outside the stream
        owner: dict[bytes, int] = {}  # key -> its partition of `source`, for keys seen by this worker
        source_name = source.get_topic_name()

        def load(key: bytes) -> Windowed:
            raw = table.get(key)
            return Windowed() if raw is None else Windowed.from_json(orjson.loads(raw))

        @app.agent(source, concurrency=1, name=f"{name}_aggregate")
        async def aggregate_agent(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
            async for event in stream.events():
                key = event.key or b""
                data = orjson.loads(event.value)
                state = load(key)
                result = add(state, data["item"], parse_ts(data["at"]), data["values"], time.time(), policy)
                if result == "late":
                    late_counter.inc()
                    log.warning("late contribution for %s at %s: counted in late_*, not in the figures",
                                key.decode(errors="replace"), data["at"])
                table[key] = orjson.dumps(state.to_json())
                owner[key] = event.message.partition
                yield None

        @table.on_recover
        async def index_keys() -> None:
            owner.clear()
            actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == source_name}
            for key in table:
                # the partition is the one the producer's partitioner picks for the key
                p = _partition_of(key, parts)
                if p in actives:
                    owner[key] = p

        @app.timer(interval=1.0, name=f"{name}_flush")
        @survives
        async def flush_windows() -> None:
            actives = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == source_name}
            now = time.time()
            for key, p in list(owner.items()):
                if p not in actives:
                    owner.pop(key, None)
                    continue
                raw = table.get(key)
                if raw is None:
                    continue
                state = Windowed.from_json(orjson.loads(raw))
                due = flush(state, now, policy)
                if not due and not state.windows:
                    continue
                table[key] = orjson.dumps(state.to_json())  # stored before any await: no interleaving
                for start, w in due:
                    rec = to_record(key.decode(), start, w)
                    await out.send(key=record_key(key.decode(), start).encode(), value=dumps(rec))

    size = float(s.agent_window_s)
    aggregate("agent_windows", by_agent, agents_out, lambda k, st, w: agent_record(k, st, size, w),
              m.LATE_ATTEMPTS)
    aggregate("app_windows", by_app, apps_out, lambda k, st, w: app_record(k, st, size, w, s.service_level_s),
              m.LATE_CALLS)


def _partition_of(key: bytes, partitions: int) -> int:
    from aiokafka.partitioner import murmur2

    return int(murmur2(key) & 0x7FFFFFFF) % partitions
