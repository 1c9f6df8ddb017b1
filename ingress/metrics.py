"""The ingress's Prometheus metrics. Labels are bounded: event type and status only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "ivr_ingress_requests_total", "Webhook requests by event type and HTTP status",
    ["event", "status"], registry=REGISTRY,
)
PRODUCE_SECONDS = Histogram(
    "ivr_ingress_produce_seconds", "Time from send to broker acknowledgement (acks=all)",
    ["topic"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
WRITABLE = Gauge("ivr_ingress_kafka_writable",
                 "1 while this ingress can make webhooks durable (what /readyz answers), checked every few seconds",
                 registry=REGISTRY)
IN_FLIGHT = Gauge("ivr_ingress_in_flight_requests", "Webhook requests being handled", registry=REGISTRY)
DEAD_LETTERED = Counter(
    "ivr_ingress_dead_lettered_total", "Authenticated requests refused as invalid and kept", registry=REGISTRY
)
UNAVAILABLE = Counter(
    "ivr_ingress_unavailable_total", "Requests answered 503 because the write was not acknowledged in time",
    registry=REGISTRY,
)
INCOMPLETE = Counter(
    "ivr_ingress_incomplete_requests_total",
    "Requests whose body did not fully arrive (client gone or too slow); nothing was written",
    ["why"], registry=REGISTRY,
)

EVENT_LABELS = frozenset({"IN", "TA", "TC", "TE", "H"})


def event_label(value: object) -> str:
    text = str(value).strip().upper() if isinstance(value, str) else ""
    return text if text in EVENT_LABELS else "unknown"
