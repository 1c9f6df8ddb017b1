"""Calls: ivr.events (+ call ticks) -> calls table -> completed records, caller facts and
the metric contributions of each completed record. The lifecycle is `processors.core.lifecycle`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from config import topics
from config.settings import Settings
from processors import reconcile_metrics
from processors import worker_metrics as m
from processors.core.call_metrics import Contribution, agent_contributions, app_contribution, receive_timed
from processors.core.call_record import CallView
from processors.core.call_state import CallState
from processors.core.callers import caller_key
from processors.core.lifecycle import (
    NOTHING,
    Applied,
    CallTooLarge,
    LifecycleConfig,
    OtherAppsCall,
    apply,
    next_due,
    settle,
    tick,
)
from processors.json_store import JsonStore
from processors.runtime import TICK, Output, Pipeline, Result
from schemas.codec import contribution_json, dumps
from schemas.records import CallerFact, CompletedCall, MissedCallFact
from schemas.timefmt import format_ts, parse_ts

# calls kept decoded between batches (see `JsonStore`), by their stored size: ~10,000 calls of
# ~800 bytes (the open calls of a busy centre, or of a backlog being read), ~3x that in memory
KEPT_CALLS_BYTES = 8 * 1024 * 1024


def _as_loaded(state: CallState) -> CallState:
    state.size = None  # measured once per load (see `lifecycle._make_room`)
    state.revise, state.revised_by = False, None  # settled before each save: never set here
    return state


def lifecycle_config(s: Settings) -> LifecycleConfig:
    return LifecycleConfig(
        hangup_grace_s=s.hangup_grace_s,
        idle_timeout_s=s.call_idle_timeout_s,
        # the contract's rule, a call with no event for CALL_IDLE_TIMEOUT_S is closed, holds for a
        # call whose agent is talking too unless CONNECTED_IDLE_TIMEOUT_S says otherwise
        connected_idle_timeout_s=s.connected_idle_timeout_s or s.call_idle_timeout_s,
        retention_s=s.closed_call_retention_s,
        short_abandon_s=s.short_abandon_s,
        max_state_bytes=s.worker_produce_batch_bytes // 2,  # its record, about as large, fits a batch
    )


def contribution(app_id: str, c: Contribution, at_received: bool = False) -> bytes:
    return contribution_json(app_id, c.key, c.item_id, c.at, c.values, at_received)


def metric_contributions(rec: CompletedCall, s: Settings, v: CallView) -> list[Output]:
    """What a completed record (made from the view `v`) adds to the metric windows, re-keyed by
    agent and by app (sent from here: the record is in hand, and a stateless re-keying step needs
    no topic of its own)."""
    unclocked = receive_timed(rec.uniqueid, v)
    by_agent = s.topic(topics.ATTEMPTS_BY_AGENT)
    out = [Output(by_agent, c.key.encode(), contribution(rec.app, c, c.item_id in unclocked))
           for c in agent_contributions(rec)]
    c = app_contribution(rec, s.short_abandon_s, s.service_level_s)
    out.append(Output(s.topic(topics.CALLS_BY_APP), c.key.encode(), contribution(rec.app, c, c.item_id in unclocked)))
    return out


def caller_facts(facts: Iterable[CallerFact], received: float | None, topic: str) -> list[Output]:
    """An emission's missed and answered calls for the callers pipeline, keyed app:cli (bundled,
    except with UPGRADE_FROM=0.1); a missed one carries `received`, the receipt of the webhook
    that decided it."""
    out = []
    for fact in facts:
        if isinstance(fact, MissedCallFact) and received is not None:
            fact.received_at = format_ts(received)  # (made for this emission alone)
        out.append(Output(topic, caller_key(fact.app, fact.cli).encode(), dumps(fact)))
    return out


def decode(key: bytes | None, value: bytes) -> Sequence[tuple[str, Any]]:
    data = orjson.loads(value)
    if not isinstance(data, dict):
        raise ValueError("an event is a JSON object")
    return [((key or b"").decode("utf-8", "replace"), data)]


def pipeline(s: Settings) -> Pipeline[CallState]:
    cfg = lifecycle_config(s)
    completed, missed = s.topic(topics.CALLS_COMPLETED), s.topic(topics.MISSED_BY_CALLER)
    open_calls: set[str] = set()

    def outputs(applied: Applied, received: float | None) -> list[Output]:
        """The emission's records. Their `received`: the ingress receipt of the webhook that
        closed (or last revised) the call; for a call closed by a timer, that of its hang-up, if
        any."""
        state, em, out = applied.state, applied.emission, []
        if received is None and state is not None and "H" in state.facts:
            received = state.facts["H"].received
        if em.completed is not None:
            rec = em.completed
            out.append(Output(completed, rec.uniqueid.encode(), dumps(rec), received, "completed"))
            assert em.view is not None  # a record comes with the view it was made from
            out.extend(metric_contributions(rec, s, em.view))
            if rec.revision == 1:
                m.CALLS_CLOSED.inc(rec.close_reason)
            else:
                m.REVISIONS.inc()
        if em.facts:
            out.extend(caller_facts(em.facts, received, missed))
        return out

    def step(uid: str, state: CallState | None, item: Any, now: float) -> Result[CallState] | None:
        if item is TICK:
            if state is None:
                return None
            applied = tick(state, now, cfg)
        else:
            m.EVENTS.inc(str(item.get("event")))
            try:
                applied = apply(state, item, now, cfg, settle_later=True)
            except (CallTooLarge, OtherAppsCall):
                if item.get("origin") != "call_log":
                    raise  # dead-lettered once, with its reason
                # the call log's copy comes back with each new leader and each change of its
                # entry: dead-lettered, the same event would be set aside (and alerted on) again
                reconcile_metrics.EVENTS_REFUSED.inc()
                return None
            if applied.late:
                m.LATE_EVENTS.inc()
            if applied.duplicate:
                m.DUPLICATES.inc()
            if applied.healed:
                reconcile_metrics.EVENTS_HEALED.inc()
        if applied.emission is NOTHING:  # most events: the call goes on, nothing to write
            return Result(applied.state)
        return Result(applied.state, outputs(applied, None if item is TICK else parse_ts(item["received_at"])))

    def settled(uid: str, state: CallState, now: float) -> Result[CallState] | None:
        if not state.revise:  # most calls: no late event in the batch
            return None
        received = state.revised_by
        applied = settle(state, now, cfg)
        return Result(applied.state, outputs(applied, received))

    def on_saved(saved: dict[str, CallState | None]) -> None:
        for uid, st in saved.items():
            if st is None or st.closed:
                open_calls.discard(uid)
            else:
                open_calls.add(uid)
        m.CALLS_OPEN.set(len(open_calls))

    def on_recovered(states: Iterable[tuple[str, CallState]]) -> None:
        open_calls.clear()
        open_calls.update(uid for uid, st in states if not st.closed)
        m.CALLS_OPEN.set(len(open_calls))

    return Pipeline(
        name="calls", table="calls",
        store=lambda rows: JsonStore(rows, CallState.from_json, CallState.to_json, keep_bytes=KEPT_CALLS_BYTES,
                                        reuse=_as_loaded),
        source=s.topic(topics.EVENTS), ticks=s.topic(topics.CALL_TICKS),
        decode=decode, step=step, due=lambda st: next_due(st, cfg),
        bundled=frozenset({s.topic(topics.ATTEMPTS_BY_AGENT), s.topic(topics.CALLS_BY_APP)}
                          | (set() if s.writes_0_1_formats else {missed})),
        tick_every=0.5, settle=settled, on_saved=on_saved, on_recovered=on_recovered,
    )
