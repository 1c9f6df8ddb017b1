"""Records batched by hand must land where Kafka's default partitioner (any client) puts them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config.kafka_producer import partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2: Utils.murmur2(key), as Java's signed int
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize("key", list(JAVA_MURMUR2))
@pytest.mark.parametrize("partitions", [1, 6, 7, 48])
def test_partition_matches_the_java_default_partitioner(key: bytes, partitions: int) -> None:
    # Utils.toPositive(murmur2(key)) % numPartitions
    assert partition_for(key, partitions) == (JAVA_MURMUR2[key] & 0x7FFFFFFF) % partitions


def test_partition_matches_aiokafka_keyed_sends() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(6))
    for i in range(500):
        key = f"1700000000.{i}".encode()
        assert partition_for(key, 6) == DefaultPartitioner()(key, parts, parts)


@given(st.binary(max_size=400))
@settings(max_examples=2000)
def test_murmur2_is_kafkas_for_any_bytes(data: bytes) -> None:
    from aiokafka.partitioner import murmur2 as reference

    from config.kafka_producer import murmur2

    assert murmur2(data) == reference(data)
