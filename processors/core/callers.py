"""Callers: per app and caller number, the missed calls, their alerts, and what resolves them.

Keyed by `app:cli`, fed with caller facts by the calls agent: a missed call (decided, or made
alert-worthy by a revision) and an answered call. Everything is keyed by uniqueid, so replays
(at-least-once delivery) change nothing and no call is alerted or resolved twice.

Rules (also in the README):
  * An alert is raised for a missed fact with `alert: true` whose call has no alert yet.
  * repeat_count = the caller's missed calls known here when the alert is raised whose end lies
    within 24 h of this one's (before or after), this one included; short abandons count, calls
    since shown answered do not; withheld numbers (empty cli) always count 1. Raised in event
    order the alerts count 1, 2, 3; whatever the arrival order, the alert raised last counts all.
  * An open alert is resolved once: `revised_answered` / `call_log_answered` when its own call
    turns out answered; `called_again_answered` when the same (non-empty) number has an answered
    call to the same app that started after the missed call started and no later than 24 h after
    it ended (its start known: its IN seen). An answered call known before the alert is raised
    resolves it at once (the alert is still raised: one per missed call), and so does one that a
    revision of the missed call (its start or end moved) now qualifies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from schemas.records import (
    AnsweredCallFact,
    CallerFact,
    MissedCall,
    MissedCallAlert,
    MissedCallFact,
    ResolutionHow,
    ResolvedAlert,
    SelfResolution,
)
from schemas.timefmt import format_ts, parse_ts

WINDOW_S = 24 * 3600.0
# a call is kept this long (wall clock) after its latest fact, and a caller with no fact for this
# long is forgotten: by then the calls agent has forgotten the call too (closed-call retention,
# 24 h by default), so no revision can come, and a call arriving that late is rare. Kept by
# wall clock, not event time: a late burst must still find the calls it is counted with.
RETENTION_S = 2 * WINDOW_S
MAX_ENTRIES = 500  # a caller with more calls than this in two days is counted as 500+

#: what a missed call's alert and its fact share (`dataclasses.fields` each time cost ~1 us an alert)
_MISSED_CALL_FIELDS = tuple(f.name for f in fields(MissedCall))

AlertStatus = Literal["counted", "open", "closed"]  # closed: resolved (or read from an older format)
CallerOutput = MissedCallAlert | ResolvedAlert


@dataclass(slots=True)
class Missed:
    at: float  # the call's end
    started: float
    status: AlertStatus  # counted: no alert raised (yet)
    seen: float  # wall clock of its latest fact


@dataclass(slots=True)
class Answered:
    started: float
    how: SelfResolution  # resolves this call's own alert so
    seen: float
    start_known: bool = True  # its IN was seen (else it may have started earlier)


@dataclass(slots=True)
class CallerState:
    app: str
    cli: str
    missed: dict[str, Missed] = field(default_factory=dict)
    answered: dict[str, Answered] = field(default_factory=dict)
    seen: float = 0.0  # wall clock of the latest fact

    def to_json(self) -> dict[str, Any]:
        # (an empty kind skips its comprehension: most callers have calls of one kind only)
        missed, answered = self.missed, self.answered
        return {
            "a": self.app, "c": self.cli, "s": self.seen,
            "m": {u: [m.at, m.started, m.status, m.seen] for u, m in missed.items()} if missed else {},
            "n": {u: [a.started, a.how, a.seen, a.start_known] for u, a in answered.items()} if answered else {},
        }

    @classmethod
    def from_json(cls, data: Any) -> CallerState:
        # the older format: [[at, uniqueid], ...], alerts already decided; kept as long as it was.
        # Its app and cli are taken from the next fact.
        if isinstance(data, list):
            return cls("", "", {str(u): Missed(float(at), float(at), "closed", float(at)) for at, u in data})
        return cls(
            data["a"], data["c"],
            {u: Missed(float(at), float(st), status, float(seen)) for u, (at, st, status, seen) in data["m"].items()},
            {u: Answered(float(st), how, float(seen), bool(known)) for u, (st, how, seen, known) in data["n"].items()},
            float(data["s"]),
        )


def caller_key(app: str, cli: str) -> str:
    return f"{app}:{cli}"


def read_fact(data: Mapping[str, Any]) -> CallerFact:
    """A caller fact from its JSON form (records without `kind` predate answered facts: missed;
    `v` is read as any other field).

    Raises KeyError, TypeError or ValueError for a record that is not one."""
    kind = data.get("kind", "missed")
    fact: CallerFact
    if kind == "missed":
        fact = MissedCallFact(**data)
        parse_ts(fact.at)
    elif kind == "answered":
        fact = AnsweredCallFact(**data)
    else:
        raise ValueError(f"unknown caller fact kind {kind!r}")
    if fact.started_at is not None:
        parse_ts(fact.started_at)
    return fact


def in_call_order(facts: Sequence[CallerFact]) -> list[CallerFact]:
    """Facts in the order their calls started (by uniqueid where two started together), each
    call's own facts in the order they came. One batch of the calls agent sends its facts in the
    order its partitions happened to be read (missed calls decided by the same timer round come
    together); a caller's alerts count their repeats in the order they are raised, which is then
    the calls' order, not the partitions'."""
    first: dict[str, tuple[str, str]] = {}
    for fact in facts:
        first.setdefault(fact.uniqueid, (_started(fact), fact.uniqueid))
    return sorted(facts, key=lambda fact: first[fact.uniqueid])


def _started(fact: CallerFact) -> str:
    """The call's start as the fact writes it (ISO, UTC, one format: ordered as text), or its end
    on a missed fact written before starts were."""
    if isinstance(fact, MissedCallFact):
        return fact.started_at or fact.at
    return fact.started_at


def apply_fact(state: CallerState | None, fact: CallerFact, now: float) -> tuple[CallerState, list[CallerOutput]]:
    """Apply one fact to the caller's state (None: none kept): the state and the records to send."""
    if state is None:
        state = CallerState(fact.app, fact.cli)
    elif not state.app:  # read from the older format
        state.app, state.cli = fact.app, fact.cli
    if now > state.seen:  # (max(state.seen, now), without the call)
        state.seen = now
    out = _missed(state, fact, now) if isinstance(fact, MissedCallFact) else _answered(state, fact, now)
    _prune(state, now)
    return state, out


