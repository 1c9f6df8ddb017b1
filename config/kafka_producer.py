"""What the ingress and the worker's output producer share about producing to Kafka."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from murmurhash2 import murmurhash2 as _murmurhash2

from config.kafka_client import check_connection
from config.settings import Settings

# After these the idempotent producer's sequence state is broken for good (typically batches that
# expired during a broker outage leave a gap). aiokafka does not reset the producer id the way the
# Java client does, so the owner replaces the producer.
FATAL_PRODUCER_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) gives `key`, so that
    records batched by hand land where a keyed send would have put them."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_SEED = 0x9747B28C  # Kafka's


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java's `Utils.murmur2`, aiokafka's `murmur2`, unsigned): the standard 32-bit
    MurmurHash2 with Kafka's seed. Compiled (0.2 us; aiokafka's, in Python, 1.4-3 us for the keys
    here): every completed record, caller fact and contribution is placed with it."""
    return _murmurhash2(data, _SEED)


async def start_producer(new: Callable[[], AIOKafkaProducer], log: logging.Logger,
                         settings: Settings | None = None) -> AIOKafkaProducer:
    """A started producer; while the broker cannot be reached, retry with a growing delay.

    With `settings`, a failed start is looked into: a broker that refuses the credentials or
    certificates raises KafkaSetupError (retrying cannot help) instead of retrying for ever."""
    delay = 0.2
    while True:
        producer = new()
        try:
            await producer.start()
        except asyncio.CancelledError:  # a half-started producer holds connections and tasks
            await producer.stop()
            raise
        except (KafkaError, OSError) as e:
            await producer.stop()
            if settings is not None:
                await check_connection(settings)  # raises KafkaSetupError on a refusal
            log.warning("Kafka producer could not start (%s); retrying in %.1fs", type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        return producer
