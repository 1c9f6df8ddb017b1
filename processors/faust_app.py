"""The Faust application object, configured from `Settings`."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import faust
from faust.sensors import Monitor

from config import kafka_client
from config.logs import redact_handlers
from config.settings import Settings
from config.topics import PartitionMismatch, TopicSpec, ensure_topics
from processors.batched_table import BatchedTable
from processors.faust_consumer import SafeConsumer, SafeTransport, kafka_consumer
from processors.inbox import Inbox
from processors.membership import Membership
from processors.output_producer import OutputProducer

log = logging.getLogger("processors.app")

# the topic Faust's partition assignor elects its leader with (one partition)
LEADER_TOPIC = "__assignor-__leader"


class LightMonitor(Monitor):
    """Faust's monitor without its per-event bookkeeping: Faust's Monitor counts, timestamps and
    times every message, stream event and table access (dict updates and clock reads, several per
    event). The worker keeps its own Prometheus figures (`processors.worker_metrics`) and reads
    none of these; commit, send, rebalance and end-offset tracking stay as Faust has them."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        return None

    def on_stream_event_out(self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None) -> None:
        pass

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        pass

    def on_table_get(self, table: Any, key: Any) -> None:
        pass

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        pass

    def on_table_del(self, table: Any, key: Any) -> None:
        pass


class IvrApp(faust.App):
    """A Faust app that creates every topic it will use (the project's, its tables' changelogs,
    the assignor's) before it consumes, and owns the producer the pipelines deliver through."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.ivr_settings = settings
        self.outputs = OutputProducer(settings, f"{settings.processor_id}-outputs")
        #: topic name -> the inbox its pipeline reads (handed to by the consumer: `faust_consumer`)
        self.inboxes: dict[str, Inbox[Any]] = {}
        self.flow_guards: list[Any] = []  # see `runtime.ClearedByRebalance`
        #: asked before each delivery: a worker evicted while frozen must not write (`processors.membership`)
        self.membership = Membership(lambda: getattr(kafka_consumer(self), "_coordinator", None),
                                     settings.worker_session_timeout_s)
        super().__init__(**kwargs)

    async def on_first_start(self) -> None:
        # Faust's worker has set up logging by now: from here on no log line shows a secret or a
        # caller's number in full, whichever logger writes it
        settings = self.ivr_settings
        redact_handlers((settings.provider_api_key, settings.kafka_sasl_password, *settings.webhook_tokens),
                        settings.log_caller_numbers)
        # Faust creates only the last level of its data directory: a worker started on a fresh host,
        # or from another directory than the checkout, would crash with FileNotFoundError.
        datadir = Path(self.conf.datadir)
        try:
            datadir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  (once, before any work)
        except OSError as e:
            raise SystemExit(f"WORKER_DATA_DIR={self.ivr_settings.worker_data_dir!r} cannot be created: "
                             f"{e.strerror}") from None
        # Faust would create the changelogs itself, while its streams start: a stream reading
        # metadata that does not show the new topic's partitions yet fails (PartitionsMismatch,
        # "... has 0 partitions"). Created here, and waited for, nothing starts before they exist.
        changelogs = [TopicSpec(t.changelog_topic.get_topic_name(), (("cleanup.policy", "compact"),), prefixed=False,
                                co_partitioned=True) for t in self.tables.values()]
        leader = TopicSpec(f"{self.conf.id}-{LEADER_TOPIC}", (("cleanup.policy", "compact"),), prefixed=False,
                           partitions=1)
        try:
            await ensure_topics(self.ivr_settings, extra=(*changelogs, leader))
        except PartitionMismatch as e:  # a setting at odds with the cluster: say so, as for a bad setting
            raise SystemExit(f"error: {e}") from None
        # `kill -USR1 <pid>`: every task of the worker's event loop, with its stack, to the log
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_tasks, self)
        await super().on_first_start()

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self.outputs.stop()  # after the agents (children) have stopped sending

    def _new_transport(self) -> Any:
        # offsets committed only over events handled: see `processors.faust_consumer`
        return SafeTransport(self.conf.broker_consumer, self)

    def batched_table(self, name: str) -> BatchedTable:
        """A keyed bytes -> bytes table, co-partitioned with the pipeline's source, RocksDB-sized."""
        s = self.ivr_settings
        table = BatchedTable(self, name=name, default=None, beacon=self.tables.beacon, partitions=s.topic_partitions,
                             key_type=bytes, value_type=bytes, options=table_options(s))
        self.tables.add(table)
        return table


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
    return IvrApp(
        settings,
        id=f"{settings.topic_prefix}{settings.processor_id}",
        broker=kafka_client.faust_broker_url(settings),
        broker_credentials=kafka_client.faust_credentials(settings),  # consumer, producer and admin alike
        store=settings.worker_store,
        datadir=settings.worker_data_dir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        producer_linger_ms=10,  # Faust's own producer sends only the ticks now
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # how long a crashed worker holds its partitions before the group moves them
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=max(1.0, settings.worker_session_timeout_s / 10),
        table_standby_replicas=1,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_host,
        web_enabled=True,
        # Faust's /table/ views read tables outside any batch: they would show states (callers'
        # numbers among them) to whoever reaches the port, from whichever partition the runtime
        # last read (`BatchedTable.at`)
        web_tables_enabled=False,
        logging_config=None,
        monitor=LightMonitor(),
    )


def log_tasks(app: IvrApp) -> None:
    """Where a worker waits: each task's stack (its own loop's and the consumer thread's), and the
    consumer's flow, partitions and fetch state."""
    tasks = asyncio.all_tasks()
    for task in tasks:
        log.warning("task %s (%d in all):\n%s", task.get_name(), len(tasks), "\n".join(awaiting(task.get_coro())))
    consumer = app.consumer
    if isinstance(consumer, SafeConsumer):
        # the consumer's own thread and loop (aiokafka's fetcher and group coordinator run there)
        theirs = consumer.thread_tasks()
        for task in theirs:
            log.warning("consumer-thread task %s (%d in all):\n%s", task.get_name(), len(theirs),
                        "\n".join(awaiting(task.get_coro())))
        log.warning("%s; inboxes %s", consumer.describe(), {t: len(i) for t, i in app.inboxes.items()})
        for line in consumer.fetch_state():
            log.warning("fetch: %s", line)


def awaiting(coro: Any) -> list[str]:
    """Where a coroutine waits: each frame down its chain of awaits (a task's stack shows only its top)."""
    lines: list[str] = []
    while coro is not None and len(lines) < 40:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None) or getattr(coro, "gi_yieldfrom", None)
        if isinstance(coro, asyncio.Task):  # awaiting another task: go on down its chain
            lines.append(f"  (task {coro.get_name()})")
            coro = coro.get_coro()
    return lines
