"""The call lifecycle: apply an event, let time pass, decide what a call emits.

When a call closes
  * at once on H, when IN is known and every attempt seen has its TA and TE (and its TC, if a
    webhook TE says it was answered: the call log has no TC);
  * else HANGUP_GRACE_S after H arrived (attempts still ringing end as caller_hangup);
  * else after CALL_IDLE_TIMEOUT_S with no event (CONNECTED_IDLE_TIMEOUT_S while an answered
    attempt has had no TE yet: a conversation sends no events until it ends).
What it emits
  * revision 1 of its completed record when it closes; a further revision whenever a later event
    changes the record's content (a duplicate, or an event that changes nothing, emits nothing).
    The pipeline applies a batch's events with `settle_later` and calls `settle` at the batch's
    end: the late events of one call in one batch (a call-log pass, a burst of retried webhooks)
    make one revision, not one each with states in between that never were;
  * caller facts, re-keyed by app:cli for the callers agent (processors.core.callers):
    - a missed fact when a missed call is decided: at its close or at the first revision that
      makes it missed, once the hang-up grace has passed (an answer delivered out of order within
      the grace cancels it). `alert` says whether it is worth a call-back (not a short abandon).
      A short abandon's fact (counted, no alert) is followed by one with `alert: true` if a
      revision makes the call alert-worthy: the alert is raised at the first alert-worthy
      revision, and never twice (the state remembers it was alerted). Later missed revisions send
      the fact again (the call's start or end may have moved), under the alerted number;
    - an answered fact for every emitted answered revision of a call with a caller number, and of
      an alerted call under the number it was alerted with: it resolves the call's own alert, and
      open alerts of the same caller it answers (called again).
Two reports of one event (a repeated webhook, or the same event from the provider's call log) are
one fact: `call_state.merge_fact` keeps what each adds, whatever the order they came in.
A closed call is remembered for CLOSED_CALL_RETENTION_S to recognise late events, then forgotten.
A call's state is bounded (`LifecycleConfig.max_state_bytes`), or its state and record could no
longer be written to Kafka. An attempt's event that would take the state past a share of it is
refused (`CallTooLarge`: the worker dead-letters it):
  * the first event of a new attempt: past three quarters;
  * the late events of attempts the call holds, the call log's agent names and groups: past
    seven eighths;
  * an answer (a TC, an answered TE, new or not): past the bound. The last eighth is kept for it,
    whatever filled the rest first: an answer refused would make an answered call a missed one.
The IN and the H are never refused (one of each, at most `MAX_FACT_BYTES`). A refusal changes
nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson

from processors.core.call_record import CallView, completed_record, view
from processors.core.call_state import CallState, Fact, fact_key, merge_fact
from processors.core.refusal import Refused
from processors.core.rules import alert_worthy
from schemas.records import AnsweredCallFact, CallerFact, CompletedCall, MissedCallFact, SelfResolution
from schemas.timefmt import format_ts, parse_ts


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    hangup_grace_s: float = 10.0
    idle_timeout_s: float = 900.0
    connected_idle_timeout_s: float = 14400.0
    retention_s: float = 86400.0
    short_abandon_s: float = 5.0
    max_state_bytes: int = 256 * 1024  # a call's state (as JSON) that takes no new event


# A fact's most bytes in a state's JSON: its key and four strings of at most 256 characters
# (`schemas.webhook`), up to 4 bytes each, and a few numbers. A call with fewer facts than the
# smallest share of `max_state_bytes` allows at this size cannot be too large: it is not measured.
MAX_FACT_BYTES = 8 * 1024


class CallTooLarge(Refused):
    """An event that would take a call's state past its bound (see the module doc)."""


class OtherAppsCall(Refused):
    """An event whose `uniqueid` is a call of another app: calls are keyed by `uniqueid` alone, so
    it is refused (dead-lettered, with this reason), not merged into that app's call."""


@dataclass(frozen=True, slots=True)
class Emission:
    completed: CompletedCall | None = None
    facts: tuple[CallerFact, ...] = ()  # for the callers agent, keyed app:cli
    view: CallView | None = None  # what `completed` was made from (the metrics read it too)


NOTHING = Emission()


