"""What the whole worker does beyond the peers' calls step, timed without a broker.

    python -m bench.peers.extra_work [--calls N] [--pairs P]

The peers in `bench.peers.compare` run the calls step alone; the worker also makes each completed
call's metric contributions and caller facts, and runs the callers (alerts), agent-window and
app-window pipelines on them. This runs the comparison's input (normalised as the ingress writes
it) through the worker's own pipelines and runtime, in batches as the worker takes them, over
in-memory tables, with the worker's garbage-collector settings: no Kafka, no Faust, no RocksDB, no
changelog sent. What is timed (process CPU) is each pipeline's steps, its state's decoding and
encoding, its outputs and bundles: what that work costs any worker built on this core, whatever
carries it.

  * the calls pipeline twice, batch by batch in turn: as deployed, and doing the peers' work
    (`step.peers_work_only`: no metric contributions made, no caller facts sent); the difference
    is the contributions and the facts' records;
  * its ticks once the input is in: the missed-call decisions (and calls without a hang-up);
  * the callers, agent-window and app-window pipelines over the bundles the calls pipeline sent
    them (their wall-clock window flushes are not run: `compare` does not wait for them either).

Each part is measured over 2P runs after one not counted. Their total is a floor for what the extra
work adds to the worker's CPU per event: carrying it (Kafka, RocksDB, Faust) comes on top.
`compare` prints it beside the headroom its run measured (Quix's CPU per event less the calls-only
worker's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from statistics import mean, median
from typing import Any

from bench.peers.step import STEP_ENV, peers_work_only
from bench.simulator import as_ingress_writes
from config import topics
from config.kafka_producer import partition_for
from config.settings import Settings, load
from processors.output_producer import Offsets, Placed, Record
from processors.pipelines import agent_metrics, app_metrics, callers, calls
from processors.runtime import HeldRecord, Pipeline, Runner, bundle_bytes
from processors.worker import GC_THRESHOLD


class _CaughtUp:
    def highwater(self, topic: str, partition: int) -> int | None:
        return 0  # every partition read to its end: ticks are handled, not parked


class _Sent:
    """A delivery that keeps what a pipeline sent, by topic, as records of their partitions."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.by_topic: dict[str, list[HeldRecord]] = {}

    async def __call__(self, records: Sequence[Record], placed: Sequence[Placed]) -> Offsets:
        for topic, key, value in records:
            self._keep(topic, partition_for(key, self.partitions), key, value)
        for topic, partition, placed_key, placed_value in placed:
            self._keep(topic, partition, placed_key, placed_value or b"")
        return {}

    def _keep(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        out = self.by_topic.setdefault(topic, [])
        out.append(HeldRecord(topic, partition, len(out), key, value))


class _Lane:
    """A pipeline timed over the input: its runtime, what it sent, and what holds while it runs."""

    def __init__(self, pipe: Pipeline[Any], s: Settings, sent: _Sent,
                 holding: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        self.pipe, self.sent, self.holding, self.cpu_s = pipe, sent, holding, 0.0
        self.rows: dict[bytes, bytes] = {}  # its table
        self.runner: Runner[Any] = Runner(pipe, pipe.store(self.rows), sent, _CaughtUp(),
                                          s.topic(topics.EVENTS_UNPROCESSABLE), partitions=s.topic_partitions,
                                          bundle_bytes=bundle_bytes(s.worker_produce_batch_bytes))

    async def batch(self, items: Sequence[HeldRecord], now: float) -> None:
        with self.holding():
            started = time.process_time()
            await self.runner.complete(self.runner.prepare(items, now))
            self.cpu_s += time.process_time() - started


async def _run(lanes: Sequence[_Lane], s: Settings, records: Sequence[HeldRecord],
               ticks_until: float | None = None) -> None:
    """`records` through every lane, batch by batch in turn (what slows the machine for a while
    slows each alike), in batches of the worker's size; then (`ticks_until`) each lane's ticks due by
    then, until none is left."""
    for i in range(0, len(records), s.worker_batch_max):
        now = time.time()
        for lane in lanes:
            await lane.batch(records[i:i + s.worker_batch_max], now)
    while ticks_until is not None:
        due = [lane.runner.due_keys(ticks_until) for lane in lanes]
        if not any(due):
            break
        for lane, keys in zip(lanes, due, strict=True):
            ticks = [HeldRecord(lane.pipe.ticks, partition_for(k.encode(), s.topic_partitions), 0, k.encode(), b"")
                     for k in keys]
            for i in range(0, len(ticks), s.worker_batch_max):
                await lane.batch(ticks[i:i + s.worker_batch_max], ticks_until)


@dataclass(frozen=True, slots=True)
class ExtraWork:
    events: int
    calls: int
    parts: dict[str, float]  # CPU seconds, by part
    records: dict[str, int]  # records read, by pipeline (caller facts and contributions come bundled)
    outputs: dict[str, int]  # records sent, by topic (without the prefix)

    @property
    def total_s(self) -> float:
        return sum(self.parts.values())

    def per_100k(self, cpu_s: float) -> float:
        return cpu_s / self.events * 100_000

    def lines(self) -> list[str]:
        title = "the work beyond the peers' calls step, its steps alone"
        out = [f"{title:<56} {'CPU-us/call':>11} {'CPU-s/100k':>11}"]
        for name, cpu in [*self.parts.items(), ("total", self.total_s)]:
            out.append(f"  {name:<54} {cpu / self.calls * 1e6:>11.1f} {self.per_100k(cpu):>11.2f}")
        return out


def measure(values: Sequence[tuple[bytes, bytes]], calls_n: int, pairs: int = 2) -> ExtraWork:
    """The extra work over `values` ((key, value) of `ivr.events`, as the ingress writes them), over
    `2 * pairs` runs after one not counted (the first run of a process also pays for its memory).
    The calls pipeline's part is the mean difference between its two forms, run batch by batch in
    turn, each first in half the runs: a difference of two figures five to ten times larger, whose
    noise it carries. The other parts are medians."""
    s = load(STEP_ENV)
    source = s.topic(topics.EVENTS)
    events = [HeldRecord(source, partition_for(k, s.topic_partitions), i, k, v) for i, (k, v) in enumerate(values)]
    later = time.time() + 3600.0  # every call closed and decided by then; none forgotten (that takes a day)

    async def go() -> ExtraWork:
        full = _Sent(s.topic_partitions)  # what the whole worker's pipelines sent, the last time
        extra = []
        for i in range(-1, 2 * pairs):  # -1: not counted
            whole = _Lane(calls.pipeline(s), s, full if i == 2 * pairs - 1 else _Sent(s.topic_partitions))
            alone = _Lane(calls.pipeline(s), s, _Sent(s.topic_partitions), peers_work_only)
            # the garbage collector's walks fall to whichever lane's allocation sets them off: each
            # order half the time
            await _run([whole, alone] if i % 2 else [alone, whole], s, events, later)
            extra.append(whole.cpu_s - alone.cpu_s)
        parts = {"calls: metric contributions and caller facts": mean(extra[1:])}
        records = {"calls": len(events)}
        for name, pipe in (("callers and alerts", callers.pipeline(s)), ("agent windows", agent_metrics.pipeline(s)),
                           ("app windows", app_metrics.pipeline(s))):
            inputs = list(full.by_topic.get(pipe.source, []))  # the callers send the app windows some
            cpu = []
            for i in range(-1, 2 * pairs):
                lane = _Lane(pipe, s, full if i == 2 * pairs - 1 else _Sent(s.topic_partitions))
                await _run([lane], s, inputs)
                cpu.append(lane.cpu_s)
            parts[name], records[name] = median(cpu[1:]), len(inputs)
        outputs = {t.removeprefix(s.topic_prefix): len(rs) for t, rs in full.by_topic.items()}
        return ExtraWork(len(events), calls_n, parts, records, outputs)

    with _collected_as_in_the_worker():
        return asyncio.run(go())


@contextmanager
def _collected_as_in_the_worker() -> Iterator[None]:
    """The worker's garbage collection (`processors.worker.collect_less`) while the work is timed: at
    Python's defaults its walks over the growing tables made the same work cost a quarter more
    (30,000 calls: 1.25 against 0.96 CPU-s per 100k events)."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--pairs", type=int, default=2, help="runs counted: twice this")
    args = ap.parse_args(argv)
    from bench.peers.compare import input_events

    result = measure(list(as_ingress_writes(input_events(args.calls)[0])), args.calls, pairs=args.pairs)
    print(f"{result.events:,} events, {result.calls:,} calls; records sent: "
          + ", ".join(f"{t} {n:,}" for t, n in sorted(result.outputs.items())))
    print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
