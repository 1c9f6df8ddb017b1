"""The keyed-batch runtime: what every pipeline does around its pure step.

A pipeline (see `processors.pipelines`) declares its source topic, its table (through a `Store`),
its ticker and one pure step `step(key, state | None, input | TICK, now) -> Result | None`.
For each batch of source records (and ticks) the runtime

  * decodes each record into (key, input) pairs (a bundle holds several keys of one partition);
  * loads each touched key once, applies the step to each of its inputs in order, and saves
    the key once (one changelog record per key and batch, written for the record's partition);
  * confines a failure to its record: a record whose decoding or step raises goes to the
    dead-letter topic with the error (a table that cannot be read is the worker's failure, not
    the record's: the batch fails and is not acknowledged, see `fail`), the keys it touched are
    put back as they were before it (their earlier inputs of the batch are replayed; not when a
    step's `Refused` of the record's first input, raised before it changed anything, is all there
    is to undo), its outputs are dropped, the batch goes on;
  * delivers every output, dead letter and changelog record of the batch together (the local
    store is written once they are acknowledged: see `complete`) and only then lets the batch be
    acknowledged, while the next batch's steps already run (`IN_FLIGHT`; they read the state
    the batch before left, whether or not it has reached the store yet); a delivery that cannot be made stops the worker
    (exit status 70) so that nothing is acknowledged past an undelivered output, and a worker
    asked to stop mid-batch first lets the batch's delivery finish (or exits the same way);
  * keeps each key's next deadline; a timer sends a tick keyed like the state, which the worker
    owning the key handles like an input; a tick for a partition not yet caught up with its
    source is parked until it is (a deadline must not fire while its events wait unread);
  * rebuilds the deadline index from the table after a rebalance.

All of Faust's private parts that the worker relies on are used here (and in `BatchedTable`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

import orjson

from config import topics
from config.kafka_producer import partition_for
from processors import bundles
from processors import worker_metrics as m
from processors.core.deadlines import DeadlineIndex
from processors.core.refusal import Refused
from processors.inbox import Inbox
from processors.output_producer import Offsets, Placed, Record
from processors.read_order import Gap, ReadOrder
from schemas.codec import dumps
from schemas.records import UnprocessableEvent
from schemas.timefmt import format_ts

log = logging.getLogger("processors.runtime")

#: records a partition is behind its source by, beyond which its due ticks are parked where they
#: are due, not sent (see `Runner.due_keys`): a backlog, not a live partition's records in flight
FAR_BEHIND = 1_000

#: batches of a pipeline prepared and not yet delivered: the next batch's steps run while the
#: previous one is on its way to the broker (the worker's CPU would otherwise wait for it); the
#: next is sent once the previous one is acknowledged
IN_FLIGHT = 2

S = TypeVar("S")
I_contra = TypeVar("I_contra", contravariant=True)
I = TypeVar("I")  # noqa: E741 - the input type


class StoreError(Exception):
    """The table could not be read (e.g. its partition is being moved by a rebalance): the
    record is not at fault, so it is not dead-lettered; the batch fails and is not acknowledged."""


class Tick:
    """The input a step gets when its key's deadline has come."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TICK"


TICK = Tick()


# Output and Result are made for every event: not frozen, which costs 0.5 us more a construction
# (object.__setattr__ per field). Nothing changes them once made.
@dataclass(slots=True)
class Output:
    """One record a step emits. `received`: when the webhook that caused it reached the ingress;
    the output's latency (to its acknowledgement) is then observed under `latency` (a label)."""

    topic: str
    key: bytes
    value: bytes
    received: float | None = None
    latency: str | None = None


@dataclass(slots=True)
class Result(Generic[S]):
    state: S | None  # None: forget the key
    outputs: Sequence[Output] = ()


