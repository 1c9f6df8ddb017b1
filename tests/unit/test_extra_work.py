"""`bench.peers.extra_work` (the work beyond the peers', timed without a broker) and the split of
the gap that `bench.peers.compare` prints from it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import pytest

from bench.peers import compare, extra_work
from bench.peers.step import STEP_ENV, extra_work_aside, peers_work_only
from bench.simulator import as_ingress_writes
from config import topics
from config.kafka_producer import partition_for
from config.settings import load
from processors.pipelines import calls
from processors.runtime import HeldRecord
from tests.helpers import ROOT


def test_the_extra_work_runs_every_pipeline_over_what_the_calls_pipeline_sent_it() -> None:
    events, truth = compare.input_events(200)
    result = extra_work.measure(list(as_ingress_writes(events)), len(truth), pairs=1)
    assert result.events == len(events) and result.calls == len(truth) == 200
    assert set(result.parts) == {"calls: metric contributions and caller facts", "callers and alerts",
                                 "agent windows", "app windows"}
    # CPU the work took (the calls part, a difference of two runs' CPU, may be noise on a busy machine)
    assert all(cpu > 0 for name, cpu in result.parts.items() if not name.startswith("calls:"))
    missed = sum(t.outcome == "missed" for t in truth)
    assert missed > 0
    # the ticks ran: the missed calls were decided, and their callers alerted (short abandons are
    # counted, not alerted)
    assert 0.8 * missed <= result.outputs["ivr.alerts.missed"] <= missed
    assert result.outputs["ivr.calls.completed"] >= len(truth)  # and a revision now and then
    # the downstream pipelines read what was sent to them (bundled)
    assert result.records["callers and alerts"] == result.outputs["ivr.internal.missed-by-caller"] > 0
    assert result.records["agent windows"] == result.outputs["ivr.internal.attempts-by-agent"] > 0
    assert result.records["app windows"] == result.outputs["ivr.internal.calls-by-app"] > 0
    assert result.total_s == sum(result.parts.values())
    assert len(result.lines()) == 1 + len(result.parts) + 1


def test_the_peers_work_is_the_whole_calls_pipeline_but_its_contributions_and_facts() -> None:
    """Lane by lane as `measure` runs them: the calls pipeline doing the peers' work sends the same
    completed records and keeps the same table, and sends nothing else."""
    s = load(STEP_ENV)
    events = [HeldRecord(s.topic(topics.EVENTS), partition_for(k, s.topic_partitions), i, k, v)
              for i, (k, v) in enumerate(as_ingress_writes(compare.input_events(200)[0]))]
    whole = extra_work._Lane(calls.pipeline(s), s, extra_work._Sent(s.topic_partitions))
    alone = extra_work._Lane(calls.pipeline(s), s, extra_work._Sent(s.topic_partitions), peers_work_only)
    asyncio.run(extra_work._run([alone, whole], s, events, time.time() + 3600))
    completed = s.topic(topics.CALLS_COMPLETED)
    assert set(alone.sent.by_topic) == {completed}
    assert {s.topic(topics.MISSED_BY_CALLER), s.topic(topics.ATTEMPTS_BY_AGENT), s.topic(topics.CALLS_BY_APP),
            completed} <= set(whole.sent.by_topic)
    values = [[(r.key, r.value) for r in lane.sent.by_topic[completed]] for lane in (alone, whole)]
    assert values[0] == values[1] and len(values[0]) >= 200
    assert alone.rows == whole.rows and alone.rows
    assert alone.cpu_s > 0 and whole.cpu_s > 0


def test_the_extra_work_set_aside_comes_back() -> None:
    made = calls.metric_contributions, calls.caller_facts
    back = extra_work_aside()
    assert calls.metric_contributions is not made[0] and calls.caller_facts is not made[1]
    back()
    assert (calls.metric_contributions, calls.caller_facts) == made
    with peers_work_only():
        assert calls.caller_facts is not made[1]
    assert (calls.metric_contributions, calls.caller_facts) == made


def test_the_gap_is_split_from_the_medians_and_the_extra_work() -> None:
    med = {"worker": (10_000.0, 5.4), compare.CALLS_ONLY: (11_000.0, 4.1), "quix at-least-once": (12_000.0, 4.3)}
    extra = extra_work.ExtraWork(events=100_000, calls=18_000, parts={"a": 0.6, "b": 0.4}, records={}, outputs={})
    split = compare.gap(med, extra)
    assert round(split["beyond_peers"], 6) == 1.3 and round(split["headroom"], 6) == 0.2
    assert round(split["extra_steps"], 6) == 1.0
    assert "it does not in this run" in split["lines"][-1] and "exceed it" in split["lines"][-1]
    roomy = {**med, "quix at-least-once": (12_000.0, 6.0)}
    assert "it does in this run" in compare.gap(roomy, extra)["lines"][-1]
    assert compare.gap({"worker": (1.0, 1.0)}, extra) == {}  # not every row ran (--only, --floor)


def test_the_report_carries_the_split(capsys: object) -> None:
    runs = [compare.Run("worker", 10_000, 5.4), compare.Run(compare.CALLS_ONLY, 11_000, 4.1),
            compare.Run("quix at-least-once", 12_000, 4.3)]
    extra = extra_work.ExtraWork(events=100_000, calls=18_000, parts={"a": 0.6}, records={"a": 1}, outputs={"t": 2})
    result = compare.report(runs, {"events": 100_000, "calls": 18_000, "rounds": 1}, extra)
    assert round(result["gap"]["headroom"], 6) == 0.2
    assert round(result["extra_work"]["total_cpu_s_per_100k"], 6) == 0.6
    orjson.dumps(result)  # written as JSON


def test_a_report_without_the_worker_has_no_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    """`--only` may leave the worker out: its figures are printed, its ratios are not."""
    runs = [compare.Run(compare.CALLS_ONLY, 11_000, 4.1), compare.Run("quix at-least-once", 12_000, 4.3)]
    result = compare.report(runs, {"events": 100_000, "calls": 18_000, "rounds": 1})
    assert result["median"].keys() == {compare.CALLS_ONLY, "quix at-least-once"} and result["gap"] == {}
    assert "n/a" in capsys.readouterr().out


def test_the_calls_only_worker_keeps_the_extra_work_aside_for_its_whole_life() -> None:
    """Its app sets the contributions and the fact records aside once, for good (a context manager
    entered and dropped was collected at once, and put them back)."""
    check = ("import gc, bench.peers.calls_only_app; gc.collect(); from processors.pipelines import calls; "
             "from bench.peers import step; "
             "assert calls.metric_contributions is step._no_contributions, 'contributions made'; "
             "assert calls.caller_facts is step._no_facts, 'facts sent'")
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
