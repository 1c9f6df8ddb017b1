"""`ivr simulate`'s posting: a call's events reach the ingress in the order they are given."""

from __future__ import annotations

import asyncio
import random
from urllib.parse import parse_qs

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.simulator import post_events


def test_a_calls_events_arrive_in_order_though_posted_concurrently() -> None:
    arrived: list[tuple[str, int]] = []
    delays = random.Random(7)

    async def webhook(request: Request) -> Response:
        form = parse_qs((await request.body()).decode())
        await asyncio.sleep(delays.uniform(0, 0.004))  # some requests take longer than others
        arrived.append((form["uniqueid"][0], int(form["n"][0])))
        return Response(status_code=202)

    app = Starlette(routes=[Route("/webhooks/ivr", webhook, methods=["POST"])])
    # 40 calls of 5 events, each call's events next to each other, as a short call's would be
    events = [{"uniqueid": f"c{c}", "n": str(n), "event": "TA"} for c in range(40) for n in range(5)]
    statuses = asyncio.run(post_events("http://ingress/webhooks/ivr", "t", events, rate=0, concurrency=8,
                                       progress=False, transport=httpx.ASGITransport(app=app)))
    assert statuses == {202: len(events)} and len(arrived) == len(events)
    for c in range(40):
        assert [n for uid, n in arrived if uid == f"c{c}"] == list(range(5))
    # posted concurrently all the same: calls overtook one another
    assert [uid for uid, _ in arrived] != [e["uniqueid"] for e in events]
