"""Alerts converge to the truth: simulated days delivered late and messily through the pure core
(calls lifecycle, then the callers agent), as after an outage with retries."""

from __future__ import annotations

import heapq
import random
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from bench.simulator import Profile, generate
from processors.core.call_state import CallState
from processors.core.callers import CallerState, apply_fact, caller_key
from processors.core.lifecycle import Applied, LifecycleConfig, apply, next_due, tick
from processors.core.rules import alert_worthy
from schemas.codec import dumps
from schemas.records import CompletedCall, MissedCallAlert, ResolvedAlert
from schemas.timefmt import parse_provider_time, parse_ts
from schemas.webhook import normalise

CFG = LifecycleConfig(hangup_grace_s=10, idle_timeout_s=600, connected_idle_timeout_s=7200, retention_s=86400,
                      short_abandon_s=5)
T0 = 1_780_000_000.0
KOLKATA = ZoneInfo("Asia/Kolkata")


class World:
    def __init__(self) -> None:
        self.calls: dict[str, CallState] = {}
        self.due: list[tuple[float, str]] = []
        self.callers: dict[str, CallerState] = {}
        self.records: dict[str, CompletedCall] = {}
        self.alerts: list[MissedCallAlert] = []
        self.resolved: list[ResolvedAlert] = []

    def take(self, uid: str, r: Applied, now: float) -> None:
        if r.state is None:
            self.calls.pop(uid, None)
            return
        self.calls[uid] = r.state
        heapq.heappush(self.due, (next_due(r.state, CFG), uid))
        if r.emission.completed is not None:
            self.records[uid] = r.emission.completed
        for f in r.emission.facts:
            key = caller_key(f.app, f.cli)
            self.callers[key], out = apply_fact(self.callers.get(key), f, now)
            self.alerts += [o for o in out if isinstance(o, MissedCallAlert)]
            self.resolved += [o for o in out if isinstance(o, ResolvedAlert)]

    def run_until(self, now: float) -> None:
        while self.due and self.due[0][0] <= now:
            at, uid = heapq.heappop(self.due)
            state = self.calls.get(uid)
            if state is not None and next_due(state, CFG) == at:
                self.take(uid, tick(state, at, CFG), at)

    def event(self, e: dict[str, Any], now: float) -> None:
        self.run_until(now)
        self.take(e["uniqueid"], apply(self.calls.get(e["uniqueid"]), e, now, CFG), now)


@pytest.mark.parametrize("seed", range(6))
def test_after_an_outage_alerted_minus_resolved_is_the_missed_calls(seed: int) -> None:
    rng = random.Random(seed)
    profile = Profile(agents=4, p_duplicate=0.1, p_reorder=0.1, p_missing_hangup=0.05, mean_talk_s=60)
    raw, _ = generate(300, T0, 6 * 3600, profile, seed=seed)
    clis = ["", *(f"98765{i:05d}" for i in range(12))]  # few callers: repeats and calls again
    cli_of: dict[str, str] = {}
    arrivals: list[tuple[float, int, dict[str, Any]]] = []
    clock = T0  # the simulator delivers in event-time order; TE and H carry no time: the clock's
    for i, fields in enumerate(raw):
        fields = {**fields, "cli": cli_of.setdefault(fields["uniqueid"], rng.choice(clis))}
        if "time" in fields:
            clock = max(clock, parse_provider_time(fields["time"], KOLKATA))
        # one in six delayed up to 40 minutes (503s and retries during an outage)
        at = clock + (rng.uniform(0, 2400) if rng.random() < 1 / 6 else 0.0)
        e = orjson.loads(dumps(normalise(fields, at, KOLKATA)))
        arrivals.append((at, i, e))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    world = World()
    for at, _, e in arrivals:
        world.event(e, at)
    world.run_until(arrivals[-1][0] + CFG.idle_timeout_s + CFG.hangup_grace_s + 1)

    assert not [s for s in world.calls.values() if not s.closed or s.alert == "pending"]
    alerted = [a.uniqueid for a in world.alerts]
    assert len(alerted) == len(set(alerted))  # never two alerts for a call
    resolved = [r.uniqueid for r in world.resolved]
    assert len(resolved) == len(set(resolved)) and set(resolved) <= set(alerted)  # at most one per alert

    def worthy(r: CompletedCall) -> bool:
        return alert_worthy(r.outcome, r.close_reason, r.wait_s, CFG.short_abandon_s)

    final = world.records
    # every call finally worth an alert has one; every alerted call finally answered is resolved
    assert {u for u, r in final.items() if worthy(r)} <= set(alerted)
    assert {u for u in alerted if final[u].outcome == "answered"} <= set(resolved)
    assert {u for u in set(alerted) - set(resolved) if not worthy(final[u])} == set()  # nothing else open
    for res in world.resolved:
        if res.how == "called_again_answered":
            a, b = final[res.uniqueid], final[res.by_uniqueid or ""]
            assert a.cli and b.cli == a.cli and b.outcome == "answered"
            assert parse_ts(a.started_at) < parse_ts(b.started_at) <= parse_ts(a.ended_at) + 86400
        else:
            assert res.how == "revised_answered" and final[res.uniqueid].outcome == "answered"
    # every open alert has no answered later call of the same caller that would resolve it
    for u in set(alerted) - set(resolved):
        a = final[u]
        assert not a.cli or not [b for b in final.values() if b.cli == a.cli and b.outcome == "answered" and
                                 parse_ts(a.started_at) < parse_ts(b.started_at) <= parse_ts(a.ended_at) + 86400]
    assert world.alerts and world.resolved  # the scenario exercises both
