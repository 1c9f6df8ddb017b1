"""What the ingress and the worker's output producer share about producing to Kafka."""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from config.kafka_client import check_connection
from config.settings import Settings

# After these the idempotent producer's sequence state is broken for good (typically batches that
# expired during a broker outage leave a gap). aiokafka does not reset the producer id the way the
# Java client does, so the owner replaces the producer.
FATAL_PRODUCER_ERRORS = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)


@functools.lru_cache(maxsize=16384)  # agents' and apps' keys recur in every batch
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java and aiokafka alike) gives `key`, so that
    records batched by hand land where a keyed send would have put them."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


_M = 0x5BD1E995
_WORDS = [struct.Struct(f"<{n}I") for n in range(64)]


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java's `Utils.murmur2`), as aiokafka's `murmur2` computes it, in about two
    thirds of its time: the 32-bit words are unpacked at once, not assembled byte by byte."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length // 4
    unpack = _WORDS[words].unpack_from if words < len(_WORDS) else struct.Struct(f"<{words}I").unpack_from
    for k in unpack(data):
        k = (k * _M) & 0xFFFFFFFF
        k ^= k >> 24
        h = ((h * _M) & 0xFFFFFFFF) ^ ((k * _M) & 0xFFFFFFFF)
    tail, extra = length & ~3, length & 3
    if extra == 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h = ((h ^ data[tail]) * _M) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M) & 0xFFFFFFFF
    return h ^ (h >> 15)


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
        except (KafkaError, OSError) as e:
            await producer.stop()
            if settings is not None:
                await check_connection(settings)  # raises KafkaSetupError on a refusal
            log.warning("Kafka producer could not start (%s); retrying in %.1fs", type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        return producer
