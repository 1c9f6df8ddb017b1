"""All benchmarks against one real local Kafka broker: `make bench` (or `python -m bench.run_all`).

Prints a table, writes bench/out/results.json and bench/out/benchmarks.png. Every figure is
measured beside its baseline in the same run. `--quick` runs each for a few seconds (smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvloop

from bench.peers.compare import fresh_topics
from bench.simulator import Profile, generate, write_events
from deploy.local_kafka import ROOT, KafkaBroker, free_port

OUT = ROOT / "bench" / "out"
TOKEN = "bench-token"
APP = "4e11fe2082b044b4a3b55718c79c29d5"


@dataclass(frozen=True)
class Scale:
    ingress_seconds: float
    ingress_rates: tuple[int, ...]
    processor_calls: int
    e2e_seconds: float
    e2e_rate: int
    memory_calls: int


FULL = Scale(10, (500, 1000), 6_000, 20, 1000, 100_000)
QUICK = Scale(2, (200,), 300, 3, 200, 2_000)


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        with open(log, "ab") as out:
            self.p = subprocess.Popen(args, env={**os.environ, **env}, cwd=ROOT, stdout=out,
                                      stderr=subprocess.STDOUT, start_new_session=True)
        self.log = log

    def stop(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, 15)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, 9)

    def rss_mb(self) -> float:
        total = 0
        for pid in [self.p.pid, *_children(self.p.pid)]:
            try:
                text = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            m = re.search(r"VmRSS:\s+(\d+) kB", text)
            total += int(m.group(1)) if m else 0
        return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def base_env(broker: KafkaBroker, prefix: str, tmp: Path) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "6",
            "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "rocksdb://", "WORKER_DATA_DIR": str(tmp / f"{prefix}w"),
            "HANGUP_GRACE_S": "1", "CALL_IDLE_TIMEOUT_S": "3", "WORKER_SESSION_TIMEOUT_S": "10",
            # a talking call waits for its TE, as before this default changed: figures stay comparable
            "CONNECTED_IDLE_TIMEOUT_S": "14400",
            }


@contextmanager
def worker(env: dict[str, str], tmp: Path, name: str) -> Iterator[tuple[Proc, int]]:
    port = free_port()
    p = Proc([sys.executable, "-m", "faust", "-A", "processors.app", "worker", "-l", "warn"],
             {**env, "WORKER_WEB_PORT": str(port), "WORKER_DATA_DIR": str(tmp / name)}, tmp / f"{name}.log")
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz")
        except TimeoutError:
            raise RuntimeError(f"worker {name} did not start:\n{p.log.read_text()[-3000:]}") from None
        yield p, port
    finally:
        p.stop()


def events_processed(port: int) -> float:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    return sum(float(v) for v in re.findall(r'^ivr_worker_events_total\{event="\w+"\} (\S+)$', text, re.M))


def cpu_times() -> tuple[float, float]:
    """Machine-wide (busy, total) CPU time from /proc/stat, in clock ticks."""
    values = [float(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def measure_rate(ports: list[int], total: int, timeout: float = 600) -> tuple[float, float]:
    """Events/s from the first event processed to the last, summed over workers, and how many of
    the machine's cores were busy meanwhile (broker, workers and all)."""
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sum(events_processed(p) for p in ports)
        now = time.perf_counter()
        if first is None and done > 0:
            first = (now, done, cpu_times())
        if done >= total:
            assert first is not None
            span = now - first[0]
            busy, all_ = cpu_times()
            cores = (busy - first[2][0]) / max(1.0, all_ - first[2][1]) * (os.cpu_count() or 1)
            return ((done - first[1]) / span if span > 0 else float("nan")), cores
        time.sleep(0.25)  # polling costs CPU the worker shares
    raise TimeoutError(f"workers processed {sum(events_processed(p) for p in ports)} of {total} events")


# --- 1. ingress --------------------------------------------------------------------------------

def loadgen(url: str, rate: float, seconds: float, salt: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.loadgen", url, "--token", TOKEN, "--rate", str(rate),
                          "--seconds", str(seconds), "--salt", salt], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


