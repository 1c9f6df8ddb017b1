"""The pipeline inbox: runs in, batches out, in order, bounded, cleared by a rebalance."""

from __future__ import annotations

import asyncio

import pytest

from processors.inbox import Inbox


def test_takes_up_to_a_batch_across_runs_in_order() -> None:
    inbox: Inbox[int] = Inbox(capacity=100)
    inbox.put_nowait([1, 2, 3])
    inbox.put_nowait([4, 5])
    inbox.put_nowait([6])
    assert inbox.take_nowait(2) == [1, 2]
    assert inbox.take_nowait(3) == [3, 4, 5]
    assert len(inbox) == 1
    assert inbox.take_nowait(10) == [6]
    assert inbox.take_nowait(10) == []
    assert len(inbox) == 0


def test_an_empty_run_adds_nothing() -> None:
    inbox: Inbox[int] = Inbox(capacity=1)
    inbox.put_nowait([])
    assert len(inbox) == 0 and inbox.has_room()


def test_full_at_capacity_and_room_again_once_taken() -> None:
    inbox: Inbox[int] = Inbox(capacity=4)
    inbox.put_nowait([1, 2, 3])
    assert inbox.has_room()
    inbox.put_nowait([4, 5, 6])  # a run may take it past capacity once
    assert not inbox.has_room() and len(inbox) == 6
    inbox.take_nowait(2)
    assert not inbox.has_room()
    inbox.take_nowait(1)
    assert inbox.has_room() and len(inbox) == 3


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Inbox(capacity=0)


def test_put_waits_for_room_and_take_waits_for_records() -> None:
    async def scenario() -> list[list[int]]:
        inbox: Inbox[int] = Inbox(capacity=2)
        inbox.put_nowait([1, 2])
        blocked = asyncio.ensure_future(inbox.put([3]))
        await asyncio.sleep(0.01)
        assert not blocked.done()  # full: waits
        got = [await inbox.take(1)]
        await asyncio.wait_for(blocked, 1)
        got.append(await inbox.take(10))
        waiting = asyncio.ensure_future(inbox.take(10))
        await asyncio.sleep(0.01)
        assert not waiting.done()  # empty: waits
        inbox.put_nowait([4])
        got.append(await asyncio.wait_for(waiting, 1))
        return got

    assert asyncio.run(scenario()) == [[1], [2, 3], [4]]


def test_clear_drops_what_is_buffered_and_frees_a_waiting_put() -> None:
    async def scenario() -> tuple[int, list[int]]:
        inbox: Inbox[int] = Inbox(capacity=2)
        inbox.put_nowait([1, 2, 3])
        inbox.take_nowait(1)  # half a run taken: the rest is dropped too
        blocked = asyncio.ensure_future(inbox.put([9]))
        await asyncio.sleep(0.01)
        inbox.clear()
        await asyncio.wait_for(blocked, 1)
        return len(inbox), await inbox.take(10)

    assert asyncio.run(scenario()) == (1, [9])


def test_a_put_cancelled_while_waiting_adds_nothing() -> None:
    async def scenario() -> list[int]:
        inbox: Inbox[int] = Inbox(capacity=1)
        inbox.put_nowait([1])
        blocked = asyncio.ensure_future(inbox.put([2]))
        await asyncio.sleep(0.01)
        blocked.cancel()  # the fetch loop gives way to a rebalance this way
        await asyncio.sleep(0.01)
        return inbox.take_nowait(10)

    assert asyncio.run(scenario()) == [1]


def test_a_batch_waits_up_to_its_window_to_fill() -> None:
    async def scenario() -> tuple[list[int], list[int], list[int]]:
        inbox: Inbox[int] = Inbox(capacity=100)
        inbox.put_nowait([1])
        filling = asyncio.ensure_future(inbox.take(3, within=5.0))
        await asyncio.sleep(0.01)
        assert not filling.done()  # one of three: waits for more
        inbox.put_nowait([2, 3, 4])
        full = await asyncio.wait_for(filling, 1)  # three there: at once, not after the window
        rest = await asyncio.wait_for(inbox.take(3, within=0.05), 1)  # fewer than three: the window ends it
        inbox.put_nowait([5, 6, 7])
        ready = await asyncio.wait_for(inbox.take(2, within=5.0), 1)
        return full, rest, ready

    assert asyncio.run(scenario()) == ([1, 2, 3], [4], [5, 6])


def test_a_rebalance_clears_the_inbox_but_the_flow_resuming_does_not() -> None:
    from processors.runtime import ClearedByRebalance

    class Flow:
        active = True

        def is_active(self) -> bool:
            return self.active

    inbox: Inbox[int] = Inbox(capacity=10)
    flow = Flow()
    guard = ClearedByRebalance(inbox, flow)
    inbox.put_nowait([1, 2])
    guard.clear()  # Faust's flow control resuming (its table recovery does so more than once)
    assert len(inbox) == 2  # read under the current assignment: kept, and handled
    flow.active = False  # a rebalance stopped the flow
    guard.clear()
    assert len(inbox) == 0


def test_discard_drops_the_runs_picked_whatever_was_taken_of_the_first() -> None:
    inbox: Inbox[tuple[str, int]] = Inbox(capacity=4)
    inbox.put_nowait([("a", 0), ("a", 1), ("a", 2)])
    inbox.put_nowait([("b", 0), ("b", 1)])
    inbox.put_nowait([("a", 3)])
    assert not inbox.has_room()
    assert inbox.take_nowait(1) == [("a", 0)]
    inbox.discard(lambda run: run[0][0] == "a")
    assert len(inbox) == 2 and inbox.has_room()
    assert inbox.take_nowait(10) == [("b", 0), ("b", 1)]
    assert len(inbox) == 0