class Store(Protocol[S]):
    """A pipeline's keyed state over its table. Reads and writes go to the partition the runtime
    last pointed it at (`Runner`'s `at`)."""

    def load(self, key: str) -> S | None: ...

    def save(self, key: str, state: S | None) -> None: ...

    def items(self) -> Iterable[tuple[str, S]]:
        """Every state held for this worker's partitions, asked after every rebalance: a store
        that keeps states between batches forgets them here (another worker may have written
        the keys since)."""
        ...


class Source(Protocol):
    """A record as the runtime needs it: Faust's event, or a test's stand-in."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class HeldRecord:
    """A `Source` held in memory: what unit tests and the offline benchmarks feed a `Runner`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


Step = Callable[[str, S | None, Any, float], Result[S] | None]
Decode = Callable[[bytes | None, bytes], Sequence[tuple[str, Any]]]


@dataclass(slots=True)
class Pipeline(Generic[S]):
    """A keyed pipeline, declared once (see `processors.pipelines`).

    name        label on the worker's metrics and dead letters; names its Faust agent
    table       the table's name (its changelog topic is `<app id>-<table>-changelog`)
    store       the `Store` over the table's bytes -> bytes rows
    source      the topic whose records feed `step` (full name)
    ticks       the tick topic (full name), co-partitioned with `source`
    decode      record key and value -> (state key, input) pairs; raising sends the record
                to the dead-letter topic
    step        the pure step: (key, state or None, input or TICK, now) -> Result, or None
                when nothing changes
    due         a state's next deadline (None: never), asked once per key and batch when the key
                is saved, and for every state held after a rebalance
    bundled     output topics whose records are bundled per partition (see `bundles`)
    tick_every  how often the timer looks for due keys (seconds)
    settle      called once per batch for each key its records changed, after them all:
                (key, state, now) -> Result, or None when nothing changes (e.g. one revision
                for several late events). Raising: the key keeps what its records changed, not
                what `settle` did or would have sent, and its latest record goes to the
                dead-letter topic with the error (the step takes care that this does not
                happen: see `lifecycle._late`)
    on_saved    called after each batch with the keys saved (gauges); like `due`, it reads
                them then and keeps none: the next batch may change a state in place
    on_recovered  called with every state held after a rebalance (gauges)
    """

    name: str
    table: str
    store: Callable[[MutableMapping[bytes, bytes]], Store[S]]
    source: str
    ticks: str
    decode: Decode
    step: Step[S]
    due: Callable[[S], float | None]
    bundled: frozenset[str] = frozenset()
    tick_every: float = 1.0
    settle: Callable[[str, S, float], Result[S] | None] | None = None
    on_saved: Callable[[dict[str, S | None]], None] | None = None
    on_recovered: Callable[[Iterable[tuple[str, S]]], None] | None = None


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch whose steps ran, to deliver: its outputs, those sent as they are, its bundles and
    its changelog records."""

    outputs: list[Output]
    plain: list[Record]
    bundles: list[Placed]
    changelog: list[Placed]


class Delivery(Protocol):
    async def __call__(self, records: Sequence[Record], placed: Sequence[Placed]) -> Offsets: ...


class Position(Protocol):
    """Where the consumer stands: the log end of a source partition (None: not assigned here)."""

    def highwater(self, topic: str, partition: int) -> int | None: ...


@dataclass(slots=True)
class _Key(Generic[S]):
    """A key the batch touched: its newest state, a record of its partition (the latest that
    changed it), its inputs applied so far (replayed when a later record of the batch fails)."""

    state: S | None
    source: Source
    journal: list[Any] = field(default_factory=list)
    changed: bool = False


class Runner(Generic[S]):
    """One pipeline's batch handling, free of Faust: the table is a `Store`, delivery a callable,
    `at` points table access at a record's partition (called before each load and save)."""

    def __init__(self, pipeline: Pipeline[S], store: Store[S], deliver: Delivery, position: Position,
                 dead_letters: str, at: Callable[[int], None] | None = None,
                 changelog: Callable[[], list[Placed]] = list,
                 delivered: Callable[[Offsets, list[Placed]], None] | None = None,
                 partitions: int = 1, bundle_bytes: int = bundles.MAX_BYTES) -> None:
        self.p = pipeline
        self.store = store
        self.deliver = deliver
        self.position = position
        self.dead_letters = dead_letters
        self.at = at or _anywhere
        self.changelog = changelog
        self.delivered = delivered
        self.partitions = partitions
        self.bundle_bytes = bundle_bytes
        self.due = DeadlineIndex()
        self.next_offset: dict[int, int] = {}  # per source partition: the next record to handle
        self.parked: dict[int, set[str]] = {}  # ticks held until their partition catches up
        self.latency: dict[str, Any] = {}  # the latency histogram's children, by label

    # --- ticks ----------------------------------------------------------------------------------

    def _lag(self, partition: int) -> int | None:
        """Records of `partition` not handled yet (None: not known, e.g. not assigned here)."""
        highwater = self.position.highwater(self.p.source, partition)
        return None if highwater is None else highwater - self.next_offset.get(partition, 0)

    def caught_up(self, partition: int) -> bool:
        lag = self._lag(partition)
        return lag is not None and lag <= 0

    def far_behind(self, partition: int) -> bool:
        """Whether `partition` is known to be reading a backlog: more than `FAR_BEHIND` records
        behind its source (a live partition has a few fetched and not yet handled most of the time)."""
        lag = self._lag(partition)
        return lag is not None and lag > FAR_BEHIND

    @property
    def parked_keys(self) -> int:
        """Keys whose tick waits for their partition to catch up (see `due_keys`)."""
        return sum(len(keys) for keys in self.parked.values())

    def due_keys(self, now: float) -> list[str]:
        """Keys whose tick should be sent now: parked ones whose partition caught up, then the due.
        A due key of a partition reading a backlog is parked here at once: its tick would be parked
        on arrival, and sent again once the partition has caught up (a backlog's every deadline
        went to Kafka and back twice). Its partition is the one its tick would go to. A partition
        only a few records behind gets its ticks, checked on arrival as before."""
        for partition in [p for p in self.parked if self.caught_up(p)]:
            for key in self.parked.pop(partition):
                self.due.set(key, now)
        out: list[str] = []
        behind: dict[int, bool] = {}
        for key in self.due.pop_due(now):
            partition = partition_for(key.encode(), self.partitions)
            late = behind.get(partition)
            if late is None:
                late = behind[partition] = self.far_behind(partition)
            if late:
                self.parked.setdefault(partition, set()).add(key)
            else:
                out.append(key)
        return out

    # --- recovery -------------------------------------------------------------------------------

    def recovered(self, committed: dict[int, int | None]) -> None:
        """After a rebalance: the offsets the source resumes from, and the states now held."""
        self.due.clear()
        self.parked.clear()
        self.next_offset = {p: o or 0 for p, o in committed.items()}  # None: nothing committed yet
        states = list(self.store.items())
        self._set_deadlines(states)
        if self.p.on_recovered is not None:
            self.p.on_recovered(states)
        log.info("%s: deadline index rebuilt, %d keys", self.p.name, len(self.due))

    # --- batches --------------------------------------------------------------------------------

    async def handle(self, batch: Sequence[Source], now: float) -> None:
        """Process a batch of records; returns once its outputs are delivered (the caller then
        acknowledges the batch). A delivery that raises propagates: the caller must not acknowledge."""
        await self.complete(self.prepare(batch, now))

    def prepare(self, batch: Sequence[Source], now: float) -> Prepared:
        """A batch's steps, its keys saved (their changelog taken for delivery) and its outputs,
        ready for `complete`. The next batch may be prepared before this one is complete: its
        loads see this one's saves (see `BatchedTable`)."""
        keys: dict[str, _Key[S]] = {}
        outputs: list[Output] = []
        for record in batch:
            outputs.extend(self._record(record, keys, now))
        if self.p.settle is not None:
            self._settle(self.p.settle, keys, outputs, now)
        saved: dict[str, S | None] = {}
        for key, k in keys.items():
            if not k.changed:
                continue
            self.at(k.source.partition)
            self.store.save(key, k.state)
            saved[key] = k.state
        self._set_deadlines(saved.items())
        if self.p.on_saved is not None and saved:
            self.p.on_saved(saved)
        plain: list[Record] = []
        to_bundle: list[Record] = []
        for o in outputs:
            (to_bundle if o.topic in self.p.bundled else plain).append((o.topic, o.key, o.value))
        return Prepared(outputs, plain, bundles.bundle(to_bundle, self.partitions, self.bundle_bytes), self.changelog())

    async def complete(self, batch: Prepared, after: Awaitable[Any] | None = None) -> None:
        """Once `after` (the batch prepared before this one) is complete, deliver this one and
        write its changelog to the local store."""
        # One batch of a pipeline on its way at a time: a later batch's outputs acknowledged
        # before an earlier batch's changelog (or its own, queued behind the earlier one's on the
        # same partitions) widen the window in which a killed worker leaves outputs whose state
        # is lost, and whose replay, later, may close calls with other content (a full test run
        # showed it: revisions written twice, differing).
        if after is not None:
            await after
        started = time.perf_counter()
        # Outputs and changelog together, in one bulk send (idempotent, not transactional: a
        # worker killed mid-send can leave part of the changelog delivered and outputs not, and
        # those outputs are lost; README "Delivery guarantee"). The outputs first and the changelog
        # after them was tried: the wider window between the two sends likely let a killed worker's
        # successor re-emit revisions later, with other content. The local store is written only
        # once all of it is acknowledged (see `BatchedTable.delivered`), in the batches' order.
        offsets = await self.deliver(batch.plain, [*batch.bundles, *batch.changelog])
        acked = time.time()
        if batch.plain or batch.bundles or batch.changelog:
            m.DELIVER_SECONDS.observe(time.perf_counter() - started)
        if self.delivered is not None:
            self.delivered(offsets, batch.changelog)
        latency = self.latency
        for o in batch.outputs:
            if o.latency is not None and o.received is not None:
                if o.latency not in latency:  # labels() takes a lock and builds a tuple: once per label
                    latency[o.latency] = m.LATENCY.labels(o.latency)
                latency[o.latency].observe(max(0.0, acked - o.received))

    def _record(self, record: Source, keys: dict[str, _Key[S]], now: float) -> list[Output]:
        """One record (or tick) against the batch's keys: its outputs, or its dead letter."""
        p = self.p
        inputs: Sequence[tuple[str, Any]] | None = None
        if record.topic == p.ticks:
            key = (record.key or b"").decode("utf-8", "replace")
            if not self.caught_up(record.partition):
                self.parked.setdefault(record.partition, set()).add(key)  # see `due_keys`
                return []
            inputs = [(key, TICK)]
        else:
            self.next_offset[record.partition] = record.offset + 1
        step = p.step
        touched: list[str] = []  # the keys this record's inputs reached, in order
        done = 0  # the inputs whose step returned: the first `done` of `touched`
        out: list[Output] = []
        try:
            if inputs is None:
                inputs = p.decode(record.key, record.value)
            for key, item in inputs:
                k = keys.get(key)
                if k is None:
                    k = keys[key] = _Key(self._load(record, key), record)
                touched.append(key)
                result = step(key, k.state, item, now)  # may have changed k.state, then raised
                k.journal.append(item)
                done += 1
                if result is not None:
                    k.state, k.changed, k.source = result.state, True, record
                    out.extend(result.outputs)
        except StoreError:
            raise  # the worker's fault, not the record's: the batch must not be acknowledged
        except Exception as error:  # confined to this record: see the module doc
            if not (isinstance(error, Refused) and not done):  # a refusal of its first input changed nothing
                self._undo(keys, touched, touched[:done], now)
            return [self._dead_letter(record, error)]
        return out

    def _settle(self, settle: Callable[[str, S, float], Result[S] | None], keys: dict[str, _Key[S]],
                outputs: list[Output], now: float) -> None:
        for key, k in keys.items():
            if not k.changed or k.state is None:
                continue
            try:
                result = settle(key, k.state, now)
            except Exception as error:  # confined to this key, as a record's error is
                self._undo(keys, [key], [], now)  # its records' inputs applied again, not settled
                outputs.append(self._dead_letter(k.source, error))
                continue
            if result is not None:
                k.state = result.state
                outputs.extend(result.outputs)

    def _set_deadlines(self, states: Iterable[tuple[str, S | None]]) -> None:
        """The keys' next deadlines, from their saved states: asked here, once per key and batch
        (or recovery), not after every step (a state's deadline depends on nothing else). A `due`
        that raises is a bug in the pipeline, and no record is to blame for it: the key is kept
        without a deadline (its next record asks again) and the errors are logged, once per call
        (not the keys: they may hold a caller's number), so the partition goes on."""
        failed, first = 0, None
        for key, state in states:
            due = None
            if state is not None:
                try:
                    due = self.p.due(state)
                except Exception as error:
                    failed, first = failed + 1, first or error
            self.due.set(key, due)
        if first is not None:
            log.error("%s: the deadline of %d key(s) could not be computed (%s); they have none until their "
                      "next record", self.p.name, failed, type(first).__name__, exc_info=first)

    def _load(self, record: Source, key: str) -> S | None:
        try:
            self.at(record.partition)
            return self.store.load(key)
        except Exception as error:
            raise StoreError(f"{self.p.name}: the table could not be read for {record.topic}[{record.partition}]"
                             f"@{record.offset}: {type(error).__name__}: {error}") from error

    def _undo(self, keys: dict[str, _Key[S]], touched: list[str], returned: list[str], now: float) -> None:
        """Put the keys a failed record reached back as they were before it: from the state stored
        before the batch (saves happen at its end), replay the inputs of the batch's earlier records."""
        for key in dict.fromkeys(touched):
            k = keys[key]
            earlier = k.journal[:len(k.journal) - returned.count(key)]
            self.at(k.source.partition)
            state = self.store.load(key)
            k.state, k.changed, k.journal = state, False, []
            for item in earlier:
                result = self.p.step(key, k.state, item, now)
                k.journal.append(item)
                if result is not None:
                    k.state, k.changed = result.state, True

    def _dead_letter(self, record: Source, error: Exception) -> Output:
        m.UNPROCESSABLE.labels(self.p.name).inc()
        if isinstance(error, Refused):  # a rule of the pipeline, with its reason: no traceback to read
            log.warning("%s: record %s[%s]@%s refused (%s: %s); sent to %s", self.p.name, record.topic,
                        record.partition, record.offset, type(error).__name__, error, self.dead_letters)
        else:
            log.error("%s: record %s[%s]@%s could not be processed (%s); sent to %s", self.p.name, record.topic,
                      record.partition, record.offset, type(error).__name__, self.dead_letters, exc_info=error)
        return Output(self.dead_letters, record.key or b"", dumps(unprocessable(self.p.name, record, error)))


