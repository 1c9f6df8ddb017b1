"""Table writes on their way to the store: what the next batch reads until they are delivered."""

from __future__ import annotations

from processors.output_producer import Placed
from processors.pending_writes import PendingWrites


def test_the_newest_record_taken_is_read_until_it_is_delivered() -> None:
    pending = PendingWrites()
    first = [("t-changelog", 0, b"a", b"1"), ("t-changelog", 1, b"b", b"1")]
    second = [("t-changelog", 0, b"a", b"2"), ("t-changelog", 0, b"c", None)]
    pending.taken(first)
    pending.taken(second)
    assert pending.get(b"a") == second[0] and pending.get(b"b") == first[1]
    assert pending.get(b"c") == second[1]  # a deletion on its way: the store's value is stale
    assert pending.get(b"x") is None

    pending.delivered(first)  # the older batch: its "a" is superseded by one still on its way
    assert pending.get(b"a") == second[0] and pending.get(b"b") is None
    pending.delivered(second)
    assert len(pending) == 0


def test_an_equal_record_of_a_later_batch_is_not_cleared_by_an_earlier_delivery() -> None:
    pending = PendingWrites()
    earlier: Placed = ("t", 0, b"a", b"same")
    later: Placed = ("t", 0, b"a", b"".join([b"sa", b"me"]))  # equal, another record
    assert earlier == later and earlier is not later
    pending.taken([earlier])
    pending.taken([later])
    pending.delivered([earlier])
    assert pending.get(b"a") is later  # the later batch's write is still on its way
