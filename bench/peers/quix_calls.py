"""The calls step on Quix Streams (bench-only dependency `quixstreams`).

    python -m bench.peers.quix_calls BOOTSTRAP INPUT OUTPUT GROUP STATE_DIR at-least-once|exactly-once [floor]

Quix's documented defaults except the commit interval, set to the worker's (1 s): RocksDB state
with its changelog topic, the state stored per message key. With `floor`, the step only decodes
the event and looks its call's state up, and nothing is written (as `bench.peers.floor_app`).
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from bench.peers.step import calls_step, lifecycle_config
from config.settings import load


def main() -> None:
    from quixstreams import Application

    bootstrap, source, sink, group, state_dir, guarantee = sys.argv[1:7]
    floor = sys.argv[7:] == ["floor"]
    cfg = lifecycle_config(load())
    app = Application(broker_address=bootstrap, consumer_group=group, auto_offset_reset="earliest",
                      commit_interval=1.0, state_dir=state_dir, processing_guarantee=guarantee,  # type: ignore[arg-type]
                      loglevel="WARNING")
    inp = app.topic(source, key_deserializer="bytes", value_deserializer="bytes")
    out = app.topic(sink, key_serializer="bytes", value_serializer="bytes")

    def step(value: bytes, state: Any) -> Any:  # a quixstreams State
        if floor:
            orjson.loads(value)
            state.get("call")
            return None
        new, completed = calls_step(value, state.get("call"), cfg)
        if new is None:
            state.delete("call")
        else:
            state.set("call", new)
        return completed

    sdf = app.dataframe(inp)
    sdf = sdf.apply(step, stateful=True).filter(lambda v: v is not None)
    sdf.to_topic(out)
    app.run()


if __name__ == "__main__":
    main()
