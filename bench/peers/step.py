"""The calls step every system in the comparison runs: decode an `ivr.events` record, apply it
to the call's state with the project's pure core, and say what to write.

State travels as the JSON-ready form of `CallState` (`to_json`), so every system stores the same
bytes (Quix serialises state with orjson, the raw loop keeps the dict form in memory).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson

from config.settings import Settings
from processors.core.call_record import CallView
from processors.core.call_state import CallState
from processors.core.lifecycle import LifecycleConfig, apply
from processors.pipelines import calls
from processors.pipelines.calls import lifecycle_config
from processors.runtime import Output
from schemas.codec import dumps
from schemas.records import CallerFact, CompletedCall

__all__ = ["PARTITIONS", "STEP_ENV", "calls_step", "extra_work_aside", "lifecycle_config", "peers_work_only"]

PARTITIONS = 6
#: the settings every system in the comparison runs with, of those that change the steps or where
#: their keys go
STEP_ENV = {"HANGUP_GRACE_S": "1", "CALL_IDLE_TIMEOUT_S": "3", "TOPIC_PARTITIONS": str(PARTITIONS),
            "CONNECTED_IDLE_TIMEOUT_S": "14400"}  # as before its default changed: rounds stay comparable


def calls_step(value: bytes, state: Any | None, cfg: LifecycleConfig) -> tuple[Any | None, bytes | None]:
    """(new state in JSON-ready form or None, the completed record to write or None)."""
    applied = apply(None if state is None else CallState.from_json(state), orjson.loads(value), time.time(), cfg)
    new = None if applied.state is None else applied.state.to_json()
    completed = applied.emission.completed
    return new, None if completed is None else dumps(completed)


def _no_contributions(rec: CompletedCall, s: Settings, v: CallView) -> list[Output]:
    return []


def _no_facts(facts: Iterable[CallerFact], received: float | None, topic: str) -> list[Output]:
    return []


def extra_work_aside() -> Callable[[], None]:
    """From now on the calls pipeline does the peers' work: it makes no metric contributions and
    sends no caller facts (the core still makes the facts, as it does for the peers), so it sends
    completed records only. Returns what puts the extra work back."""
    made = calls.metric_contributions, calls.caller_facts
    calls.metric_contributions, calls.caller_facts = _no_contributions, _no_facts

    def back() -> None:
        calls.metric_contributions, calls.caller_facts = made

    return back


@contextmanager
def peers_work_only() -> Iterator[None]:
    """The calls pipeline does the peers' work meanwhile (see `extra_work_aside`)."""
    back = extra_work_aside()
    try:
        yield
    finally:
        back()
