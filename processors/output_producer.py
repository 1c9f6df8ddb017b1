"""The worker's outputs, produced in bulk and delivered before their inputs are acknowledged.

Faust's per-message publish path costs ~100-200 µs a record on this hardware; a record appended
to an aiokafka batch costs a few. The pipelines hand over everything one input batch emits;
`send_all` groups it per topic partition (the partition a keyed send would pick), sends one
batch per partition and returns once the broker has acknowledged every record (acks=all,
idempotent). Only then does the runtime let Faust acknowledge the inputs, so a crash re-sends
outputs (identical, see README "Delivery") and never loses one. While the broker is away it
keeps retrying: the pipeline waits, which is all it could do.

Batches are large (`WORKER_PRODUCE_BATCH_BYTES`, 512 KiB): aiokafka puts one batch per partition
in a request and has one request at a time in flight per broker, so with its default of 16 KiB
a batch's changelog alone took a dozen round trips while the pipeline waited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError

from config.kafka_client import aiokafka_kwargs
from config.kafka_producer import FATAL_PRODUCER_ERRORS, partition_for, start_producer
from config.settings import Settings

log = logging.getLogger("processors.output")

Record = tuple[str, bytes, bytes]  # topic, key, value: partitioned by key
Placed = tuple[str, int, bytes | None, bytes | None]  # topic, partition, key, value (None: a tombstone)
KV = tuple[bytes | None, bytes | None]
Offsets = dict[tuple[str, int], int]  # topic, partition -> offset of the last record delivered


class OutputProducer:
    def __init__(self, kafka: str | Settings, client_id: str) -> None:
        # the settings (every client connects alike: config.kafka_client), or a bare bootstrap list
        self._settings = kafka if isinstance(kafka, Settings) else None
        self._client = aiokafka_kwargs(kafka) if isinstance(kafka, Settings) else {"bootstrap_servers": kafka}
        self._client_id = client_id
        self._batch_bytes = (kafka.worker_produce_batch_bytes if isinstance(kafka, Settings)
                             else Settings().worker_produce_batch_bytes)
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, int] = {}
        self._starting = asyncio.Lock()  # several pipelines share the producer: start one, not one each

    def _new(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(**self._client, client_id=self._client_id, acks="all",
                                enable_idempotence=True,
                                linger_ms=0,  # a batch handed to send_all is complete: nothing to wait for
                                retry_backoff_ms=200, max_batch_size=self._batch_bytes)

    async def _ready(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._starting:
            if self._producer is None:
                self._producer = await start_producer(self._new, log, self._settings)
            return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def _partitions_of(self, producer: AIOKafkaProducer, topic: str) -> int:
        n = self._partitions.get(topic)
        while n is None:
            try:
                n = self._partitions[topic] = len(await producer.partitions_for(topic))
            except KafkaError as e:
                log.warning("no metadata for %s yet (%s); retrying", topic, type(e).__name__)
                await asyncio.sleep(1.0)
        return n

    async def send_all(self, records: Sequence[Record], placed: Sequence[Placed] = ()) -> Offsets:
        """Deliver `records` and `placed` (order kept per topic partition); returns once all are
        acknowledged, with the offset of the last record delivered per topic partition."""
        delivered: Offsets = {}
        if not records and not placed:
            return delivered
        producer = await self._ready()
        chunks: dict[tuple[str, int], list[KV]] = {}
        partitions = {topic: await self._partitions_of(producer, topic) for topic in {r[0] for r in records}}
        for topic, key, value in records:
            chunks.setdefault((topic, partition_for(key, partitions[topic])), []).append((key, value))
        for topic, part, maybe_key, maybe_value in placed:
            chunks.setdefault((topic, part), []).append((maybe_key, maybe_value))
        pending = list(chunks.items())
        delay = 0.2
        while pending:
            producer = await self._ready()
            # per topic partition: the index of its first record not known delivered this round.
            # Everything from there goes again, the later batches too even if they were delivered:
            # the partition then ends in the order given (a compacted changelog keeps each key's
            # last value). A record sent twice is a duplicate, which outputs and changelog allow.
            again: dict[tuple[str, int], int] = {}
            errors: list[BaseException] = []
            sent = []
            for tp, items in pending:
                start = 0
                for batch, batch_items in self._split(producer, tp[0], items):
                    try:
                        future = await producer.send_batch(batch, tp[0], partition=tp[1])
                    except (KafkaError, OSError) as e:
                        again[tp] = start
                        errors.append(e)
                        break  # not the partition's later batches: they would overtake this one
                    sent.append((tp, start, len(batch_items), future))
                    start += len(batch_items)
            results = await asyncio.gather(*(future for *_, future in sent), return_exceptions=True)
            for (tp, start, count, _), result in zip(sent, results, strict=True):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                if isinstance(result, BaseException):
                    again[tp] = min(again.get(tp, start), start)
                    errors.append(result)
                else:  # the batch's metadata: the offset of its first record
                    last = getattr(result, "offset", -1) + count - 1
                    delivered[tp] = max(delivered.get(tp, -1), last)
            items_of = dict(pending)
            pending = [(tp, items_of[tp][start:]) for tp, start in again.items()]
            if pending:
                if any(isinstance(e, (MessageSizeTooLargeError, RecordListTooLargeError)) for e in errors):
                    log.error("the broker refuses batches this large: set WORKER_PRODUCE_BATCH_BYTES (now %d) "
                              "below its message.max.bytes (and the topics' max.message.bytes)", self._batch_bytes)
                log.warning("outputs not acknowledged (%s); retrying %d topic partitions in %.1fs",
                            ", ".join(sorted({type(e).__name__ for e in errors})), len(pending), delay)
                if any(isinstance(e, FATAL_PRODUCER_ERRORS) for e in errors) and self._producer is producer:
                    await self.stop()  # a fresh producer id; the next round starts a new one
                await asyncio.sleep(delay)
                delay = min(2 * delay, 5.0)
        return delivered

    @staticmethod
    def _split(producer: AIOKafkaProducer, topic: str,
               items: list[KV]) -> list[tuple[object, list[KV]]]:
        """One topic partition's records in as few batches as the batch size allows."""
        out: list[tuple[object, list[KV]]] = []
        i = 0
        while i < len(items):
            batch = producer.create_batch()
            start = i
            while i < len(items) and batch.append(key=items[i][0], value=items[i][1], timestamp=None) is not None:
                i += 1
            if i == start:
                raise ValueError(f"a record for {topic} is larger than the producer's batch size")
            out.append((batch, items[start:i]))
        return out
