"""Wiring of the call-log reconciler into the Faust worker.

Exactly one reconciler runs per cluster: a Faust leader timer (`on_leader=True`) fires only on the
worker that holds the leader partition of the consumer group, so a crash or a scale-out moves it
with the group's own rebalance, no lease of our own to keep. Its state is the cursor per app on
the compacted topic ivr.internal.reconcile-cursor, read back at the start of every pass: a new
leader, or the same worker restarted, resumes where the last acknowledged write left off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from config import topics
from config.kafka_client import aiokafka_kwargs
from config.settings import Settings
from processors import reconcile_metrics as m
from processors.faust_app import IvrApp
from processors.provider_api import ProviderApi
from processors.reconciler import Reconciler, Send
from processors.runtime import survives
from schemas.codec import dumps
from schemas.records import ReconcileCursor
from schemas.timefmt import format_ts, parse_ts

log = logging.getLogger("processors.reconciler")


class KafkaCursorStore:
    """Cursors on a compacted topic keyed by app: the latest record per app is its cursor."""

    def __init__(self, client: Mapping[str, Any], topic: str, send: Send, read_timeout_s: float = 30.0) -> None:
        """`client`: the aiokafka keywords of the brokers and their security (`aiokafka_kwargs`)."""
        self.client, self.topic, self.send = client, topic, send
        self.read_timeout_s = read_timeout_s

    async def load(self) -> dict[str, float]:
        # subscribed without a group: every partition is assigned, nothing is committed
        consumer = AIOKafkaConsumer(self.topic, **self.client, group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    isolation_level="read_committed")
        out: dict[str, float] = {}
        try:
            await consumer.start()  # (in the try: a consumer whose start failed is stopped too)
            deadline = time.monotonic() + self.read_timeout_s
            while not consumer.assignment():
                if time.monotonic() > deadline:  # no partitions known: better no pass than a wrong cursor
                    raise TimeoutError(f"no partitions of {self.topic} in {self.read_timeout_s}s")
                await asyncio.sleep(0.1)
            tps = sorted(consumer.assignment())
            end = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.topic} not read to its end in {self.read_timeout_s}s")
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        if r.key is None or r.value is None:
                            continue
                        try:
                            out[r.key.decode()] = parse_ts(orjson.loads(r.value)["cursor"])
                        except (ValueError, KeyError, TypeError):
                            log.error("unreadable cursor record at %s[%d]@%d", r.topic, r.partition, r.offset)
        finally:
            await consumer.stop()
        return out

    async def save(self, app: str, cursor: float) -> None:
        record = ReconcileCursor(app=app, cursor=format_ts(cursor), updated_at=format_ts(time.time()))
        await self.send([(self.topic, app.encode(), dumps(record))])


def register(app: IvrApp, s: Settings) -> None:
    """Start the leader timer when PROVIDER_API_KEY is set; otherwise say once that it is off."""
    if not s.provider_api_key:
        @app.task
        async def reconciliation_off() -> None:
            log.info("call-log reconciliation is off: PROVIDER_API_KEY is not set")
        return

    logging.getLogger("httpx").setLevel(logging.WARNING)  # our own lines say what failed; not one per request
    state: dict[str, Any] = {}

    def reconciler() -> Reconciler:
        if "r" not in state:
            api = ProviderApi(s.provider_api_url, s.provider_api_key, s.provider_max_rps, s.provider_timeout_s,
                              s.provider_max_attempts)
            cursors = KafkaCursorStore(aiokafka_kwargs(s), s.topic(topics.RECONCILE_CURSOR), app.outputs.send_all)
            state["r"] = Reconciler(s, api, cursors, app.outputs.send_all, active=app.is_leader)
        r: Reconciler = state["r"]
        return r

    @app.task
    async def reconciliation_on() -> None:
        apps = ", ".join(s.provider_apps) if s.provider_apps else "every app of the app list"
        log.info("call-log reconciliation is on: %s every %.0fs (one worker of the cluster, the leader)",
                 apps, s.reconcile_interval_s)

    async def reconcile_call_log() -> None:
        try:
            await reconciler().run_once()
        except (OSError, TimeoutError, KafkaError) as e:  # the broker, for the cursor: the next pass retries
            m.PASSES_FAILED.inc()
            log.warning("call-log reconciliation pass failed: %r; the next pass in %.0fs tries again", e,
                        s.reconcile_interval_s)

    app.timer(interval=s.reconcile_interval_s, on_leader=True, name="reconcile_call_log")(
        survives("reconcile_call_log", reconcile_call_log))
