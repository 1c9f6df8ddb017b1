"""The output producer's batch size: one batch per topic partition and request, so its size
decides how many round trips a pipeline batch's outputs take (no broker: batches are only built)."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import SettingsError, load
from processors.output_producer import KV, OutputProducer


def batches_for(items: list[KV], environ: dict[str, str]) -> int:
    async def split() -> int:
        producer = OutputProducer(load(environ), "batch-test")._new()  # built, never started
        return len(OutputProducer._split(producer, "t", items))
    return asyncio.run(split())


def test_a_pipeline_batch_goes_out_in_few_produce_batches() -> None:
    items: list[KV] = [(b"key-%d" % i, b"v" * 1000) for i in range(300)]  # ~300 KB for one partition
    assert batches_for(items, {}) == 1  # the default, 512 KiB
    assert batches_for(items, {"WORKER_PRODUCE_BATCH_BYTES": "65536"}) == 5
    assert batches_for(items, {"WORKER_PRODUCE_BATCH_BYTES": "16384"}) >= 19  # aiokafka's default


def test_batch_size_setting_is_checked() -> None:
    with pytest.raises(SettingsError, match="WORKER_PRODUCE_BATCH_BYTES"):
        load({"WORKER_PRODUCE_BATCH_BYTES": "100"})
