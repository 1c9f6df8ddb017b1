"""The callers pipeline's decoding around the core, through the runtime over a dict (no broker)."""

from __future__ import annotations

import asyncio
import itertools

import orjson

from config import topics
from config.settings import load
from processors.core.callers import in_call_order
from processors.pipelines import callers
from processors.runtime import HeldRecord, Runner
from schemas.codec import dumps
from schemas.records import AnsweredCallFact, MissedCallFact
from schemas.timefmt import format_ts
from tests.unit.test_runtime import Delivery

APP = "4e11fe2082b044b4a3b55718c79c29d5"
CLI = "9812345678"
T0 = 1_800_000_000.0


class CaughtUp:
    def highwater(self, topic: str, partition: int) -> int | None:
        return 0


def missed(uid: str, start: float) -> MissedCallFact:
    return MissedCallFact(uniqueid=uid, app=APP, cli=CLI, at=format_ts(start + 40), missed_reason="no_answer",
                          wait_s=40.0, attempts=1, agents_tried=["A1"], alert=True, started_at=format_ts(start))


def test_missed_calls_decided_together_count_their_repeats_in_the_calls_order() -> None:
    """Three missed calls of one caller, a minute apart, decided by one timer round of the calls
    agent: its batch sends their facts in the order its partitions were read. Raised in the calls'
    order, their alerts count 1, 2, 3 whatever that order."""
    s = load({})
    pipe = callers.pipeline(s)
    facts = [missed(f"g{n}", T0 + 60 * n) for n in range(3)]
    for order in itertools.permutations(facts):
        delivered = Delivery()
        runner = Runner(pipe, pipe.store({}), delivered, CaughtUp(), s.topic(topics.EVENTS_UNPROCESSABLE))
        bundle = b"[" + b",".join(dumps(f) for f in order) + b"]"
        asyncio.run(runner.handle([HeldRecord(pipe.source, 0, 0, None, bundle)], T0 + 600))
        alerts = [orjson.loads(v) for _, v in delivered.records(s.topic(topics.ALERTS_MISSED))]
        assert [(a["uniqueid"], a["repeat_count"]) for a in alerts] == [("g0", 1), ("g1", 2), ("g2", 3)]


def test_a_calls_own_facts_keep_their_order() -> None:
    """A call's missed fact and the answered fact of its revision, in one bundle: the answer comes
    after the miss however the calls around them sort (a revision may move the call's start)."""
    later = missed("m", T0 + 120)
    moved = AnsweredCallFact(uniqueid="m", app=APP, cli=CLI, started_at=format_ts(T0), how="revised_answered",
                             start_known=True)
    other = missed("o", T0 + 60)
    assert in_call_order([later, other, moved]) == [other, later, moved]
    assert in_call_order([other, moved, later]) == [moved, later, other]  # placed by its first fact
