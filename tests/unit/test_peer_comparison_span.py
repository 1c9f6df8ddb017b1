"""`bench.peers.compare`: where a run's span ends, and what `Watch.behind` counts, without a broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata

from bench.peers import compare

LOOK_S = 0.2  # `measure` looks every 0.2 s


class FakeTime:
    """`measure`'s clocks: the scripted looks move them on; the process's CPU is 1 s a second."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


class ScriptedWatch:
    """Look by look: the input's events committed, and (records left, records committed) of the
    drained topics; the last look repeats."""

    def __init__(self, looks: list[tuple[int, tuple[int, int]]]) -> None:
        self.looks: Iterator[tuple[int, tuple[int, int]]] = iter(looks)
        self.last = looks[-1]
        self.current = looks[0]
        self.outputs = 0

    async def __aenter__(self) -> ScriptedWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def written(self) -> int:
        self.outputs += 1  # an output at every look
        return self.outputs

    async def offsets(self) -> dict[Any, Any]:
        self.current = next(self.looks, self.last)  # one read of the group's offsets per look
        return {}

    def committed(self, offsets: Any) -> int:
        return self.current[0]

    async def behind(self, topics: Any, offsets: Any) -> tuple[int, int]:
        return self.current[1] if topics else (0, 0)


def run(monkeypatch: pytest.MonkeyPatch, looks: list[tuple[int, tuple[int, int]]],
        drained: list[str]) -> tuple[float, float]:
    clock = FakeTime()
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        clock.now = round(clock.now + seconds, 6)
        await real_sleep(0)

    monkeypatch.setattr(compare, "time", SimpleNamespace(perf_counter=clock.perf_counter, monotonic=clock.monotonic))
    monkeypatch.setattr(compare, "tree_cpu_s", lambda pid: clock.now)
    monkeypatch.setattr(compare, "Watch", lambda *args: ScriptedWatch(looks))
    monkeypatch.setattr(asyncio, "sleep", sleep)  # (`measure` sleeps between looks)
    proc: Any = SimpleNamespace(pid=1, poll=lambda: None)
    return asyncio.run(compare.measure(proc, "b", "g", "in", "out", 200, Path("log"), limit_s=60, drained=drained))


def test_a_peer_is_timed_to_its_input_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    # looks at 0, 0.2, 0.4: nothing, then half the input (the span starts), then all of it
    eps, cpu = run(monkeypatch, [(0, (0, 0)), (100, (0, 0)), (200, (0, 0))], [])
    assert eps == pytest.approx(100 / LOOK_S)  # 100 events from the first commit to the input's
    assert cpu == pytest.approx(LOOK_S / 100 * 100_000)


@pytest.mark.parametrize(("later", "end_s"), [
    ([(200, (0, 40))], 0.6),  # drained at 0.6, and so it stays
    ([(200, (3, 40)), (200, (0, 40))], 1.0),  # 0.8: behind again; 1.0: drained, and so it stays
    ([(200, (0, 55))], 0.8),  # 0.8: still drained, but more was done and committed since the last look
])
def test_the_workers_cpu_is_counted_until_its_pipelines_have_drained_and_stayed_so(
        monkeypatch: pytest.MonkeyPatch, later: list[tuple[int, tuple[int, int]]], end_s: float) -> None:
    # looks at 0, 0.2, 0.4: the input committed at 0.4, the pipelines still behind; 0.6: drained
    looks = [(0, (5, 0)), (100, (5, 0)), (200, (5, 0)), (200, (0, 40)), *later]
    eps, cpu = run(monkeypatch, looks, ["internal"])
    assert eps == pytest.approx(100 / LOOK_S)  # events/s: still to the input's commit
    assert cpu == pytest.approx((end_s - LOOK_S) / 100 * 100_000)  # CPU: to the drained end that held


class FakeConsumer:
    def __init__(self, partitions: dict[str, set[int]], ends: dict[TopicPartition, int]) -> None:
        self.partitions = partitions
        self.ends = ends
        self.refreshed = 0

        async def refresh() -> None:
            self.refreshed += 1

        self._client = SimpleNamespace(force_metadata_update=refresh)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in tps}


def behind(consumer: FakeConsumer, committed: dict[TopicPartition, int], topics: list[str]) -> tuple[int, int]:
    watch = compare.Watch.__new__(compare.Watch)
    watch.group, watch.consumer = "g", consumer

    async def offsets(group: str) -> dict[TopicPartition, OffsetAndMetadata]:
        return {tp: OffsetAndMetadata(o, "") for tp, o in committed.items()}

    watch.admin = SimpleNamespace(list_consumer_group_offsets=offsets)

    async def look() -> tuple[int, int]:
        return await watch.behind(topics, await watch.offsets())

    return asyncio.run(look())


def test_behind_counts_what_the_group_has_not_committed_of_every_partition() -> None:
    a0, a1, b0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("b", 0)
    consumer = FakeConsumer({"a": {0, 1}, "b": {0}}, {a0: 10, a1: 4, b0: 7})
    # a partition the group never committed counts whole
    assert behind(consumer, {a0: 10, b0: 3}, ["a", "b"]) == (4 + 4, 13)
    assert behind(consumer, {a0: 10, a1: 4, b0: 7}, ["a", "b"]) == (0, 21)
    assert consumer.refreshed == 0


def test_a_topic_without_metadata_is_not_drained() -> None:
    a0 = TopicPartition("a", 0)
    consumer = FakeConsumer({"a": {0}}, {a0: 0})
    assert behind(consumer, {}, ["a", "missing"]) == (1, 0)  # even with every known partition done
    assert consumer.refreshed == 1
