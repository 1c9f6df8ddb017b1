"""Repeat callers: per app and caller, the missed calls of the last 24 hours.

Keyed by `app:cli`, fed by the missed-call facts of closed calls. A replayed fact (same
uniqueid) is recognised and raises nothing, so at-least-once delivery cannot double-count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.records import MissedCallAlert, MissedCallFact
from schemas.timefmt import parse_ts

WINDOW_S = 24 * 3600.0
MAX_ENTRIES = 500  # a caller with more missed calls than this in a day is counted as 500+


@dataclass(slots=True)
class CallerHistory:
    missed: list[tuple[float, str]] = field(default_factory=list)  # (at, uniqueid), sorted by at

    def to_json(self) -> list[Any]:
        return [list(m) for m in self.missed]

    @classmethod
    def from_json(cls, data: list[Any]) -> CallerHistory:
        return cls([(float(at), str(uid)) for at, uid in data])

    def newest(self) -> float | None:
        return self.missed[-1][0] if self.missed else None


def caller_key(app: str, cli: str) -> str:
    return f"{app}:{cli}"


def record_missed(history: CallerHistory, fact: MissedCallFact) -> MissedCallAlert | None:
    """Add a missed call; return its alert (with repeat_count), or None (short abandon or replay)."""
    if any(uid == fact.uniqueid for _, uid in history.missed):
        return None
    at = parse_ts(fact.at)
    history.missed.append((at, fact.uniqueid))
    history.missed.sort()
    horizon = history.missed[-1][0] - WINDOW_S
    history.missed = [m for m in history.missed if m[0] >= horizon][-MAX_ENTRIES:]
    if not fact.alert:
        return None
    # withheld numbers cannot be told apart: each is its own first call
    repeat = 1 if not fact.cli else sum(1 for t, _ in history.missed if at - WINDOW_S <= t <= at)
    return MissedCallAlert(
        uniqueid=fact.uniqueid,
        app=fact.app,
        cli=fact.cli,
        at=fact.at,
        missed_reason=fact.missed_reason,
        wait_s=fact.wait_s,
        attempts=fact.attempts,
        agents_tried=fact.agents_tried,
        repeat_count=repeat,
    )


def forget(history: CallerHistory, now: float) -> bool:
    """Whether the whole history is older than the window and can be dropped."""
    newest = history.newest()
    return newest is None or newest < now - WINDOW_S


def forget_at(history: CallerHistory) -> float | None:
    """When the history will have nothing left inside the window (None: empty already)."""
    newest = history.newest()
    return None if newest is None else newest + WINDOW_S + 1.0
