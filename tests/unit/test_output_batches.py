"""The output producer's batch size: one batch per topic partition and request, so its size
decides how many round trips a pipeline batch's outputs take (no broker: batches are only built)."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import SettingsError, load
from processors.output_producer import KV, OutputProducer, Placed


def batches_for(items: list[KV], environ: dict[str, str]) -> int:
    async def split() -> int:
        producer = OutputProducer(load(environ), "batch-test")._new()  # built, never started
        try:
            return len(OutputProducer._split(producer, "t", items))
        finally:
            await producer.stop()
    return asyncio.run(split())


def test_a_pipeline_batch_goes_out_in_few_produce_batches() -> None:
    items: list[KV] = [(b"key-%d" % i, b"v" * 1000) for i in range(300)]  # ~300 KB for one partition
    assert batches_for(items, {}) == 1  # the default, 512 KiB
    assert batches_for(items, {"WORKER_PRODUCE_BATCH_BYTES": "65536"}) == 5
    assert batches_for(items, {"WORKER_PRODUCE_BATCH_BYTES": "16384"}) >= 19  # aiokafka's default


def test_batch_size_setting_is_checked() -> None:
    with pytest.raises(SettingsError, match="WORKER_PRODUCE_BATCH_BYTES"):
        load({"WORKER_PRODUCE_BATCH_BYTES": "100"})


class FakeBatch:
    def __init__(self) -> None:
        self.items: list[KV] = []

    def append(self, key: bytes | None, value: bytes | None, timestamp: None) -> object | None:
        if len(self.items) == 2:  # two records a batch
            return None
        self.items.append((key, value))
        return object()


class FakeProducer:
    """Appends a batch to its partition's log when its future resolves; `fail` says which sends
    fail (by their number, counted from 0): raising from `send_batch`, or through the future."""

    def __init__(self, fail: dict[int, Exception], raise_at_send: bool = False) -> None:
        self.logs: dict[tuple[str, int], list[KV]] = {}
        self.sends = 0
        self.fail, self.raise_at_send = fail, raise_at_send

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, partition: int) -> asyncio.Future[object]:
        n, self.sends = self.sends, self.sends + 1
        if n in self.fail and self.raise_at_send:
            raise self.fail[n]
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        if n in self.fail:
            future.set_exception(self.fail[n])
        else:
            log = self.logs.setdefault((topic, partition), [])
            future.set_result(type("Meta", (), {"offset": len(log)})())
            log.extend(batch.items)
        return future


def deliver(fake: FakeProducer, placed: list[Placed]) -> dict[tuple[str, int], int]:
    async def run() -> dict[tuple[str, int], int]:
        outputs = OutputProducer("127.0.0.1:1", "fake")
        outputs._producer = fake  # type: ignore[assignment]
        return await outputs.send_all([], placed)
    return asyncio.run(run())


PLACED: list[Placed] = [("cl", 0, b"k%d" % (i % 3), b"v%d" % i) for i in range(6)]  # 3 batches, keys written twice


@pytest.mark.parametrize("raise_at_send", [False, True])
def test_a_failed_batch_goes_again_with_the_partitions_later_batches(raise_at_send: bool) -> None:
    from aiokafka.errors import KafkaTimeoutError

    fake = FakeProducer({1: KafkaTimeoutError()}, raise_at_send)  # the second of three batches, once
    offsets = deliver(fake, PLACED)
    log = fake.logs[("cl", 0)]
    assert log[-4:] == [(k, v) for _, _, k, v in PLACED[2:]]  # from the failed batch on, in order
    last = {k: v for k, v in log}
    assert last == {k: v for _, _, k, v in PLACED}  # what compaction keeps: each key's last value
    assert offsets == {("cl", 0): len(log) - 1}
    if raise_at_send:
        assert log == [(k, v) for _, _, k, v in PLACED]  # the third batch waited for the second


def test_an_oversized_batch_is_named_even_when_another_error_comes_last(caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    fake = FakeProducer({0: MessageSizeTooLargeError(), 1: KafkaTimeoutError()})
    placed = [*PLACED[:2], ("other", 0, b"x", b"y")]
    deliver(fake, placed)
    assert "WORKER_PRODUCE_BATCH_BYTES" in caplog.text
    assert fake.logs[("cl", 0)] == [(k, v) for _, _, k, v in PLACED[:2]]
