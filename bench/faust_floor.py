"""The floor under any Faust worker here: a bare agent that only iterates the same topic.

    python -m bench.faust_floor worker -l warn   (with FLOOR_BOOTSTRAP, FLOOR_TOPIC, FLOOR_TOTAL set)

Prints `RATE <events/s>` once it has read FLOOR_TOTAL events. Run by bench.run_all beside the
real worker, so the report shows how much of the gap is Faust's own per-event cost.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator

import faust

# a benchmark tool's own knobs, set by bench.run_all (not project settings)
BOOTSTRAP = os.environ["FLOOR_BOOTSTRAP"]
TOPIC = os.environ["FLOOR_TOPIC"]
TOTAL = int(os.environ["FLOOR_TOTAL"])

app = faust.App(f"floor-{uuid.uuid4().hex[:8]}", broker=f"kafka://{BOOTSTRAP}", value_serializer="raw",
                key_serializer="raw", consumer_auto_offset_reset="earliest", store="memory://",
                web_port=int(os.environ.get("FLOOR_WEB_PORT", "6099")))
source = app.topic(TOPIC)
seen = [0, 0.0]


@app.agent(source, concurrency=1)
async def floor(stream: faust.StreamT[bytes]) -> AsyncIterator[None]:
    async for _ in stream:
        seen[0] += 1
        if seen[0] == 1:
            seen[1] = time.perf_counter()
        if seen[0] == TOTAL:
            print(f"RATE {TOTAL / (time.perf_counter() - seen[1]):.0f}", flush=True)
        yield None
