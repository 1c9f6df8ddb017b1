"""The worker's Prometheus metrics (served at /metrics on the Faust web port).

Labels are bounded: event type, close reason, pipeline, topic and partition; never a call or a caller.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS = Counter("ivr_worker_events_total", "Events processed, by type", ["event"], registry=REGISTRY)
DUPLICATES = Counter("ivr_worker_duplicates_total", "Repeated deliveries absorbed", registry=REGISTRY)
LATE_EVENTS = Counter("ivr_worker_late_events_total", "Events for calls already closed", registry=REGISTRY)
UNPROCESSABLE = Counter("ivr_worker_unprocessable_events_total",
                        "Records a pipeline could not process (unreadable, or its step raised): sent to "
                        "ivr.events.unprocessable with the error", ["pipeline"], registry=REGISTRY)
CALLS_OPEN = Gauge("ivr_worker_calls_open", "Calls open on this worker", registry=REGISTRY)
CALLS_CLOSED = Counter("ivr_worker_calls_closed_total", "Calls closed, by reason", ["reason"], registry=REGISTRY)
REVISIONS = Counter("ivr_worker_call_revisions_total", "Completed-call revisions after the first", registry=REGISTRY)
ALERTS = Counter("ivr_worker_alerts_raised_total", "Missed-call alerts raised", registry=REGISTRY)
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
TIMER_ERRORS = Counter("ivr_worker_timer_errors_total", "Timer runs that failed (logged; retried next interval)",
                       ["timer"], registry=REGISTRY)
BATCH_EVENTS = Histogram("ivr_worker_batch_events", "Input events per batch an agent handled", registry=REGISTRY,
                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000))
DELIVER_SECONDS = Histogram(
    "ivr_worker_deliver_seconds", "A batch's outputs and changelog records: send to broker acknowledgement",
    registry=REGISTRY, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
