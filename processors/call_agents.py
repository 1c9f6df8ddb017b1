"""Faust wiring for calls: ivr.events (+ ticks) -> calls table -> completed records and alerts.

The lifecycle is decided in `processors.core.lifecycle`; this module only moves bytes. Every
state change happens in the keyed agent, in partition order: the timer does not touch the
table, it sends a tick (a wake-up hint keyed by uniqueid) that the agent handles like an event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import faust
import orjson
from faust.types import TP, EventT

from config import topics
from config.settings import Settings
from processors import worker_metrics as m
from processors.bundles import bundle
from processors.core.call_metrics import Contribution, agent_contributions, app_contribution
from processors.core.call_state import CallState
from processors.core.lifecycle import Applied, LifecycleConfig, apply, next_due, tick
from processors.core.repeat_callers import CallerHistory, caller_key, forget, forget_at, record_missed
from processors.faust_app import IvrApp, Ticker, acting_for, batches, skip_unreadable, survives
from processors.output_producer import Record
from schemas.codec import dumps
from schemas.records import CompletedCall, MetricContribution, MissedCallAlert, MissedCallFact
from schemas.timefmt import format_ts, parse_ts

log = logging.getLogger("processors.calls")


def lifecycle_config(s: Settings) -> LifecycleConfig:
    return LifecycleConfig(
        hangup_grace_s=s.hangup_grace_s,
        idle_timeout_s=s.call_idle_timeout_s,
        connected_idle_timeout_s=s.connected_idle_timeout_s,
        retention_s=s.closed_call_retention_s,
        short_abandon_s=s.short_abandon_s,
    )


def contribution(app_id: str, c: Contribution) -> bytes:
    return dumps(MetricContribution(app=app_id, key=c.key, item=c.item_id, at=format_ts(c.t), values=c.values))


def metric_contributions(rec: CompletedCall, s: Settings) -> list[Record]:
    """What a completed record adds to the metric windows, re-keyed by agent and by app.

    Sent from here rather than by a consumer of ivr.calls.completed: the record is in hand, and
    a re-keying step needs no topic of its own before the repartition topic (as in Kafka Streams,
    stateless steps run in the task that produced their input).
    """
    out = [(s.topic(topics.ATTEMPTS_BY_AGENT), c.key.encode(), contribution(rec.app, c))
           for c in agent_contributions(rec)]
    c = app_contribution(rec, s.short_abandon_s, s.service_level_s)
    out.append((s.topic(topics.CALLS_BY_APP), c.key.encode(), contribution(rec.app, c)))
    return out


@dataclass(slots=True)
class Outputs:
    """What a batch of call events sends: records, metric contributions (bundled per partition
    when sent) and, for the latency histogram, when each closing event reached the ingress."""

    records: list[Record] = field(default_factory=list)
    contributions: list[Record] = field(default_factory=list)
    received: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Touched:
    """A call changed by the batch being handled: its newest state and an event of its partition."""

    state: CallState | None
    event: EventT[bytes]


def register(app: IvrApp, s: Settings) -> None:
    cfg = lifecycle_config(s)
    parts = s.topic_partitions
    events_and_ticks = app.topic(s.topic(topics.EVENTS), s.topic(topics.CALL_TICKS), partitions=parts)
    completed_name = s.topic(topics.CALLS_COMPLETED)
    missed_name = s.topic(topics.MISSED_BY_CALLER)
    alerts_name = s.topic(topics.ALERTS_MISSED)
    events_name = s.topic(topics.EVENTS)

    calls = app.batched_table("calls")
    callers = app.batched_table("callers")
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
        try:
            highwater = app.consumer.highwater(TP(events_name, partition))
        except (AssertionError, KeyError):  # aiokafka's answer for a partition not (or no longer) assigned
            return False  # moved away in a rebalance: its new owner decides
        return highwater is not None and next_offset.get(partition, 0) >= highwater

    def load(uid: str) -> CallState | None:
        raw = calls.get(uid.encode())
        return None if raw is None else CallState.from_json(orjson.loads(raw))

    def persist(touched: dict[str, Touched]) -> None:
        """Each call the batch changed is written once (one changelog record), however many of its
        events the batch held."""
        for uid, t in touched.items():
            with acting_for(t.event):
                if t.state is None:
                    calls.pop(uid.encode(), None)
                else:
                    calls[uid.encode()] = orjson.dumps(t.state.to_json())
            if t.state is None or t.state.closed:
                open_calls.discard(uid)
            else:
                open_calls.add(uid)
            due.set(uid, None if t.state is None else next_due(t.state, cfg))
        m.CALLS_OPEN.set(len(open_calls))

    def collect(result: Applied, received: float | None, out: Outputs) -> None:
        em = result.emission
        if em.completed is not None:
            rec = em.completed
            out.records.append((completed_name, rec.uniqueid.encode(), dumps(rec)))
            out.contributions.extend(metric_contributions(rec, s))
            if rec.revision == 1:
                m.CALLS_CLOSED.labels(rec.close_reason).inc()
            else:
                m.REVISIONS.inc()
            if received is not None:
                out.received.append(received)
        if em.missed is not None:
            fact = em.missed
            out.records.append((missed_name, caller_key(fact.app, fact.cli).encode(), dumps(fact)))

    def handle(uid: str, event: EventT[bytes], state: CallState | None, now: float, out: Outputs) -> Applied | None:
        """One event or tick against the call's current state; None: nothing changes."""
        if call_ticks.is_tick(event):
            if state is None:
                return None
            if not caught_up(event.message.partition):
                parked.setdefault(event.message.partition, set()).add(uid)
                return None
            result = tick(state, now, cfg)
            collect(result, None, out)
            return result
        next_offset[event.message.partition] = event.message.offset + 1
        try:
            data = orjson.loads(event.value)
            received = parse_ts(data["received_at"])
            m.EVENTS.labels(data["event"]).inc()
            result = apply(state, data, now, cfg)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            skip_unreadable(event, e)
            return None
        if result.late:
            m.LATE_EVENTS.inc()
        if result.duplicate:
            m.DUPLICATES.inc()
            return result  # only the duplicate count changed
        collect(result, received, out)
        return result

    @app.agent(events_and_ticks, concurrency=1)  # keyed state: never more (faust-streaming #606)
    async def process_calls(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
        # Batches: each touched call is read and written once per batch, outputs go out in bulk,
        # and Faust acknowledges the batch's offsets only after both (take_events acks on return).
        async for events in batches(stream, s):
            now = time.time()
            touched: dict[str, Touched] = {}
            out = Outputs()
            for event in events:
                uid = (event.key or b"").decode("utf-8", "replace")
                t = touched.get(uid)
                if t is None:
                    with acting_for(event):
                        state = load(uid)
                else:
                    state = t.state
                result = handle(uid, event, state, now, out)
                if result is not None:
                    touched[uid] = Touched(result.state, event)
            persist(touched)
            await app.deliver(out.records, calls, placed=bundle(out.contributions, parts))
            sent = time.time()
            for received in out.received:
                m.LATENCY.labels("completed").observe(max(0.0, sent - received))
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
        async for events in batches(stream, s):
            out: list[Record] = []
            raised: list[float] = []
            # each caller's history is read and written once per batch, however many of their
            # missed calls it holds (a history can hold hundreds: a write is not small)
            touched: dict[bytes, tuple[CallerHistory | None, EventT[bytes]]] = {}
            for event in events:
                key = event.key or b""
                if key in touched:
                    history = touched[key][0]
                else:
                    with acting_for(event):
                        raw = callers.get(key)
                    history = None if raw is None else CallerHistory.from_json(orjson.loads(raw))
                history, alert = missed_call(event, history)
                touched[key] = (history, event)
                if alert is not None:
                    out.append((alerts_name, alert.cli.encode(), dumps(alert)))
                    raised.append(parse_ts(alert.at))
            for key, (history, event) in touched.items():
                with acting_for(event):
                    if history is None:
                        callers.pop(key, None)
                    else:
                        callers[key] = orjson.dumps(history.to_json())
                callers_due.set(key.decode(), None if history is None else forget_at(history))
            await app.deliver(out, callers)
            now = time.time()
            for at in raised:
                m.ALERTS.inc()
                m.LATENCY.labels("alert").observe(max(0.0, now - at))
            yield None

    def missed_call(event: EventT[bytes], history: CallerHistory | None,
                    ) -> tuple[CallerHistory | None, MissedCallAlert | None]:
        """A missed call (or a tick) against the caller's history (None: none kept): the history
        to keep (None: forget the caller) and the alert raised, if any."""
        if caller_ticks.is_tick(event):
            if history is not None and forget(history, time.time()):
                return None, None  # nothing in the last 24 h: the caller is forgotten
            return history, None
        data = orjson.loads(event.value)
        data.pop("v", None)
        history = history or CallerHistory()
        return history, record_missed(history, MissedCallFact(**data))

    @callers.on_recover
    async def index_callers() -> None:
        callers_due.clear()
        for key, raw in callers.items():
            callers_due.set(key.decode(), forget_at(CallerHistory.from_json(orjson.loads(raw))))

