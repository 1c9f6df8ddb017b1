"""The repartition topics' wire format: one record per partition and batch, a JSON array (or
more than one, when a batch sends that partition more than fits in one record).

A record per contribution would cost the consuming pipeline one Faust event each (~100 µs here);
a bundle costs one for all the contributions a batch sends to that partition. Every key in a
bundle hashes to the partition it is written to, so the consuming pipeline's tables and ticks stay
co-partitioned with the keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from config.kafka_producer import partition_for
from processors.output_producer import Placed, Record

CONTRIBUTION_FIELDS = frozenset({"key", "item", "at", "values"})


# A bundle's size when none is given: a quarter of the producer's default batch (`Runner` passes
# its own, from WORKER_PRODUCE_BATCH_BYTES).
MAX_BYTES = 128 * 1024


def bundle(records: Sequence[Record], partitions: int, max_bytes: int = MAX_BYTES) -> list[Placed]:
    """Keyed records for a bundled topic, per topic partition: a JSON array of the values whose
    keys hash to it, in their order, split into several arrays (in order) where one would exceed
    `max_bytes`. Unsplit, a batch that closes thousands of calls of one app (ticks after an
    outage) could make a bundle larger than the broker takes (`max.message.bytes`): refused, and
    retried for ever, it stalled the pipeline."""
    groups: dict[tuple[str, int], list[bytes]] = {}
    placed: dict[bytes, int] = {}  # a batch's keys repeat (an app's, an agent's): each hashed once
    for topic, key, value in records:
        part = placed.get(key)
        if part is None:
            part = placed[key] = partition_for(key, partitions)
        group = groups.get((topic, part))
        if group is None:
            group = groups[(topic, part)] = []
        group.append(value)
    out: list[Placed] = []
    for (topic, part), values in groups.items():
        if sum(map(len, values)) + len(values) + 1 <= max_bytes:  # the usual case: one bundle
            out.append((topic, part, None, b"[" + b",".join(values) + b"]"))
            continue
        start, size = 0, 2
        for i, value in enumerate(values):
            if size + len(value) + 1 > max_bytes and i > start:
                out.append((topic, part, None, b"[" + b",".join(values[start:i]) + b"]"))
                start, size = i, 2
            size += len(value) + 1
        out.append((topic, part, None, b"[" + b",".join(values[start:]) + b"]"))
    return out


def unbundle(raw: bytes) -> list[dict[str, Any]]:
    """The contributions in a bundle, or the one contribution of a record written before bundles.
    Their fields are there; what they hold is the reader's to check (`at` is parsed once, there).

    Raises ValueError (orjson's decode error is one) or KeyError for a record that is neither."""
    data = orjson.loads(raw)
    items = data if isinstance(data, list) else [data]
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("a contribution is a JSON object")
        if not item.keys() >= CONTRIBUTION_FIELDS:
            raise KeyError(", ".join(sorted(CONTRIBUTION_FIELDS - item.keys())))
    return items
