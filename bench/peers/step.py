"""The calls step every system in the comparison runs: decode an `ivr.events` record, apply it
to the call's state with the project's pure core, and say what to write.

State travels as the JSON-ready form of `CallState` (`to_json`), so every system stores the same
bytes (Quix serialises state with orjson, the raw loop keeps the dict form in memory).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from processors.core.call_state import CallState
from processors.core.lifecycle import LifecycleConfig, apply
from processors.pipelines.calls import lifecycle_config
from schemas.codec import dumps

__all__ = ["calls_step", "lifecycle_config"]


def calls_step(value: bytes, state: Any | None, cfg: LifecycleConfig) -> tuple[Any | None, bytes | None]:
    """(new state in JSON-ready form or None, the completed record to write or None)."""
    applied = apply(None if state is None else CallState.from_json(state), orjson.loads(value), time.time(), cfg)
    new = None if applied.state is None else applied.state.to_json()
    completed = applied.emission.completed
    return new, None if completed is None else dumps(completed)
