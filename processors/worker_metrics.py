"""The worker's Prometheus metrics (served at /metrics on the Faust web port).

Labels are bounded: event type, close reason, pipeline, topic and partition, and for the business
figures app and agent; never a call or a caller.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric

from schemas.timefmt import parse_ts

REGISTRY = CollectorRegistry(auto_describe=True)


class Tally:
    """A counter for the per-event path, exposed as a Prometheus counter like any other.

    prometheus-client's `Counter` takes a lock on every increment (and `labels` another, and
    builds a tuple); at one or two increments an event that was a measurable share of a worker's
    CPU. A tally is a plain dict: only the event loop's thread bumps it, and a scrape (served on
    that same loop) reads a copy.
    """

    def __init__(self, name: str, documentation: str, label: str | None = None,
                 registry: CollectorRegistry = REGISTRY, values: Iterable[str] = ()) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.counts: dict[str, float] = {}
        self.created: dict[str, float] = {}
        # shown at 0 from the start (`values`: the label's known values): a series that first
        # appears at 1 hides that first increase from `increase()` and `rate()`, and a rule over a
        # series that does not exist yet (no event processed since a restart) cannot fire
        for value in values if label is not None else ("",):
            self.inc(value, 0)
        registry.register(self)

    def inc(self, value: str = "", amount: float = 1) -> None:
        """Add `amount` under the label value `value` ("" when unlabelled)."""
        counts = self.counts
        if value in counts:
            counts[value] += amount
        else:
            self.created[value] = time.time()  # first: `collect` reads it for every count it sees
            counts[value] = amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=None if self.label is None else [self.label])
        for value, count in list(self.counts.items()):
            family.add_metric([] if self.label is None else [value], count, created=self.created[value])
        yield family


EVENTS = Tally("ivr_worker_events_total", "Events processed, by type", "event", values=("IN", "TA", "TC", "TE", "H"))
DUPLICATES = Tally("ivr_worker_duplicates_total", "Repeated deliveries absorbed")
LATE_EVENTS = Tally("ivr_worker_late_events_total", "Events for calls already closed")
UNPROCESSABLE = Counter("ivr_worker_unprocessable_events_total",
                        "Records a pipeline could not process (unreadable, or its step raised): sent to "
                        "ivr.events.unprocessable with the error", ["pipeline"], registry=REGISTRY)
CALLS_OPEN = Gauge("ivr_worker_calls_open", "Calls open on this worker", registry=REGISTRY)
CALLS_CLOSED = Tally("ivr_worker_calls_closed_total", "Calls closed, by reason", "reason")
REVISIONS = Tally("ivr_worker_call_revisions_total", "Completed-call revisions after the first")
ALERTS = Counter("ivr_worker_alerts_raised_total", "Missed-call alerts raised", registry=REGISTRY)
RESOLUTIONS = Counter("ivr_worker_alerts_resolved_total", "Missed-call alerts resolved, by how", ["how"],
                      registry=REGISTRY)
LATENCY = Histogram(
    "ivr_worker_processing_latency_seconds",
    "Ingress receipt of the webhook that closed the call to the output's acknowledgement by the broker",
    ["output"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LAG = Gauge("ivr_worker_consumer_lag", "Records behind the log end, per source partition",
            ["topic", "partition"], registry=REGISTRY)
LATE_ATTEMPTS = Counter("ivr_worker_late_attempts_total",
                        "Attempts that reached an agent window after its final record (reported, not counted)",
                        registry=REGISTRY)
LATE_CALLS = Counter("ivr_worker_late_calls_total",
                     "Calls that reached an app window after its final record (reported, not counted)",
                     registry=REGISTRY)
PARKED_TICKS = Gauge("ivr_worker_parked_ticks", "Keys whose timer is due but waits for its source partition to "
                     "catch up with a backlog (calls to close, windows to flush, callers to forget)",
                     ["pipeline"], registry=REGISTRY)
REREADS = Counter("ivr_worker_rereads_total", "Source partitions read again after records went missing "
                  "between the fetch and the pipeline (see processors.read_order)", ["pipeline"], registry=REGISTRY)
TIMER_ERRORS = Counter("ivr_worker_timer_errors_total", "Timer runs that failed (logged; retried next interval)",
                       ["timer"], registry=REGISTRY)
BATCH_EVENTS = Histogram("ivr_worker_batch_events", "Input events per batch an agent handled", registry=REGISTRY,
                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
DELIVER_SECONDS = Histogram(
    "ivr_worker_deliver_seconds", "A batch's outputs and changelog records: send to broker acknowledgement",
    registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# --- Business figures from the metric windows ---------------------------------------------------
# Per app (and per agent, unless METRICS_AGENT_LABEL=off) the figures of the latest window this
# worker emitted a record for (interim or final), so a dashboard shows the current hour as it fills.
# Labels are app and agent only. Keys not updated for two windows are dropped: after a rebalance the
# worker that lost a key stops showing it once its window is over.

_APP_FIGURES = (
    ("offered", "Calls offered in the app's latest metrics window"),
    ("answered", "Calls answered in the app's latest metrics window"),
    ("missed", "Calls missed in the app's latest metrics window"),
    ("service_level", "Service level (0-1) of the app's latest metrics window; NaN when undefined"),
    ("start_seconds", "Start (Unix time) of the app's latest metrics window"),
)
_AGENT_FIGURES = (
    ("offered", "Attempts offered to the agent in the latest metrics window"),
    ("answered", "Attempts the agent answered in the latest metrics window"),
    ("answer_rate", "Agent answer rate (0-1) in the latest metrics window; NaN when nothing was offered"),
)


def _ratio(num: int, den: int) -> float:
    return num / den if den > 0 else float("nan")


class WindowGauges:
    """Gauges fed by the window records a worker emits (ivr.metrics.apps / ivr.metrics.agents)."""

    def __init__(self, registry: CollectorRegistry, agent_label: bool) -> None:
        self.agent_label = agent_label
        self.app = {n: Gauge(f"ivr_worker_app_window_{n}", h, ["app"], registry=registry) for n, h in _APP_FIGURES}
        labels = ["app", "agent"] if agent_label else ["app"]
        self.agent = {n: Gauge(f"ivr_worker_agent_window_{n}", h, labels, registry=registry)
                      for n, h in _AGENT_FIGURES}
        # (app,) or (app, agent) -> (window_start, wall time of the update, offered, answered)
        self.latest: dict[tuple[str, ...], tuple[float, float, int, int]] = {}
        self.next_prune = 0.0

    def observe(self, record: Any, now: float) -> None:
        start = parse_ts(record.window_start)
        agent = getattr(record, "agent", None)
        key = (record.app,) if agent is None else (record.app, agent)
        seen = self.latest.get(key)
        if seen is not None and seen[0] > start:
            return  # a record of an older window (a late final): the gauges show the newest
        self.latest[key] = (start, now, record.offered, record.answered)
        if agent is None:
            g = self.app
            g["offered"].labels(record.app).set(record.offered)
            g["answered"].labels(record.app).set(record.answered)
            g["missed"].labels(record.app).set(record.missed)
            g["service_level"].labels(record.app).set(
                float("nan") if record.service_level is None else record.service_level)
            g["start_seconds"].labels(record.app).set(start)
        else:
            labels: tuple[str, ...]
            if self.agent_label:
                offered, answered, labels = record.offered, record.answered, (record.app, agent)
            else:  # the app's agents summed, over those whose latest window is this one
                same = [v for k, v in self.latest.items() if len(k) == 2 and k[0] == record.app and v[0] == start]
                offered, answered, labels = sum(v[2] for v in same), sum(v[3] for v in same), (record.app,)
            self.agent["offered"].labels(*labels).set(offered)
            self.agent["answered"].labels(*labels).set(answered)
            self.agent["answer_rate"].labels(*labels).set(_ratio(answered, offered))
        self.prune(now, 2 * (parse_ts(record.window_end) - start))

    def prune(self, now: float, max_age: float) -> None:
        if now < self.next_prune:
            return
        self.next_prune = now + 60.0
        for key, (_, updated, _, _) in list(self.latest.items()):
            if now - updated <= max_age:
                continue
            del self.latest[key]
            labels: tuple[str, ...]
            if len(key) == 1:
                gauges, labels = self.app, key
            elif self.agent_label:
                gauges, labels = self.agent, key
            elif not any(len(k) == 2 and k[0] == key[0] for k in self.latest):
                gauges, labels = self.agent, key[:1]
            else:
                continue
            for g in gauges.values():
                with contextlib.suppress(KeyError):
                    g.remove(*labels)


_window_gauges: WindowGauges | None = None


def observe_window_record(record: Any, agent_label: bool = True, now: float | None = None) -> None:
    """Show an emitted agent or app window record as gauges on this worker's /metrics.

    The gauges are made on first use: their label set depends on METRICS_AGENT_LABEL.
    """
    global _window_gauges
    if _window_gauges is None:
        _window_gauges = WindowGauges(REGISTRY, agent_label)
    _window_gauges.observe(record, time.time() if now is None else now)