def bench_ingress(broker: KafkaBroker, tmp: Path, s: Scale) -> dict[str, Any]:
    port = free_port()
    env = base_env(broker, "bi.", tmp)
    server = Proc([sys.executable, "-m", "uvicorn", "bench.ingress_app:app", "--port", str(port),
                   "--no-access-log", "--log-level", "warning"], env, tmp / "ingress.log")
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        base = f"http://127.0.0.1:{port}"
        loadgen(f"{base}/webhooks/ivr", 0, 1, "warm")  # warm up connections and the producer
        rows: dict[str, Any] = {}
        for name, path in (("noop", "/bench/noop"), ("webhook", "/webhooks/ivr")):
            rows[name] = {"max": loadgen(base + path, 0, s.ingress_seconds, f"{name}max")}
            for rate in s.ingress_rates:
                rows[name][str(rate)] = loadgen(base + path, rate, s.ingress_seconds, f"{name}{rate}")
        rows["ratio"] = rows["webhook"]["max"]["accepted_per_s"] / max(1.0, rows["noop"]["max"]["accepted_per_s"])
        return rows
    finally:
        server.stop()


# --- 2. processor and 4. scale ------------------------------------------------------------------

def raw_consumer_rate(bootstrap: str, topic: str, total: int) -> float:
    async def go() -> float:
        from aiokafka import AIOKafkaConsumer

        c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
        await c.start()
        n, t0 = 0, None
        try:
            while n < total:
                for records in (await c.getmany(timeout_ms=500, max_records=10_000)).values():
                    if t0 is None:
                        t0 = time.perf_counter()
                    for r in records:
                        orjson.loads(r.value)
                    n += len(records)
            assert t0 is not None
            return n / (time.perf_counter() - t0)
        finally:
            await c.stop()

    return asyncio.run(go())


def bare_faust_rate(bootstrap: str, topic: str, total: int, tmp: Path) -> float:
    env = {"FLOOR_BOOTSTRAP": bootstrap, "FLOOR_TOPIC": topic, "FLOOR_TOTAL": str(total),
           "FLOOR_WEB_PORT": str(free_port()), "FLOOR_DATADIR": str(tmp / "floor-data")}
    p = Proc([sys.executable, "-m", "faust", "-A", "bench.faust_floor", "worker", "-l", "warn"], env,
             tmp / "floor.log")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            m = re.search(r"RATE (\d+)", p.log.read_text(errors="replace"))
            if m:
                return float(m.group(1))
            time.sleep(0.5)
        raise TimeoutError("bare Faust agent did not finish")
    finally:
        p.stop()


def truth_mismatches(bootstrap: str, prefix: str, truth: list[Any], timeout: float = 120) -> int:
    from bench.truth import check, latest
    from deploy.topic_reader import read_all

    deadline = time.monotonic() + timeout
    records: dict[str, Any] = {}
    while time.monotonic() < deadline:
        records = latest(v for _, v in read_all(bootstrap, f"{prefix}ivr.calls.completed", settle=1.0))
        if len(records) >= len(truth):
            break
    checked = check([asdict(t) for t in truth], records)
    return len(checked.missing) + checked.wrong


