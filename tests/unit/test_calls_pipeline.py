"""The calls pipeline's step around the lifecycle, through the runtime over a dict (no broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from config import topics
from config.settings import load
from processors import reconcile_metrics
from processors.core.call_state import CallState
from processors.pipelines import calls
from processors.runtime import Runner
from tests.unit.callgen import T0, attempt, ev
from tests.unit.test_runtime import Delivery, Rec


class Unread:
    def highwater(self, topic: str, partition: int) -> int | None:
        return None


def test_a_call_log_event_past_the_bound_is_counted_not_dead_lettered_on_every_pass() -> None:
    """A call at its size bound refuses a new attempt's event. A webhook's goes to the dead
    letters, once. The call log's copy comes back on every reconcile pass (its lookback reads the
    same calls again): it is counted, not dead-lettered each time (that alert would never clear)."""
    s = load({"WORKER_PRODUCE_BATCH_BYTES": "4096"})  # a call's state: 2 KiB at most
    pipe = calls.pipeline(s)
    delivered, rows = Delivery(), dict[bytes, bytes]()
    runner = Runner(pipe, pipe.store(rows), delivered, Unread(), s.topic(topics.EVENTS_UNPROCESSABLE))
    events: list[dict[str, Any]] = [ev("IN", "full", T0)]
    for n in range(12):
        events += attempt("full", n, "9000000001", T0 + 1 + n, "noanswer", 2)
    late = ev("TA", "full", T0 + 60, attempt="full.late", to="9000000002")
    from_log = {**late, "origin": "call_log", "agent_name": "Asha", "group": "Support"}
    batch = [*events, late, from_log, from_log]
    before = reconcile_metrics.EVENTS_REFUSED._value.get()
    asyncio.run(runner.handle([Rec(pipe.source, 0, i, b"full", orjson.dumps(e)) for i, e in enumerate(batch)],
                              T0 + 100))
    dead = [orjson.loads(v) for _, v in delivered.records(s.topic(topics.EVENTS_UNPROCESSABLE))]
    assert any(d["offset"] < len(events) for d in dead)  # the call did reach its bound
    assert all(d["error_type"] == "CallTooLarge" for d in dead)
    assert [d["offset"] for d in dead if d["offset"] >= len(events)] == [len(events)]  # the webhook's TA only
    assert reconcile_metrics.EVENTS_REFUSED._value.get() - before == 2
    state = orjson.loads(rows[b"full"])
    assert "TA|full.late" not in state["f"]


def test_a_call_kept_between_batches_is_measured_again_as_one_read_from_the_table() -> None:
    """The calls table keeps the states it saved last (not read and decoded again next batch).
    A kept call must come back as a read one would: its size (not stored) measured again on the
    way to its bound, so that what a call takes does not depend on whether it was kept."""
    pipe = calls.pipeline(load({}))
    rows = dict[bytes, bytes]()
    store = pipe.store(rows)
    state = CallState("u1", "app")
    state.size = 12_345
    store.save("u1", state)
    kept = store.load("u1")
    assert kept is state and kept.size is None
    assert store.load("u1") == CallState.from_json(orjson.loads(rows[b"u1"]))  # handed over once
