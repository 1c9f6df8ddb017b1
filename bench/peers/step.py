"""The calls step every system in the comparison runs: decode an `ivr.events` record, apply it
to the call's state with the project's pure core, and say what to write.

State travels as the JSON-ready form of `CallState` (`to_json`), so every system stores the same
bytes (Quix serialises state with orjson, the raw loop keeps the dict form in memory).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from config import topics
from config.settings import Settings
from processors.core.call_state import CallState
from processors.core.lifecycle import LifecycleConfig, apply
from processors.pipelines import calls
from processors.pipelines.calls import lifecycle_config
from processors.runtime import Pipeline, Result
from schemas.codec import dumps

__all__ = ["calls_step", "lifecycle_config", "no_contributions", "worker_calls_only"]


def calls_step(value: bytes, state: Any | None, cfg: LifecycleConfig) -> tuple[Any | None, bytes | None]:
    """(new state in JSON-ready form or None, the completed record to write or None)."""
    applied = apply(None if state is None else CallState.from_json(state), orjson.loads(value), time.time(), cfg)
    new = None if applied.state is None else applied.state.to_json()
    completed = applied.emission.completed
    return new, None if completed is None else dumps(completed)


def worker_calls_only(s: Settings) -> Pipeline[Any]:
    """The worker's calls pipeline doing the peers' work: it sends completed records only. The
    caller facts (which the core makes) are dropped before they are sent; the metric contributions
    are not made at all while `no_contributions` holds."""
    full = calls.pipeline(s)
    completed = s.topic(topics.CALLS_COMPLETED)

    def step(key: str, state: Any, item: Any, now: float) -> Result[Any] | None:
        result = full.step(key, state, item, now)
        if result is None or not result.outputs:
            return result
        return Result(result.state, [o for o in result.outputs if o.topic == completed])

    return dataclasses.replace(full, step=step)


@contextmanager
def no_contributions() -> Iterator[None]:
    """The calls pipeline makes no metric contributions meanwhile (rather than making and dropping them)."""
    maker = calls.metric_contributions
    calls.metric_contributions = lambda rec, s, v: []
    try:
        yield
    finally:
        calls.metric_contributions = maker
