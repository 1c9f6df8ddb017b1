"""The ceiling: the calls step in a bare confluent-kafka loop with a dict for state.

    python -m bench.peers.raw_loop BOOTSTRAP INPUT OUTPUT GROUP

No durability: state lives in memory only, offsets are auto-committed every second (the same
interval as the others) whether or not the outputs were delivered.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from bench.peers.step import calls_step, lifecycle_config
from config.settings import load


def main() -> None:
    from confluent_kafka import Consumer, Producer

    bootstrap, source, sink, group = sys.argv[1:5]
    cfg = lifecycle_config(load())
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": True, "auto.commit.interval.ms": 1000})
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer.subscribe([source])
    states: dict[bytes, Any] = {}
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    try:
        while running[0]:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is not None:
                    continue
                key = msg.key()
                new, completed = calls_step(msg.value(), states.get(key), cfg)
                if new is None:
                    states.pop(key, None)
                else:
                    states[key] = new
                if completed is not None:
                    producer.produce(sink, completed, key=key)
            producer.poll(0)
    finally:
        producer.flush(10)
        consumer.close()


if __name__ == "__main__":
    main()
