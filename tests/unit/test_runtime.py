"""The keyed-batch runtime without Kafka: a dict-backed table, a fake delivery, a fake position."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pytest

from config.kafka_producer import partition_for
from processors.core.refusal import Refused
from processors.json_store import JsonStore
from processors.output_producer import Offsets, Placed, Record
from processors.runtime import FAR_BEHIND, TICK, HeldRecord, Output, Pipeline, Result, Runner, StoreError, unprocessable

SRC, TICKS, DLQ, OUT = "src", "ticks", "dead", "out"


Rec = HeldRecord


class CountingRows(dict[bytes, bytes]):
    """A table: counts reads and writes per key."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[bytes, int] = {}
        self.writes: dict[bytes, int] = {}

    def get(self, key: bytes, default: Any = None) -> Any:  # type: ignore[override]
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().get(key, default)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes[key] = self.writes.get(key, 0) + 1
        super().__setitem__(key, value)


class Delivery:
    def __init__(self) -> None:
        self.batches: list[tuple[list[Record], list[Placed]]] = []
        self.fail = False

    async def __call__(self, records: Sequence[Record], placed: Sequence[Placed]) -> Offsets:
        if self.fail:
            raise RuntimeError("broker gone for good")
        self.batches.append((list(records), list(placed)))
        return {}

    def records(self, topic: str) -> list[tuple[bytes, bytes]]:
        return [(k, v) for rs, _ in self.batches for t, k, v in rs if t == topic]


class Position:
    def __init__(self) -> None:
        self.ends: dict[int, int] = {}

    def highwater(self, topic: str, partition: int) -> int | None:
        assert topic == SRC
        return self.ends.get(partition)


# A counter per key: an input adds its number; it emits the new total; "boom" raises after
# changing the state in place (as a core step may); a tick forgets a key whose total is >= 100.
def decode(key: bytes | None, value: bytes) -> Sequence[tuple[str, Any]]:
    data = orjson.loads(value)
    return [(k, n) for k, n in data] if isinstance(data, list) else [((key or b"").decode(), data)]


def step(key: str, state: dict[str, Any] | None, item: Any, now: float) -> Result[dict[str, Any]] | None:
    if item is TICK:
        if state is not None and state["total"] == 13:
            state["total"] = -1
            raise ValueError("a tick that fails")
        if state is not None and state["total"] >= 100:
            return Result(None, [Output(OUT, key.encode(), b"forgotten")])
        return None
    if item == "refuse":  # a rule of the step: refused before anything changed
        raise Refused("not taken")
    state = state or {"total": 0}
    if item == "noop":
        return None
    if item == "no deadline":  # a state `due` cannot read: see `due`
        return Result({**state, "due": "never"})
    state["total"] += 1 if item == "boom" else item
    state["due"] = now + 10
    if item == "boom":
        raise OverflowError("cannot convert float infinity to integer")
    return Result(state, [Output(OUT, key.encode(), str(state["total"]).encode(), received=now - 1,
                                 latency="completed")])


def due(state: dict[str, Any]) -> float | None:
    """What the step set (ten seconds after its last item), else 1.0 for a big total, else never."""
    return float(state["due"]) if "due" in state else 1.0 if state["total"] >= 100 else None


def runner(recovered: list[Any] | None = None, keep_bytes: int = 0,
           ) -> tuple[Runner[dict[str, Any]], CountingRows, Delivery, Position]:
    rows, delivery, position = CountingRows(), Delivery(), Position()
    pipe = Pipeline(name="counter", table="counters", store=lambda r: JsonStore(r, dict, dict, keep_bytes=keep_bytes),
                    source=SRC, ticks=TICKS, decode=decode, step=step, due=due,
                    on_recovered=None if recovered is None else recovered.extend)
    return Runner(pipe, pipe.store(rows), delivery, position, DLQ), rows, delivery, position


def ev(offset: int, key: str, value: Any, partition: int = 0) -> Rec:
    return Rec(SRC, partition, offset, key.encode(), orjson.dumps(value))


def handle(r: Runner[Any], batch: Iterable[Rec], now: float = 1000.0) -> None:
    asyncio.run(r.handle(list(batch), now))


