"""`Tally`: the lock-free counter for the per-event path is scraped exactly as a prometheus-client
`Counter` with the same name, help and label."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, generate_latest

from processors.worker_metrics import Tally


def scrape(registry: CollectorRegistry) -> str:
    # the `_created` samples carry each counter's own creation time: compare their presence only
    return re.sub(r"(_created(?:\{[^}]*\})?) \S+", r"\1 T", generate_latest(registry).decode())


def test_a_labelled_tally_scrapes_as_a_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = Tally("x_events_total", "Events, by type", "event", registry=ours)
    counter = Counter("x_events_total", "Events, by type", ["event"], registry=theirs)
    assert scrape(ours) == scrape(theirs)  # no label value yet: no sample
    for kind in ("IN", "TA", "IN", "H", "IN"):
        tally.inc(kind)
        counter.labels(kind).inc()
    tally.inc("TA", 2.5)
    counter.labels("TA").inc(2.5)
    assert scrape(ours) == scrape(theirs)
    assert 'x_events_total{event="IN"} 3.0' in scrape(ours)


def test_an_unlabelled_tally_shows_zero_from_the_start() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tally = Tally("x_duplicates_total", "Repeated deliveries", registry=ours)
    counter = Counter("x_duplicates_total", "Repeated deliveries", registry=theirs)
    assert scrape(ours) == scrape(theirs)
    tally.inc()
    counter.inc()
    assert scrape(ours) == scrape(theirs) and "x_duplicates_total 1.0" in scrape(ours)
