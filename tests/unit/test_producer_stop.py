"""Stopping while a producer is being started leaves nothing running: no producer, no task.

No broker: a socket that accepts and never answers (a broker that hangs), or a port nobody
listens on (a broker that is down)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaProducer

from config.kafka_producer import start_producer
from config.settings import load
from ingress.writer import KafkaWriter

log = logging.getLogger(__name__)


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A listening socket that never answers: a producer's start waits on its metadata."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"127.0.0.1:{server.getsockname()[1]}"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_cancelled_start_stops_the_producer_it_was_starting(silent_broker: str) -> None:
    made: list[AIOKafkaProducer] = []

    def new() -> AIOKafkaProducer:
        made.append(AIOKafkaProducer(bootstrap_servers=silent_broker, request_timeout_ms=30_000))
        return made[-1]

    async def run() -> None:
        task = asyncio.create_task(start_producer(new, log))
        await asyncio.sleep(0.5)  # inside `producer.start()`, waiting for the metadata
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert len(made) == 1
    assert made[0]._closed  # stopped: its connection and sender task are gone


def _counting_writer() -> tuple[KafkaWriter, list[AIOKafkaProducer]]:
    """An ingress writer for a broker that is down, and the producers it makes, as it makes them."""
    settings = load({"KAFKA_BOOTSTRAP_SERVERS": _closed_port(), "WEBHOOK_TOKENS": "t" * 32})
    writer = KafkaWriter(settings)
    made: list[AIOKafkaProducer] = []
    new = writer._new_producer

    def counted() -> AIOKafkaProducer:
        made.append(new())
        return made[-1]

    writer._new_producer = counted  # type: ignore[method-assign]
    return writer, made


def test_ingress_writer_stop_waits_for_its_start_loop() -> None:
    writer, made = _counting_writer()

    async def run() -> None:
        await writer.start()  # the broker is down: serving (503) while the producer is retried
        await asyncio.sleep(1.0)
        await writer.stop()
        # stopped with the writer, not left for the event loop's end to cancel
        assert writer._starting is not None and writer._starting.done()
        assert made and all(p._closed for p in made)

    asyncio.run(run())


class _Running:
    """A producer that is running (stands in for one connected before `stop`)."""

    stopped = False

    async def stop(self) -> None:
        self.stopped = True


def test_ingress_writer_starts_no_producer_after_stop() -> None:
    """A write failing fatally after `stop` (a request still in flight as the server shuts down)
    asks for a fresh producer: none is started, so none is left running once the ingress is gone."""
    writer, made = _counting_writer()
    running = _Running()

    async def run() -> None:
        writer._producer = running  # type: ignore[assignment]
        await writer.stop()
        assert running.stopped
        writer._reset("OutOfOrderSequenceNumber")  # what a fatal error of a late write does
        await asyncio.sleep(0.5)
        assert not made  # no start loop after stop
        assert writer._starting is None

    asyncio.run(run())
