"""`ivr simulate`'s posting: a call's events reach the ingress in the order they are given."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.simulator import NoAnswer, post_events


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


class Restarting(httpx.AsyncBaseTransport):
    """An ingress that answers, then refuses connections for a while (a restart), then answers."""

    def __init__(self, refusals: int, answering: int = 3) -> None:
        self.refusals = refusals
        self.answering = answering  # requests answered before the refusals
        self.answered = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.answered >= self.answering and self.refusals > 0:
            self.refusals -= 1
            raise httpx.ConnectError("connection refused")
        self.answered += 1
        return httpx.Response(202)


def test_posting_rides_through_an_ingress_restart_and_stops_at_once_when_none_answers() -> None:
    events = [{"uniqueid": f"c{c}", "event": "IN"} for c in range(6)]
    restarting = Restarting(refusals=2)
    statuses = asyncio.run(post_events("http://ingress/webhooks/ivr", "t", events, rate=0, concurrency=1,
                                       progress=False, transport=restarting))
    assert statuses == {202: 6} and restarting.refusals == 0
    # nothing has ever answered: not a restart, the ingress is not there
    with pytest.raises(NoAnswer, match=r"no answer from http://ingress/webhooks/ivr \(ConnectError\)"):
        asyncio.run(post_events("http://ingress/webhooks/ivr", "t", events, rate=0, progress=False,
                                transport=Restarting(refusals=len(events), answering=0)))


class ClosingKeptAlive(httpx.AsyncBaseTransport):
    """A server that closed a kept-alive connection as a request went out on it, now and then:
    httpx says RemoteProtocolError (disconnected without a response); the request was not taken."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls % 3 == 2:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(202)


def test_a_request_on_a_connection_the_ingress_just_closed_is_sent_again() -> None:
    """A new user's `ivr simulate` stopped with 'no answer ... is the ingress running?' while the
    ingress answered every request it got."""
    events = [{"uniqueid": f"c{c}", "event": "IN"} for c in range(6)]
    statuses = asyncio.run(post_events("http://ingress/webhooks/ivr", "t", events, rate=0, concurrency=1,
                                       progress=False, transport=ClosingKeptAlive()))
    assert statuses == {202: 6}


class ResetOnce(httpx.AsyncBaseTransport):
    """An ingress frozen past its keep-alive resets the connections of requests sent meanwhile
    (ReadError): one poster died of it, its queue was never drained, and the run ended 70-90 s
    later short of webhooks, the truth file no longer what was sent."""

    def __init__(self, resets: int, answering: bool = True) -> None:
        self.resets, self.answering, self.taken = resets, answering, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.taken and self.resets:
            self.resets -= 1
            raise httpx.ReadError("[Errno 104] Connection reset by peer")
        if not self.answering:
            raise httpx.ConnectError("refused")
        self.taken += 1
        return httpx.Response(202)


def test_a_request_whose_connection_is_reset_is_sent_again_and_a_poster_that_gives_up_stops_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    events = [{"uniqueid": f"c{c}", "event": "IN"} for c in range(40)]
    reset = ResetOnce(resets=3)
    statuses = asyncio.run(post_events("http://ingress/webhooks/ivr", "t", events, rate=0, concurrency=4,
                                       progress=False, transport=reset))
    assert statuses == {202: 40} and reset.taken == 40
    # an ingress that went away for good: the run ends as soon as a poster gives up, not at the end
    import bench.simulator as simulator

    monkeypatch.setattr(simulator, "NO_ANSWER_S", 0.0)
    gone = ResetOnce(resets=0)
    started = asyncio.get_event_loop_policy().new_event_loop()
    try:
        async def run() -> None:
            task = asyncio.create_task(post_events("http://ingress/webhooks/ivr", "t", events, rate=5,
                                                   concurrency=4, progress=False, transport=gone))
            await asyncio.sleep(0.1)
            gone.answering = False
            await task

        t0 = time.monotonic()
        with pytest.raises(NoAnswer):
            started.run_until_complete(run())
        assert time.monotonic() - t0 < 4  # not when all 40 are fed, at 5/s: 8 s
    finally:
        started.close()


def test_other_seeds_give_other_call_ids() -> None:
    """`ivr simulate` runs of two seeds over the same hour shared call ids now and then (the
    second run's events then revised the first run's call)."""
    from bench.simulator import SEQ_PER_SEED, Profile, generate

    ids = [{e["uniqueid"] for e in generate(300, 1_796_000_000, 60, Profile(), seed=s, first_seq=s * SEQ_PER_SEED)[0]}
           for s in (1, 5)]
    assert not ids[0] & ids[1]
    assert all(u.split(".")[1].startswith(("1", "5")) for u in ids[0] | ids[1])


@pytest.mark.parametrize(("args", "message"), [
    (["--outage", "bad"], "'bad' is not FROM:SECONDS"),  # was a traceback
    (["--outage", "10:-1"], "is not FROM:SECONDS"),
    (["--duplicates", "2"], "2 is not a share from 0 to 1"),  # was taken, and posted
    (["--lose", "nan"], "is not a share from 0 to 1"),
    (["--rate", "-5"], "-5 must be at least 0"),
    (["--calls", "0"], "0 must be at least 1"),
])
def test_arguments_out_of_their_range_stop_with_a_usage_line(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    from bench.simulator import main

    with pytest.raises(SystemExit) as stopped:
        main(["--calls", "2", *args])
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_truth_is_written_only_for_a_run_that_finished(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run that could not post left a truth file, and `ivr check` then reported calls "without a
    record"; a path that cannot be written was a traceback."""
    from bench.simulator import main

    truth = tmp_path / "t.json"
    assert main(["--calls", "2", "--truth", str(truth), "--url", "http://127.0.0.1:9/webhooks/ivr"]) == 1
    assert not truth.exists() and "no truth written" in capsys.readouterr().err
    truth.write_text("an earlier run's")  # kept by a run that does not finish
    assert main(["--calls", "2", "--truth", str(truth), "--url", "http://127.0.0.1:9/webhooks/ivr"]) == 1
    assert truth.read_text() == "an earlier run's" and list(tmp_path.iterdir()) == [truth]
    assert main(["--calls", "2", "--truth", str(tmp_path / "none" / "t.json")]) == 2
    assert "\nerror: --truth" in capsys.readouterr().err
    assert main(["--calls", "2", "--truth", str(truth)]) == 0 and len(orjson.loads(truth.read_bytes())) == 2
