"""Heal lost webhooks from the provider's call log.

One pass, for each app (PROVIDER_APPS, or every app of the app list API):
  * read the app's durable cursor (absent: the pass's start time);
  * read the call log from `since` = cursor - RECONCILE_LOOKBACK_S, page 1 .. totalPages, oldest
    first; calls still `active` are skipped (read again next pass), every finished call becomes
    the events its webhooks would have delivered (`processors.core.call_log`);
  * write each page's events to ivr.events and wait for the broker's acknowledgement (acks=all)
    before the cursor may move past that page;
  * move the cursor to the furthest point every call before which has been written: the last call
    time of the pages written, then the pass's start time once all are, never past the start of
    the oldest call still active.
The processor recognises an event it already has (same call, same fact): a repeated pass changes
nothing. Each pass reads again every call of the look-back (RECONCILE_LOOKBACK_S, a dozen passes
at the defaults): a call whose log entry is as this reconciler last wrote it is not written again
(remembered while it is in the look-back; a new leader writes each once more). A pass that fails
(provider down, broker down) leaves the cursor where it was; the next pass starts from there.
Nothing here knows about Faust: the worker calls `run_once` from a timer that fires on one worker
of the cluster (the leader).
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import orjson

from config import topics
from config.settings import Settings
from processors import reconcile_metrics as m
from processors.core.call_log import CallLogError, call_events, is_active
from processors.provider_api import ProviderApi, ProviderError
from schemas.codec import dumps
from schemas.timefmt import parse_provider_time

log = logging.getLogger("processors.reconciler")

Record = tuple[str, bytes, bytes]  # topic, key, value
Send = Callable[[Sequence[Record]], Awaitable[object]]  # returns once the broker acknowledged all
APP_GUID = re.compile(r"[0-9a-fA-F]{32}")


class CursorStore(Protocol):
    async def load(self) -> dict[str, float]:
        """Every app's cursor (epoch s), as durably stored."""
        ...

    async def save(self, app: str, cursor: float) -> None:
        """Store durably; returns once acknowledged."""
        ...


class Preempted(Exception):
    """This worker stopped being the one that reconciles (leadership moved)."""


def since_text(epoch: float, tz: ZoneInfo) -> str:
    """The call log's own time format: ISO 8601 with the provider zone's offset."""
    return datetime.fromtimestamp(int(epoch), tz).isoformat(timespec="seconds")


