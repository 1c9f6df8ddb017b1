"""Faust's Kafka consumer, with the two offset rules the worker needs to lose nothing in a rebalance.

Faust commits, per partition, the end of the first run of consecutive acknowledged offsets.

* A gap at the head of that run must hold the commit back. Faust's check lets exactly one
  missing offset through: committed (the next offset to read) C, acknowledged C+1, C+2, ...
  commits past C although C was never handled (its test is `min(acked) - C > 1`). In a
  rolling restart, an event fetched just before a rebalance and handled by no one after it
  was committed over that way (see README "Reliability"): the new owner never saw it.
* Only an event handled under the current assignment may be acknowledged. A stream
  skips an event fetched before a rebalance (its generation is over; the partition is read
  again from the committed offset) but still acknowledges it, which lets that offset, and
  the unhandled ones it then joins, be committed.

Both rules only ever hold a commit back; an event whose acknowledgement is refused is read
again (handled twice at worst, which the pipelines tolerate). A commit held back for
`rewind_after_s` while the stream went on past the missing offset means the event never reached
the stream: the partition is then read again from the commit.

It also hands the records of the pipelines' topics over in bulk: each partition's fetched run
goes to its pipeline's `Inbox` in one call (see `processors.inbox` for what that saves), not
message by message through Faust's conductor and stream. Records of other topics (the tables'
changelogs) go to Faust's conductor as before.

aiokafka moves a partition's position past records as it returns them, so a fetched run that is
not handed over must be read again, or no one ever reads it. The fetch loop therefore never just
drops a run: one fetched while the flow stopped for a rebalance (or its partition paused, or its
hand-over given up for a rebalance) is sought back to its first offset; one whose partition was
sought meanwhile (a rebalance, a table's recovery, a re-read) is dropped, as the seek decides where
reading goes on. Whether it was sought shows in aiokafka's position: the position right after the
fetch, taken in the consumer's thread, against the position at hand-over. (Dropping every run
whose fetch spanned a rebalance, as this loop once did, left a table's recovery waiting forever
for the changelog records it had sought to and never got.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from processors.inbox import Inbox

log = logging.getLogger("processors.consumer")


class InboxRecord:
    """A fetched record of a pipeline's topic, as it goes to the pipeline's inbox: what Faust's
    consumer bookkeeping reads of a message (`tp`, `offset`, `acked`, `generation_id`, weakly
    held while unacknowledged) and what the runtime reads of a record (its `Source`). One object
    a record, in place of Faust's message (16 fields, 1.5 µs to make) and the runtime's view of it."""

    __slots__ = ("__weakref__", "acked", "generation_id", "key", "offset", "partition", "topic", "tp", "value")

    refcount = 0  # read by Faust's `wait_empty` when it reports what it waits for

    def __init__(self, tp: Any, record: Any, generation_id: int) -> None:
        self.tp = tp
        self.topic: str = record.topic
        self.partition: int = record.partition
        self.offset: int = record.offset
        self.key: bytes | None = record.key
        self.value: bytes = record.value
        self.generation_id = generation_id
        self.acked = False

    def __repr__(self) -> str:
        return f"<InboxRecord {self.topic}[{self.partition}]@{self.offset}>"


class SafeConsumer(Consumer):
    #: a commit held back this long at the same offset: that partition is read again from there
    rewind_after_s = 10.0
    #: re-reads of the same offset before it is taken as absent
    rewinds_max = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # partition -> (offset held at, since or last re-read, re-reads)
        self._held: dict[Any, tuple[int, float, int]] = {}
        self._rewinds: set[asyncio.Task[None]] = set()
        #: topic name -> the inbox of the pipeline reading it (the app's: see `processors.runtime.run`)
        self.inboxes: dict[str, Inbox[Any]] = getattr(self.app, "inboxes", {})

    def verify_event_path(self, now: float, tp: Any) -> None:
        """Faust's per-partition stall check, off. It reads each stream's inbound time, which the
        pipelines (fed through their inbox, under the light monitor) never give it, and each
        partition's last fetch request, standby changelogs included: a fault trial's worker
        logged dozens of ERROR lines ("Stream has not started processing", "Aiokafka has not sent
        fetch request") for partitions it was handling. The liveness monitor (`processors.liveness`)
        watches what it means to: committed offsets against the log's end, with `/healthz` and an
        exit to tell."""
        return None

    def ack(self, message: Any) -> bool:
        generation = getattr(message, "generation_id", None)
        if generation is not None and generation != self.app.consumer_generation_id and not message.acked:
            # skipped by the stream (fetched under an earlier assignment): read again, never committed
            message.acked = True
            self._unacked_messages.discard(message)
            notify(self._waiting_for_ack)
            log.info("not acknowledging %s[%s]@%s: fetched before the rebalance (generation %s, now %s)",
                     message.topic, message.partition, message.offset, generation, self.app.consumer_generation_id)
            return False
        return bool(super().ack(message))

    def track(self, batch: Sequence[Any]) -> None:
        """A batch taken for handling: a rebalance or a stop waits until it is acknowledged.

        Faust tracks each message (a weak set, ~1 µs each); the runtime acknowledges a batch at
        once (`ack_batch`), so its last message stands for all of it."""
        if batch:
            self._unacked_messages.add(batch[-1])

    def ack_batch(self, batch: Sequence[Any]) -> None:
        """`ack` for each message of a batch taken by `track`, in one pass: one lock, one wake-up
        of a waiting rebalance, one look-up per topic (the per-message bookkeeping is Faust's)."""
        generation = self.app.consumer_generation_id
        acking: dict[str, bool] = {}
        enabled_for = self.app.topics.acks_enabled_for
        committed_offsets, acked_index, acked = self._committed_offset, self._acked_index, self._acked
        with ack_lock:
            for message in batch:
                if message.acked:
                    continue
                message_generation = getattr(message, "generation_id", None)
                if message_generation is not None and message_generation != generation:
                    self.ack(message)  # fetched before a rebalance: never acknowledged (see `ack`)
                    continue
                message.acked = True
                topic = message.topic
                enabled = acking.get(topic)
                if enabled is None:
                    enabled = acking[topic] = enabled_for(topic)
                if not enabled:
                    continue
                tp, offset = message.tp, message.offset
                committed = committed_offsets[tp]
                if committed is None or offset >= committed:
                    index = acked_index[tp]
                    if offset not in index:
                        index.add(offset)
                        acked[tp].append(offset)
                        self._n_acked += 1
            if batch:
                self._unacked_messages.discard(batch[-1])
        notify(self._waiting_for_ack)

    def _new_offset(self, tp: Any) -> int | None:
        committed = self._committed_offset[tp]
        acked = self._acked[tp]
        if acked and committed is not None and min(acked) > committed and not self._gap[tp].overlaps_point(committed):
            now = time.monotonic()
            held = self._held.get(tp)
            if held is None or held[0] != committed:
                self._held[tp] = (committed, now, 0)
                log.warning("commit of %s held at %d: that offset is not acknowledged yet (the next acknowledged "
                            "is %d)", tp, committed, min(acked))
            elif now - held[1] >= self.rewind_after_s:
                if held[2] >= self.rewinds_max:
                    # read again and again and still not there: the offsets do not exist (e.g. deleted
                    # by retention before they were read); hold no longer
                    log.error("commit of %s held at %d after %d re-reads: offsets %d-%d taken as absent", tp,
                              committed, held[2], committed, min(acked) - 1)
                    self._gap[tp].addi(committed, min(acked))
                    self._held.pop(tp, None)
                    return super()._new_offset(tp)  # type: ignore[no-any-return]
                # the stream went on past an event it never got (lost between fetch and stream in a
                # rebalance): read the partition again from the offset held (handled twice at worst)
                self._held[tp] = (committed, now, held[2] + 1)
                log.warning("commit of %s still held at %d: reading the partition again from there", tp, committed)
                task = self.loop.create_task(self._rewind(tp, committed))
                self._rewinds.add(task)
                task.add_done_callback(self._rewinds.discard)
            return None  # the next offset to read has not been handled
        self._held.pop(tp, None)
        return super()._new_offset(tp)  # type: ignore[no-any-return]

    def describe(self) -> str:
        """The consumer's state for a diagnostic dump (see `faust_app.log_tasks`)."""
        return (f"flow: consumer {self.flow_active}, app {self.app.flow_control.is_active()}; generation "
                f"{self.app.consumer_generation_id}; read offsets {dict(self._read_offset)}; paused "
                f"{sorted(self._paused_partitions)}; assigned {sorted(self.assignment())}")

    async def _hand_over(self, tp: Any, inbox: Inbox[Any] | None, run: list[Any], position: int | None) -> int | None:
        """Hand `run` to its pipeline's inbox, or message by message to Faust's conductor, giving way
        to a rebalance: the offset of the first message not handed over because the flow was
        suspended (None: all were, or the partition was sought meanwhile, and the seek decides)."""
        if inbox is not None:
            while not inbox.has_room() or self.suspend_flow.is_set():
                room = inbox.room()
                if room not in (await self.wait_first(room, self.suspend_flow.wait())).done:
                    return int(run[0].offset)
            # the awaits above (and the caller's, for a gap or a commit) let a seek in: a re-read
            # discards what the inbox holds of its partition, and this run must not follow it in
            if not self._sought_since(tp, position):
                inbox.put_nowait(run)
            return None
        for message in run:
            delivered = self.callback(message)
            if delivered not in (await self.wait_first(delivered, self.suspend_flow.wait())).done:
                return int(message.offset)
        return None

    def _new_consumer_thread(self) -> SafeConsumerThread:
        return SafeConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _client(self) -> Any:
        """aiokafka's consumer, run by Faust's consumer thread (None before it starts)."""
        return getattr(getattr(self, "_thread", None), "_consumer", None)

    def _position(self, tp: Any) -> int | None:
        """aiokafka's fetch position of `tp` now (None: not assigned, or no position yet)."""
        return fetch_position(self._client(), tp)

    def _sought_since(self, tp: Any, position_after_fetch: int | None) -> bool:
        """Whether `tp` was sought (or reassigned) after its records were fetched."""
        return position_after_fetch is None or self._position(tp) != position_after_fetch

    async def _unread(self, tp: Any, offset: int) -> None:
        """Fetched records not handed over: read them again from `offset` (their position moved on)."""
        try:
            await self.seek(tp, offset)
        except Exception as e:  # revoked meanwhile: its next owner reads from the commit
            log.info("could not read %s again from %d: %r", tp, offset, e)

    def thread_tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks of the consumer thread's loop, read from outside it (a diagnostic: a task set
        that changes while it is read is read again)."""
        thread_loop = getattr(getattr(self, "_thread", None), "thread_loop", None)
        for _ in range(3):
            try:
                return list(asyncio.all_tasks(thread_loop)) if thread_loop is not None else []
            except RuntimeError:
                continue
        return []

    def fetch_state(self) -> list[str]:
        """Per assigned partition, aiokafka's fetch position and state and whether Faust asks for it."""
        client = self._client()
        if client is None:
            return []
        fetcher = client._fetcher
        assignment = assignment_of(client)
        if assignment is None:
            return ["no assignment"]
        active = self._active_partitions
        lines = []
        for tp in sorted(assignment.tps):
            state = assignment.state_value(tp)
            buffered = fetcher._records.get(tp)
            records = getattr(buffered, "_partition_records", None)
            held = (f"{type(buffered).__name__} next {getattr(records, 'next_fetch_offset', None)} backoff "
                    f"{buffered.calculate_backoff():.2f}") if buffered is not None else None
            lines.append(f"{tp.topic}[{tp.partition}] position "
                         f"{state._position} reset {state._reset_strategy} paused {state.paused} "
                         f"buffered {held} faust-active {active is not None and tp in active} "
                         f"read {self._read_offset.get(tp)} committed {self._committed_offset.get(tp)}")
        lines.append(f"in flight {sorted(fetcher._in_flight)}; fetch task done "
                     f"{fetcher._fetch_task.done() if fetcher._fetch_task else None}")
        return lines

    async def _rewind(self, tp: Any, offset: int) -> None:
        try:
            if tp in self.assignment() and self._committed_offset[tp] == offset:
                await self.seek(tp, offset)
        except Exception as e:  # moved away or stopping meanwhile: its next owner reads from the commit
            log.warning("could not read %s again from %d: %r", tp, offset, e)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (`Consumer._drain_messages`), handing a partition's run to its inbox at once."""
        inboxes = self.inboxes
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        to_message = self._to_message
        commit_every = self._commit_every
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, active = await self._wait_next_records(1.0)
                await asyncio.sleep(0)  # as Faust's loop: let other tasks in between fetches
                if records is None or self.should_stop:
                    continue
                positions: dict[Any, int | None] = getattr(records, "positions", {})
                for tp, fetched in records.items():
                    if not fetched or self._sought_since(tp, positions.get(tp)):
                        # sought since the fetch (a rebalance, a recovery, a re-read): these records
                        # are from before it, and whoever sought reads on from the new position
                        continue
                    if not self.flow_active or (active is not None and tp not in active
                                                and tp not in self._buffered_partitions):
                        # a rebalance began, or the partition was paused, since the fetch
                        await self._unread(tp, fetched[0].offset)
                        continue
                    read = before = read_offsets[tp]
                    inbox = inboxes.get(tp.topic)
                    generation = self.app.consumer_generation_id
                    run = []
                    for record in fetched:
                        offset = record.offset
                        if read is None or offset >= read:
                            if read and offset - read > 1 and acks_enabled_for(tp.topic):
                                await self._add_gap(tp, read + 1, offset)
                                generation = self.app.consumer_generation_id  # as Faust's: read when made
                            run.append(to_message(tp, record) if inbox is None else InboxRecord(tp, record, generation))
                            read = offset
                    if not run:
                        continue
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    undelivered = await self._hand_over(tp, inbox, run, positions.get(tp))
                    if undelivered is not None:
                        await self._unread(tp, undelivered)
                        continue
                    if read_offsets[tp] == before:  # else sought meanwhile: read on from the new position
                        read_offsets[tp] = read
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def kafka_consumer(app: Any) -> Any:
    """aiokafka's consumer inside Faust's consumer thread (None before it started)."""
    thread = getattr(app.consumer, "_thread", None)
    return None if thread is None else getattr(thread, "_consumer", None)


def fetch_position(client: Any, tp: Any) -> int | None:
    """aiokafka's position for `tp`: the offset its next fetch starts at (None: not assigned, or
    not known yet). A plain read of the consumer's state, safe from either thread."""
    assignment = assignment_of(client)
    if assignment is None or tp not in assignment.tps:
        return None
    position: int | None = assignment.state_value(tp)._position
    return position


def assignment_of(client: Any) -> Any:
    """aiokafka's current assignment (a new one per rebalance; None: none yet, or no client)."""
    subscription = client._subscription.subscription if client is not None else None
    return subscription.assignment if subscription is not None else None


class Fetched(dict[Any, list[Any]]):
    """A fetch's records by partition, with each partition's position right after them (read in
    the consumer's thread as it returns them): a position that differs later means a seek."""

    positions: dict[Any, int | None]


class SafeConsumerThread(AIOKafkaConsumerThread):
    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: float | None = None,  # noqa: ASYNC109
                             max_records: int | None = None) -> Fetched:
        records = Fetched(await super()._fetch_records(consumer, active_partitions, timeout=timeout,
                                                       max_records=max_records))
        records.positions = {tp: fetch_position(consumer, tp) for tp in records}
        return records


class SafeTransport(Transport):
    """The aiokafka transport, its consumer a `SafeConsumer` (the producer is Faust's)."""

    Consumer = SafeConsumer