def unprocessable(pipeline: str, record: Source, error: Exception) -> UnprocessableEvent:
    value: bytes = record.value or b""
    key: bytes = record.key or b""
    try:
        text, b64 = value.decode("utf-8"), None
    except UnicodeDecodeError:
        text, b64 = value.decode("utf-8", "replace"), base64.b64encode(value).decode()
    return UnprocessableEvent(
        app=_app_of(value), topic=record.topic, partition=record.partition, offset=record.offset,
        key=key.decode("utf-8", "replace"), value=text, value_base64=b64,
        error_type=type(error).__name__, error=str(error)[:1000], pipeline=pipeline, at=format_ts(time.time()),
    )


def _app_of(value: bytes) -> str:
    """The `app` of a record that could not be processed, if it can be read (else empty): every
    record a pipeline reads is an object with one, or a bundle (an array) of them."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(data, list) and data:
        data = data[0]
    app = data.get("app") if isinstance(data, dict) else None
    return app[:128] if isinstance(app, str) else ""


def _anywhere(_: int) -> None:
    """A store with one place for every partition (tests, the memory store)."""


# --- Faust ----------------------------------------------------------------------------------------

def survives(name: str, timer: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A Faust timer that raises stops the whole worker: log the error and try again next time."""
    m.TIMER_ERRORS.labels(name)  # its series at 0 from the start: the first failure shows in `increase()`

    @functools.wraps(timer)
    async def guarded() -> None:
        try:
            await timer()
        except asyncio.CancelledError:
            raise
        except Exception:
            m.TIMER_ERRORS.labels(name).inc()
            log.exception("timer %s failed; it runs again at its next interval", name)

    return guarded