def bench_processor(broker: KafkaBroker, tmp: Path, s: Scale) -> dict[str, Any]:
    prefix = "bp."
    env = base_env(broker, prefix, tmp)
    profile = Profile(agents=20, p_duplicate=0.02, p_reorder=0.02, p_missing_hangup=0.01, mean_talk_s=60)
    events, truth = generate(s.processor_calls, time.time() - 7200, 3600, profile, seed=5, prefix="p")
    subprocess.run([sys.executable, "-c", "import asyncio; from config.settings import load; "
                    "from config.topics import ensure_topics; asyncio.run(ensure_topics(load()))"],
                   env={**os.environ, **env}, check=True, cwd=ROOT)
    asyncio.run(write_events(broker.bootstrap, f"{prefix}ivr.events", events, progress=False))
    total = len(events)
    raw = raw_consumer_rate(broker.bootstrap, f"{prefix}ivr.events", total)
    floor = bare_faust_rate(broker.bootstrap, f"{prefix}ivr.events", total, tmp)
    with worker({**env, "PROCESSOR_ID": "one"}, tmp, "one") as (_, port):
        one, one_cores = measure_rate([port], total)
        mismatches = truth_mismatches(broker.bootstrap, prefix, truth)
    # 4. scale: two workers in a fresh group on the same input; the first run's outputs and internal
    # records are emptied first (the new group would read them from the start: more work for two)
    fresh_topics(broker.bootstrap, env)
    with worker({**env, "PROCESSOR_ID": "two"}, tmp, "two-a") as (_, pa), \
            worker({**env, "PROCESSOR_ID": "two"}, tmp, "two-b") as (_, pb):
        time.sleep(3)  # let the second join before measuring
        two, two_cores = measure_rate([pa, pb], total)
    return {"events": total, "calls": len(truth), "raw_consumer_per_s": raw, "bare_faust_per_s": floor,
            "worker_per_s": one, "worker_cores_busy": one_cores, "two_workers_cores_busy": two_cores,
            "ratio": one / raw, "truth_mismatches": mismatches, "two_workers_per_s": two,
            "scale_ratio": two / one}


# --- 3. end to end ----------------------------------------------------------------------------

def bench_e2e(broker: KafkaBroker, tmp: Path, s: Scale) -> dict[str, Any]:
    prefix = "be."
    env = base_env(broker, prefix, tmp)
    port = free_port()
    server = Proc([sys.executable, "-m", "uvicorn", "ingress.app:app", "--port", str(port), "--no-access-log",
                   "--log-level", "warning"], env, tmp / "e2e-ingress.log")
    arrivals: dict[str, float] = {}
    stop = threading.Event()

    def consume() -> None:
        async def go() -> None:
            from aiokafka import AIOKafkaConsumer

            c = AIOKafkaConsumer(f"{prefix}ivr.calls.completed", bootstrap_servers=broker.bootstrap,
                                 auto_offset_reset="latest", group_id=None, metadata_max_age_ms=1000,
                                 fetch_max_wait_ms=10)
            await c.start()
            try:
                while not stop.is_set():
                    for records in (await c.getmany(timeout_ms=100)).values():
                        now = time.perf_counter()
                        for r in records:
                            arrivals.setdefault(r.key.decode(), now)
            finally:
                await c.stop()
        asyncio.run(go())

    try:
        with worker(env, tmp, "e2e"):
            wait_http(f"http://127.0.0.1:{port}/readyz")
            reader = threading.Thread(target=consume)
            reader.start()
            time.sleep(3)
            cpu_before = cpu_times()
            sent, accepted = uvloop.run(_post_calls(f"http://127.0.0.1:{port}/webhooks/ivr", s.e2e_rate,
                                                     s.e2e_seconds))
            busy, all_ = cpu_times()
            cores = (busy - cpu_before[0]) / max(1.0, all_ - cpu_before[1]) * (os.cpu_count() or 1)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(arrivals) < len(sent):
                time.sleep(0.2)
            stop.set()
            reader.join()
    finally:
        server.stop()
    lat = sorted((arrivals[u] - t) * 1000 for u, t in sent.items() if u in arrivals)
    # where the time goes: the H webhook's own round trip (ingress, 202 after acks=all), and from
    # that 202 to the record (the worker reading, processing and delivering; the reader's fetch)
    ingress = sorted((accepted[u] - t) * 1000 for u, t in sent.items() if u in accepted)
    after = sorted((arrivals[u] - accepted[u]) * 1000 for u in sent if u in arrivals and u in accepted)
    from bench.loadgen import percentile

    return {"calls": len(sent), "completed": len(lat), "offered_events_per_s": s.e2e_rate,
            "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95), "p99_ms": percentile(lat, 0.99),
            "h_webhook_p50_ms": percentile(ingress, 0.5), "h_webhook_p99_ms": percentile(ingress, 0.99),
            "after_202_p50_ms": percentile(after, 0.5), "after_202_p99_ms": percentile(after, 0.99),
            "cores_busy": cores}


