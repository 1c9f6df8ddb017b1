"""Agent and app metrics: what a completed call contributes, and a window's figures.

Definitions (also in the README):
  agent, per attempt by attempt start:
    offered      attempts (TA) offered to the agent             answered  attempts connected
    noanswer / busy / congestion   provider results             caller_hangup  caller left while it rang
    answer_rate = answered / offered
    answer_rate_excl_caller_hangup = answered / (offered - caller_hangup)
    avg_ring_s  = mean(TA -> connect) over answered attempts     talk_s = sum of talk of answered attempts
  app, per call by call start (IN):
    offered, answered, missed, abandoned_in_ivr,
    short_abandons (missed, hang-up seen, wait < SHORT_ABANDON_S: processors.core.rules, as for alerts)
    avg_speed_of_answer_s = mean(IN -> answer) over answered calls
    service_level = answered within SERVICE_LEVEL_S / (offered - short_abandons)
    missed_reached_again = missed calls, short abandons excluded, whose caller was reached again
      (their alert resolved `called_again_answered`: the callers pipeline sends a `reached` item)
    reached_again_share = missed_reached_again / (missed - short_abandons)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from processors.core.call_record import CallView
from processors.core.rules import answered_within, is_short_abandon
from processors.core.windows import Window
from schemas.records import AgentWindowMetrics, AppWindowMetrics, CompletedCall
from schemas.timefmt import format_ts, parse_ts

# What an item adds to a window, named and versioned (`v`). Positional lists were used before
# (`[result, ring_s, talk_s]`, `[outcome, missed_reason, wait_s, short_abandon, within_sl]`) in
# window rows and on the repartition topics: `named` still reads them.
CONTRIBUTION_VERSION = 1
ATTEMPT_FIELDS = ("result", "ring_s", "talk_s")
CALL_FIELDS = ("outcome", "missed_reason", "wait_s", "short_abandon", "within_service_level")
# a missed call whose caller was reached again: an item of its own (`uniqueid|reached`) in the
# window of the missed call's start, so it is counted whatever the order it and the call arrive
# in, and a replay replaces it. Only ever written named.
REACHED_FIELDS = ("reached_again",)
REACHED_SUFFIX = "|reached"


class Contribution(NamedTuple):  # a tuple: made two or three times for every completed call
    key: str  # app:agent or app
    item_id: str
    at: str  # event time that picks the window, as the records write it (`schemas.timefmt`)
    values: dict[str, Any]  # {"v": 1, <ATTEMPT_FIELDS or CALL_FIELDS>}

    @property
    def t(self) -> float:
        """`at` in epoch seconds."""
        return parse_ts(self.at)


def named(values: Any) -> dict[str, Any]:
    """A contribution's figures as named fields, whether written named or (before) positionally."""
    if isinstance(values, dict):
        if values.get("v") != CONTRIBUTION_VERSION:
            raise ValueError(f"unknown contribution version {values.get('v')!r}")
        return values
    if isinstance(values, list) and len(values) in (len(ATTEMPT_FIELDS), len(CALL_FIELDS)):
        fields = ATTEMPT_FIELDS if len(values) == len(ATTEMPT_FIELDS) else CALL_FIELDS
        return {"v": CONTRIBUTION_VERSION, **dict(zip(fields, values, strict=True))}
    raise ValueError("a contribution's values are a named object (or a positional list of 3 or 5)")


def agent_key(app: str, agent: str) -> str:
    return f"{app}:{agent}"


def agent_contributions(call: CompletedCall) -> list[Contribution]:
    """One per attempt: its result, ring time when answered, talk time."""
    app, uniqueid, started, attempts = call.app, call.uniqueid, call.started_at, call.attempts
    answering: str | None = None
    for a in attempts:  # (a loop, not next() over a generator: this runs for every completed call)
        if a.result == "answered":
            answering = a.attemptid
            break
    out = []
    for a in attempts:
        answered = a.result == "answered"
        talk = call.talk_s if a.attemptid == answering else 0.0
        out.append(Contribution(agent_key(app, a.to), f"{uniqueid}|{a.attemptid}", a.started_at or started, {
            "v": CONTRIBUTION_VERSION, "result": a.result, "ring_s": a.ring_s if answered else None, "talk_s": talk}))
    return out