class _Highwater:
    def __init__(self, app: Any) -> None:
        self.app = app

    def highwater(self, topic: str, partition: int) -> int | None:
        from faust.types import TP

        try:
            return cast("int | None", self.app.consumer.highwater(TP(topic, partition)))
        except (AssertionError, KeyError):  # aiokafka's answer for a partition not (or no longer) assigned
            return None  # moved away in a rebalance: its new owner decides


def bundle_bytes(produce_batch_bytes: int) -> int:
    """The largest bundle a worker writes: well within a producer batch."""
    return produce_batch_bytes // 4


def run(app: Any, pipeline: Pipeline[S]) -> Runner[S]:
    """Wire `pipeline` into the Faust app (an `IvrApp`): its table, its agent, its tick timer,
    its recovery."""
    s = app.ivr_settings
    parts = s.topic_partitions
    table = app.batched_table(pipeline.table)
    m.UNPROCESSABLE.labels(pipeline.name)  # at 0 from the start: a first dead letter shows in `increase()`

    async def deliver(records: Sequence[Record], placed: Sequence[Placed]) -> Offsets:
        await app.membership.confirmed()  # raises Evicted: the runtime then stops, acknowledging nothing
        return cast(Offsets, await app.outputs.send_all(records, placed))

    runner: Runner[S] = Runner(
        pipeline, pipeline.store(table), deliver, _Highwater(app), s.topic(topics.EVENTS_UNPROCESSABLE),
        at=table.at,
        changelog=table.take_changelog, delivered=table.delivered, partitions=parts,
        bundle_bytes=bundle_bytes(s.worker_produce_batch_bytes),
    )

    # Subscribed through Faust's conductor; the consumer hands the fetched records to the inbox
    # (see `processors.inbox`), which one task drains: keyed state is handled in partition order.
    app.topics.add(app.topic(pipeline.source, pipeline.ticks, partitions=parts))
    inbox: Inbox[Any] = Inbox(capacity=4 * s.worker_batch_max)
    app.inboxes[pipeline.source] = app.inboxes[pipeline.ticks] = inbox
    guard = ClearedByRebalance(inbox, app.flow_control)
    app.flow_guards.append(guard)  # Faust's flow control holds its queues weakly
    app.flow_control.manage_queue(guard)

    # what keeps the batches contiguous per partition (see `processors.read_order`)
    order: ReadOrder[Any] = ReadOrder()
    in_flight: deque[asyncio.Future[None]] = deque()  # batches being delivered, oldest first
    rereads: set[asyncio.Task[None]] = set()

    def on_gap(gap: Gap[Any]) -> None:
        if gap.absent:
            log.error("%s: %s offsets %d-%d never arrived, read again %d times: taken as absent", pipeline.name,
                      gap.partition, gap.expected, gap.seen - 1, order.rereads_max)
            return
        m.REREADS.labels(pipeline.name).inc()
        log.warning("%s: %s expected offset %d, got %d: reading it again from %d", pipeline.name, gap.partition,
                    gap.expected, gap.seen, gap.expected)
        task = asyncio.ensure_future(reread(gap, order.generation))
        rereads.add(task)
        task.add_done_callback(rereads.discard)

    async def reread(gap: Gap[Any], generation: int | None) -> None:
        tp = gap.partition
        try:
            earliest = (await app.consumer.earliest_offsets(tp)).get(tp) or 0
            if order.generation != generation or order.next_offset(tp) != gap.expected:
                return  # a rebalance meanwhile: the positions were set again
            start = max(gap.expected, earliest)  # retention may have deleted them since
            inbox.discard(lambda run: bool(run) and run[0].tp == tp)
            await app.consumer.seek(tp, start)
            order.reread(tp, start)
        except Exception as error:
            log.warning("%s: could not read %s again from %d (%r); trying again at its next record",
                        pipeline.name, tp, gap.expected, error)
            order.unblock(tp)

    async def drain() -> None:
        consumer = app.consumer
        while True:
            messages = await inbox.take(s.worker_batch_max, s.worker_batch_window_s)
            # Not while the flow is stopped (a rebalance, or the tables' first recovery, during
            # which the consumer already reads): wait for it. Faust's stream skips such records
            # and acknowledges them, which commits past records never handled (a new group's
            # first rebalance lost ~10% of a backlog that way). Then a record fetched under an
            # earlier assignment is not handled: the new assignment reads again from the commit.
            while not app.flow_control.is_active():
                await app.flow_control.acquire()
            generation = app.consumer_generation_id
            fresh, gaps = order.admit([msg for msg in messages if msg.generation_id == generation], _where,
                                      generation)
            for gap in gaps:
                on_gap(gap)
            if not fresh:
                continue
            consumer.track(fresh)  # pending acknowledgement: a rebalance or a stop waits for it
            m.BATCH_EVENTS.observe(len(fresh))
            prepared = runner.prepare(fresh, time.time())
            # delivered while the next batch runs; acknowledged once delivered, in order
            while in_flight and in_flight[0].done():
                in_flight.popleft()
            before = in_flight[-1] if in_flight else None
            in_flight.append(asyncio.ensure_future(complete(prepared, fresh, before)))
            while len(in_flight) >= IN_FLIGHT:
                await asyncio.shield(in_flight[0])
                in_flight.popleft()

    async def complete(prepared: Prepared, fresh: list[Any], before: asyncio.Future[None] | None) -> None:
        try:
            await runner.complete(prepared, None if before is None else asyncio.shield(before))
        except BaseException as error:  # cancelled too: acknowledged it must not be
            fail(pipeline.name, error)
        app.consumer.ack_batch(fresh)

    async def process() -> None:
        try:
            await drain()
        except asyncio.CancelledError:
            # the worker is stopping: let the batches in flight be delivered and acknowledged, or
            # leave without acknowledging them
            for task in in_flight:
                await stopping(pipeline.name, task)
            raise
        except BaseException as error:  # a worker alive but no longer handling its input is worse
            fail(pipeline.name, error)

    app.task(process)

    async def send_ticks() -> None:
        # in bulk, like the outputs (Faust's per-message send costs ~100 µs a tick); keyed like
        # the state, so each tick reaches the partition (and worker) that owns its key
        due = runner.due_keys(time.time())
        if due:
            await app.outputs.send_all([(pipeline.ticks, key.encode(), b"") for key in due])

    app.timer(interval=pipeline.tick_every, name=f"ticks_{pipeline.name}")(survives(f"ticks_{pipeline.name}",
                                                                                    send_ticks))

    @table.on_recover
    async def rebuild() -> None:
        # The offsets the source and ticks resume from (Faust seeks to them too, right after this
        # callback): the committed ones, or the log's first for a partition never committed.
        # Without them the read order admits nothing, and Faust ignores a recovery callback's
        # error: retried, then the worker stops (restarted, it reads on from its commits) rather
        # than taking records it silently drops until the next rebalance.
        generation = app.consumer_generation_id
        for attempt in range(1, 4):
            try:
                # none (more workers than partitions: this one waits for a share) is not an error,
                # though aiokafka's seek says so
                committed = await app.consumer.seek_to_committed() if app.consumer.assignment() else {}
                mine = {tp: o for tp, o in committed.items() if tp.topic in (pipeline.source, pipeline.ticks)}
                new = [tp for tp, offset in mine.items() if offset is None]
                earliest = await app.consumer.earliest_offsets(*new) if new else {}
            except Exception as error:
                if app.consumer_generation_id != generation:
                    return  # a rebalance meanwhile: its recovery rebuilds again
                if attempt == 3:
                    fail(pipeline.name, error)
                log.warning("%s: the committed offsets could not be read (%r); trying again", pipeline.name, error)
                await asyncio.sleep(1.0)
                continue
            positions = {tp: offset if offset is not None else earliest.get(tp) or 0 for tp, offset in mine.items()}
            order.start(generation, positions)
            runner.recovered({tp.partition: offset for tp, offset in positions.items() if tp.topic == pipeline.source})
            return

    reported: set[str] = set()  # the source's partitions this worker's lag gauge shows

    async def report_lag() -> None:
        m.PARKED_TICKS.labels(pipeline.name).set(runner.parked_keys)
        held = {str(tp.partition): tp for tp in app.assignor.assigned_actives() if tp.topic == pipeline.source}
        for partition, tp in held.items():
            highwater = app.consumer.highwater(tp)
            if highwater is not None:
                lag = max(0, highwater - runner.next_offset.get(tp.partition, 0))
                m.LAG.labels(pipeline.source, partition).set(lag)
        for gone in reported - held.keys():  # moved to another worker: its lag is that one's to show
            with contextlib.suppress(KeyError):
                m.LAG.remove(pipeline.source, gone)
        reported.clear()
        reported.update(held)

    app.timer(interval=5.0, name=f"lag_{pipeline.name}")(survives(f"lag_{pipeline.name}", report_lag))
    return runner


