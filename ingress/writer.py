"""Durable writes: acks=all with an idempotent producer, bounded in time.

`write` returns only once the broker acknowledged the record, or raises `NotDurable`; the
handler then answers 503 so that the provider retries. A record that timed out here may still
be delivered later by the producer's own retries: the retry then arrives as a duplicate with
the same event id, which the processor absorbs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from config import kafka_client, topics
from config.kafka_producer import FATAL_PRODUCER_ERRORS, start_producer
from config.settings import Settings
from ingress.metrics import PRODUCE_SECONDS

log = logging.getLogger("ingress.writer")

# after a refusal of the credentials or certificates while serving: the first wait, and the longest
REFUSED_RETRY_S = 5.0
REFUSED_RETRY_MAX_S = 60.0
#: a failed write keeps /readyz at 503 this long, unless a later one is acknowledged
FAILED_RECENTLY_S = 5.0
# how long writes wait, once connected, for the topics the ingress could not make at start
ENSURE_TOPICS_BOUND_S = 15.0


class NotDurable(Exception):
    """The broker did not acknowledge the write in time."""


class Writer(Protocol):
    """What the handlers need from Kafka; tests pass a fake (`create_app(settings, writer=...)`)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def write(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Return once the record is durable, or raise `NotDurable`."""
        ...

    async def ready(self) -> bool: ...


class KafkaWriter:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._bootstrap = settings.kafka_bootstrap_servers
        self._timeout = settings.produce_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._starting: asyncio.Task[None] | None = None
        self._ready_checked_at = 0.0
        self._ready = False
        # the last write the broker failed to acknowledge, and the last it acknowledged (monotonic)
        self._failed_at: float | None = None
        self._written_at = 0.0
        self._background: set[asyncio.Task[None]] = set()
        self._topics_ensured = False  # ivr.events and ivr.events.invalid made (or found) with their settings
        self._stopped = False

    def _new_producer(self) -> AIOKafkaProducer:
        """The only place the producer is configured."""
        return AIOKafkaProducer(
            **kafka_client.aiokafka_kwargs(self._settings),  # brokers and security, as every client
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            request_timeout_ms=max(1000, int(self._timeout * 1000)),
            retry_backoff_ms=100,
            client_id="ivr-ingress",
        )

    async def start(self) -> None:
        """Start in the background: the ingress serves (and answers 503) while the broker is away."""
        await self._ensure_topics("at start", refusal_stops=True)
        self._starting = asyncio.create_task(self._start_loop())

    async def _ensure_topics(self, when: str, refusal_stops: bool = False) -> None:
        try:
            await topics.ensure_topics(self._settings, (topics.EVENTS, topics.EVENTS_INVALID))
            self._topics_ensured = True
        except kafka_client.KafkaSetupError:
            if refusal_stops:
                raise  # refused credentials or certificates: stop at start (the line saying why is logged)
        except topics.PartitionMismatch as e:  # the workers cannot start; the events are still kept
            self._topics_ensured = True
            log.error("%s", e)
        except Exception as e:  # the broker may be down at start: the producer keeps trying
            log.warning("could not ensure topics %s (%s); continuing", when, type(e).__name__)

    async def _start_loop(self) -> None:
        """Start the producer, for as long as it takes. A refusal found here, not at start (the
        broker was away then, or it is a reset) is logged and tried again, less and less often:
        credentials may be accepted later (a user made after the deployment), and a serving
        ingress that gave up would answer 503 until restarted. Writes meanwhile get 503. The topics
        not made at start are made before the first write (which would have the broker auto-create
        `ivr.events` with its defaults), within a bound: past it, writes go ahead."""
        delay = REFUSED_RETRY_S
        while True:
            try:
                producer = await start_producer(self._new_producer, log, self._settings)
                break
            except kafka_client.KafkaSetupError:  # its line is logged (without the secret)
                log.warning("Kafka refused this ingress; writes get 503; trying again in %.0fs", delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, REFUSED_RETRY_MAX_S)
        log.info("Kafka producer connected to %s", self._bootstrap)
        if not self._topics_ensured:  # the broker was away at start
            try:
                await asyncio.wait_for(self._ensure_topics("once connected"), ENSURE_TOPICS_BOUND_S)
            except TimeoutError:
                log.warning("could not ensure topics within %.0fs of connecting; writing anyway", ENSURE_TOPICS_BOUND_S)
            except asyncio.CancelledError:  # stopped meanwhile: the producer is nobody's to stop but ours
                await producer.stop()
                raise
        self._producer = producer

    def _reset(self, reason: str) -> None:
        """Swap in a fresh producer (new producer id); requests meanwhile wait for it, within their bound."""
        if self._stopped:
            return  # `stop` stops the producer; none is started after it
        old, self._producer = self._producer, None
        if old is None:
            return  # a reset is already under way
        log.warning("replacing the Kafka producer after %s", reason)
        self._starting = asyncio.create_task(self._start_loop())
        task = asyncio.create_task(self._stop_quietly(old))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_quietly(self, producer: AIOKafkaProducer) -> None:
        try:
            await asyncio.wait_for(producer.stop(), 10)
        except Exception as e:  # its pending batches already failed their requests with 503
            log.info("old producer did not stop cleanly: %s", type(e).__name__)

    async def stop(self) -> None:
        """Stop the producer, one being started (awaited: it stops what it started) and old ones
        being stopped after a reset."""
        self._stopped = True
        starting = self._starting
        if starting is not None and not starting.done():
            starting.cancel()
            await asyncio.wait([starting])  # (not `await starting`: its CancelledError is not ours)
        if self._producer is not None:
            await self._producer.stop()
        if self._background:
            await asyncio.wait(self._background)

    async def write(self, topic: str, key: bytes | None, value: bytes) -> None:
        start = time.perf_counter()
        try:
            await asyncio.wait_for(self._send(topic, key, value), self._timeout)
        except FATAL_PRODUCER_ERRORS as e:
            self._failed_at = time.monotonic()
            self._reset(type(e).__name__)
            raise NotDurable(f"{type(e).__name__}: the producer is being replaced") from None
        except (TimeoutError, KafkaError, OSError) as e:
            self._failed_at = time.monotonic()
            raise NotDurable(f"{type(e).__name__}: the broker did not acknowledge the write") from None
        self._written_at = time.monotonic()
        PRODUCE_SECONDS.labels(topic).observe(time.perf_counter() - start)

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        if self._producer is None and self._starting is not None:
            await asyncio.shield(self._starting)  # still connecting: wait, within the caller's bound
        if self._producer is None:
            raise NotDurable("the Kafka producer is not running")
        await self._producer.send_and_wait(topic, value, key=key)

    async def ready(self) -> bool:
        """Whether the producer can write now: connected; no write failed in the last
        `FAILED_RECENTLY_S` without one acknowledged since; and the cluster answers a metadata
        request in which every partition of `ivr.events` has a leader and enough replicas in sync
        for `acks=all` (a broker that hangs leaves the in-sync set ~30 s later: until then the
        failed writes tell)."""
        producer = self._producer
        if producer is None:
            return False
        now = time.monotonic()
        failed = self._failed_at
        if failed is not None and failed > self._written_at and now - failed < FAILED_RECENTLY_S:
            return False
        if now - self._ready_checked_at < 1.0:
            return self._ready
        try:
            metadata = await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
            self._ready = self._in_sync(metadata)
        except (TimeoutError, KafkaError, OSError):
            self._ready = False
        self._ready_checked_at = now
        return self._ready

    def _in_sync(self, metadata: Any) -> bool:
        partitions = metadata._partitions.get(self._settings.topic(topics.EVENTS))  # (aiokafka's ClusterMetadata)
        if not partitions:
            return False  # not created yet, or not visible to this client
        need = topics.min_insync(self._settings)
        return all(p.leader not in (None, -1) and len(p.isr) >= need for p in partitions.values())