@dataclass(frozen=True, slots=True)
class Applied:
    state: CallState | None  # None: forget the call
    emission: Emission
    duplicate: bool = False
    late: bool = False  # the event arrived after the call was closed
    healed: bool = False  # a call-log event the webhooks had not delivered


def fact_from_event(event: Mapping[str, Any]) -> tuple[str, Fact]:
    """The state key and fact of a normalised `ivr.events` record (as decoded JSON)."""
    fact = Fact(
        t=parse_ts(event["time"]),
        provider_time=event["time_source"] == "provider",
        received=parse_ts(event["received_at"]),
        cli=event.get("cli") or "",
        to=event.get("to"),
        result=event.get("result"),
        duration=event.get("duration"),
        from_log=event.get("origin") == "call_log",
        agent_name=event.get("agent_name"),
        group=event.get("group"),
    )
    return fact_key(event["event"], event.get("attemptid")), fact


def apply(state: CallState | None, event: Mapping[str, Any], now: float, cfg: LifecycleConfig,
          settle_later: bool = False) -> Applied:
    key, fact = fact_from_event(event)
    if state is None:
        state = CallState(uniqueid=event["uniqueid"], app=event["app"])
    elif state.app != event["app"] and state.app.lower() != event["app"].lower():  # a GUID's hex in either case
        raise OtherAppsCall(f"call {state.uniqueid} is a call of app {state.app}, not of app {event['app']}")
    seen = state.facts.get(key)
    if seen is not None:
        merged, repeated = merge_fact(seen, fact, state.closed)
        changed = merged != seen
        if changed:
            _make_room(state, key, merged, seen, cfg)
        if repeated:
            state.duplicates += 1
        if not changed:  # a repeated delivery, or the call log confirming what is known
            return Applied(state, NOTHING, duplicate=repeated)
        state.facts[key] = merged
        if not state.closed:
            return Applied(state, NOTHING, duplicate=repeated)
        # a closed call: agent name/group filled in, or the call log's fields replaced by a webhook's
        return Applied(state, _late(state, fact, now, cfg, settle_later), late=True)
    _make_room(state, key, fact, None, cfg)
    state.facts[key] = fact
    state.last_activity = now
    healed = fact.from_log
    if key == "H" and state.hangup_seen is None:
        state.hangup_seen = now
    if state.closed:
        return Applied(state, _late(state, fact, now, cfg, settle_later), late=True, healed=healed)
    if _complete(state):
        return Applied(state, _close(state, now, cfg), healed=healed)
    return Applied(state, NOTHING, healed=healed)


def _late(state: CallState, fact: Fact, now: float, cfg: LifecycleConfig, settle_later: bool) -> Emission:
    """A late event changed a closed call: its revision now, or left for `settle`. Its record is
    made here either way, so that an event it cannot be made with fails here, where it is that
    event's error (the worker dead-letters it), not at the batch's end."""
    if not settle_later:
        return _revise(state, now, cfg)
    completed_record(state, view(state), state.revision + 1, now)
    state.revise, state.revised_by = True, fact.received
    return NOTHING


def settle(state: CallState, now: float, cfg: LifecycleConfig) -> Applied:
    """The revision the batch's late events left (`apply(..., settle_later=True)`), if any: one,
    made from everything they changed (none if, all told, the record is as it was)."""
    if not state.revise:
        return Applied(state, NOTHING)
    state.revise, state.revised_by = False, None
    return Applied(state, _revise(state, now, cfg), late=True)


def _make_room(state: CallState, key: str, fact: Fact, seen: Fact | None, cfg: LifecycleConfig) -> None:
    """Count `fact` (in place of `seen`) into a large call's size, or raise `CallTooLarge` if the
    bound refuses it (see the module doc), before anything changed."""
    if len(state.facts) < cfg.max_state_bytes * 3 // 4 // MAX_FACT_BYTES:
        return  # too few facts to come near the bound
    if "|" not in key:
        return  # the IN or the H: one of each, always taken (the call's start and end), counted after a load
    if state.size is None:  # once per load: then kept fact by fact, O(1) an event
        state.size = len(orjson.dumps(state.to_json()))
    size = state.size + _fact_bytes(key, fact) - (0 if seen is None else _fact_bytes(key, seen))
    if _answers(key, fact):
        what, most = "answers", cfg.max_state_bytes
    elif seen is None and _new_attempt(state, key):
        what, most = "new attempts", cfg.max_state_bytes * 3 // 4
    else:
        what, most = "other events of attempts", cfg.max_state_bytes * 7 // 8
    if size <= most:
        state.size = size
        return
    raise CallTooLarge(f"call {state.uniqueid} holds {len(state.facts)} events, {state.size} bytes of state "
                       f"({what} stop at {most}): this {key.partition('|')[0]} is not taken")