class Reconciler:
    def __init__(self, settings: Settings, api: ProviderApi, cursors: CursorStore, send: Send,
                 active: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time) -> None:
        self.s = settings
        self.api = api
        self.cursors = cursors
        self.send = send
        self.active = active  # checked before every request: a deposed leader stops at once
        self.clock = clock
        self.tz = settings.tz
        self.events_topic = settings.topic(topics.EVENTS)
        #: per app, the calls whose events this reconciler wrote (acknowledged), by uniqueid: a
        #: digest of the log entry they were made from. Kept for the calls the last full pass read.
        self.written: dict[str, dict[str, bytes]] = {}
        #: per app, its durable cursor as last known here: `ivr_reconcile_cursor_age_seconds` is
        #: now minus it at each scrape, so it grows while the provider cannot be read
        self.cursors_known: dict[str, float] = {}

    async def apps(self) -> list[str]:
        guids = list(self.s.provider_apps) or await self.api.apps()
        good = [g for g in guids if APP_GUID.fullmatch(g)]
        if len(good) != len(guids):
            log.warning("ignoring %d app ids that are not 32-hex GUIDs", len(guids) - len(good))
        return good

    async def run_once(self) -> None:
        """One pass over every app. Errors are logged and counted; the next pass retries."""
        try:
            apps = await self.apps()
            stored = await self.cursors.load()
        except ProviderError as e:
            m.POLLS.labels("failed").inc()
            log.warning("call-log reconciliation: app list unavailable (%s); next pass in %.0fs",
                        e, self.s.reconcile_interval_s)
            return
        for app in apps:
            if not self.active():
                m.POLLS.labels("preempted").inc()
                return
            cursor = stored.get(app)
            if cursor is not None:
                self._known(app, cursor)
            try:
                cursor = await self.reconcile(app, cursor)
            except Preempted:
                m.POLLS.labels("preempted").inc()
                return
            except ProviderError as e:
                m.POLLS.labels("failed").inc()
                log.warning("call log of app %s unavailable (%s); its cursor stays; next pass in %.0fs",
                            app, e, self.s.reconcile_interval_s)
                continue
            m.POLLS.labels("ok").inc()
            self._known(app, cursor)

    def _known(self, app: str, cursor: float) -> None:
        if app not in self.cursors_known:
            m.CURSOR_AGE.labels(app).set_function(lambda: self._age(app))
        self.cursors_known[app] = cursor

    def _age(self, app: str) -> float:
        # NaN once this worker no longer reconciles (leadership moved): the leader's is the figure
        return max(0.0, self.clock() - self.cursors_known[app]) if self.active() else math.nan

    async def reconcile(self, app: str, stored: float | None) -> float:
        """Read one app's call log from its cursor; returns the cursor stored at the end."""
        started = self.clock()
        cursor = stored if stored is not None else started
        since = since_text(cursor - self.s.reconcile_lookback_s, self.tz)
        oldest_active: float | None = None
        written = self.written.setdefault(app, {})
        read: dict[str, bytes] = {}  # the finished calls of this pass, written (now or before)
        pg, total = 1, 1
        while pg <= total:
            if not self.active():
                raise Preempted
            calls, total = await self.api.calls(app, since, pg)
            records: list[Record] = []
            page: dict[str, bytes] = {}
            last: float | None = None
            for call in calls:
                m.CALLS_READ.inc()
                at = _call_time(call, self.tz)
                if at is not None:
                    last = at if last is None else max(last, at)
                if is_active(call):
                    if at is not None:
                        oldest_active = at if oldest_active is None else min(oldest_active, at)
                    continue
                uid, digest = str(call.get("uid")), _digest(call)
                if digest is not None and written.get(uid) == digest:
                    read[uid] = digest
                    m.CALLS_UNCHANGED.inc()
                    continue
                try:
                    events = call_events(call, app, self.clock(), self.tz)
                except CallLogError as e:
                    m.CALLS_INVALID.inc()
                    log.warning("call log of app %s: skipping call %r: %s", app, uid[:64], e)
                    continue
                records += [(self.events_topic, e.uniqueid.encode(), dumps(e)) for e in events]
                if digest is not None:
                    page[uid] = digest
            if records:
                await self.send(records)
                m.EVENTS_WRITTEN.inc(len(records))
            read.update(page)  # acknowledged
            written.update(page)
            done = pg >= total
            # every call before `reach` is written (calls share a time across a page break: at or
            # after `last` is read again, `since` is inclusive)
            reach = started if done else min(started, last if last is not None else cursor)
            new = max(cursor, reach)
            if oldest_active is not None:
                new = min(new, oldest_active)
            if new != cursor or (done and stored is None):
                await self.cursors.save(app, new)
                cursor = new
            pg += 1
        # every call of the look-back was read: those it no longer reaches are not read again
        self.written[app] = read
        log.info("call log of app %s read from %s: %d page(s); cursor %s", app, since, total,
                 since_text(cursor, self.tz))
        return cursor


def _digest(call: dict[str, Any]) -> bytes | None:
    """What a call-log entry says, as bytes to compare (the order of its keys aside); None for an
    entry orjson cannot write (an integer past 64 bits, deep nesting): never taken as unchanged."""
    try:
        return hashlib.blake2b(orjson.dumps(call, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()
    except TypeError:
        return None


def _call_time(call: dict[str, Any], tz: ZoneInfo) -> float | None:
    try:
        value = call.get("time")
        return parse_provider_time(value, tz) if isinstance(value, str | int | float) else None
    except ValueError:
        return None
