"""The calls pipeline's step around the lifecycle, through the runtime over a dict (no broker)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import orjson
import pytest

from config import topics
from config.settings import load
from processors import reconcile_metrics
from processors.core.call_state import CallState
from processors.json_store import JsonStore
from processors.pipelines import calls
from processors.runtime import Runner
from schemas.timefmt import format_ts
from tests.unit.callgen import T0, attempt, ev
from tests.unit.test_runtime import Delivery, Rec


class Unread:
    def highwater(self, topic: str, partition: int) -> int | None:
        return None


def test_a_call_log_event_past_the_bound_is_counted_not_dead_lettered_each_time_it_comes() -> None:
    """A call at its size bound refuses a new attempt's event. A webhook's goes to the dead
    letters, once. The call log's copy comes back with each new leader of the reconciler and each
    change of its entry: it is counted, not dead-lettered each time."""
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


def _mixed_stream(seed: int) -> list[tuple[str, dict[str, Any] | None]]:
    """60 calls' events, shuffled, with repeated deliveries, call-log copies, events the step
    refuses or fails on after changing the state, and ticks (None) in between."""
    rnd = random.Random(seed)
    out: list[tuple[str, dict[str, Any] | None]] = []
    for c in range(60):
        uid, t = f"u{c}", T0 + rnd.random() * 50
        events = [ev("IN", uid, t)]
        for n in range(rnd.randint(0, 12)):
            events += attempt(uid, n, f"90000000{n}", t + 1 + n, rnd.choice(["answered", "noanswer", "caller_hangup"]),
                              rnd.random() * 5, rnd.random() * 30, with_tc=rnd.random() < 0.8)
        if rnd.random() < 0.8:
            events.append(ev("H", uid, t + 40))
        for e in events:
            out.append((uid, e))
            if rnd.random() < 0.2:
                out.append((uid, dict(e)))
            if rnd.random() < 0.15:
                out.append((uid, {**e, "origin": "call_log", "agent_name": "A", "group": "G"}))
            if rnd.random() < 0.05 and e["event"] == "TE":
                out.append((uid, {**e, "duration": "garbage"}))
            if rnd.random() < 0.03:
                out.append((uid, {**e, "time": "not a time"}))
    rnd.shuffle(out)
    with_ticks: list[tuple[str, dict[str, Any] | None]] = []
    for item in out:
        with_ticks.append(item)
        if rnd.random() < 0.1:
            with_ticks.append((f"u{rnd.randrange(60)}", None))
    return with_ticks


class CaughtUp:
    def highwater(self, topic: str, partition: int) -> int | None:
        return 0


def _run_kept(keep_bytes: int, seed: int, state_bound: str) -> tuple[list[Any], dict[bytes, bytes], int]:
    """Every delivery and the table after every batch, batches prepared while the one before is
    on its way, a rebalance now and then; dead letters without their wall-clock `at`; the most
    states kept at once."""
    s = load({"WORKER_PRODUCE_BATCH_BYTES": state_bound})
    pipe = calls.pipeline(s)
    delivered, rows = Delivery(), dict[bytes, bytes]()
    store = JsonStore(rows, CallState.from_json, CallState.to_json, keep_bytes=keep_bytes, reuse=calls._as_loaded)
    runner = Runner(pipe, store, delivered, CaughtUp(), s.topic(topics.EVENTS_UNPROCESSABLE))
    recs = [Rec(pipe.source if e is not None else pipe.ticks, 0, i, uid.encode(), b"" if e is None else orjson.dumps(e))
            for i, (uid, e) in enumerate(_mixed_stream(seed))]
    rnd, snapshots, most = random.Random(seed + 1), list[Any](), 0

    async def go() -> None:
        nonlocal most
        i, now, before = 0, T0 + 10, None
        while i < len(recs):
            n = rnd.randint(1, 40)
            batch, i, now = recs[i:i + n], i + n, now + rnd.random() * 30
            prepared = runner.prepare(batch, now)
            if before is not None:
                await before
            before = asyncio.ensure_future(runner.complete(prepared))
            snapshots.append(dict(rows))
            most = max(most, len(store.kept))
            if rnd.random() < 0.05:
                runner.recovered({0: i})
        assert before is not None
        await before
        for _ in range(30):  # time passes: every call closes, decides and is forgotten
            now += 3600
            await runner.handle([Rec(pipe.ticks, 0, 0, k, b"") for k in sorted(rows)], now)
            snapshots.append(dict(rows))

    asyncio.run(go())
    dead = s.topic(topics.EVENTS_UNPROCESSABLE)
    batches = [([(t, k, orjson.dumps({**orjson.loads(v), "at": None}) if t == dead else v) for t, k, v in records],
                placed) for records, placed in delivered.batches]
    return [*batches, *snapshots], rows, most


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("state_bound", ["3000", "1048576"])
def test_calls_kept_between_batches_give_the_same_bytes_as_calls_read_from_the_table(seed: int,
                                                                                     state_bound: str) -> None:
    """Kept (a few, often forgotten; or all) or read every time, a call's state gives the same
    outputs, dead letters, changelog and table, batch by batch."""
    read, rows, _ = _run_kept(0, seed, state_bound)
    dead = {orjson.loads(v)["error_type"] for batch in read if isinstance(batch, tuple)
            for t, _, v in batch[0] if t.endswith("unprocessable")}
    assert {"ValueError", "TypeError"} <= dead  # steps that fail, some after changing the state
    assert ("CallTooLarge" in dead) == (state_bound == "3000")
    for keep_bytes in (3000, calls.KEPT_CALLS_BYTES):
        kept, kept_rows, most = _run_kept(keep_bytes, seed, state_bound)
        assert most > (1 if keep_bytes == 3000 else 30)
        assert kept_rows == rows
        assert kept == read


def test_a_talking_call_closes_on_call_idle_timeout_unless_connected_idle_timeout_is_set() -> None:
    """The contract: a call with no event for CALL_IDLE_TIMEOUT_S is closed; CONNECTED_IDLE_TIMEOUT_S
    (unset by default) lets calls whose agent is talking stay open longer."""
    assert calls.lifecycle_config(load({"CALL_IDLE_TIMEOUT_S": "20"})).connected_idle_timeout_s == 20
    assert calls.lifecycle_config(load({})).connected_idle_timeout_s == 900
    cfg = calls.lifecycle_config(load({"CALL_IDLE_TIMEOUT_S": "20", "CONNECTED_IDLE_TIMEOUT_S": "14400"}))
    assert (cfg.idle_timeout_s, cfg.connected_idle_timeout_s) == (20, 14400)


def test_a_batch_of_late_events_of_a_closed_call_makes_one_revision() -> None:
    """A call-log pass (or a burst of retried webhooks) brings several late events of a closed
    call in one batch: one revision with all of them, not one each with states in between that
    never were. A later batch's late event makes the next revision."""
    s = load({})
    pipe = calls.pipeline(s)
    delivered, rows = Delivery(), dict[bytes, bytes]()
    runner = Runner(pipe, pipe.store(rows), delivered, CaughtUp(), s.topic(topics.EVENTS_UNPROCESSABLE))

    def batch(events: list[dict[str, Any]], first: int, now: float) -> None:
        asyncio.run(runner.handle([Rec(pipe.source, 0, first + i, b"c1", orjson.dumps(e))
                                   for i, e in enumerate(events)], now))

    # the webhooks: IN, an attempt whose TE was lost, H; closed by the hang-up grace
    batch([ev("IN", "c1", T0), ev("TA", "c1", T0 + 1, attempt="c1.1", to="9000000001"), ev("H", "c1", T0 + 20)],
          0, T0 + 21)
    asyncio.run(runner.handle([Rec(pipe.ticks, 0, 0, b"c1", b"")], T0 + 60))
    log = [{**e, "origin": "call_log", "agent_name": "Asha", "group": "Support"}
           for e in attempt("c1", 1, "9000000001", T0 + 1, "answered", 4, 10, with_tc=False)]
    batch(log, 3, T0 + 120)
    records = [orjson.loads(v) for _, v in delivered.records(s.topic(topics.CALLS_COMPLETED))]
    assert [r["revision"] for r in records] == [1, 2]
    assert records[0]["outcome"] == "missed" and records[1]["outcome"] == "answered"
    assert records[1]["attempts"][0]["agent_name"] == "Asha"
    # the agent renamed in the call log: the next pass reads it (later) and writes it again
    batch([{**e, "agent_name": "Asha R.", "received_at": format_ts(T0 + 170)} for e in log], 5, T0 + 180)
    records = [orjson.loads(v) for _, v in delivered.records(s.topic(topics.CALLS_COMPLETED))]
    assert [r["revision"] for r in records] == [1, 2, 3]
    assert records[2]["attempts"][0]["agent_name"] == "Asha R."


def test_another_apps_event_with_the_uniqueid_is_dead_lettered_once_its_call_log_copy_counted() -> None:
    s = load({})
    pipe = calls.pipeline(s)
    delivered, rows = Delivery(), dict[bytes, bytes]()
    runner = Runner(pipe, pipe.store(rows), delivered, Unread(), s.topic(topics.EVENTS_UNPROCESSABLE))
    other = {**ev("IN", "same", T0 + 5, cli="9800000002"), "app": "d" * 32}
    batch = [ev("IN", "same", T0), other, {**other, "origin": "call_log"}]
    before = reconcile_metrics.EVENTS_REFUSED._value.get()
    asyncio.run(runner.handle([Rec(pipe.source, 0, i, b"same", orjson.dumps(e)) for i, e in enumerate(batch)], T0 + 9))
    dead = [orjson.loads(v) for _, v in delivered.records(s.topic(topics.EVENTS_UNPROCESSABLE))]
    assert [(d["offset"], d["error_type"]) for d in dead] == [(1, "OtherAppsCall")]
    assert reconcile_metrics.EVENTS_REFUSED._value.get() - before == 1
    assert orjson.loads(rows[b"same"])["a"] != "d" * 32
