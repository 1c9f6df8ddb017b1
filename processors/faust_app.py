"""The Faust application object, configured from `Settings`."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust

from config.settings import Settings
from config.topics import ensure_topics
from processors.core.deadlines import DeadlineIndex
from processors.worker_metrics import TIMER_ERRORS

log = logging.getLogger("processors")


class IvrApp(faust.App):
    """A Faust app that creates the project's topics (partitions, compaction) before it consumes."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.ivr_settings = settings
        super().__init__(**kwargs)

    async def on_first_start(self) -> None:
        await ensure_topics(self.ivr_settings)
        await super().on_first_start()


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
        producer_linger_ms=1,
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
