"""Faust wiring for calls: ivr.events (+ ticks) -> calls table -> completed records and alerts.

The lifecycle is decided in `processors.core.lifecycle`; this module only moves bytes. Every
state change happens in the keyed agent, in partition order: the timer does not touch the
table, it sends a tick (a wake-up hint keyed by uniqueid) that the agent handles like an event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import faust
import orjson
from faust.types import TP

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.core.call_state import CallState
from processors.core.lifecycle import Applied, LifecycleConfig, apply, next_due, tick
from processors.core.repeat_callers import CallerHistory, caller_key, forget, forget_at, record_missed
from processors.faust_app import Ticker, survives, table_options
from schemas.codec import dumps
from schemas.records import MissedCallFact
from schemas.timefmt import parse_ts

log = logging.getLogger("processors.calls")


def lifecycle_config(s: Settings) -> LifecycleConfig:
    return LifecycleConfig(
        hangup_grace_s=s.hangup_grace_s,
        idle_timeout_s=s.call_idle_timeout_s,
        connected_idle_timeout_s=s.connected_idle_timeout_s,
        retention_s=s.closed_call_retention_s,
        short_abandon_s=s.short_abandon_s,
    )


def register(app: faust.App, s: Settings) -> None:
    cfg = lifecycle_config(s)
    parts = s.topic_partitions
    events_and_ticks = app.topic(s.topic(topics.EVENTS), s.topic(topics.CALL_TICKS), partitions=parts)
    completed = app.topic(s.topic(topics.CALLS_COMPLETED), partitions=parts)
    missed_by_caller = app.topic(s.topic(topics.MISSED_BY_CALLER), partitions=parts)  # for sending
    alerts = app.topic(s.topic(topics.ALERTS_MISSED), partitions=parts)
    events_name = s.topic(topics.EVENTS)

    calls = app.Table("calls", default=None, partitions=parts, key_type=bytes, value_type=bytes,
                      options=table_options(s))
    callers = app.Table("callers", default=None, partitions=parts, key_type=bytes, value_type=bytes,
                      options=table_options(s))
    open_calls: set[str] = set()
    # next offset to process, per ivr.events partition: deadlines must not fire for a partition
    # that is still behind (after a restart or a takeover its events may be waiting to be read)
    next_offset: dict[int, int] = {}
    # calls whose tick found their partition behind: held until it catches up (re-arming them every
    # second would flood the tick topic exactly while the worker is busiest)
    parked: dict[int, set[str]] = {}

    def release_parked(now: float) -> None:
        for partition in [p for p in parked if caught_up(p)]:
            for uid in parked.pop(partition):
                call_ticks.due.set(uid, now)

    call_ticks = Ticker(app, s.topic(topics.CALL_TICKS), parts, 0.5, before_send=release_parked)
    due = call_ticks.due

    def caught_up(partition: int) -> bool:
        highwater = app.consumer.highwater(TP(events_name, partition))
        return highwater is not None and next_offset.get(partition, 0) >= highwater

    async def emit(result: Applied, received: float | None) -> None:
        em = result.emission
        if em.completed is not None:
            rec = em.completed
            await completed.send(key=rec.uniqueid.encode(), value=dumps(rec))
            if rec.revision == 1:
                m.CALLS_CLOSED.labels(rec.close_reason).inc()
            else:
                m.REVISIONS.inc()
            if received is not None:
                m.LATENCY.labels("completed").observe(max(0.0, time.time() - received))
        if em.missed is not None:
            fact = em.missed
            await missed_by_caller.send(key=caller_key(fact.app, fact.cli).encode(), value=dumps(fact))

    def store(uid: str, result: Applied) -> None:
        state = result.state
        if state is None:
            calls.pop(uid.encode(), None)
            due.set(uid, None)
            open_calls.discard(uid)
            return
        calls[uid.encode()] = orjson.dumps(state.to_json())
        due.set(uid, next_due(state, cfg))
        if state.closed:
            open_calls.discard(uid)
        else:
            open_calls.add(uid)
        m.CALLS_OPEN.set(len(open_calls))

    def load(uid: str) -> CallState | None:
        raw = calls.get(uid.encode())
        return None if raw is None else CallState.from_json(orjson.loads(raw))

    @app.agent(events_and_ticks, concurrency=1)  # keyed state: never more (faust-streaming #606)
    async def process_calls(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            now = time.time()
            uid = (event.key or b"").decode("utf-8", "replace")
            if call_ticks.is_tick(event):
                state = load(uid)
                if state is None:
                    pass
                elif not caught_up(event.message.partition):
                    parked.setdefault(event.message.partition, set()).add(uid)
                else:
                    result = tick(state, now, cfg)
                    store(uid, result)
                    await emit(result, None)
                yield None
                continue
            next_offset[event.message.partition] = event.message.offset + 1
            try:
                data = orjson.loads(event.value)
                received = parse_ts(data["received_at"])
                m.EVENTS.labels(data["event"]).inc()
                result = apply(load(uid), data, now, cfg)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                m.BAD_EVENTS.inc()
                log.error("skipping unreadable record at %s[%s]@%s: %s", event.message.topic,
                          event.message.partition, event.message.offset, type(e).__name__)
                yield None
                continue
            if result.duplicate:
                m.DUPLICATES.inc()
            if result.late:
                m.LATE_EVENTS.inc()
            if not result.duplicate:
                store(uid, result)
                await emit(result, received)
            elif result.state is not None:
                calls[uid.encode()] = orjson.dumps(result.state.to_json())  # the duplicate count
            yield None

    @app.timer(interval=5.0)
    @survives
    async def report_lag() -> None:
        """Records of ivr.events not yet processed, per partition this worker owns."""
        for tp in app.assignor.assigned_actives():
            if tp.topic == events_name:
                highwater = app.consumer.highwater(tp)
                if highwater is not None:
                    lag = max(0, highwater - next_offset.get(tp.partition, 0))
                    m.LAG.labels(events_name, str(tp.partition)).set(lag)

    @calls.on_recover
    async def rebuild_index() -> None:
        """After a rebalance the table holds the calls of this worker's partitions: index them."""
        due.clear()
        open_calls.clear()
        next_offset.clear()
        parked.clear()
        # the offsets the stream resumes from (Faust seeks to them too, right after this callback)
        committed = await app.consumer.seek_to_committed()  # type: ignore[attr-defined]
        for tp, offset in committed.items():
            if tp.topic == events_name:
                next_offset[tp.partition] = offset or 0  # None: nothing committed yet, read from the start
        for key, raw in calls.items():
            state = CallState.from_json(orjson.loads(raw))
            uid = key.decode()
            due.set(uid, next_due(state, cfg))
            if not state.closed:
                open_calls.add(uid)
        m.CALLS_OPEN.set(len(open_calls))
        log.info("call index rebuilt: %d calls, %d open", len(due), len(open_calls))

    caller_ticks = Ticker(app, s.topic(topics.CALLER_TICKS), parts, 10.0)
    callers_due = caller_ticks.due  # caller key -> when its history is older than the 24 h window

    @app.agent(app.topic(s.topic(topics.MISSED_BY_CALLER), caller_ticks.name, partitions=parts), concurrency=1)
    async def process_missed(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        async for event in stream.events():
            key = event.key or b""
            raw = callers.get(key)
            history = CallerHistory() if raw is None else CallerHistory.from_json(orjson.loads(raw))
            if caller_ticks.is_tick(event):
                if raw is not None and forget(history, time.time()):
                    del callers[key]  # nothing in the last 24 h: the caller is forgotten
                    callers_due.set(key.decode(), None)
                yield None
                continue
            data = orjson.loads(event.value)
            data.pop("v", None)
            alert = record_missed(history, MissedCallFact(**data))
            callers[key] = orjson.dumps(history.to_json())
            callers_due.set(key.decode(), forget_at(history))
            if alert is not None:
                await alerts.send(key=alert.cli.encode(), value=dumps(alert))
                m.ALERTS.inc()
                m.LATENCY.labels("alert").observe(max(0.0, time.time() - parse_ts(alert.at)))
            yield None

    @callers.on_recover
    async def index_callers() -> None:
        callers_due.clear()
        for key, raw in callers.items():
            callers_due.set(key.decode(), forget_at(CallerHistory.from_json(orjson.loads(raw))))

