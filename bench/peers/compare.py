"""Our worker against Quix Streams, its own client alone and a raw client loop, on the same
pre-filled topic, in one run.

    python -m bench.peers.compare [--calls N] [--rounds R] [--quick] [--floor]

Every system reads the same `ivr.events` topic (simulator traffic, 6 partitions) from the start in
a consumer group of its own and runs the calls step (`bench.peers.step`); our worker runs the
whole processor (calls, callers, metrics) as deployed, and again with its calls pipeline alone
(`bench.peers.calls_only_app`: the peers' work, in the worker); the aiokafka loop (`bench.peers.aiokafka_loop`)
is the floor of the worker's client, the raw confluent-kafka loop (`bench.peers.raw_loop`) the
ceiling of this machine. Rounds alternate the systems, rotating the
order. For each run the harness, polling from outside, takes the time from the system's first commit to
the moment its group has committed every input offset, the events committed in that span, and the
CPU time the system's processes used in it (see `measure`). Printed: median events/s, CPU-s per 100k events, and
our ratio to each; then where the gap is: what the work beyond the peers' adds to the worker (the
whole worker against the calls-only one), the headroom the calls-only worker leaves under Quix
at-least-once, and what that extra work's steps cost alone, without a broker
(`bench.peers.extra_work`, over the same input).

`--floor` runs the worker (`bench.peers.floor_app`) and Quix with steps that only decode each event
and look its state up, and write nothing: what each costs around the work, so that the gap in the
full comparison can be put where it is (the framework, or the work in it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.peers import extra_work
from bench.peers.step import PARTITIONS, STEP_ENV
from bench.simulator import Profile, as_ingress_writes, generate, write_events
from config import topics
from deploy.local_kafka import ROOT, KafkaBroker, free_port

PREFIX = "cmp."
# what the worker's pipelines send each other for its input: done when these are committed too
CALL_TICKS = [f"{PREFIX}{topics.CALL_TICKS}"]
WORKER_INTERNAL = [f"{PREFIX}{t}" for t in (topics.MISSED_BY_CALLER, topics.ATTEMPTS_BY_AGENT, topics.CALLS_BY_APP)]
WORKER_INTERNAL += CALL_TICKS
CALLS_ONLY = "calls-only worker"  # the worker with its calls pipeline alone: the peers' work
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    system: str
    events_per_s: float
    cpu_per_100k: float


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (alive ones)."""
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
            for task in Path(f"/proc/{p}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, IndexError, ValueError):
            continue
    return total


class Watch:
    """Polls a group's committed offsets on the input and the end offsets of an output topic."""

    def __init__(self, bootstrap: str, group: str, source: str, sink: str) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.group, self.source, self.sink = group, source, sink
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> Watch:
        await self.admin.start()
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def offsets(self) -> dict[Any, Any]:
        """The group's committed offsets now (read once per look, for `committed` and `behind`)."""
        from aiokafka.errors import KafkaError

        try:
            return dict(await self.admin.list_consumer_group_offsets(self.group))
        except KafkaError:  # no coordinator yet: nothing committed
            return {}

    def committed(self, offsets: dict[Any, Any]) -> int:
        return sum(m.offset for tp, m in offsets.items() if tp.topic == self.source and m.offset > 0)

    async def behind(self, topics: Sequence[str], offsets: dict[Any, Any]) -> tuple[int, int]:
        """How many records of `topics` the group has not committed yet (up to their end now), and
        how many it has (that number moving says work was done since the last look)."""
        from aiokafka import TopicPartition

        if not topics:
            return 0, 0
        if any(not self.consumer.partitions_for_topic(t) for t in topics):
            await self.consumer._client.force_metadata_update()
            if any(not self.consumer.partitions_for_topic(t) for t in topics):
                return 1, 0  # not known yet: not drained (the harness creates them before a run)
        tps = [TopicPartition(t, p) for t in topics for p in self.consumer.partitions_for_topic(t) or ()]
        ends = await self.consumer.end_offsets(tps)
        done = {tp: max(0, getattr(offsets.get(tp), "offset", 0)) for tp in tps}
        return sum(max(0, ends[tp] - done[tp]) for tp in tps), sum(done.values())

    async def written(self) -> int:
        from aiokafka import TopicPartition

        parts = self.consumer.partitions_for_topic(self.sink)
        if not parts:
            await self.consumer._client.force_metadata_update()  # a topic the system creates as it goes
            parts = self.consumer.partitions_for_topic(self.sink)
        if not parts:
            return 0
        return sum((await self.consumer.end_offsets([TopicPartition(self.sink, p) for p in parts])).values())


# how long the end of a span must hold: longer than the worker's tick interval for calls (0.5 s)
# plus its commit interval (1 s), so that a deadline released once the input has been read (a
# missed call's alert decision) has its tick sent and read before the span may end
SETTLE_S = 2.0


async def measure(proc: subprocess.Popen[bytes], bootstrap: str, group: str, source: str, sink: str, total: int,
                  log: Path, limit_s: float = 900, writes: bool = True,
                  drained: Sequence[str] = ()) -> tuple[float, float]:
    """(events/s, CPU-s per 100k events), both from the group's first commit: events/s until the
    input is fully committed; CPU until, also, for the worker, every record its pipelines sent each
    other for it (`drained`: the repartition topics, the calls' ticks) is committed, an end that
    must hold for `SETTLE_S` with nothing more committed meanwhile (those seconds are not counted).
    Not waited for: the metric windows' flushes (their interim records every few seconds, their
    finals at the end of their grace), timed by the wall clock, not by the input. `writes`: the
    system writes records (a floor run writes none).

    The span starts at the first commit seen, not at the first output: a system that handles a
    large batch before its first output would otherwise have that batch's events counted and
    its time not. Counted: the events committed within the span. Every system commits every
    second, so each has up to a second of work done and not yet committed at either end. CPU
    counted to the input's commit alone left out what the worker's downstream pipelines (callers,
    metrics) still had to do then, about a tenth of its CPU. Their time is not counted in events/s:
    the few seconds they trail by after a backlog (a commit interval and a tick interval per hop
    between pipelines) are a fixed delay, not a rate, and would dominate a run this short.
    """
    launched = (time.perf_counter(), tree_cpu_s(proc.pid))  # the system was just started
    async with Watch(bootstrap, group, source, sink) as watch:
        out_before = await watch.written()
        output: tuple[float, float] | None = None  # at the first output
        first: tuple[float, float, int] | None = None  # at the first commit
        read: tuple[float, float] | None = None  # when the input was first seen committed
        end: tuple[float, float] | None = None  # when `drained` was (again) first seen committed after that
        end_committed = 0  # the records of `drained` committed then
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{group} exited (log: {log})")
            if output is None and await watch.written() > out_before:
                output = (time.perf_counter(), tree_cpu_s(proc.pid))
            offsets = await watch.offsets()
            done = watch.committed(offsets)
            if first is None and done > 0:
                first = (time.perf_counter(), tree_cpu_s(proc.pid), done)
            if first is not None and done >= total:
                read = read or (time.perf_counter(), tree_cpu_s(proc.pid))
                left, committed = await watch.behind(drained, offsets)
                if left or (end is not None and committed != end_committed):
                    end = None  # not done, or work was done (and committed) since the last look
                if not left and end is None:
                    end, end_committed = (time.perf_counter(), tree_cpu_s(proc.pid)), committed
            if first is not None and read is not None and end is not None and time.perf_counter() - end[0] >= SETTLE_S:
                now, cpu = read[0], end[1]
                if output is None and writes:
                    raise RuntimeError(f"{group} committed its input and wrote nothing (log: {log})")
                n = total - first[2]
                if n >= total // 2:
                    return n / (now - first[0]), (cpu - first[1]) / n * 100_000
                # a run too short to span several commits (--quick): from the first output instead,
                # or from the launch when the output and the last commit came in the same look
                since, what = ((output, "the first output") if output is not None and now - output[0] >= 0.5
                               else (launched, "its launch"))
                print(f"  {group}: {first[2]} of {total} events were committed at the first look; "
                      f"timed from {what}", file=sys.stderr)
                return total / (now - since[0]), (cpu - since[1]) / total * 100_000
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{group}: input (and {', '.join(drained) or 'nothing else'}) not committed within {limit_s}s")


def create_topics(env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-c", "import asyncio; from config.settings import load; "
                    "from config.topics import ensure_topics; asyncio.run(ensure_topics(load()))"],
                   env={**os.environ, **env}, check=True, cwd=ROOT)


