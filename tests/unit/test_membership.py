"""A delivery after a long silence of the heartbeats waits for the broker's word (processors.membership).

The coordinator is a stand-in with aiokafka's attributes; the heartbeat is answered as the test
says, from a task, as aiokafka's heartbeat routine would call it."""

from __future__ import annotations

import asyncio

import pytest

from processors.membership import Evicted, Membership

SESSION_S = 30.0


class Coordinator:
    """aiokafka's group coordinator as `Membership` sees it."""

    def __init__(self) -> None:
        self.member_id = "worker-1"
        self.generation = 7
        self.answer = True  # what the broker answers the next heartbeat

    async def _do_heartbeat(self) -> bool:
        if self.answer:
            return True
        self.member_id, self.generation = "", -1  # aiokafka's reset_generation on UNKNOWN_MEMBER_ID
        return False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watched() -> tuple[Membership, Coordinator, Clock]:
    coordinator, clock = Coordinator(), Clock()
    membership = Membership(lambda: coordinator, SESSION_S, clock)
    membership.poll_s = 0.001
    asyncio.run(membership.confirmed())  # the first delivery starts watching the heartbeats
    return membership, coordinator, clock


def test_no_consumer_yet_is_not_judged() -> None:
    asyncio.run(Membership(lambda: None, SESSION_S).confirmed())


def test_recent_heartbeats_let_the_delivery_go_at_once() -> None:
    membership, coordinator, clock = watched()
    clock.now += SESSION_S / 2
    asyncio.run(asyncio.wait_for(membership.confirmed(), 1.0))
    asyncio.run(coordinator._do_heartbeat())  # noted: the silence starts again
    clock.now += SESSION_S / 2
    asyncio.run(asyncio.wait_for(membership.confirmed(), 1.0))


async def after_a_freeze(membership: Membership, coordinator: Coordinator, clock: Clock, answer: bool) -> bool:
    """A delivery asked after a freeze past the session; the heartbeat routine then wakes and is
    answered `answer`. True: the delivery went out."""
    clock.now += 2 * SESSION_S
    coordinator.answer = answer
    delivery = asyncio.ensure_future(membership.confirmed())
    await asyncio.sleep(0.02)
    assert not delivery.done()  # waiting for the broker's word
    clock.now += 0.1
    await coordinator._do_heartbeat()
    try:
        await asyncio.wait_for(delivery, 1.0)
    except Evicted:
        return False
    return True


def test_after_a_freeze_an_accepted_heartbeat_lets_the_delivery_go() -> None:
    membership, coordinator, clock = watched()
    assert asyncio.run(after_a_freeze(membership, coordinator, clock, answer=True))


def test_after_a_freeze_an_eviction_stops_the_delivery() -> None:
    membership, coordinator, clock = watched()
    assert not asyncio.run(after_a_freeze(membership, coordinator, clock, answer=False))


def test_an_eviction_already_seen_stops_the_delivery_at_once() -> None:
    membership, coordinator, clock = watched()
    asyncio.run(coordinator._do_heartbeat())
    clock.now += SESSION_S
    coordinator.answer = False
    asyncio.run(coordinator._do_heartbeat())  # the heartbeat routine woke first
    with pytest.raises(Evicted, match="no longer counts this worker"):
        asyncio.run(asyncio.wait_for(membership.confirmed(), 1.0))


def test_a_new_coordinator_is_watched_afresh() -> None:
    coordinators = [Coordinator()]
    clock = Clock()
    membership = Membership(lambda: coordinators[-1], SESSION_S, clock)
    asyncio.run(membership.confirmed())
    clock.now += 2 * SESSION_S
    coordinators.append(Coordinator())  # the consumer started again: its heartbeats are new
    asyncio.run(asyncio.wait_for(membership.confirmed(), 1.0))


def test_a_rebalance_under_the_same_member_id_waits_for_a_heartbeat_not_an_exit() -> None:
    """aiokafka pauses the heartbeats while the group rejoins (a peer's session running out can
    take most of a session): a new generation under the same member id is not an eviction."""
    membership, coordinator, clock = watched()

    async def go() -> bool:
        clock.now += 2 * SESSION_S / 3
        coordinator.generation += 1
        delivery = asyncio.ensure_future(membership.confirmed())
        await asyncio.sleep(0.02)
        assert not delivery.done()
        clock.now += 0.1
        await coordinator._do_heartbeat()
        await asyncio.wait_for(delivery, 1.0)
        return True

    assert asyncio.run(go())
