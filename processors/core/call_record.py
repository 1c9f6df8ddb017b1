"""From a call's facts to its completed-call record, and the facts the metrics need.

Where an event carries no provider `time` (TE and H usually do not), its time is placed from
the provider's own durations when the anchor is known, which is more faithful than our
receive time:  TE end = TA time + TE duration;  H = IN time + H duration.
Otherwise the receive time stands in.

A call closed without its IN (it came after the hang-up grace, or never) has an unknown start:
the earliest provider time known of it stands in (an attempt's TA, or H's time less its duration
when H has a provider time), else H's receive time less its duration. Whether a start is on the
provider's clock is kept (`start_clocked`): a receive-time start must not move metric watermarks.
Nor must a provider time more than `CLOCK_AHEAD_S` ahead of its own receipt (a clock set a day
ahead, a bad value): one such webhook would close an app's and its agents' windows early and leave
the calls still on their way out of them. Such a time is still the record's and its windows'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from processors.core.call_state import CallState, Fact
from schemas.records import Attempt, CompletedCall, MissedReason
from schemas.timefmt import format_ts

_PARTS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """`1498110438.13.10` after `1498110438.13.9`."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in _PARTS.split(text) if p)


@dataclass(frozen=True, slots=True)
class AttemptView:
    attemptid: str
    to: str
    started: float | None
    connected: float | None
    ended: float | None
    result: str
    answered: bool
    agent_name: str | None = None
    group: str | None = None
    started_clocked: bool = True  # `started` is a provider time (not our receive time)

    @property
    def ring_s(self) -> float | None:
        if self.started is None:
            return None
        stop = self.connected if self.answered else self.ended
        return None if stop is None else max(0.0, stop - self.started)


@dataclass(frozen=True, slots=True)
class CallView:
    """Everything derived from a call's facts, computed once per close or revision."""

    started: float
    ended: float
    attempts: tuple[AttemptView, ...]
    answered_by: AttemptView | None
    answer_time: float | None
    close_reason: Literal["hangup", "timeout"]
    cli: str
    start_known: bool  # the IN was seen
    start_clocked: bool = True  # `started` is the provider's clock, not a receive-time stand-in

    @property
    def outcome(self) -> Literal["answered", "missed"]:
        return "answered" if self.answered_by is not None else "missed"

    @property
    def missed_reason(self) -> MissedReason | None:
        if self.answered_by is not None:
            return None
        return "no_answer" if self.attempts else "abandoned_in_ivr"

    @property
    def wait_s(self) -> float:
        until = self.answer_time if self.answer_time is not None else self.ended
        return max(0.0, until - self.started)

    @property
    def wait_is_lower_bound(self) -> bool:
        """The real wait may be longer: its start (IN) or its end is not known, only bounded."""
        if not self.start_known:
            return True
        if self.answered_by is None:
            return self.close_reason == "timeout"  # the caller's hang-up was never seen
        return self.answered_by.connected is None  # no TC: answer placed at the attempt's start

    @property
    def talk_s(self) -> float:
        return 0.0 if self.answer_time is None else max(0.0, self.ended - self.answer_time)


def _end_time(end: Fact, start: Fact | None) -> float:
    """When an end (TE, H) without a provider time happened: its start plus its duration."""
    if not end.provider_time and end.duration is not None and start is not None:
        return start.t + end.duration
    return end.t


def _placed(state: CallState) -> dict[str, float]:
    """Each fact's event time, with TE and H placed by the provider's durations where possible."""
    facts = state.facts
    inn = facts.get("IN")
    out: dict[str, float] = {}
    for key, f in facts.items():
        if key == "H":
            out[key] = _end_time(f, inn)
        elif key.startswith("TE|"):
            out[key] = _end_time(f, facts.get("TA|" + key[3:]))
        else:
            out[key] = f.t
    return out


#: how far ahead of its receipt a provider time may be and still move metric watermarks
CLOCK_AHEAD_S = 300.0


def _clocked(fact: Fact) -> bool:
    return fact.provider_time and fact.t <= fact.received + CLOCK_AHEAD_S