async def _delete_topics(bootstrap: str, prefix: str, keep: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        doomed = [t for t in await admin.list_topics() if t.startswith(prefix) and t != keep
                  and not t.startswith(f"{prefix}peer.")]
        if doomed:
            await admin.delete_topics(doomed)
        for _ in range(120):  # deleted asynchronously: poll until the names are gone
            if not set(doomed) & set(await admin.list_topics()):
                break
            await asyncio.sleep(0.5)
    finally:
        await admin.close()


def fresh_topics(bootstrap: str, env: dict[str, str]) -> None:
    """Every topic of the worker's but its input (under `env`'s TOPIC_PREFIX), emptied (deleted and
    created again): a worker run is a new consumer group, which would otherwise read the earlier
    runs' internal records (caller facts, ticks, metric contributions) from the start, and do more
    work each round."""
    prefix = env["TOPIC_PREFIX"]
    asyncio.run(_delete_topics(bootstrap, prefix, f"{prefix}ivr.events"))
    time.sleep(1.0)  # the broker finishes deleting the logs before the names can be created again
    create_topics(env)


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(args, env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


Launch = Callable[[str], tuple[list[str], dict[str, str], str]]


def systems(bootstrap: str, tmp: Path, env: dict[str, str], floor: bool = False) -> dict[str, Launch]:
    """name -> (for a run id) the command, its environment and the topic it writes records to.
    `floor`: the worker and Quix with steps that do nothing (the loops and the calls-only worker
    have no floor of their own)."""
    source = f"{PREFIX}ivr.events"
    py = sys.executable

    def faust_app(app: str) -> Launch:
        def cmd(run: str) -> tuple[list[str], dict[str, str], str]:
            return ([py, "-m", "faust", "-A", app, "worker", "-l", "warn"],
                    {**env, "PROCESSOR_ID": run, "WORKER_WEB_PORT": str(free_port()),
                     "WORKER_DATA_DIR": str(tmp / run)}, f"{PREFIX}ivr.calls.completed")
        return cmd

    def quix(guarantee: str) -> Launch:
        def cmd(run: str) -> tuple[list[str], dict[str, str], str]:
            sink = f"{PREFIX}peer.{run}.completed"
            return ([py, "-m", "bench.peers.quix_calls", bootstrap, source, sink, f"{PREFIX}{run}", str(tmp / run),
                     guarantee, *(["floor"] if floor else [])], env, sink)
        return cmd

    def loop(module: str) -> Launch:
        def cmd(run: str) -> tuple[list[str], dict[str, str], str]:
            sink = f"{PREFIX}peer.{run}.completed"
            return [py, "-m", module, bootstrap, source, sink, f"{PREFIX}{run}"], env, sink
        return cmd

    found: dict[str, Launch] = {"worker": faust_app("bench.peers.floor_app" if floor else "processors.app")}
    if not floor:
        found[CALLS_ONLY] = faust_app("bench.peers.calls_only_app")
        found["aiokafka loop"] = loop("bench.peers.aiokafka_loop")
    try:
        import quixstreams  # noqa: F401
        found["quix at-least-once"] = quix("at-least-once")
        found["quix exactly-once"] = quix("exactly-once")
    except ImportError:
        print("quixstreams is not installed (pip install -e '.[bench]'): Quix rows skipped", file=sys.stderr)
    try:
        import confluent_kafka  # noqa: F401
        if not floor:
            found["raw loop"] = loop("bench.peers.raw_loop")
    except ImportError:
        pass
    return found


def report(runs: list[Run], meta: dict[str, Any], extra: extra_work.ExtraWork | None = None) -> dict[str, Any]:
    names = list(dict.fromkeys(r.system for r in runs))
    med = {n: (statistics.median(r.events_per_s for r in runs if r.system == n),
               statistics.median(r.cpu_per_100k for r in runs if r.system == n)) for n in names}
    ours = med.get("worker")  # not run (--only): no ratios
    print(f"\n{meta['events']:,} events, {meta['calls']:,} calls, {PARTITIONS} partitions, "
          f"{meta['rounds']} rounds (medians)")
    print(f"{'system':<20} {'events/s':>10} {'CPU-s/100k':>11} {'ours/them speed':>16} {'their/our CPU':>14}")
    for n in names:
        eps, cpu = med[n]
        speed = f"{ours[0] / eps:>16.2f}" if ours is not None else f"{'n/a':>16}"
        # n/a: no worker, or a run too short to see the CPU it used
        cpu_ratio = f"{cpu / ours[1]:>14.2f}" if ours is not None and ours[1] > 0 else f"{'n/a':>14}"
        print(f"{n:<20} {eps:>10,.0f} {cpu:>11.2f} {speed} {cpu_ratio}")
    split = gap(med, extra)
    if extra is not None:
        print()
        print("\n".join(extra.lines()))
    for line in split.get("lines", []):
        print(line)
    return {**meta, "runs": [r.__dict__ for r in runs],
            "median": {n: {"events_per_s": e, "cpu_s_per_100k": c} for n, (e, c) in med.items()},
            "gap": {k: v for k, v in split.items() if k != "lines"},
            "extra_work": None if extra is None else {
                "cpu_s_per_100k": {k: extra.per_100k(v) for k, v in extra.parts.items()},
                "total_cpu_s_per_100k": extra.per_100k(extra.total_s), "records_in": extra.records,
                "records_out": extra.outputs}}


def gap(med: dict[str, tuple[float, float]], extra: extra_work.ExtraWork | None) -> dict[str, Any]:
    """Where the whole worker's CPU per event stands against Quix at-least-once's, in CPU-s per 100k
    events: what the work beyond the peers' adds to it (the whole worker less the calls-only one),
    the headroom the calls-only worker leaves under Quix, and that extra work's steps alone."""
    if "worker" not in med or CALLS_ONLY not in med or "quix at-least-once" not in med:
        return {}
    whole, alone, quix = med["worker"][1], med[CALLS_ONLY][1], med["quix at-least-once"][1]
    out: dict[str, Any] = {"beyond_peers": whole - alone, "headroom": quix - alone}
    lines = ["", "where the gap is (CPU-s per 100k events, medians):",
             f"  the whole worker less the calls-only worker (the work beyond the peers'): {whole - alone:.2f}",
             f"  Quix at-least-once less the calls-only worker (the headroom on the peers' work): {quix - alone:.2f}"]
    if extra is not None:
        steps = extra.per_100k(extra.total_s)
        out["extra_steps"] = steps
        lines.append(f"  that extra work's steps alone, no broker (bench.peers.extra_work): {steps:.2f}")
        lines.append("  the whole worker can use no more CPU than Quix only while the headroom exceeds what the extra "
                     f"work adds: {'it does' if quix - alone >= whole - alone else 'it does not'} in this run; "
                     f"the extra work's steps alone {'fit in it' if steps <= quix - alone else 'exceed it'}")
    out["lines"] = lines
    return out


def input_events(calls: int) -> tuple[list[dict[str, str]], list[Any]]:
    """The simulated traffic every system reads (and its ground truth): the same for a given size."""
    profile = Profile(agents=20, p_duplicate=0.02, p_reorder=0.02, p_missing_hangup=0.01, mean_talk_s=60)
    return generate(calls, time.time() - 7200, 3600, profile, seed=5, prefix="c")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=None,
                    help="simulated calls (about 5.5 events each; default 10,000, and 30,000 with --floor: a run "
                         "that writes nothing is timed from its first commit, so it must span several)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="300 calls, one round (a smoke test)")
    ap.add_argument("--only", nargs="*", default=None, help="systems to run (default: all available)")
    ap.add_argument("--floor", action="store_true",
                    help="the worker and Quix with steps that only decode and look the state up: the cost "
                         "around the work (default output: bench/out/peers-floor.json)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    calls = args.calls if args.calls is not None else 30_000 if args.floor else 10_000
    calls, rounds = (300, 1) if args.quick else (calls, args.rounds)
    out = args.out or ROOT / "bench" / "out" / ("peers-floor.json" if args.floor else "peers.json")
    events, truth = input_events(calls)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with KafkaBroker(tmp / "kafka", partitions=PARTITIONS, heap="1g") as broker:
            env = {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "TOPIC_PREFIX": PREFIX, "WORKER_STORE": "rocksdb://",
                   "WORKER_SESSION_TIMEOUT_S": "10", **STEP_ENV}
            create_topics(env)
            asyncio.run(write_events(broker.bootstrap, f"{PREFIX}ivr.events", events, progress=False))
            table = systems(broker.bootstrap, tmp, env, args.floor)
            names = [n for n in table if args.only is None or n in args.only]
            runs: list[Run] = []
            for rnd in range(rounds):
                order = names[rnd % len(names):] + names[:rnd % len(names)]
                for name in order:
                    run_id = f"{name.split()[0]}{rnd}{'eos' if 'exactly' in name else ''}"
                    cmd, run_env, sink = table[name](run_id)
                    log = tmp / f"{run_id}.log"
                    group = f"{PREFIX}{run_id}"
                    print(f"round {rnd + 1}/{rounds}: {name} ...", file=sys.stderr, flush=True)
                    if name in ("worker", CALLS_ONLY):  # its internal topics: as new
                        fresh_topics(broker.bootstrap, env)
                    drained = WORKER_INTERNAL if name == "worker" else CALL_TICKS if name == CALLS_ONLY else []
                    proc = start(cmd, run_env, log)
                    try:
                        eps, cpu = asyncio.run(measure(proc, broker.bootstrap, group, f"{PREFIX}ivr.events", sink,
                                                       len(events), log, writes=not args.floor, drained=drained))
                    finally:
                        stop(proc)
                    runs.append(Run(name, eps, cpu))
                    print(f"  {eps:,.0f} events/s, {cpu:.2f} CPU-s/100k", file=sys.stderr, flush=True)
    # the extra work's steps alone, once the broker is gone; worth their time only where the split
    # can be printed
    split = {"worker", CALLS_ONLY, "quix at-least-once"} <= set(names)
    extra = extra_work.measure(list(as_ingress_writes(events)), len(truth)) if split else None
    result = report(runs, {"events": len(events), "calls": len(truth), "rounds": rounds, "cores": os.cpu_count(),
                           "floor": args.floor}, extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