def _missed(state: CallerState, fact: MissedCallFact, now: float) -> list[CallerOutput]:
    at = parse_ts(fact.at)
    started = parse_ts(fact.started_at) if fact.started_at is not None else at
    entry = state.missed.get(fact.uniqueid)
    if entry is None:
        entry = state.missed[fact.uniqueid] = Missed(at, started, "counted", now)
    else:
        entry.at, entry.started, entry.seen = at, started, now  # a revision may have moved it
    if entry.status == "open":
        return _resolution(state, fact.uniqueid, entry, now)  # moved: perhaps answered again now
    if not fact.alert or entry.status != "counted":
        return []  # a short abandon (counted only), or alerted and resolved already
    entry.status = "open"
    shared = {name: getattr(fact, name) for name in _MISSED_CALL_FIELDS}
    alert = MissedCallAlert(**shared, wait_is_lower_bound=fact.wait_is_lower_bound,
                            repeat_count=repeat_count(state, fact.uniqueid))
    return [alert, *_resolution(state, fact.uniqueid, entry, now)]


def _resolution(state: CallerState, uid: str, entry: Missed, now: float) -> list[CallerOutput]:
    """An open alert's resolution by an answer already known: its own, or the caller's again."""
    own = state.answered.get(uid)
    if own is not None:
        return [_resolve(state, uid, own.how, None, now)]
    by = min(((a.started, u) for u, a in state.answered.items() if _again(state, entry, uid, u, a)), default=None)
    return [] if by is None else [_resolve(state, uid, "called_again_answered", by[1], now)]


