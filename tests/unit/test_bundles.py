"""The repartition topics' bundles: what is bundled comes back out, in the right partitions."""

from __future__ import annotations

import orjson
import pytest

from config.kafka_producer import partition_for
from processors.bundles import bundle, unbundle
from processors.core.call_metrics import Contribution
from processors.pipelines import windows
from processors.pipelines.calls import contribution
from schemas.timefmt import format_ts

TOPIC = "ivr.internal.attempts-by-agent"


def records(n: int) -> list[tuple[str, bytes, bytes]]:
    out = []
    for i in range(n):
        c = Contribution(key=f"app:A{i % 7}", item_id=f"call.{i}.1", at=format_ts(1_700_000_000 + i),
                         values={"v": 1, "result": "answered", "ring_s": 3.0, "talk_s": 60.0})
        out.append((TOPIC, c.key.encode(), contribution("app", c)))
    return out


def test_every_contribution_comes_back_once_in_its_keys_partition_and_order() -> None:
    sent = records(200)
    placed = bundle(sent, 6)
    assert len(placed) <= 6 and len({p for _, p, _, _ in placed}) == len(placed)
    got = []
    for topic, partition, key, value in placed:
        assert topic == TOPIC and key is None and value is not None
        items = unbundle(value)
        assert all(partition_for(i["key"].encode(), 6) == partition for i in items)
        got.extend(items)
    assert sorted(i["item"] for i in got) == sorted(orjson.loads(v)["item"] for _, _, v in sent)
    for _, partition, _, value in placed:  # within a partition, the order they were sent in
        items = [i["item"] for i in unbundle(value or b"")]
        expected = [orjson.loads(v)["item"] for _, k, v in sent if partition_for(k, 6) == partition]
        assert items == expected


@pytest.mark.parametrize("max_bytes", [1, 300, 2000, 64 * 1024])
def test_a_partition_with_more_than_a_bundle_holds_gets_several_each_within_the_size_in_order(max_bytes: int) -> None:
    sent = records(400)
    placed = bundle(sent, 3, max_bytes)
    longest = max(len(v) for _, _, v in sent)
    for _, _, _, value in placed:  # a value larger than the size alone is a bundle of one
        assert value is not None and (len(value) <= max_bytes or len(unbundle(value)) == 1)
        assert len(value) <= max(max_bytes, longest + 2)
    for partition in range(3):
        items = [i["item"] for _, p, _, v in placed if p == partition for i in unbundle(v or b"")]
        assert items == [orjson.loads(v)["item"] for _, k, v in sent if partition_for(k, 3) == partition]
    if max_bytes < 64 * 1024:
        assert len(placed) > 3
    else:  # all of it fits: one bundle per partition, as before
        assert len(placed) == 3


def test_a_single_record_from_before_bundles_is_read_as_a_bundle_of_one() -> None:
    (_, _, value), = records(1)
    assert unbundle(value) == [orjson.loads(value)]


UNREADABLE = [b"not json", b"[1, 2]", b'[{"key": "a"}]', b'{"key": "a", "item": "i", "values": []}']


@pytest.mark.parametrize("raw", UNREADABLE)
def test_unreadable_records_raise_instead_of_stopping_the_agent_later(raw: bytes) -> None:
    with pytest.raises((KeyError, ValueError)):
        unbundle(raw)


@pytest.mark.parametrize("raw", [*UNREADABLE, b'[{"key": "a", "item": "i", "at": "yesterday", "values": {"v": 1}}]',
                                 b'[{"key": "a", "item": "i", "at": "2026-01-01T00:00:00.000Z", "values": {"v": 9}}]'])
def test_the_window_pipelines_set_aside_a_bundle_with_any_unreadable_contribution(raw: bytes) -> None:
    good = contribution("app", Contribution("app:A0", "c.1", format_ts(1_700_000_000), {"v": 1, "result": "answered"}))
    bundled = b"[" + good + b"," + raw[1:] if raw.startswith(b"[{") else raw  # after a readable one
    with pytest.raises((KeyError, ValueError)):  # the runtime dead-letters the record, before any step
        windows.decode(None, bundled)


def test_the_window_pipelines_read_each_contribution_once() -> None:
    (_, _, value), = records(1)
    (key, item), = windows.decode(None, b"[" + value + b"]")
    sent = orjson.loads(value)
    assert key == sent["key"] and item.item == sent["item"] and item.at == sent["at"]
    assert item.t == 1_700_000_000 and item.values == sent["values"] and item.advance
    stand_in = contribution("app", Contribution("app", "c", sent["at"], {"v": 1}), at_received=True)
    (_, late), = windows.decode(None, stand_in)
    assert not late.advance