def _fact_bytes(key: str, fact: Fact) -> int:
    """A fact's bytes in its state's JSON: its key, its list, a colon and a comma."""
    return len(orjson.dumps(key)) + len(orjson.dumps(fact.to_json())) + 2


def _new_attempt(state: CallState, key: str) -> bool:
    """`key` (an attempt's event) is of an attempt the call holds no event of."""
    attempt = key.partition("|")[2]
    return not any(fact_key(e, attempt) in state.facts for e in ("TA", "TC", "TE"))


def _answers(key: str, fact: Fact) -> bool:
    return key.startswith("TC|") or (key.startswith("TE|") and fact.result == "answered")


def tick(state: CallState, now: float, cfg: LifecycleConfig) -> Applied:
    """Let time pass: close by grace or idle timeout, raise a due alert, forget an old call."""
    if not state.closed:
        if now >= _close_deadline(state, cfg):
            return Applied(state, _close(state, now, cfg))
        return Applied(state, NOTHING)
    if state.alert == "pending" and state.alert_due is not None and now >= state.alert_due:
        return Applied(state, Emission(facts=_decide(state, view(state), cfg)))
    assert state.closed_at is not None
    if now >= max(state.closed_at, state.last_activity) + cfg.retention_s and not state.revise:
        return Applied(None, NOTHING)  # (a revision the batch left is settled first)
    return Applied(state, NOTHING)


def next_due(state: CallState, cfg: LifecycleConfig) -> float:
    """When `tick` next has something to do for this call."""
    if not state.closed:
        return _close_deadline(state, cfg)
    if state.alert == "pending" and state.alert_due is not None:
        return state.alert_due
    assert state.closed_at is not None
    return max(state.closed_at, state.last_activity) + cfg.retention_s


def _answer_how(state: CallState, v: CallView) -> SelfResolution:
    """How the answer a revision shows resolves the call's own alert: on the call log's word when
    the answering attempt's answer (its TC, its answered TE) came from the call log alone, else on
    the late webhooks'. Read from the facts, so it does not depend on how the events were batched."""
    a = v.answered_by
    if a is None:
        return "revised_answered"  # (not used: no answer to resolve with)
    tc, te = state.facts.get(f"TC|{a.attemptid}"), state.facts.get(f"TE|{a.attemptid}")
    webhook = (tc is not None and not tc.from_log) or (te is not None and te.result == "answered" and not te.from_log)
    return "revised_answered" if webhook else "call_log_answered"


def _complete(state: CallState) -> bool:
    """Every event of the call known, as far as its events tell: its IN and H, each attempt's TA
    and TE, and the TC of an attempt a webhook TE says was answered (sent before that TE, it may
    still be on its way: closed without it, the call's first revision would have no answer time).
    The provider's call log has no TC: an answer it reports waits for none."""
    facts = state.facts
    if "H" not in facts or "IN" not in facts:
        return False
    for a in state.attempt_ids():
        end = facts.get(f"TE|{a}")
        if end is None or f"TA|{a}" not in facts:
            return False
        if end.result == "answered" and not end.from_log and f"TC|{a}" not in facts:
            return False
    return True


def _talking(state: CallState) -> bool:
    """An agent answered and that attempt has not ended yet: a conversation sends no events."""
    return any(k.startswith("TC|") and "TE|" + k[3:] not in state.facts for k in state.facts)


def _close_deadline(state: CallState, cfg: LifecycleConfig) -> float:
    if state.hangup_seen is not None:
        return state.hangup_seen + cfg.hangup_grace_s
    idle = cfg.connected_idle_timeout_s if _talking(state) else cfg.idle_timeout_s
    return state.last_activity + idle


