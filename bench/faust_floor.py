"""The floor under any Faust worker here: a bare agent that only iterates the same topic.

    python -m faust -A bench.faust_floor worker -l warn   (with FLOOR_BOOTSTRAP, FLOOR_TOPIC, FLOOR_TOTAL,
                                                           FLOOR_DATADIR set)

Prints `RATE <events/s>` once it has read FLOOR_TOTAL events. Run by bench.run_all beside the
real worker, so the report shows how much of the gap is Faust's own per-event cost. It gets what
the worker gets: uvloop, the same pinned log levels, batches from `take_events`.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import cast

import mode.loop

mode.loop.use("uvloop")

import faust  # noqa: E402

from config.logs import install_filters  # noqa: E402

# a benchmark tool's own knobs, set by bench.run_all (not project settings)
BOOTSTRAP = os.environ["FLOOR_BOOTSTRAP"]
TOPIC = os.environ["FLOOR_TOPIC"]
TOTAL = int(os.environ["FLOOR_TOTAL"])
# Faust makes a data directory even for an app without tables (default: `<app id>-data` in the
# current directory, which was the checkout): the benchmark's temporary directory instead
DATADIR = os.environ["FLOOR_DATADIR"]

install_filters()
app = faust.App(f"floor-{uuid.uuid4().hex[:8]}", broker=f"kafka://{BOOTSTRAP}", value_serializer="raw",
                key_serializer="raw", consumer_auto_offset_reset="earliest", store="memory://", datadir=DATADIR,
                web_port=int(os.environ.get("FLOOR_WEB_PORT", "6099")))
source = app.topic(TOPIC)
seen = [0, 0.0, 0]  # events read, when the first batch arrived, its size (not timed, not counted)


@app.agent(source, concurrency=1)
async def floor(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
    async for events in cast(faust.Stream[bytes], stream).take_events(1000, within=0.02):
        if seen[0] == 0:
            seen[1], seen[2] = time.perf_counter(), len(events)
        seen[0] += len(events)
        if seen[0] >= TOTAL:
            print(f"RATE {(seen[0] - seen[2]) / (time.perf_counter() - seen[1]):.0f}", flush=True)
        yield None