async def _post_calls(url: str, rate: int, seconds: float) -> tuple[dict[str, float], dict[str, float]]:
    """Complete calls (IN, TA, TE, H: no grace needed; one caller each) at `rate` webhooks/s; per call, when its H
    was sent and when the ingress accepted it."""
    import aiohttp

    sent: dict[str, float] = {}
    accepted: dict[str, float] = {}
    headers = {"X-Webhook-Token": TOKEN}
    calls = int(rate * seconds / 4)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as session:

        async def one_call(i: int, start: float) -> None:
            u = f"e2e.{i}"
            steps = [
                {"event": "IN", "uniqueid": u, "cli": f"98{i:08d}", "time": "2026-03-02 10:00:00"},
                {"event": "TA", "uniqueid": u, "attemptid": f"{u}.1", "to": "A1", "time": "2026-03-02 10:00:05"},
                {"event": "TE", "uniqueid": u, "attemptid": f"{u}.1", "to": "A1", "result": "noanswer",
                 "duration": "15"},
                {"event": "H", "uniqueid": u, "cli": f"98{i:08d}", "duration": "30"},
            ]
            for k, fields in enumerate(steps):
                at = start + k * 4 / rate * (calls / max(1, calls))  # spread a call's events over its slot
                delay = at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if fields["event"] == "H":
                    sent[u] = time.perf_counter()
                async with session.post(url, data={"app": APP, **fields}, headers=headers) as r:
                    await r.read()
                if fields["event"] == "H" and r.status == 202:
                    accepted[u] = time.perf_counter()

        t0 = time.perf_counter()
        await asyncio.gather(*(one_call(i, t0 + i * 4 / rate) for i in range(calls)))
    return sent, accepted


# --- 5. memory --------------------------------------------------------------------------------

def bench_memory(broker: KafkaBroker, tmp: Path, s: Scale) -> dict[str, Any]:
    prefix = "bm."
    env = {**base_env(broker, prefix, tmp), "CALL_IDLE_TIMEOUT_S": "3600"}
    t = time.time()
    events = [{"app": APP, "event": "IN", "uniqueid": f"m.{i}", "cli": f"98{i:08d}", "time": str(int(t))}
              for i in range(s.memory_calls)]
    subprocess.run([sys.executable, "-c", "import asyncio; from config.settings import load; "
                    "from config.topics import ensure_topics; asyncio.run(ensure_topics(load()))"],
                   env={**os.environ, **env}, check=True, cwd=ROOT)
    asyncio.run(write_events(broker.bootstrap, f"{prefix}ivr.events", events, progress=False))
    with worker(env, tmp, "mem") as (proc, port):
        idle_rss = proc.rss_mb()
        measure_rate([port], len(events))
        time.sleep(2)
        rss = proc.rss_mb()
    return {"open_calls": len(events), "rss_mb": rss, "rss_before_mb": idle_rss}


# --- report -----------------------------------------------------------------------------------