def test_each_key_is_loaded_once_and_saved_once_per_batch() -> None:
    r, rows, delivery, _ = runner()
    handle(r, [ev(i, f"k{i % 3}", 1) for i in range(30)])
    assert rows.reads == {b"k0": 1, b"k1": 1, b"k2": 1}
    assert rows.writes == {b"k0": 1, b"k1": 1, b"k2": 1}
    assert {k: orjson.loads(v)["total"] for k, v in rows.items()} == {b"k0": 10, b"k1": 10, b"k2": 10}
    assert len(delivery.batches) == 1 and len(delivery.records(OUT)) == 30  # every output, one delivery
    handle(r, [ev(30, "k0", 5)])
    assert rows.reads[b"k0"] == 2 and orjson.loads(rows[b"k0"])["total"] == 15


def test_a_kept_state_is_not_read_again_and_a_failed_record_puts_its_key_back_from_the_table() -> None:
    r, rows, delivery, _ = runner(keep_bytes=1000)
    handle(r, [ev(0, "k", 5)])
    # the state saved is kept: the next batch does not read it; "boom" changes it in place and
    # fails, so its key is put back as saved (read from the table: not the changed state kept)
    handle(r, [ev(1, "k", 1), ev(2, "k", "boom"), ev(3, "k", 2)])
    assert rows.reads == {b"k": 2}  # its first load (absent), then the failed record's undo
    assert orjson.loads(rows[b"k"])["total"] == 8
    assert [v for _, v in delivery.records(OUT)] == [b"5", b"6", b"8"]
    assert len(delivery.records(DLQ)) == 1
    handle(r, [ev(4, "k", 1)])
    assert rows.reads == {b"k": 2} and orjson.loads(rows[b"k"])["total"] == 9


class PartitionedRows(dict[tuple[int, bytes], bytes]):
    """A table with a place per partition, as the worker's: reads and writes go to the partition
    last pointed at (`at`), as `BatchedTable`'s do. Logs each access with its partition."""

    def __init__(self) -> None:
        super().__init__()
        self.partition: int | None = None
        self.log: list[tuple[str, int | None, bytes]] = []

    def at(self, partition: int) -> None:
        self.partition = partition

    def get(self, key: bytes, default: Any = None) -> Any:  # type: ignore[override]
        self.log.append(("read", self.partition, key))
        return super().get((self._where(), key), default)

    def __setitem__(self, key: bytes, value: bytes) -> None:  # type: ignore[override]
        self.log.append(("write", self.partition, key))
        super().__setitem__((self._where(), key), value)

    def _where(self) -> int:
        assert self.partition is not None, "an access before the runtime pointed the table anywhere"
        return self.partition


def test_each_load_and_save_goes_to_its_records_partition() -> None:
    rows, delivery, position = PartitionedRows(), Delivery(), Position()
    pipe = Pipeline(name="counter", table="counters", store=lambda r: JsonStore(r, dict, dict), source=SRC,
                    ticks=TICKS, decode=decode, step=step, due=due)
    r = Runner(pipe, pipe.store(rows), delivery, position, DLQ, at=rows.at)  # type: ignore[arg-type]
    # records of partitions 1 and 2, interleaved; "b" fails in its second record, after a read
    # of partition 1, and is put back from the table (read again, from its own partition)
    handle(r, [ev(0, "a", 1, partition=1), ev(0, "b", 2, partition=2), ev(1, "c", 4, partition=1),
               ev(1, "b", "boom", partition=2), ev(2, "a", 3, partition=1)])
    assert rows.log == [("read", 1, b"a"), ("read", 2, b"b"), ("read", 1, b"c"), ("read", 2, b"b"),
                        ("write", 1, b"a"), ("write", 2, b"b"), ("write", 1, b"c")]
    assert {k: orjson.loads(v)["total"] for k, v in rows.items()} == {(1, b"a"): 4, (2, b"b"): 2, (1, b"c"): 4}


def test_a_step_that_changes_nothing_saves_nothing() -> None:
    r, rows, delivery, _ = runner()
    handle(r, [ev(0, "k", "noop")])
    assert rows.writes == {} and delivery.records(OUT) == []