def _where(message: Any) -> tuple[Any, int]:
    return message.tp, message.offset


class ClearedByRebalance:
    """Empties an inbox when a rebalance stops the flow (its records are then read again from the
    committed offsets, by whichever worker owns them next).

    Faust's flow control clears its queues then, and again each time the flow resumes, which its
    table recovery does more than once and not only after a seek: records cleared while the
    consumer reads on would never be read again (the commit would be held at the first of them,
    or, for a partition never committed, go past them). So a clear while the flow is active is
    ignored: what the inbox holds then was read under the current assignment and will be handled.
    """

    def __init__(self, inbox: Inbox[Any], flow: Any) -> None:
        self.inbox = inbox
        self.flow = flow

    def clear(self) -> None:
        if not self.flow.is_active():
            self.inbox.clear()


async def stopping(pipeline: str, batch: asyncio.Future[None], wait_s: float = 15.0) -> None:
    done, _ = await asyncio.wait([batch], timeout=wait_s)
    if not done:
        fail(pipeline, TimeoutError(f"a batch still undelivered {wait_s:.0f}s into the shutdown"))
    elif not batch.cancelled() and batch.exception() is not None:
        fail(pipeline, cast(BaseException, batch.exception()))


def fail(pipeline: str, error: BaseException) -> None:
    """A batch whose outputs cannot be delivered (or whose table cannot be read) must not be
    acknowledged, and Faust would acknowledge it as soon as the handler raises: stop the process
    at once (its supervisor restarts it; the batch is then read again from the last committed offset)."""
    log.critical("%s: a batch could not be completed (%s: %s); stopping the worker so that "
                 "nothing is acknowledged", pipeline, type(error).__name__, error, exc_info=error)
    logging.shutdown()
    os._exit(70)
