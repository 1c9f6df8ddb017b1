"""The worker's Faust consumer commits only over handled events (no broker: offsets bookkeeping only)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import faust
import pytest
from aiokafka.structs import ConsumerRecord
from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from faust.types.tuples import Message

from processors.faust_consumer import Fetched, InboxRecord, SafeConsumer, SafeTransport
from processors.inbox import Inbox

SRC = TP("src", 0)


@pytest.fixture
def consumer() -> Iterator[SafeConsumer]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app = faust.App("t-safe-consumer", broker="kafka://127.0.0.1:1")

    async def nothing(*_: Any) -> None: ...

    c = SafeTransport(app.conf.broker_consumer, app).create_consumer(
        callback=nothing, on_partitions_revoked=nothing, on_partitions_assigned=nothing)
    assert isinstance(c, SafeConsumer)
    app.topics.acking_topics.add(SRC.topic)
    app.consumer_generation_id = 4
    try:
        yield c
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def acked(c: SafeConsumer, offsets: range) -> None:
    c._acked[SRC].extend(offsets)
    c._acked_index[SRC].update(offsets)


def message(offset: int, generation: int) -> Message:
    return Message(SRC.topic, SRC.partition, offset, 0.0, 0, None, b"k", b"v", None, generation_id=generation)


def test_one_unacknowledged_offset_at_the_head_holds_the_commit(consumer: SafeConsumer) -> None:
    consumer._committed_offset[SRC] = 208  # the next offset to read
    acked(consumer, range(209, 269))  # 208 was never handled
    assert consumer._new_offset(SRC) is None
    # what Faust alone commits: past 208 (its head-gap test lets one missing offset through)
    assert FaustConsumer._new_offset(consumer, SRC) == 269


def test_a_run_from_the_committed_offset_is_committed(consumer: SafeConsumer) -> None:
    consumer._committed_offset[SRC] = 208
    acked(consumer, range(208, 269))
    assert consumer._new_offset(SRC) == 269


def test_offsets_that_do_not_exist_are_not_a_gap(consumer: SafeConsumer) -> None:
    consumer._committed_offset[SRC] = 208
    consumer._gap[SRC].addi(208, 210)  # e.g. compacted away: never delivered, nothing to handle
    acked(consumer, range(210, 220))
    assert consumer._new_offset(SRC) == 220


def test_an_event_fetched_before_the_rebalance_is_not_acknowledged(consumer: SafeConsumer) -> None:
    consumer._committed_offset[SRC] = 208
    stale, current = message(208, generation=3), message(208, generation=4)
    assert consumer.ack(stale) is False and stale.acked  # the stream skipped it: it is read again
    assert consumer._acked[SRC] == [] and consumer._new_offset(SRC) is None
    assert consumer.ack(current) is True  # the same offset, read again under this assignment
    assert consumer._new_offset(SRC) == 209


def test_a_commit_held_too_long_reads_the_partition_again_from_there(consumer: SafeConsumer,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seeks: list[tuple[TP, int]] = []

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "assignment", lambda: {SRC})
    consumer.rewind_after_s = 0.0
    consumer._committed_offset[SRC] = 208
    acked(consumer, range(209, 269))
    assert consumer._new_offset(SRC) is None and seeks == []  # first held: only noted
    assert consumer._new_offset(SRC) is None  # still held: read again from 208
    consumer.loop.run_until_complete(asyncio.sleep(0.01))
    assert seeks == [(SRC, 208)]


def test_offsets_read_again_and_again_in_vain_are_taken_as_absent(consumer: SafeConsumer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    async def seek(tp: TP, offset: int) -> None: ...

    monkeypatch.setattr(consumer, "seek", seek)
    monkeypatch.setattr(consumer, "assignment", lambda: {SRC})
    consumer.rewind_after_s, consumer.rewinds_max = 0.0, 2
    consumer._committed_offset[SRC] = 208
    acked(consumer, range(210, 220))
    assert [consumer._new_offset(SRC) for _ in range(3)] == [None, None, None]  # held, re-read twice
    assert consumer._new_offset(SRC) == 220  # 208-209 never arrive: no longer held
    consumer.loop.run_until_complete(asyncio.sleep(0.01))  # the re-reads scheduled


# --- the fetch loop's hand-over to the pipelines' inboxes ------------------------------------------

OTHER = TP("other", 0)


def fetched(tp: TP, offsets: list[int]) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord(tp.topic, tp.partition, o, 0, 0, b"k", b"v", None, 1, 1, ()) for o in offsets]


def drain(c: SafeConsumer, fetches: list[dict[TP, list[Any]]],
          sought: dict[TP, int] | None = None,
          on_fetch: Callable[[], None] = lambda: None) -> tuple[list[Any], list[tuple[TP, int]]]:
    """Run the fetch loop over `fetches` (one per round): what reached Faust's per-message callback,
    and the seeks it made. aiokafka's position after each fetch is the last offset + 1, unless
    `sought` moves a partition elsewhere between the fetch and the hand-over."""
    delivered: list[Any] = []
    seeks: list[tuple[TP, int]] = []
    rounds = iter(fetches)
    positions: dict[TP, int] = {}

    async def callback(message: Any) -> None:
        delivered.append(message)

    async def next_records(timeout: float) -> tuple[dict[TP, list[Any]] | None, set[TP] | None]:  # noqa: ASYNC109
        try:
            records = Fetched(next(rounds))
        except StopIteration:
            c._stopped.set()
            return None, None
        records.positions = {tp: run[-1].offset + 1 for tp, run in records.items()}
        positions.update(records.positions)
        positions.update(sought or {})
        on_fetch()
        return records, None

    async def seek(tp: TP, offset: int) -> None:
        seeks.append((tp, offset))

    class Fetcher:
        _stopped = asyncio.Event()

    c.callback = callback
    c._wait_next_records = next_records  # type: ignore[method-assign]
    c._position = positions.get  # type: ignore[method-assign,assignment]
    c.seek = seek  # type: ignore[method-assign,assignment]
    asyncio.get_event_loop().run_until_complete(c._drain_messages(Fetcher()))
    return delivered, seeks


def test_a_partitions_fetched_run_reaches_its_inbox_in_one_piece(consumer: SafeConsumer) -> None:
    inbox: Inbox[Any] = Inbox(capacity=100)
    consumer.inboxes[SRC.topic] = inbox
    consumer.app.topics.acking_topics.add(OTHER.topic)
    others, seeks = drain(consumer, [{SRC: fetched(SRC, [5, 6, 7]), OTHER: fetched(OTHER, [1, 2])},
                                     {SRC: fetched(SRC, [6, 8, 11])}])  # 6 again (dropped); 9-10 missing (a gap)
    taken = inbox.take_nowait(100)
    assert [m.offset for m in taken] == [5, 6, 7, 8, 11]
    assert all(type(m) is InboxRecord and m.generation_id == 4 and m.tp == SRC and not m.acked for m in taken)
    assert [(m.topic, m.partition, m.key, m.value) for m in taken[:1]] == [(SRC.topic, SRC.partition, b"k", b"v")]
    assert [m.offset for m in others] == [1, 2]  # other topics: one by one to Faust's conductor
    assert all(isinstance(m, Message) for m in others)
    assert consumer._read_offset[SRC] == 11 and consumer._read_offset[OTHER] == 2
    assert consumer._gap[SRC].overlaps_point(9) and consumer._gap[SRC].overlaps_point(10)
    assert not consumer._gap[SRC].overlaps_point(8)
    assert seeks == []


def test_records_fetched_while_the_flow_stops_are_read_again(consumer: SafeConsumer) -> None:
    inbox: Inbox[Any] = Inbox(capacity=100)
    consumer.inboxes[SRC.topic] = inbox
    consumer.flow_active = False  # a rebalance began after the fetch

    others, seeks = drain(consumer, [{SRC: fetched(SRC, [5, 6]), OTHER: fetched(OTHER, [3])}])
    assert len(inbox) == 0 and others == [] and consumer._read_offset[SRC] is None
    # aiokafka's position has moved past them: put back, or no one would ever read them
    assert seeks == [(SRC, 5), (OTHER, 3)]


def test_records_of_a_partition_sought_since_the_fetch_are_dropped(consumer: SafeConsumer) -> None:
    # e.g. a table's recovery sought its changelog partition back after these were fetched:
    # the recovery reads on from its own position, these records are from before it
    inbox: Inbox[Any] = Inbox(capacity=100)
    consumer.inboxes[SRC.topic] = inbox
    others, seeks = drain(consumer, [{SRC: fetched(SRC, [5, 6]), OTHER: fetched(OTHER, [3, 4])}],
                          sought={OTHER: 0})
    assert [m.offset for m in inbox.take_nowait(100)] == [5, 6]
    assert others == [] and seeks == []


def test_records_fetched_across_a_rebalance_are_handed_over(consumer: SafeConsumer) -> None:
    # the fetch began before a rebalance and returned after it, from the positions the rebalance
    # sought: the new generation's records, handed over (dropping them stalled a table's recovery)
    inbox: Inbox[Any] = Inbox(capacity=100)
    consumer.inboxes[SRC.topic] = inbox

    def rebalanced() -> None:
        consumer.app.consumer_generation_id = 5

    _, seeks = drain(consumer, [{SRC: fetched(SRC, [40, 41])}], on_fetch=rebalanced)
    assert [(m.offset, m.generation_id) for m in inbox.take_nowait(100)] == [(40, 5), (41, 5)]
    assert seeks == []


def test_a_run_waiting_for_room_when_the_flow_stops_is_read_again(consumer: SafeConsumer) -> None:
    inbox: Inbox[Any] = Inbox(capacity=2)
    consumer.inboxes[SRC.topic] = inbox

    async def rebalance_soon() -> None:
        await asyncio.sleep(0.05)
        consumer.suspend_flow.set()

    loop = asyncio.get_event_loop()
    soon = loop.create_task(rebalance_soon())
    _, seeks = drain(consumer, [{SRC: fetched(SRC, [1, 2])}, {SRC: fetched(SRC, [3, 4])}])
    assert [m.offset for m in inbox.take_nowait(100)] == [1, 2]
    assert seeks == [(SRC, 3)] and soon.done()


def test_a_run_waiting_for_room_is_not_put_after_its_partition_was_sought(consumer: SafeConsumer) -> None:
    # a pipeline's re-read sought the partition (and discarded what the inbox held of it) while
    # this run waited for room: put after that, it would come before the records read again
    inbox: Inbox[Any] = Inbox(capacity=2)
    consumer.inboxes[SRC.topic] = inbox

    async def reread_soon() -> None:
        await asyncio.sleep(0.05)
        consumer._position = lambda tp: 1  # type: ignore[method-assign]  # sought back to 1
        inbox.take_nowait(100)  # room again

    soon = asyncio.get_event_loop().create_task(reread_soon())
    _, seeks = drain(consumer, [{SRC: fetched(SRC, [1, 2])}, {SRC: fetched(SRC, [3, 4])}])
    assert len(inbox) == 0 and seeks == [] and soon.done()


def test_a_batch_acknowledged_at_once_is_booked_as_each_message_would_be(consumer: SafeConsumer) -> None:
    consumer._committed_offset[SRC] = 208
    batch = [message(o, generation=4) for o in range(208, 212)] + [message(212, generation=3)]
    consumer.track(batch)
    assert len(consumer._unacked_messages) == 1  # a rebalance waits for the batch
    consumer.ack_batch(batch)
    one_by_one = [message(o, generation=4) for o in range(208, 212)]
    assert all(m.acked for m in batch) and not consumer._unacked_messages
    # the stale message (fetched before the rebalance) is not booked, the others are, once
    assert consumer._acked[SRC] == [m.offset for m in one_by_one] and consumer._n_acked == 4
    consumer.ack_batch(batch)  # acknowledged again: nothing changes
    assert consumer._acked[SRC] == [208, 209, 210, 211] and consumer._n_acked == 4
    assert consumer._new_offset(SRC) == 212


def test_a_batch_acknowledged_at_once_leaves_what_acknowledging_each_message_leaves(consumer: SafeConsumer) -> None:
    """Several partitions and topics, one whose acknowledgements are off, offsets already
    committed, an offset twice, a stale message: `ack_batch` books as `ack` does, message by message."""
    one_by_one = SafeTransport(consumer.app.conf.broker_consumer, consumer.app).create_consumer(
        callback=consumer.callback, on_partitions_revoked=consumer._on_partitions_revoked,
        on_partitions_assigned=consumer._on_partitions_assigned)
    assert isinstance(one_by_one, SafeConsumer)
    other, quiet = TP(SRC.topic, 1), TP("quiet", 0)  # "quiet": not an acking topic
    for c in (consumer, one_by_one):
        c._committed_offset.update({SRC: 100, other: None, quiet: 7})

    made = [(SRC, o, 4) for o in (98, 100, 101, 101, 103)] + [(other, o, 4) for o in (0, 1)]
    made += [(quiet, 7, 4), (quiet, 8, 4), (SRC, 104, 3), (other, 2, 4)]
    # the pipelines' records as the fetch loop makes them, against Faust's own messages
    at_once = [InboxRecord(tp, fetched(tp, [o])[0], g) for tp, o, g in made]
    each = [Message(tp.topic, tp.partition, o, 0.0, 0, None, b"k", b"v", None, generation_id=g) for tp, o, g in made]
    consumer.track(at_once)
    consumer.ack_batch(at_once)
    for m in each:
        one_by_one._unacked_messages.add(m)
        one_by_one.ack(m)
    for attr in ("_acked", "_acked_index"):
        assert {tp: v for tp, v in getattr(consumer, attr).items() if v} == \
               {tp: v for tp, v in getattr(one_by_one, attr).items() if v}, attr
    assert consumer._n_acked == one_by_one._n_acked == 6  # src 100, 101, 103; src/1 0, 1, 2 (not 98, quiet, stale)
    assert [m.acked for m in at_once] == [m.acked for m in each]
    assert not consumer._unacked_messages  # (Faust's `ack` leaves a message it did not book there until collected)


def test_faust_per_partition_stall_check_is_off() -> None:
    """Faust's check reads stream times the pipelines never give it: it logged ERRORs for
    partitions being handled (the liveness monitor watches progress instead). A consumer with no
    consumer thread at all (what the check would ask) answers it."""
    consumer = object.__new__(SafeConsumer)
    consumer.verify_event_path(0.0, ("ivr.events", 0))  # Faust's delegates to the thread: AttributeError
