"""A worker handles each partition's records contiguously from its position (no broker: pure)."""

from __future__ import annotations

from processors.read_order import Gap, ReadOrder


def where(record: tuple[str, int]) -> tuple[str, int]:
    return record


def offsets(records: list[tuple[str, int]], partition: str = "a") -> list[int]:
    return [o for p, o in records if p == partition]


def started(positions: dict[str, int], generation: int = 3) -> ReadOrder[str]:
    order: ReadOrder[str] = ReadOrder(rereads_max=2)
    order.start(generation, positions)
    return order


def test_nothing_is_admitted_before_the_positions_of_the_assignment_are_set() -> None:
    order: ReadOrder[str] = ReadOrder()
    assert order.admit([("a", 0)], where, 1) == ([], [])
    order.start(1, {"a": 0})
    assert order.admit([("a", 0)], where, 2) == ([], [])  # a newer rebalance: wait for its positions
    assert order.admit([("a", 0)], where, 1) == ([("a", 0)], [])


def test_records_from_the_position_on_are_admitted_in_order() -> None:
    order = started({"a": 5, "b": 0})
    admitted, gaps = order.admit([("a", 5), ("b", 0), ("a", 6), ("b", 1), ("a", 7)], where, 3)
    assert admitted == [("a", 5), ("b", 0), ("a", 6), ("b", 1), ("a", 7)] and gaps == []
    assert order.next_offset("a") == 8 and order.next_offset("b") == 2


def test_records_handled_already_are_dropped() -> None:
    order = started({"a": 5})
    order.admit([("a", 5), ("a", 6)], where, 3)
    admitted, gaps = order.admit([("a", 5), ("a", 6), ("a", 7)], where, 3)  # read again after a seek
    assert admitted == [("a", 7)] and gaps == []


def test_records_of_partitions_not_assigned_here_are_dropped() -> None:
    assert started({"a": 0}).admit([("z", 0)], where, 3) == ([], [])


def test_a_record_past_the_position_blocks_its_partition_until_it_is_read_again() -> None:
    order = started({"a": 5, "b": 0})
    admitted, gaps = order.admit([("a", 5), ("a", 8), ("b", 0), ("a", 9)], where, 3)
    assert admitted == [("a", 5), ("b", 0)]  # 6 and 7 lost on the way: nothing of a past them
    assert gaps == [Gap("a", 6, 8)]
    assert order.admit([("a", 10), ("b", 1)], where, 3) == ([("b", 1)], [])  # still blocked, found once
    order.reread("a", 6)
    admitted, gaps = order.admit([("a", 6), ("a", 7), ("a", 8)], where, 3)
    assert offsets(admitted) == [6, 7, 8] and gaps == []


def test_a_partition_read_again_from_the_logs_first_offset_starts_there() -> None:
    order = started({"a": 2})
    _, gaps = order.admit([("a", 10)], where, 3)  # 2-9 deleted by retention meanwhile
    assert gaps == [Gap("a", 2, 10)]
    order.reread("a", 10)
    assert offsets(order.admit([("a", 10), ("a", 11)], where, 3)[0]) == [10, 11]


def test_offsets_still_missing_after_the_last_re_read_are_taken_as_absent() -> None:
    order = started({"a": 2})  # rereads_max=2
    for _ in range(2):
        _, gaps = order.admit([("a", 4)], where, 3)
        assert gaps == [Gap("a", 2, 4)]
        order.reread("a", 2)
    admitted, gaps = order.admit([("a", 4), ("a", 5)], where, 3)
    assert offsets(admitted) == [4, 5] and gaps == [Gap("a", 2, 4, absent=True)]


def test_a_new_gap_further_on_is_read_again_whatever_came_before() -> None:
    order = started({"a": 2})
    for _ in range(2):
        order.admit([("a", 4)], where, 3)
        order.reread("a", 2)
    order.admit([("a", 4)], where, 3)  # absent
    _, gaps = order.admit([("a", 9)], where, 3)
    assert gaps == [Gap("a", 5, 9)]  # a gap at a new offset is not taken as absent at once


def test_a_re_read_that_could_not_be_made_lets_the_next_record_find_the_gap_again() -> None:
    order = started({"a": 0})
    assert order.admit([("a", 3)], where, 3)[1] == [Gap("a", 0, 3)]
    order.unblock("a")
    assert order.admit([("a", 4)], where, 3)[1] == [Gap("a", 0, 4)]


def test_a_rebalance_sets_every_position_afresh() -> None:
    order = started({"a": 0})
    order.admit([("a", 3)], where, 3)  # blocked
    order.start(4, {"a": 7})
    assert offsets(order.admit([("a", 7)], where, 4)[0]) == [7]
    order.reread("z", 0)  # a partition that moved away meanwhile: ignored
    assert order.next_offset("z") is None