def test_outputs_and_changelog_are_delivered_before_the_batch_returns() -> None:
    rows, position = CountingRows(), Position()
    order: list[str] = []
    changelog: list[Placed] = [("counters-changelog", 0, b"k", b"{}")]
    pipe = Pipeline(name="c", table="c", store=lambda r: JsonStore(r, dict, dict), source=SRC, ticks=TICKS,
                    decode=decode, step=step, due=lambda st: None)

    async def deliver(records: Sequence[Record], placed: Sequence[Placed]) -> Offsets:
        order.append("deliver")
        assert ("counters-changelog", 0, b"k", b"{}") in placed and records
        return {("counters-changelog", 0): 7}

    r = Runner(pipe, pipe.store(rows), deliver, position, DLQ, changelog=lambda: changelog,
               delivered=lambda offsets, records: order.append(f"delivered {offsets} {records}"))

    async def batch_then_ack() -> None:
        await r.handle([ev(0, "k", 1)], 1000.0)
        order.append("ack")  # what the Faust shell does once handle returns

    asyncio.run(batch_then_ack())
    assert order == ["deliver", f"delivered {{('counters-changelog', 0): 7}} {changelog}", "ack"]


def test_a_batch_prepared_while_the_one_before_is_delivered_is_sent_after_it() -> None:
    """The next batch's steps run while the previous one is on its way; it is sent (and reaches
    the store) only once the previous one is acknowledged, and it reads that batch's state."""
    rows, position = CountingRows(), Position()
    seen: list[str] = []
    release = asyncio.Event()
    pipe = Pipeline(name="c", table="c", store=lambda r: JsonStore(r, dict, dict), source=SRC, ticks=TICKS,
                    decode=decode, step=step, due=lambda st: None)

    async def deliver(records: Sequence[Record], placed: Sequence[Placed]) -> Offsets:
        seen.append(f"sent {[v.decode() for _, _, v in records]}")
        if not release.is_set():
            await release.wait()  # the first batch's acknowledgement takes a while
        return {}

    r = Runner(pipe, pipe.store(rows), deliver, position, DLQ,
               delivered=lambda offsets, records: seen.append("stored"))

    async def two_batches() -> None:
        first = asyncio.ensure_future(r.complete(r.prepare([ev(0, "k", 1)], 1000.0)))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(r.complete(r.prepare([ev(1, "k", 2)], 1000.0), asyncio.shield(first)))
        await asyncio.sleep(0.01)
        assert seen == ["sent ['1']"] and not second.done()  # prepared, waiting for the first
        release.set()
        await second

    asyncio.run(two_batches())
    assert seen == ["sent ['1']", "stored", "sent ['3']", "stored"]


def test_a_failed_delivery_raises_so_nothing_is_acknowledged() -> None:
    r, _, delivery, _ = runner()
    delivery.fail = True
    acked = []

    async def batch_then_ack() -> None:
        await r.handle([ev(0, "k", 1)], 1000.0)
        acked.append(True)

    with pytest.raises(RuntimeError):
        asyncio.run(batch_then_ack())
    assert acked == []


def test_a_failing_record_is_dead_lettered_and_confined_to_itself() -> None:
    r, rows, delivery, _ = runner()
    handle(r, [ev(0, "k", 5)])
    batch = [ev(1, "k", 1), ev(2, "other", 1), ev(3, "k", "boom"), ev(4, "other", 1), ev(5, "k", 2),
             Rec(SRC, 0, 6, b"bad", b"\xff not json")]
    handle(r, batch)
    # k: 5 + 1, the poison changed nothing (its in-place change was undone), then + 2
    assert orjson.loads(rows[b"k"])["total"] == 8
    assert orjson.loads(rows[b"other"])["total"] == 2
    assert [v for k, v in delivery.records(OUT) if k == b"k"] == [b"5", b"6", b"8"]
    dead = [orjson.loads(v) for _, v in delivery.records(DLQ)]
    assert [(d["offset"], d["error_type"], d["pipeline"], d["key"]) for d in dead] == [
        (3, "OverflowError", "counter", "k"), (6, "JSONDecodeError", "counter", "bad")]
    assert dead[0]["value"] == '"boom"' and dead[0]["value_base64"] is None
    assert dead[1]["value_base64"] is not None  # not UTF-8: kept exactly
    assert [k for k, _ in delivery.records(DLQ)] == [b"k", b"bad"]  # keyed as received
    assert r.next_offset[0] == 7  # dead-lettered records count as handled
    assert [d["app"] for d in dead] == ["", ""]  # neither is an object with an app


