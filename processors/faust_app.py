"""The Faust application object, configured from `Settings`."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import faust
from faust.streams import _current_event
from faust.types import EventT

from config.settings import Settings
from config.topics import ensure_topics
from processors.batched_table import BatchedTable
from processors.core.deadlines import DeadlineIndex
from processors.output_producer import OutputProducer, Placed, Record
from processors.worker_metrics import BAD_EVENTS, BATCH_EVENTS, DELIVER_SECONDS, TIMER_ERRORS

log = logging.getLogger("processors")


class IvrApp(faust.App):
    """A Faust app that creates the project's topics (partitions, compaction) before it consumes,
    and owns the producer the agents send their outputs through."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.ivr_settings = settings
        self.outputs = OutputProducer(settings.kafka_bootstrap_servers, f"{settings.processor_id}-outputs")
        super().__init__(**kwargs)

    async def on_first_start(self) -> None:
        await ensure_topics(self.ivr_settings)
        await super().on_first_start()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.outputs.stop()  # after the agents (children) have stopped sending

    def batched_table(self, name: str) -> BatchedTable:
        """A keyed bytes -> bytes table, co-partitioned with the agent's source, RocksDB-sized."""
        s = self.ivr_settings
        table = BatchedTable(self, name=name, default=None, beacon=self.tables.beacon, partitions=s.topic_partitions,
                             key_type=bytes, value_type=bytes, options=table_options(s))
        self.tables.add(table)
        return table

    async def deliver(self, records: Sequence[Record], *tables: BatchedTable, placed: Sequence[Placed] = ()) -> None:
        """A batch's outputs and its tables' changelog records, delivered together (returns once
        the broker has acknowledged all of them; the batch is acknowledged after that)."""
        placed = [*placed, *(rec for table in tables for rec in table.take_changelog())]
        started = time.perf_counter()
        offsets = await self.outputs.send_all(records, placed)
        if records or placed:
            DELIVER_SECONDS.observe(time.perf_counter() - started)
        for table in tables:
            table.delivered(offsets)


def table_options(settings: Settings) -> dict[str, Any] | None:
    """RocksDB sizing per table partition (Faust's defaults: a 2 GB block cache and 3 x 64 MB
    memtables for *each* of the tables x partitions a worker holds, 24 DBs here)."""
    if not settings.worker_store.startswith("rocksdb"):
        return None
    mb = 1024 * 1024
    return {
        "block_cache_size": settings.worker_rocksdb_cache_mb * mb,
        "write_buffer_size": 4 * mb,
        "max_write_buffer_number": 2,
        "target_file_size_base": 16 * mb,
    }


def create_app(settings: Settings) -> IvrApp:
    brokers = ";".join(f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",") if h.strip())
    return IvrApp(
        settings,
        id=f"{settings.topic_prefix}{settings.processor_id}",
        broker=brokers,
        store=settings.worker_store,
        datadir=settings.worker_data_dir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger_ms=10,  # changelog and ticks: batched; flushed before every offset commit
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # how long a crashed worker holds its partitions before the group moves them
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.worker_session_timeout_s / 10),
        table_standby_replicas=1,
        web_port=settings.worker_web_port,
        web_bind="0.0.0.0",
        web_enabled=True,
        logging_config=None,
    )


@contextmanager
def acting_for(event: EventT[bytes]) -> Iterator[None]:
    """Table reads and writes inside the block go to `event`'s partition.

    Faust picks a table's partition (changelog and RocksDB) from the event being processed. A
    handler of a whole batch (`stream.take_events`) has no such event, so it names one: any
    event with the same key, hence from the same partition.
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def batches(stream: faust.StreamT[bytes], settings: Settings) -> AsyncIterator[Sequence[EventT[bytes]]]:
    """The stream in batches: up to WORKER_BATCH_MAX events, or what arrived within
    WORKER_BATCH_WINDOW_S. Faust acknowledges a batch's offsets once the handler asks for the next."""
    async for events in cast(faust.Stream[bytes], stream).take_events(settings.worker_batch_max,
                                                                      within=settings.worker_batch_window_s):
        BATCH_EVENTS.observe(len(events))
        yield events


def skip_unreadable(event: EventT[bytes], error: Exception) -> None:
    """A record no agent can read is logged (where it is, not what it holds) and counted; one bad
    record must not stop an agent."""
    BAD_EVENTS.inc()
    log.error("skipping unreadable record at %s[%s]@%s: %s", event.message.topic, event.message.partition,
              event.message.offset, type(error).__name__)


def survives(timer: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A Faust timer that raises stops the whole worker: log the error and try again next time."""

    @functools.wraps(timer)
    async def guarded() -> None:
        try:
            await timer()
        except asyncio.CancelledError:
            raise
        except Exception:
            TIMER_ERRORS.labels(timer.__name__).inc()
            log.exception("timer %s failed; it runs again at its next interval", timer.__name__)

    return guarded


class Ticker:
    """Deadlines per key, delivered as tick records to the agent that owns the key.

    Timers never write tables (Faust's RocksDB store refuses writes outside a stream event, and
    the owner of a key may be another worker): a timer pops the keys that are due and sends a
    tick keyed like the state; the agent reading `name` beside its source does the work.
    """

    def __init__(self, app: faust.App, name: str, partitions: int, interval: float,
                 before_send: Callable[[float], None] | None = None) -> None:
        self.name = name
        self.topic = app.topic(name, partitions=partitions)
        self.due = DeadlineIndex()
        self._before_send = before_send

        @app.timer(interval=interval, name=f"ticks_{name}")
        @survives
        async def send_ticks() -> None:
            now = time.time()
            if self._before_send is not None:
                self._before_send(now)
            for key in self.due.pop_due(now):
                await self.topic.send(key=key.encode(), value=b"")

    def is_tick(self, event: Any) -> bool:
        return bool(event.message.topic == self.name)
