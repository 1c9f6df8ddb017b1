"""The worker with its calls pipeline only, writing only completed records, for
`bench.peers.compare --calls-only`:

    faust -A bench.peers.calls_only_app worker

The peers run the calls step alone (decode, `lifecycle.apply`, write the completed record); the
worker also makes each completed call's metric contributions and caller facts and runs three more
pipelines on them. Here the contributions are not made, the caller facts (which the core makes)
are dropped before they are sent, and the other pipelines do not run: nearly the peers' work, in
the worker's framework (its state in RocksDB with a changelog, its ticks, its acknowledgements),
to tell the framework's cost from the extra work's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import mode.loop

mode.loop.use("uvloop")  # as the worker

from config import settings as settings_module
from config import topics
from processors import worker
from processors.pipelines import calls
from processors.runtime import Result

settings = settings_module.load()
calls.metric_contributions = lambda rec, s, v: []  # not made at all (rather than made and dropped)
full = calls.pipeline(settings)
completed = settings.topic(topics.CALLS_COMPLETED)


def step(key: str, state: Any, item: Any, now: float) -> Result[Any] | None:
    result = full.step(key, state, item, now)
    if result is None or not result.outputs:
        return result
    return Result(result.state, [o for o in result.outputs if o.topic == completed])


app, _ = worker.build(settings, [dataclasses.replace(full, step=step)])
worker.collect_less()
