"""Is the worker making progress and in its consumer group? The decision, from observed facts.

Pure: the shell (`processors.liveness`) observes the group from the broker's side every few
seconds (committed offsets, log end offsets, the group's members) and asks for a verdict.

* Progress: a source partition with lag (log end above the group's committed offset) whose
  committed offset advances. A partition without lag needs no progress. While tables are being
  restored, fewer changelog records left to restore is progress too.
* Stalled: some partition has held lag without progress for longer than `stall_timeout_s`.
* Out of group: the broker did not list this worker's member for longer than `stall_timeout_s`
  (a rebalance takes seconds; a worker evicted and never rejoining stays out).
* Exit: unhealthy for `exit_after_s` more (0: never exit), so a supervisor restarts the worker.
* Store failing: while the local store cannot be written (a full disk), Faust's restore goes on
  reading the changelog and keeps what it read in memory. Fewer records left to restore is then no
  progress: the worker is stalled, and the verdict names the store.
* Broker unreachable: the clocks stop. A worker cannot progress without its broker, and a
  restart would not bring the broker back; once it answers again the worker gets its full time.
  (A frozen process observes nothing at all: that time counts.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Observation:
    at: float  # monotonic seconds
    in_group: bool | None  # None: could not tell (the broker did not answer)
    committed: Mapping[TopicPartition, int]  # the group's committed offsets (missing: none yet)
    ends: Mapping[TopicPartition, int]  # log end offsets of the source partitions to watch
    recovery_remaining: int | None = None  # changelog records left to restore; None: not restoring
    store_errors: int = 0  # the local store's write errors since the last observation


@dataclass(frozen=True, slots=True)
class Verdict:
    healthy: bool
    reason: str  # "ok", "stalled", "store_failing" (stalled, the local store failing) or "out_of_group"
    exit: bool  # unhealthy long enough that the process should exit
    since_progress_s: float  # 0 while no partition holds lag
    out_of_group_s: float
    in_group: bool | None
    lag: int  # records behind, summed over the watched partitions, at the last observation
    broker_reachable: bool = True

    def as_json(self) -> dict[str, object]:
        return {"status": "alive" if self.healthy else "unhealthy", "reason": self.reason,
                "seconds_since_progress": round(self.since_progress_s, 1),
                "seconds_out_of_group": round(self.out_of_group_s, 1), "in_group": self.in_group, "lag": self.lag,
                "broker_reachable": self.broker_reachable}


@dataclass(slots=True)
class Watchdog:
    stall_timeout_s: float
    exit_after_s: float
    # per watched partition: when it was last seen without lag or advancing
    _fine_at: dict[TopicPartition, float] = field(default_factory=dict)
    _committed: dict[TopicPartition, int] = field(default_factory=dict)
    _lag: dict[TopicPartition, int] = field(default_factory=dict)
    _out_since: float | None = None
    _in_group: bool | None = None
    _recovery_remaining: int | None = None
    _blind_since: float | None = None  # since when the broker has not answered
    _store_failing: bool = False  # the last observation saw the local store fail

    def unreachable(self, at: float) -> None:
        """The broker did not answer at `at`: no facts, and the clocks stop until it does."""
        if self._blind_since is None:
            self._blind_since = at

    def observe(self, obs: Observation) -> None:
        if self._blind_since is not None:  # the time without a broker does not count
            gap = max(0.0, obs.at - self._blind_since)
            self._blind_since = None
            self._fine_at = {tp: min(obs.at, t + gap) for tp, t in self._fine_at.items()}
            if self._out_since is not None:
                self._out_since = min(obs.at, self._out_since + gap)
        self._store_failing = obs.store_errors > 0
        restoring = not self._store_failing and obs.recovery_remaining is not None and (
            self._recovery_remaining is None or obs.recovery_remaining < self._recovery_remaining)
        self._recovery_remaining = obs.recovery_remaining
        for tp in [tp for tp in self._fine_at if tp not in obs.ends]:  # no longer watched (revoked)
            del self._fine_at[tp]
            self._committed.pop(tp, None)
            self._lag.pop(tp, None)
        for tp, end in obs.ends.items():
            committed = obs.committed.get(tp)
            lag = max(0, end - (committed or 0))
            advanced = committed is not None and committed > self._committed.get(tp, -1)
            if lag == 0 or advanced or restoring or tp not in self._fine_at:
                self._fine_at[tp] = obs.at
            if committed is not None:
                self._committed[tp] = committed
            self._lag[tp] = lag
        if obs.in_group is not None:
            self._in_group = obs.in_group
            if obs.in_group:
                self._out_since = None
            elif self._out_since is None:
                self._out_since = obs.at

    def verdict(self, now: float) -> Verdict:
        if self._blind_since is not None:
            now = min(now, self._blind_since)
        lagging = [self._fine_at[tp] for tp, lag in self._lag.items() if lag > 0]
        since_progress = max(0.0, now - min(lagging)) if lagging else 0.0
        out_for = 0.0 if self._out_since is None else max(0.0, now - self._out_since)
        if out_for > self.stall_timeout_s:
            reason, worst = "out_of_group", out_for
        elif since_progress > self.stall_timeout_s:
            reason, worst = "store_failing" if self._store_failing else "stalled", since_progress
        else:
            reason, worst = "ok", max(out_for, since_progress)
        healthy = reason == "ok"
        exit_now = not healthy and self.exit_after_s > 0 and worst > self.stall_timeout_s + self.exit_after_s
        return Verdict(healthy, reason, exit_now, since_progress, out_for, self._in_group, sum(self._lag.values()),
                       self._blind_since is None)
