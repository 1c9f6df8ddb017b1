"""What the two metric pipelines share: contributions (bundled) -> windows -> window records."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from prometheus_client import Counter

from config.settings import Settings
from processors import worker_metrics as m
from processors.bundles import unbundle
from processors.core.call_metrics import named, record_key
from processors.core.windows import Window, Windowed, WindowPolicy, add, flush, next_flush
from processors.runtime import TICK, Output, Pipeline, Result
from processors.window_store import WindowStore
from schemas.codec import dumps
from schemas.timefmt import parse_ts

log = logging.getLogger("processors.metrics")


def window_policy(s: Settings) -> WindowPolicy:
    return WindowPolicy(
        size_s=float(s.agent_window_s),
        grace_s=s.metrics_grace_s,
        idle_close_s=s.metrics_idle_close_s,
        interim_interval_s=s.metrics_interim_interval_s,
        keep_final_s=max(3600.0, s.metrics_grace_s),
    )


class Contributed(NamedTuple):
    """A contribution as the window step takes it: read and checked once, when its record is decoded."""

    item: str
    t: float  # `at` in epoch seconds
    at: str
    values: dict[str, Any]
    advance: bool  # `t` is the provider's clock (not `at_received`): it may advance the watermark


def decode(key: bytes | None, value: bytes) -> Sequence[tuple[str, Any]]:
    """A bundle's contributions, keyed as each says. Raises for any unreadable one, so the record
    is set aside before any of it is counted."""
    return [(c["key"], Contributed(c["item"], parse_ts(c["at"]), c["at"], named(c["values"]),
                                   not c.get("at_received", False)))
            for c in unbundle(value)]


def windowed(name: str, table: str, source: str, ticks: str, out_topic: str, s: Settings,
             to_record: Callable[[str, int, Window], Any], late: Counter) -> Pipeline[Windowed]:
    policy = window_policy(s)

    def step(key: str, st: Windowed | None, item: Any, now: float) -> Result[Windowed] | None:
        if item is TICK:
            if st is None:
                return None
            out = []
            for start, w in flush(st, now, policy):
                record = to_record(key, start, w)
                m.observe_window_record(record, s.metrics_agent_label)
                out.append(Output(out_topic, record_key(key, start).encode(), dumps(record)))
            return Result(st, out)
        st = st or Windowed()
        if add(st, item.item, item.t, item.values, now, policy, advance=item.advance) == "late":
            late.inc()
            log.warning("late contribution for %s at %s: its window's final is out; not counted", key, item.at)
        return Result(st)

    return Pipeline(name=name, table=table, store=lambda rows: WindowStore(rows, named, item_rows=s.writes_0_1_formats,
                                                               row_bytes=s.worker_produce_batch_bytes // 4),
                    source=source, ticks=ticks, decode=decode,
                    step=step, due=lambda st: next_flush(st, policy), tick_every=1.0)