def _start(state: CallState, placed: dict[str, float]) -> tuple[float, bool]:
    """When the call began, and whether that is on the provider's clock (and not ahead of our
    receipt of it by more than CLOCK_AHEAD_S)."""
    facts = state.facts
    inn, h = facts.get("IN"), facts.get("H")
    if inn is not None:
        return inn.t, _clocked(inn)
    # no IN: H's duration runs from IN, and every provider time is at or after the start
    clocked = [f.t for f in facts.values() if f.provider_time]
    if h is not None and h.duration is not None:
        if h.provider_time:
            clocked.append(h.t - h.duration)
        elif not clocked:
            return h.t - h.duration, False
    if clocked:
        start = min(clocked)
        return start, start <= min(f.received for f in facts.values()) + CLOCK_AHEAD_S
    return min(placed.values()), False


def view(state: CallState) -> CallView:
    facts = state.facts
    inn, h = facts.get("IN"), facts.get("H")
    placed = _placed(state)
    started, start_clocked = _start(state, placed)
    # without H (closed by timeout) the call ends with the last thing we know of it
    ended = max(started, placed["H"] if h is not None else max(placed.values()))
    attempts: list[AttemptView] = []
    for aid in state.attempt_ids():
        ta, tc, te = facts.get(f"TA|{aid}"), facts.get(f"TC|{aid}"), facts.get(f"TE|{aid}")
        to = next((f.to for f in (ta, tc, te) if f is not None and f.to is not None), "")
        answered = tc is not None or (te is not None and te.result == "answered")
        result = te.result if te is not None and te.result else ("answered" if answered else "caller_hangup")
        present = [f for f in (ta, tc, te) if f is not None]
        attempts.append(AttemptView(
            aid, to, ta.t if ta else None, tc.t if tc else None,
            # no TE: a connected attempt ends with the call, a ringing one too (caller_hangup)
            placed[f"TE|{aid}"] if te is not None else ended,
            result, answered,
            # from the call log, on its TA and TE
            next((f.agent_name for f in present if f.agent_name is not None), None),
            next((f.group for f in present if f.group is not None), None),
            _clocked(ta) if ta else start_clocked,
        ))
    if len(attempts) > 1:
        attempts.sort(key=lambda a: (_order_time(a), natural_key(a.attemptid)))
    answered_by = next((a for a in attempts if a.answered), None)
    answer_time = None
    if answered_by is not None:
        # without TC the connect time is unknown: the attempt's start is the best bound we have
        answer_time = next(t for t in (answered_by.connected, answered_by.started, answered_by.ended, ended)
                           if t is not None)
    cli = inn.cli if inn is not None and inn.cli else max((f.cli for f in facts.values()), default="")
    return CallView(started, ended, tuple(attempts), answered_by, answer_time,
                    "hangup" if h is not None else "timeout", cli, inn is not None, start_clocked)


def _order_time(a: AttemptView) -> float:
    return next((t for t in (a.started, a.connected, a.ended) if t is not None), float("inf"))


def completed_record(state: CallState, v: CallView, revision: int, closed_at: float) -> CompletedCall:
    return CompletedCall(
        uniqueid=state.uniqueid,
        app=state.app,
        cli=v.cli,
        started_at=format_ts(v.started),
        ended_at=format_ts(v.ended),
        duration=round(v.ended - v.started, 3),
        outcome=v.outcome,
        missed_reason=v.missed_reason,
        answered_by=v.answered_by.to if v.answered_by else None,
        wait_s=round(v.wait_s, 3),
        talk_s=round(v.talk_s, 3),
        attempts=[
            Attempt(
                attemptid=a.attemptid,
                to=a.to,
                started_at=format_ts(a.started) if a.started is not None else None,
                connected_at=format_ts(a.connected) if a.connected is not None else None,
                ended_at=format_ts(a.ended) if a.ended is not None else None,
                result=a.result,  # type: ignore[arg-type]
                ring_s=round(a.ring_s, 3) if a.ring_s is not None else None,
                agent_name=a.agent_name,
                group=a.group,
            )
            for a in v.attempts
        ],
        close_reason=v.close_reason,
        wait_is_lower_bound=v.wait_is_lower_bound,
        revision=revision,
        duplicates=state.duplicates,
        closed_at=format_ts(closed_at),
    )
