"""The calls step every system in the comparison runs: decode an `ivr.events` record, apply it
to the call's state with the project's pure core, and say what to write.

State travels as the JSON-ready form of `CallState` (`to_json`), so every system stores the same
bytes (Quix serialises state with orjson, the raw loop keeps the dict form in memory).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from config.settings import Settings
from processors.core.call_state import CallState
from processors.core.lifecycle import LifecycleConfig, apply
from schemas.codec import dumps


def lifecycle_config(s: Settings) -> LifecycleConfig:
    return LifecycleConfig(
        hangup_grace_s=s.hangup_grace_s,
        idle_timeout_s=s.call_idle_timeout_s,
        connected_idle_timeout_s=s.connected_idle_timeout_s,
        retention_s=s.closed_call_retention_s,
        short_abandon_s=s.short_abandon_s,
    )


def calls_step(value: bytes, state: Any | None, cfg: LifecycleConfig) -> tuple[Any | None, bytes | None]:
    """(new state in JSON-ready form or None, the completed record to write or None)."""
    applied = apply(None if state is None else CallState.from_json(state), orjson.loads(value), time.time(), cfg)
    new = None if applied.state is None else applied.state.to_json()
    completed = applied.emission.completed
    return new, None if completed is None else dumps(completed)