def _fingerprint(record: CompletedCall) -> str:
    content = replace(record, revision=0, duplicates=0, closed_at="")
    return hashlib.blake2b(orjson.dumps(content), digest_size=12).hexdigest()


def _close(state: CallState, now: float, cfg: LifecycleConfig) -> Emission:
    state.closed_at = now
    v = view(state)
    state.revision = 1
    record = completed_record(state, v, 1, now)
    state.fingerprint = _fingerprint(record)
    return Emission(completed=record, facts=_changed(state, v, now, cfg, _answer_how(state, v)), view=v)


def _revise(state: CallState, now: float, cfg: LifecycleConfig) -> Emission:
    v = view(state)
    how = _answer_how(state, v)
    record = completed_record(state, v, state.revision + 1, now)
    fingerprint = _fingerprint(record)
    if fingerprint == state.fingerprint:
        return NOTHING
    state.revision += 1
    state.fingerprint = fingerprint
    return Emission(completed=record, facts=_changed(state, v, now, cfg, how), view=v)


def _worthy(v: CallView, cfg: LifecycleConfig) -> bool:
    # the record's own (rounded) figures, as the metrics see them
    return alert_worthy(v.outcome, v.close_reason, round(v.wait_s, 3), cfg.short_abandon_s)


def _changed(state: CallState, v: CallView, now: float, cfg: LifecycleConfig, how: SelfResolution,
             ) -> tuple[CallerFact, ...]:
    """The caller facts of a close or a revision (whose view is `v`)."""
    if v.outcome == "answered":
        if state.alert == "pending":
            state.alert, state.alert_due = "none", None  # answered within the grace: nothing to decide
        return _answered_facts(state, v, how)
    if state.alert == "sent" or (state.counted and not _worthy(v, cfg)):
        # decided already (alerted, or counted and still a short abandon): the revision may have
        # moved the call's start or end, which the callers agent counts and resolves by
        return (_missed_fact(state, v, state.alert == "sent"),)
    if state.alert != "pending":
        state.alert = "pending"
        state.alert_due = now if state.hangup_seen is None else max(now, state.hangup_seen + cfg.hangup_grace_s)
    assert state.alert_due is not None
    return _decide(state, v, cfg) if now >= state.alert_due else ()


def _decide(state: CallState, v: CallView, cfg: LifecycleConfig) -> tuple[CallerFact, ...]:
    """The missed-call decision, once due: the missed fact (alert-worthy or a short abandon)."""
    state.alert_due = None
    if v.outcome == "answered":
        state.alert = "none"
        return ()
    worthy = _worthy(v, cfg)
    state.alert = "sent" if worthy else "none"
    state.counted = True
    if worthy:
        state.alerted_cli = v.cli
    return (_missed_fact(state, v, worthy),)


def _answered_facts(state: CallState, v: CallView, how: SelfResolution) -> tuple[CallerFact, ...]:
    clis = [v.cli] if v.cli else []
    if state.alert == "sent":
        alerted = state.alerted_cli if state.alerted_cli is not None else v.cli
        if alerted not in clis:
            clis.insert(0, alerted)
    return tuple(AnsweredCallFact(uniqueid=state.uniqueid, app=state.app, cli=cli, started_at=format_ts(v.started),
                                  how=how, start_known=v.start_known) for cli in clis)


def _missed_fact(state: CallState, v: CallView, alert: bool) -> MissedCallFact:
    agents: list[str] = []
    for a in v.attempts:
        if a.to not in agents:
            agents.append(a.to)
    reason = v.missed_reason
    assert reason is not None
    return MissedCallFact(
        uniqueid=state.uniqueid,
        app=state.app,
        cli=state.alerted_cli if state.alerted_cli is not None else v.cli,  # its alert's caller key
        at=format_ts(v.ended),
        missed_reason=reason,
        wait_s=round(v.wait_s, 3),
        attempts=len(v.attempts),
        agents_tried=agents,
        alert=alert,
        started_at=format_ts(v.started),
        wait_is_lower_bound=v.wait_is_lower_bound,
    )