def test_a_dead_letter_carries_the_app_of_its_record_when_it_can_be_read() -> None:
    def app_of(value: bytes) -> str:
        return unprocessable("calls", HeldRecord(SRC, 0, 1, b"k", value), ValueError("x")).app

    assert app_of(b'{"app": "4e11fe2082b044b4a3b55718c79c29d5", "event": "TE"}') == "4e11fe2082b044b4a3b55718c79c29d5"
    assert app_of(b'[{"app": "A1", "key": "A1:9001"}, {"app": "A1"}]') == "A1"  # a bundle: its first item's
    assert [app_of(v) for v in (b"not json", b'{"app": 7}', b"[]", b'"A1"', b"\xff")] == ["", "", "", "", ""]


def test_a_bundle_that_fails_undoes_every_key_it_touched() -> None:
    r, rows, delivery, _ = runner()
    handle(r, [Rec(SRC, 0, 0, None, orjson.dumps([["a", 1], ["b", 1]])),
               Rec(SRC, 0, 1, None, orjson.dumps([["a", 10], ["b", 10], ["b", "boom"]])),
               Rec(SRC, 0, 2, None, orjson.dumps([["a", 100]]))])
    assert orjson.loads(rows[b"a"])["total"] == 101 and orjson.loads(rows[b"b"])["total"] == 1
    assert [v for _, v in delivery.records(OUT)] == [b"1", b"1", b"101"]  # the failed bundle's: dropped
    assert len(delivery.records(DLQ)) == 1


def test_a_bundle_with_a_key_that_cannot_be_one_is_dead_lettered_and_undone() -> None:
    """A key that is not a string (here a list: unhashable) fails before its input reaches any
    state: the record is set aside and the keys its earlier inputs reached are put back, like any
    failure (not raised out of the batch, which would stop the partition on it)."""
    r, rows, delivery, _ = runner()
    handle(r, [Rec(SRC, 0, 0, None, orjson.dumps([["a", 1]])),
               Rec(SRC, 0, 1, None, orjson.dumps([["a", 10], [["x"], 1]])),
               Rec(SRC, 0, 2, None, orjson.dumps([["a", 100]]))])
    assert orjson.loads(rows[b"a"])["total"] == 101
    assert [orjson.loads(v)["error_type"] for _, v in delivery.records(DLQ)] == ["TypeError"]


def test_a_refused_record_is_dead_lettered_without_replaying_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    """A step's `Refused` comes before it changed anything: nothing is put back, so a batch of many
    refusals costs one step each, not a replay of the key's earlier inputs each (a call past its
    bound met thousands in one batch); the reason is logged as a warning, without a traceback."""
    r, rows, delivery, _ = runner()
    handle(r, [ev(0, "k", 5)])
    handle(r, [ev(1, "k", 1), *[ev(i, "k", "refuse") for i in range(2, 200)], ev(200, "k", 2)])
    assert rows.reads[b"k"] == 2  # once per batch: no reload to put the key back
    assert orjson.loads(rows[b"k"])["total"] == 8
    dead = [orjson.loads(v) for _, v in delivery.records(DLQ)]
    assert len(dead) == 198 and {(d["error_type"], d["error"]) for d in dead} == {("Refused", "not taken")}
    refusals = [rec for rec in caplog.records if "refused" in rec.getMessage()]
    assert len(refusals) == 198 and {(rec.levelname, rec.exc_info) for rec in refusals} == {("WARNING", None)}
    # a bundle refused after an earlier input changed a key: that key is put back all the same
    handle(r, [Rec(SRC, 0, 201, None, orjson.dumps([["a", 10], ["k", "refuse"]]))])
    assert b"a" not in rows and orjson.loads(rows[b"k"])["total"] == 8


