"""An open-loop HTTP load generator (aiohttp), run in its own process.

Requests are scheduled at a fixed rate and latency is measured from the *scheduled* send time,
so a slow server cannot hide its queueing (no coordinated omission). With rate 0 it runs closed
loop with a fixed concurrency, to find the maximum throughput.

    python -m bench.loadgen URL --rate 1000 --seconds 10 --token T   -> one JSON line of results
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson

APP = "4e11fe2082b044b4a3b55718c79c29d5"


def _body(i: int, salt: str) -> bytes:
    return (f"app={APP}&event=IN&uniqueid=bench{salt}.{i}&cli=98{i % 10**8:08d}"
            f"&time=2026-03-02+10%3A00%3A00").encode()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def run(url: str, token: str, rate: float, seconds: float, concurrency: int, salt: str) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    headers = {"X-Webhook-Token": token, "Content-Type": "application/x-www-form-urlencoded"}
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(i: int, scheduled: float) -> None:
            try:
                async with session.post(url, data=_body(i, salt), headers=headers) as r:
                    await r.read()
                    status = r.status
            except aiohttp.ClientError:
                status = -1
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append(time.perf_counter() - scheduled)

        t0 = time.perf_counter()
        if rate > 0:
            tasks = []
            n = int(rate * seconds)
            for i in range(n):
                scheduled = t0 + i / rate
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, scheduled)))
            await asyncio.gather(*tasks)
        else:
            counter = iter(range(10**9))
            end = t0 + seconds

            async def loop() -> None:
                while time.perf_counter() < end:
                    await one(next(counter), time.perf_counter())

            await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    ok = statuses.get(202, 0)
    return {
        "offered_rate": rate, "seconds": round(elapsed, 2), "requests": sum(statuses.values()),
        "accepted_per_s": round(ok / elapsed, 1), "statuses": statuses,
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2), "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--token", default="")
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--salt", default="")
    a = ap.parse_args()
    result = asyncio.run(run(a.url, a.token, a.rate, a.seconds, a.concurrency, a.salt))
    print(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode())


if __name__ == "__main__":
    main()
