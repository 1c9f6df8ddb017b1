"""The floor of the worker's client: the calls step in a bare aiokafka loop, durable as the worker is.

    python -m bench.peers.aiokafka_loop BOOTSTRAP INPUT OUTPUT GROUP

What an at-least-once calls processor on aiokafka cannot do without, and nothing else: per fetched
batch, apply the step to each event (state in a dict), send the completed records and one
changelog record per changed key (to `OUTPUT.changelog`, the key's input partition) through the
worker's own bulk producer path (`OutputProducer.send_all`: acks=all, idempotent), and once they
are acknowledged mark the batch's offsets for the next commit (every second, like the others).
No framework, no rebalance handling, no RocksDB, no other pipeline: whatever CPU this loop needs
per event, the worker (which does all of that and more on the same client) needs at least as much.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import orjson

from bench.peers.step import calls_step, lifecycle_config
from config.settings import load
from processors.output_producer import OutputProducer, Placed, Record


async def run(bootstrap: str, source: str, sink: str, group: str) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    cfg = lifecycle_config(load())
    changelog = f"{sink}.changelog"
    consumer = AIOKafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    producer = OutputProducer(bootstrap, "aiokafka-loop")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    states: dict[bytes, Any] = {}
    delivered: dict[TopicPartition, int] = {}
    last_commit = time.monotonic()
    await consumer.start()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(timeout_ms=500, max_records=1000)
            records: list[Record] = []
            placed: list[Placed] = []
            for tp, messages in fetched.items():
                changed: dict[bytes, Any] = {}
                for msg in messages:
                    key = msg.key or b""
                    new, completed = calls_step(msg.value, states.get(key), cfg)
                    if new is None:
                        states.pop(key, None)
                    else:
                        states[key] = new
                    changed[key] = new
                    if completed is not None:
                        records.append((sink, key, completed))
                placed.extend((changelog, tp.partition, key, None if new is None else orjson.dumps(new))
                              for key, new in changed.items())
            await producer.send_all(records, placed)
            for tp, messages in fetched.items():
                delivered[tp] = messages[-1].offset + 1
            if delivered and time.monotonic() - last_commit >= 1.0:
                await consumer.commit(dict(delivered))
                delivered.clear()
                last_commit = time.monotonic()
        if delivered:
            await consumer.commit(dict(delivered))
    finally:
        await producer.stop()
        await consumer.stop()


def main() -> None:
    asyncio.run(run(*sys.argv[1:5]))


if __name__ == "__main__":
    main()