def test_ticks_wait_until_the_partition_has_caught_up() -> None:
    r, rows, delivery, position = runner()
    handle(r, [ev(0, "k", 100)])
    assert r.due_keys(1005.0) == [] and r.due_keys(1010.0) == ["k"]  # the saved state's due: now + 10
    position.ends[0] = 5  # four more records on the partition, not read yet
    handle(r, [Rec(TICKS, 0, 0, b"k", b"")])
    assert b"k" in rows and delivery.records(OUT) == [(b"k", b"100")]
    assert r.parked == {0: {"k"}}
    assert r.due_keys(3000.0) == []  # still behind: nothing released
    handle(r, [ev(i, "j", 1) for i in range(1, 5)])
    assert sorted(r.due_keys(3000.0)) == ["j", "k"]  # caught up: the parked tick goes out again (j: its own due)
    handle(r, [Rec(TICKS, 0, 1, b"k", b"")])
    assert b"k" not in rows and (b"k", b"forgotten") in delivery.records(OUT)


def test_a_due_key_of_a_partition_reading_a_backlog_is_parked_without_sending_its_tick() -> None:
    r, _, _, position = runner()
    r.partitions = 4
    keys = {partition_for(k.encode(), 4): k for k in (f"k{i}" for i in range(40))}
    backlog, live, unknown = keys[1], keys[2], keys[3]
    handle(r, [ev(0, backlog, 100, partition=1), ev(0, live, 100, partition=2), ev(0, unknown, 100, partition=3)])
    # partition 1: a backlog not read yet; 2: a few records fetched, not handled yet; 3: not known
    position.ends.update({1: 1 + FAR_BEHIND + 1, 2: 1 + 5})
    assert sorted(r.due_keys(1010.0)) == sorted([live, unknown])  # their ticks go out, checked on arrival
    assert r.parked == {1: {backlog}} and r.parked_keys == 1
    assert r.due_keys(3000.0) == []
    handle(r, [ev(i, "j", 1, partition=1) for i in range(1, 2 + FAR_BEHIND)])
    assert sorted(r.due_keys(1011.0)) == sorted([backlog, "j"]) and r.parked == {}  # caught up: released
    assert r.parked_keys == 0


def test_recovery_rebuilds_the_deadline_index_from_the_table() -> None:
    seen: list[Any] = []
    r, rows, _, position = runner(seen)
    rows[b"big"] = orjson.dumps({"total": 150})
    rows[b"small"] = orjson.dumps({"total": 1})
    r.due.set("stale", 1.0)
    r.parked[0] = {"x"}
    r.recovered({0: 12, 1: None})
    assert r.next_offset == {0: 12, 1: 0} and r.parked == {}
    assert r.due_keys(5.0) == ["big"]  # "stale" is gone; "small" has no deadline
    assert sorted(k for k, _ in seen) == ["big", "small"]
    position.ends[0] = 12
    assert r.caught_up(0) and not r.caught_up(1)


def test_a_failing_tick_is_dead_lettered_and_changes_nothing() -> None:
    r, rows, delivery, position = runner()
    handle(r, [ev(0, "k", 13)])
    position.ends[0] = 1
    handle(r, [Rec(TICKS, 0, 0, b"k", b""), ev(1, "k", 1)])
    assert orjson.loads(rows[b"k"])["total"] == 14
    dead = [orjson.loads(v) for _, v in delivery.records(DLQ)]
    assert [(d["topic"], d["error_type"], d["key"]) for d in dead] == [(TICKS, "ValueError", "k")]


