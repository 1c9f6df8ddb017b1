"""The reconciler against the fake provider (in process, over ASGI): paging, cursor, faults."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import httpx
import orjson
import pytest

from bench.fake_provider import FakeProvider, log_entry
from bench.simulator import APP, Profile, generate
from config.settings import load
from processors import reconcile_metrics as rm
from processors.provider_api import Pacer, ProviderApi, ProviderError, retry_after
from processors.reconciler import Reconciler, since_text
from processors.worker_metrics import REGISTRY

KEY = "k-0123456789abcdef-secret"
OTHER_APP = "0" * 31 + "1"


class MemoryCursors:
    def __init__(self) -> None:
        self.saved: list[tuple[str, float]] = []

    async def load(self) -> dict[str, float]:
        return {app: c for app, c in self.saved}  # the latest per app, as compaction keeps it

    async def save(self, app: str, cursor: float) -> None:
        self.saved.append((app, cursor))


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes]] = []
        self.fail_after: int | None = None  # raise on the send after this many sends

    async def __call__(self, records: Sequence[tuple[str, bytes, bytes]]) -> None:
        if self.fail_after is not None:
            if self.fail_after == 0:
                raise OSError("broker away")
            self.fail_after -= 1
        self.records += records

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for _, _, v in self.records]


class Waits:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, s: float) -> None:
        self.waits.append(s)


def setup(n_calls: int = 23, page_size: int = 5, lookback: float = 7200, **env: str,
          ) -> tuple[FakeProvider, Reconciler, MemoryCursors, Sink, Waits]:
    now = time.time()
    _, truth = generate(n_calls, now - 3600, 1200, Profile(), seed=3)
    provider = FakeProvider({APP: truth}, KEY, page_size=page_size)
    settings = load({"PROVIDER_API_KEY": KEY, "RECONCILE_LOOKBACK_S": str(lookback), "TOPIC_PREFIX": "x.",
                     "PROVIDER_APPS": APP, **env})
    waits = Waits()
    api = ProviderApi("http://provider/", KEY, max_rps=1000, max_attempts=4,
                      transport=httpx.ASGITransport(app=provider.app), sleep=waits)
    cursors, sink = MemoryCursors(), Sink()
    return provider, Reconciler(settings, api, cursors, sink), cursors, sink, waits


def uids(sink: Sink) -> set[str]:
    return {e["uniqueid"] for e in sink.events()}


def test_first_pass_reads_every_page_and_starts_the_cursor_at_its_own_start(caplog: pytest.LogCaptureFixture,
                                                                                ) -> None:
    caplog.set_level(logging.DEBUG)
    provider, rec, cursors, sink, _ = setup()
    before = time.time()
    asyncio.run(rec.run_once())
    assert uids(sink) == {t.uniqueid for t in provider.calls[APP]}
    assert [s.status for s in provider.served] == [200] * 5  # 23 calls, 5 a page
    assert all(t == "x.ivr.events" for t, _, _ in sink.records)
    assert all(k == orjson.loads(v)["uniqueid"].encode() for _, k, v in sink.records)
    assert all(e["origin"] == "call_log" for e in sink.events())
    (app, cursor), = cursors.saved[-1:]
    assert app == APP and before <= cursor <= time.time()
    assert not any(s.key_in_query for s in provider.served)
    assert KEY not in caplog.text and KEY not in repr(rec.s)


def test_a_call_read_again_unchanged_is_not_written_again() -> None:
    """Every pass reads the whole look-back again (a dozen times a call at the defaults): what it
    wrote already is not written again, a call whose entry changed is, and a new leader (no memory
    of its own) writes each call once more: the same events."""
    provider, rec, cursors, sink, _ = setup()
    asyncio.run(rec.run_once())
    changed = next(t for t in provider.calls[APP] if t.attempts)
    first = sorted(e["id"] for e in sink.events() if e["uniqueid"] != changed.uniqueid)
    sink.records.clear()
    asyncio.run(rec.run_once())
    assert sink.records == [] and len(provider.served) == 10  # read again, all of it, and nothing written
    changed.attempts[0] = replace(changed.attempts[0], agent_name="Asha Rao")
    asyncio.run(rec.run_once())
    assert uids(sink) == {changed.uniqueid}
    sink.records.clear()
    asyncio.run(Reconciler(rec.s, rec.api, cursors, sink).run_once())  # the next leader
    assert uids(sink) == {t.uniqueid for t in provider.calls[APP]}
    assert sorted(e["id"] for e in sink.events() if e["uniqueid"] != changed.uniqueid) == first


def test_since_is_the_cursor_minus_the_look_back_in_the_provider_zone() -> None:
    provider, rec, cursors, _, _ = setup(lookback=600)
    cursors.saved.append((APP, 1_800_000_000.0))
    asyncio.run(rec.run_once())
    seen = {s.params["since"] for s in provider.served}
    assert seen == {since_text(1_800_000_000.0 - 600, rec.tz)} and seen.pop().endswith("+05:30")
    assert [s.params["pg"] for s in provider.served] == ["1"]


def test_an_active_call_is_skipped_and_holds_the_cursor_back() -> None:
    provider, rec, cursors, sink, _ = setup()
    held = provider.calls[APP][7]
    provider.hold_active(held.uniqueid, listings=1)
    asyncio.run(rec.run_once())
    assert held.uniqueid not in uids(sink)
    assert cursors.saved[-1][1] <= int(held.start)
    sink.records.clear()
    asyncio.run(rec.run_once())
    assert held.uniqueid in uids(sink)
    assert cursors.saved[-1][1] > held.start


def test_429_waits_what_retry_after_says_and_500_backs_off() -> None:
    provider, rec, _, sink, waits = setup()
    provider.fail_next(429, 1, retry_after=7)
    provider.fail_next(500, 2)
    errors_429 = rm.API_ERRORS.labels("429")._value.get()
    asyncio.run(rec.run_once())
    assert uids(sink) == {t.uniqueid for t in provider.calls[APP]}
    retry_waits = [w for w in waits.waits if w >= 0.5]
    # exponential with jitter: the 429 already doubled the backoff once
    assert retry_waits[0] == 7 and 1 <= retry_waits[1] <= 2 and 2 <= retry_waits[2] <= 4
    assert rm.API_ERRORS.labels("429")._value.get() == errors_429 + 1


def test_provider_outage_keeps_the_cursor_and_the_next_pass_catches_up() -> None:
    provider, rec, cursors, sink, _ = setup()
    cursors.saved.append((APP, time.time() - 100))
    provider.fail_next(503, 4)  # every attempt of the first request
    failed = rm.POLLS.labels("failed")._value.get()
    asyncio.run(rec.run_once())
    assert sink.records == [] and len(cursors.saved) == 1
    assert rm.POLLS.labels("failed")._value.get() == failed + 1
    asyncio.run(rec.run_once())
    assert uids(sink) == {t.uniqueid for t in provider.calls[APP]}


def test_the_cursor_age_grows_while_the_provider_cannot_be_read() -> None:
    """Read at each scrape: it grows between passes, and while every request fails (the app list's
    included, which ends a pass before any app)."""
    provider, rec, cursors, _, _ = setup()
    clock = [time.time()]
    rec.clock = lambda: clock[0]
    cursors.saved.append((APP, clock[0] - 100))
    provider.fail_next(503, 4)
    asyncio.run(rec.run_once())

    def age() -> float | None:
        return REGISTRY.get_sample_value("ivr_reconcile_cursor_age_seconds", {"app": APP})

    assert age() == pytest.approx(100)
    clock[0] += 600
    assert age() == pytest.approx(700)
    rec.s = replace(rec.s, provider_apps=())  # the app list is asked for, and fails
    provider.fail_next(503, 4)
    asyncio.run(rec.run_once())
    clock[0] += 600
    assert age() == pytest.approx(1300)
    rec.active = lambda: False  # leadership moved: another worker's figure is the one
    assert math.isnan(age() or 0.0)


def test_cursor_moves_only_past_pages_written() -> None:
    provider, rec, cursors, sink, _ = setup(lookback=0)
    first = provider.calls[APP][0].start
    cursors.saved.append((APP, first))
    sink.fail_after = 2  # pages 1 and 2 written, page 3 not
    with pytest.raises(OSError):
        asyncio.run(rec.run_once())
    assert len(uids(sink)) == 10
    # as far as the last call of page 2 (calls at that time are read again: `since` is inclusive)
    assert cursors.saved[-1] == (APP, int(provider.calls[APP][9].start))
    sink.fail_after = None
    asyncio.run(rec.run_once())
    assert uids(sink) == {t.uniqueid for t in provider.calls[APP]}
    second = provider.served[3:]  # the first pass read three pages (the third was not written)
    assert {s.params["since"] for s in second} == {since_text(provider.calls[APP][9].start, rec.tz)}
    assert len(second) == 3  # 14 calls from there on


def test_other_client_errors_are_not_retried() -> None:
    provider, rec, _, _, _ = setup(PROVIDER_APPS=OTHER_APP)
    asyncio.run(rec.run_once())
    assert [s.status for s in provider.served] == [404]


def test_app_list_when_no_apps_are_configured() -> None:
    provider, rec, _, sink, _ = setup(PROVIDER_APPS="")
    rec.s = load({"PROVIDER_API_KEY": KEY, "RECONCILE_LOOKBACK_S": "7200"})
    asyncio.run(rec.run_once())
    assert provider.served[0].path == "/app/list"
    assert uids(sink) == {t.uniqueid for t in provider.calls[APP]}


def test_wrong_key_is_refused_and_not_retried() -> None:
    provider, _, _, _, _ = setup()
    api = ProviderApi("http://provider", "wrong", 1000, transport=httpx.ASGITransport(app=provider.app))
    with pytest.raises(ProviderError) as e:
        asyncio.run(api.apps())
    assert e.value.status == 401 and len(provider.served) == 1


def test_pacer_spaces_request_starts() -> None:
    clock = [100.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += s

    pacer = Pacer(4, clock=lambda: clock[0], sleep=sleep)

    async def five() -> None:
        for _ in range(5):
            await pacer.wait()

    asyncio.run(five())
    assert slept == [0.25] * 4


def test_retry_after_forms() -> None:
    assert retry_after("12", 0, 1) == 12
    assert retry_after(None, 0, 3) == 3
    assert retry_after("soon", 0, 2) == 2
    assert retry_after("Wed, 21 Oct 2037 07:28:00 GMT", 2139722860, 1) == 20
    assert retry_after("100000", 0, 1) == 300  # capped


def test_log_entry_of_the_truth_has_the_reference_shape() -> None:
    _, truth = generate(5, 1_800_000_000, 60, Profile(), seed=4)
    entry = log_entry(next(t for t in truth if t.attempts))
    assert set(entry) >= {"uid", "cli", "time", "active", "duration", "transfer"}
    assert set(entry["transfer"][0]) >= {"attemptId", "to", "time", "du", "disposition", "name", "group"}


def _log_of(entries: list[bytes]) -> httpx.MockTransport:
    """A call log of one page holding `entries` as written (JSON text, numbers as they come)."""
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/calls"):
            body = b'{"page":{"totalPages":1},"data":[' + b",".join(entries) + b"]}"
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        return httpx.Response(404)
    return httpx.MockTransport(answer)


def test_a_numeric_uid_in_the_call_log_keeps_its_digits() -> None:
    """As at the ingress: 1796000001.10 read as a float would be 1796000001.1, another call."""
    api = ProviderApi("http://provider/", KEY, max_rps=1000, transport=_log_of([b'{"uid":1796000001.10,"n":3}']))
    calls, total = asyncio.run(api.calls(APP, "2026-11-30T00:00:00+05:30", 1))
    assert calls == [{"uid": "1796000001.10", "n": 3}] and total == 1


def test_total_pages_written_as_a_decimal_is_still_a_count() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"page":{"totalPages":3.0},"data":[]}')
    api = ProviderApi("http://provider/", KEY, max_rps=1000, transport=httpx.MockTransport(answer))
    assert asyncio.run(api.calls(APP, "2026-11-30T00:00:00+05:30", 1)) == ([], 3)


def test_an_entry_that_cannot_be_compared_is_written_on_every_pass() -> None:
    """An entry orjson cannot write (an integer past 64 bits) has no digest: never taken as
    unchanged, so a change the provider makes to it still reaches the processor."""
    _, rec, cursors, sink, _ = setup()
    entry = (b'{"uid":"big.1","cli":"9812345678","time":"%s","active":false,"duration":"20",'
             b'"extra":123456789012345678901234,"transfer":[]}' % since_text(time.time() - 60, rec.tz).encode())
    rec.api = ProviderApi("http://provider/", KEY, max_rps=1000, transport=_log_of([entry]))
    asyncio.run(rec.run_once())
    asyncio.run(rec.run_once())
    assert [e["event"] for e in sink.events()] == ["IN", "H", "IN", "H"]
    assert cursors.saved
