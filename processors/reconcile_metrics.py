"""Metrics of call-log reconciliation, on the worker's registry (served at /metrics).

Labels are bounded: HTTP status (or `timeout`/`network`) and app GUID (the apps reconciled)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from processors.worker_metrics import REGISTRY

POLLS = Counter("ivr_reconcile_polls_total",
                "Call-log polls of one app (or of the app list, when it fails), by result (ok, failed, preempted)",
                ["result"], registry=REGISTRY)
for _result in ("ok", "failed", "preempted"):  # at 0 from the start: a first failure shows in `increase()`
    POLLS.labels(_result)
PASSES_FAILED = Counter("ivr_reconcile_passes_failed_total",
                        "Reconciliation passes that could not run (the cursors could not be read from Kafka)",
                        registry=REGISTRY)
CALLS_READ = Counter("ivr_reconcile_calls_read_total", "Calls read from the call log (finished or not)",
                     registry=REGISTRY)
CALLS_UNCHANGED = Counter("ivr_reconcile_calls_unchanged_total",
                          "Finished calls read again as this worker last wrote them (not written again)",
                          registry=REGISTRY)
CALLS_INVALID = Counter("ivr_reconcile_calls_invalid_total",
                        "Call-log entries that could not be turned into events (logged, skipped)", registry=REGISTRY)
EVENTS_WRITTEN = Counter("ivr_reconcile_events_written_total", "Events derived from the call log written to ivr.events",
                         registry=REGISTRY)
EVENTS_HEALED = Counter("ivr_reconcile_events_healed_total",
                        "Call-log events the webhooks had not delivered (new facts for the processor)",
                        registry=REGISTRY)
EVENTS_REFUSED = Counter("ivr_reconcile_events_refused_total",
                         "Call-log events a call did not take: at its size bound, or of another app's call with "
                         "that id (not dead-lettered: each new leader writes them again)", registry=REGISTRY)
API_ERRORS = Counter("ivr_reconcile_api_errors_total",
                     "Failed provider API requests, by HTTP status (or timeout, network)", ["status"],
                     registry=REGISTRY)
CURSOR_AGE = Gauge("ivr_reconcile_cursor_age_seconds",
                   "Now minus the app's durable cursor (at each scrape): grows while the provider cannot be read",
                   ["app"], registry=REGISTRY)
