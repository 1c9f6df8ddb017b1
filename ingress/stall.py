"""Deadlines that a stall of the whole process does not spend.

A process stopped (SIGSTOP), its VM paused or its loop starved of CPU wakes with its timers
overdue, and runs them before it reads what its clients sent meanwhile. A deadline that fires
late by more than `STALL_S` starts over once, with its whole length: time the process did not
run is not time a client took (`ingress.server`'s connection timers, the body's wait here).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# a timer firing this much past its time means the event loop did not run meanwhile
STALL_S = 0.25


def late(loop: asyncio.AbstractEventLoop, when: float) -> bool:
    """Whether a timer due at `when`, firing now, fires late: the loop was stalled."""
    return loop.time() - when > STALL_S


@asynccontextmanager
async def patient_timeout(delay: float) -> AsyncIterator[None]:
    """`asyncio.timeout(delay)`, except that a deadline passed while the process did not run
    starts over once (TimeoutError when the second one passes too)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as timeout:
        pending: list[asyncio.TimerHandle] = []

        def expire(due: float, again: bool) -> None:
            if again and late(loop, due):
                pending[:] = [loop.call_at(loop.time() + delay, expire, loop.time() + delay, False)]
            else:
                timeout.reschedule(loop.time())  # expires now: the block gets TimeoutError

        pending.append(loop.call_at(loop.time() + delay, expire, loop.time() + delay, True))
        try:
            yield
        finally:
            pending[0].cancel()