def app_contribution(call: CompletedCall, short_abandon_s: float, service_level_s: float) -> Contribution:
    return Contribution(call.app, call.uniqueid, call.started_at, {
        "v": CONTRIBUTION_VERSION, "outcome": call.outcome, "missed_reason": call.missed_reason, "wait_s": call.wait_s,
        "short_abandon": is_short_abandon(call.outcome, call.close_reason, call.wait_s, short_abandon_s),
        "within_service_level": answered_within(call.outcome, call.wait_s, service_level_s),
    })


def reached_contribution(app: str, uniqueid: str, started: float) -> Contribution:
    """A missed call's caller was reached again: counted in the window of the missed call's start.
    `started` is as the callers pipeline knows it, perhaps a receive-time stand-in: the pipeline
    marks it so, and it never advances the watermark (the call's own contribution does)."""
    return Contribution(app, f"{uniqueid}{REACHED_SUFFIX}", format_ts(started),
                        {"v": CONTRIBUTION_VERSION, "reached_again": True})


def receive_timed(uniqueid: str, v: CallView) -> frozenset[str]:
    """The items (as in `Contribution.item_id`) whose window time is a receive-time stand-in, not
    the provider's clock: they are counted in their window but must not advance its watermark."""
    out = [f"{uniqueid}|{a.attemptid}" for a in v.attempts if not a.started_clocked]
    if not v.start_clocked:
        out.append(uniqueid)
    return frozenset(out)


def _rate(num: int, den: int) -> float | None:
    return None if den <= 0 else round(num / den, 4)


def agent_record(key: str, start: int, size: float, w: Window) -> AgentWindowMetrics:
    app, _, agent = key.partition(":")
    results = [v["result"] for v in w.items.values()]
    count = {r: results.count(r) for r in ("answered", "noanswer", "busy", "congestion", "caller_hangup")}
    offered = len(results)
    rings = [v["ring_s"] for v in w.items.values() if v["result"] == "answered" and v["ring_s"] is not None]
    return AgentWindowMetrics(
        app=app, agent=agent, window_start=format_ts(start), window_end=format_ts(start + size),
        offered=offered, answered=count["answered"], noanswer=count["noanswer"], busy=count["busy"],
        congestion=count["congestion"], caller_hangup=count["caller_hangup"],
        answer_rate=_rate(count["answered"], offered),
        answer_rate_excl_caller_hangup=_rate(count["answered"], offered - count["caller_hangup"]),
        avg_ring_s=round(sum(rings) / len(rings), 3) if rings else None,
        talk_s=round(sum(v["talk_s"] for v in w.items.values()), 3),
        final=w.final,
    )


def app_record(app: str, start: int, size: float, w: Window, service_level_s: float) -> AppWindowMetrics:
    calls = {item: c for item, c in w.items.items() if not item.endswith(REACHED_SUFFIX)}
    reached = {item.removesuffix(REACHED_SUFFIX) for item, c in w.items.items()
               if item.endswith(REACHED_SUFFIX) and c.get("reached_again")}
    answered = [c for c in calls.values() if c["outcome"] == "answered"]
    short = sum(1 for c in calls.values() if c["short_abandon"])
    missed = len(calls) - len(answered)
    # a call revised answered, or since a short abandon, no longer counts, though its item stays
    reached_again = sum(1 for item, c in calls.items()
                        if item in reached and c["outcome"] == "missed" and not c["short_abandon"])
    return AppWindowMetrics(
        app=app, window_start=format_ts(start), window_end=format_ts(start + size),
        offered=len(calls), answered=len(answered), missed=missed,
        abandoned_in_ivr=sum(1 for c in calls.values() if c["missed_reason"] == "abandoned_in_ivr"),
        short_abandons=short,
        avg_speed_of_answer_s=round(sum(c["wait_s"] for c in answered) / len(answered), 3) if answered else None,
        service_level=_rate(sum(1 for c in calls.values() if c["within_service_level"]), len(calls) - short),
        service_level_s=service_level_s, missed_reached_again=reached_again,
        reached_again_share=_rate(reached_again, missed - short), final=w.final,
    )


def record_key(key: str, start: int) -> str:
    """Topic key: app:agent:window_start or app:window_start (window_start as in the record)."""
    return f"{key}:{format_ts(start)}"