def test_latency_is_observed_from_the_webhooks_receipt_to_the_outputs_acknowledgement() -> None:
    from processors.worker_metrics import REGISTRY

    def count() -> float:
        return REGISTRY.get_sample_value("ivr_worker_processing_latency_seconds_count", {"output": "completed"}) or 0

    def total() -> float:
        return REGISTRY.get_sample_value("ivr_worker_processing_latency_seconds_sum", {"output": "completed"}) or 0

    r, _, delivery, _ = runner()
    before, before_sum = count(), total()
    now = 1_000_000.0  # the step says its webhook was received at now - 1; delivery acknowledges "now" (real time)
    handle(r, [ev(0, "k", 1), ev(1, "j", 1)], now)
    assert count() == before + 2
    # measured up to the acknowledgement (wall clock after delivery), not to the batch's start
    assert total() - before_sum >= 2 * (time.time() - 5 - (now - 1)) - 1e-6
    delivery.fail = True
    with pytest.raises(RuntimeError):
        handle(r, [ev(2, "k", 1)], now)
    assert count() == before + 2  # nothing delivered: nothing measured


class BrokenRows(CountingRows):
    """A table whose partition is gone (as while a rebalance moves it)."""

    def get(self, key: bytes, default: Any = None) -> Any:  # type: ignore[override]
        raise RuntimeError("store for partition 0 is closed")


def test_a_table_that_cannot_be_read_fails_the_batch_instead_of_dead_lettering_its_records() -> None:
    rows, delivery, position = BrokenRows(), Delivery(), Position()
    pipe = Pipeline(name="counter", table="counters", store=lambda r: JsonStore(r, dict, dict), source=SRC,
                    ticks=TICKS, decode=decode, step=step, due=lambda st: None)
    r = Runner(pipe, pipe.store(rows), delivery, position, DLQ)
    with pytest.raises(StoreError) as raised:
        handle(r, [ev(0, "k", 1), ev(1, "k", 2)])
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert delivery.batches == []  # nothing delivered, nothing dead-lettered: the batch is read again


def test_a_deadline_that_cannot_be_computed_leaves_the_key_without_one(caplog: pytest.LogCaptureFixture) -> None:
    r, rows, delivery, _ = runner()
    handle(r, [ev(0, "k", 1), ev(1, "k", "no deadline"), ev(2, "j", 1)])
    assert orjson.loads(rows[b"k"]) == {"total": 1, "due": "never"}  # saved all the same
    assert r.due_keys(5000.0) == ["j"]  # k: no deadline (it raised), j: its own
    assert "the deadline of 1 key(s) could not be computed (ValueError)" in caplog.text
    assert delivery.records(DLQ) == []  # no record is to blame
    handle(r, [ev(3, "k", 2)])
    assert r.due_keys(5000.0) == ["k"]  # its next record asks again


def test_settle_runs_once_per_changed_key_after_the_batch_and_a_failure_is_confined_to_its_key() -> None:
    """`Pipeline.settle`: called once per key the batch changed, after all its records (its
    outputs after theirs). One that raises: its key keeps what its records did (not what settle
    did), its latest record is dead-lettered with the error, the other keys are settled."""
    settled: list[tuple[str, int]] = []

    def settle(key: str, state: dict[str, Any], now: float) -> Result[dict[str, Any]] | None:
        settled.append((key, state["total"]))
        if key == "bad":
            state["total"] = -1  # in place, then raises: undone
            raise ValueError("cannot settle")
        return Result({**state, "settled": True}, [Output(OUT, key.encode(), b"settled")])

    rows, delivery = CountingRows(), Delivery()
    pipe = Pipeline(name="counter", table="counters", store=lambda r: JsonStore(r, dict, dict), source=SRC,
                    ticks=TICKS, decode=decode, step=step, due=due, settle=settle)
    r = Runner(pipe, pipe.store(rows), delivery, Position(), DLQ)
    handle(r, [ev(0, "k", 1), ev(1, "bad", 2), ev(2, "k", 3), ev(3, "noop", "noop"), ev(4, "bad", 4)])
    assert settled == [("k", 4), ("bad", 6)]  # "noop" changed nothing: not settled
    assert [v for k, v in delivery.records(OUT) if k == b"k"] == [b"1", b"4", b"settled"]
    assert orjson.loads(rows[b"k"])["settled"] is True
    assert orjson.loads(rows[b"bad"]) == {"total": 6, "due": 1010.0}
    dead = [orjson.loads(v) for _, v in delivery.records(DLQ)]
    assert [(d["offset"], d["error_type"], d["key"]) for d in dead] == [(4, "ValueError", "bad")]
