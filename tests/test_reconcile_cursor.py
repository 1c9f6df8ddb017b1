"""The reconciler's cursor on a real broker: what one reconciler wrote, a new one reads back."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson
import pytest

from bench.fake_provider import FakeProvider
from bench.simulator import APP, Profile, generate
from config import topics
from config.kafka_client import aiokafka_kwargs
from config.settings import load
from config.topics import ensure_topics
from deploy.local_kafka import KafkaBroker
from processors.output_producer import OutputProducer
from processors.provider_api import ProviderApi
from processors.reconcile_timer import KafkaCursorStore
from processors.reconciler import Reconciler, since_text
from tests.helpers import new_prefix, read_all

pytestmark = pytest.mark.kafka
KEY = "cursor-test-key-0123456789"


def test_cursor_survives_the_reconciler(kafka: KafkaBroker) -> None:
    prefix = new_prefix()
    s = load({"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
              "PROVIDER_API_KEY": KEY, "PROVIDER_APPS": APP, "RECONCILE_LOOKBACK_S": "3600"})
    _, truth = generate(30, time.time() - 3000, 600, Profile(), seed=2)
    fake = FakeProvider({APP: truth}, KEY, page_size=10)

    async def one_pass() -> Reconciler:
        outputs = OutputProducer(kafka.bootstrap, "cursor-test")
        api = ProviderApi("http://provider", KEY, 1000, transport=httpx.ASGITransport(app=fake.app))
        cursors = KafkaCursorStore(aiokafka_kwargs(s), s.topic(topics.RECONCILE_CURSOR), outputs.send_all)
        rec = Reconciler(s, api, cursors, outputs.send_all)
        try:
            assert (await cursors.load()).keys() <= {APP}
            await rec.run_once()
        finally:
            await outputs.stop()
            await api.close()
        return rec

    async def scenario() -> tuple[dict[str, float], dict[str, float]]:
        await ensure_topics(s)
        store = KafkaCursorStore(aiokafka_kwargs(s), s.topic(topics.RECONCILE_CURSOR), lambda r: asyncio.sleep(0))
        empty = await store.load()
        first_start = time.time()
        await one_pass()
        after_first = await store.load()
        assert after_first[APP] >= first_start
        await one_pass()  # a new reconciler (as after a restart or on a new leader)
        return empty, after_first

    empty, after_first = asyncio.run(scenario())
    assert empty == {}
    sinces = [r.params["since"] for r in fake.served]
    # the second reconciler read from the first one's durable cursor, less the look-back
    assert sinces[-1] == since_text(after_first[APP] - 3600, load({}).tz)
    assert len({e["uniqueid"] for _, e in read_all(kafka.bootstrap, s.topic(topics.EVENTS), settle=1.0)}) == 30
    cursor_records = read_all(kafka.bootstrap, s.topic(topics.RECONCILE_CURSOR), settle=1.0)
    assert {k for k, _ in cursor_records} == {APP.encode()}
    assert all(set(v) == {"app", "cursor", "updated_at", "v"} for _, v in cursor_records)
    assert orjson.dumps(cursor_records[-1][1])  # JSON, as the topic's schema says