def table(r: dict[str, Any]) -> str:
    i, p, e, m = r["ingress"], r["processor"], r["e2e"], r["memory"]
    lines = [
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"Kafka broker + all processes on this machine",
        "",
        f"{'benchmark':<46}{'figure':>16}{'baseline':>16}{'ratio':>10}",
        f"{'1. ingress max (202 after acks=all) /s':<46}{i['webhook']['max']['accepted_per_s']:>16,.0f}"
        f"{i['noop']['max']['accepted_per_s']:>16,.0f}{i['ratio']:>10.0%}",
    ]
    for rate in (k for k in i["webhook"] if k != "max"):
        w, n = i["webhook"][rate], i["noop"][rate]
        lines.append(f"{'   at ' + rate + '/s: p50 / p99 ms':<46}{w['p50_ms']:>7.1f} /{w['p99_ms']:>6.1f}"
                     f"{n['p50_ms']:>9.1f} /{n['p99_ms']:>5.1f}")
    lines += [
        f"{'2. one worker, events/s':<46}{p['worker_per_s']:>16,.0f}{p['raw_consumer_per_s']:>16,.0f}"
        f"{p['ratio']:>10.0%}",
        f"{'   bare Faust agent (same topic), events/s':<46}{p['bare_faust_per_s']:>16,.0f}"
        f"{p['raw_consumer_per_s']:>16,.0f}{p['bare_faust_per_s'] / p['raw_consumer_per_s']:>10.0%}",
        f"{'   one worker vs the bare Faust agent':<46}{p['worker_per_s']:>16,.0f}{p['bare_faust_per_s']:>16,.0f}"
        f"{p['worker_per_s'] / p['bare_faust_per_s']:>10.0%}",
        f"{'   ground-truth mismatches (' + str(p['calls']) + ' calls)':<46}{p['truth_mismatches']:>16}",
        f"{'3. end to end H -> completed, p50/p95/p99 ms':<46}{e['p50_ms']:>6.0f}/{e['p95_ms']:.0f}/{e['p99_ms']:.0f}"
        f"{'at ' + str(e['offered_events_per_s']) + '/s':>16}",
        f"{'   of which the H webhook (to 202), p50/p99 ms':<46}"
        f"{e['h_webhook_p50_ms']:>9.0f}/{e['h_webhook_p99_ms']:.0f}",
        f"{'   of which 202 -> record readable, p50/p99 ms':<46}"
        f"{e['after_202_p50_ms']:>9.0f}/{e['after_202_p99_ms']:.0f}",
        f"{'   cores busy while posting (of ' + str(os.cpu_count()) + ')':<46}{e['cores_busy']:>16.1f}",
        f"{'4. two workers vs one, events/s':<46}{p['two_workers_per_s']:>16,.0f}{p['worker_per_s']:>16,.0f}"
        f"{p['scale_ratio']:>10.0%}",
        f"{'   cores busy meanwhile (of ' + str(os.cpu_count()) + ', broker included)':<46}"
        f"{p['two_workers_cores_busy']:>16.1f}{p['worker_cores_busy']:>16.1f}",
        f"{'5. worker RSS, ' + format(m['open_calls'], ',') + ' calls open (rocksdb), MB':<46}{m['rss_mb']:>16,.0f}"
        f"{m['rss_before_mb']:>16,.0f}",
    ]
    return "\n".join(lines)


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 4))
    i, p, e, m = r["ingress"], r["processor"], r["e2e"], r["memory"]
    ax[0].bar(["no-op", "webhook"], [i["noop"]["max"]["accepted_per_s"], i["webhook"]["max"]["accepted_per_s"]])
    ax[0].set_title("1. ingress max req/s")
    ax[1].bar(["raw consumer", "bare Faust", "1 worker", "2 workers"],
              [p["raw_consumer_per_s"], p["bare_faust_per_s"], p["worker_per_s"], p["two_workers_per_s"]])
    ax[1].set_yscale("log")
    ax[1].set_title("2+4. events/s (log scale)")
    ax[2].bar(["p50", "p95", "p99"], [e["p50_ms"], e["p95_ms"], e["p99_ms"]])
    ax[2].set_title(f"3. end to end ms at {e['offered_events_per_s']}/s")
    ax[3].bar(["before", f"{m['open_calls']:,} open"], [m["rss_before_mb"], m["rss_mb"]])
    ax[3].set_title("5. worker RSS MB")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a few seconds each (the smoke test)")
    ap.add_argument("--only", nargs="*", default=None, help="ingress processor e2e memory")
    ap.add_argument("--out", type=Path, default=OUT, help="where results.json and the chart go")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else FULL
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with KafkaBroker(tmp / "kafka", partitions=6, heap="1g") as broker:
            for name, fn in (("ingress", bench_ingress), ("processor", bench_processor), ("e2e", bench_e2e),
                             ("memory", bench_memory)):
                if args.only is None or name in args.only:
                    print(f"running {name} ...", file=sys.stderr, flush=True)
                    results[name] = fn(broker, tmp, s)
    results["seconds"] = round(time.monotonic() - started)
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    if args.only is None:
        print(table(results))
        chart(results, out / "benchmarks.png")
        print(f"\n{results['seconds']} s; results in {out}/results.json, chart in {out}/benchmarks.png")
    else:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