def _answered(state: CallerState, fact: AnsweredCallFact, now: float) -> list[CallerOutput]:
    answered = state.answered[fact.uniqueid] = Answered(parse_ts(fact.started_at), fact.how, now, fact.start_known)
    out: list[CallerOutput] = []
    own = state.missed.get(fact.uniqueid)
    if own is not None and own.status == "open":
        out.append(_resolve(state, fact.uniqueid, fact.how, None, now))
    if not state.missed:
        return out  # (most callers: no missed call to look through)
    opened = [(m.at, uid, m) for uid, m in state.missed.items() if m.status == "open"]  # few, if any
    if opened:
        for _, uid, m in sorted(opened, key=lambda entry: entry[:2]):
            if _again(state, m, uid, fact.uniqueid, answered):
                out.append(_resolve(state, uid, "called_again_answered", fact.uniqueid, now))
    return out


def _again(state: CallerState, missed: Missed, missed_uid: str, answered_uid: str, answered: Answered) -> bool:
    """The caller called again and was answered: a later call (by start) within 24 h of the miss.
    An answered call whose IN is unknown may have started earlier: not evidence enough (yet)."""
    return (bool(state.cli) and answered_uid != missed_uid and answered.start_known
            and missed.started < answered.started <= missed.at + WINDOW_S)


def _resolve(state: CallerState, uid: str, how: ResolutionHow, by: str | None, now: float) -> ResolvedAlert:
    entry = state.missed[uid]
    # a fact about it: kept for the retention from now, so its start is there for the app metrics
    entry.status, entry.seen = "closed", max(entry.seen, now)
    return ResolvedAlert(uniqueid=uid, app=state.app, cli=state.cli, resolved_at=format_ts(now), how=how,
                         by_uniqueid=by)


def reached_again_start(state: CallerState, resolved: ResolvedAlert) -> float | None:
    """The start of the missed call whose caller `resolved` says was reached again (it counts in
    the app metrics' window of that start); None for any other resolution."""
    if resolved.how != "called_again_answered":
        return None
    return state.missed[resolved.uniqueid].started


def repeat_count(state: CallerState, uid: str) -> int:
    """Missed calls known for this caller within 24 h (either side) of `uid`'s, itself included."""
    if not state.cli:
        return 1  # withheld numbers cannot be told apart: each is its own first call
    at = state.missed[uid].at
    return sum(1 for u, m in state.missed.items()
               if abs(m.at - at) <= WINDOW_S and (u == uid or u not in state.answered))


def _prune(state: CallerState, now: float) -> None:
    """Drop calls not heard of for RETENTION_S; keep at most MAX_ENTRIES of each kind (the newest)."""
    horizon = now - RETENTION_S
    if len(state.missed) <= MAX_ENTRIES and len(state.answered) <= MAX_ENTRIES and _all_seen_after(state, horizon):
        return  # nothing to drop (the usual case): no need to sort
    missed = sorted(((m.at, u) for u, m in state.missed.items() if m.seen > horizon), reverse=True)[:MAX_ENTRIES]
    if len(missed) < len(state.missed):
        state.missed = {u: state.missed[u] for _, u in missed}
    answered = sorted(((a.started, u) for u, a in state.answered.items() if a.seen > horizon),
                      reverse=True)[:MAX_ENTRIES]
    if len(answered) < len(state.answered):
        state.answered = {u: state.answered[u] for _, u in answered}


def _all_seen_after(state: CallerState, horizon: float) -> bool:
    """Every call of the caller heard of after `horizon` (plain loops: this runs for every fact, and
    two generators for a caller of one or two calls cost more than the comparisons)."""
    for m in state.missed.values():
        if m.seen <= horizon:
            return False
    for a in state.answered.values():  # noqa: SIM110 - see above
        if a.seen <= horizon:
            return False
    return True


def forget_at(state: CallerState) -> float:
    """When the caller is forgotten (wall clock): RETENTION_S after their latest fact."""
    return state.seen + RETENTION_S


def expired(state: CallerState, now: float) -> bool:
    return now >= forget_at(state)
