"""Whether this worker is still a member of its consumer group, checked before a batch goes out.

A worker frozen past its session (SIGSTOP, a paused VM, a long stall) is evicted by the broker,
and another worker takes its partitions over from their committed offsets. On waking, the frozen
one still holds batches it read before: delivering them writes outputs and changelog records that
the new owner writes too (alerts twice; a changelog record behind the new owner's). Kafka fences
its commits (their generation is over) but not its writes, short of transactions.

The heartbeats tell: aiokafka heartbeats every `session / 10` here, and a worker whose last
successful heartbeat is older than half its session has been away too long to know. Before such a
delivery the worker waits for the next heartbeat's answer: accepted (the broker still counts it
in: a coordinator failover, a slow machine, a rebalance it took part in), the batch goes out; this
member's id reset (the broker evicted it), the batch is not delivered and `Evicted` is raised (the runtime then
stops the worker without acknowledging; a fresh one rejoins). A freeze while the batch's records
are already in the producer's hands is not covered: those go out on waking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


class Evicted(Exception):
    """The broker no longer counts this worker in its group: its batches must not go out."""


class Membership:
    #: how often a delivery waiting on a heartbeat looks again
    poll_s = 0.05

    def __init__(self, coordinator: Callable[[], Any], session_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._coordinator = coordinator  # aiokafka's group coordinator, once the consumer has one
        self._session_s = session_s
        self._clock = clock
        self._watched: Any = None
        # written in the consumer's thread by the heartbeat wrapper, read here (plain attributes)
        self._ok_at = 0.0
        self._ok_as: tuple[Any, Any] = (None, None)  # member id, generation of that heartbeat

    def _watch(self, coordinator: Any) -> None:
        """Wrap the coordinator's heartbeat (aiokafka looks `_do_heartbeat` up at each call) so
        each accepted one is noted; taken as accepted now, as the member it is now."""
        heartbeat = coordinator._do_heartbeat

        async def noted() -> bool:
            ok = bool(await heartbeat())
            if ok:  # NoError, or RebalanceInProgress: the broker still counts this member in
                self._ok_as = (coordinator.member_id, coordinator.generation)
                self._ok_at = self._clock()
            return ok

        coordinator._do_heartbeat = noted
        self._ok_as = (coordinator.member_id, coordinator.generation)
        self._ok_at = self._clock()
        self._watched = coordinator

    async def confirmed(self) -> None:
        """Returns at once while the heartbeats are recent; otherwise once one is accepted.
        Raises `Evicted` if the broker answers that this member is gone."""
        coordinator = self._coordinator()
        if coordinator is None:
            return  # no consumer yet: nothing read, nothing to judge
        if coordinator is not self._watched:
            self._watch(coordinator)
            return
        asked = self._clock()
        if asked - self._ok_at <= self._session_s / 2:
            return
        while self._ok_at < asked:
            # evicted: the member id is reset (it rejoins under a new one). A new generation under
            # the same id is a rebalance this member took part in (its heartbeats pause meanwhile):
            # wait for the next heartbeat then.
            if coordinator.member_id != self._ok_as[0]:
                raise Evicted(f"no heartbeat accepted for {asked - self._ok_at:.0f}s (session "
                              f"{self._session_s:.0f}s), and the broker no longer counts this worker in its group")
            await asyncio.sleep(self.poll_s)
