"""The broker goes away while webhooks keep coming: 202 only for what is durable, and recovery."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from deploy.local_kafka import KafkaBroker
from tests.conftest import TOKEN, start_ingress, wait_ready
from tests.helpers import new_prefix, read_all

pytestmark = pytest.mark.kafka
APP = "4e11fe2082b044b4a3b55718c79c29d5"


def test_broker_outage_gives_503_never_a_false_202(tmp_path: Path) -> None:
    broker = KafkaBroker(tmp_path / "kafka", partitions=3)
    broker.start()
    prefix = new_prefix()
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
        "WEBHOOK_TOKENS": TOKEN, "PRODUCE_TIMEOUT_S": "2",
    }
    service, base = start_ingress(env, tmp_path / "ingress.log")
    results: dict[str, tuple[str, int]] = {}  # uniqueid -> (phase, status)
    phase = ["before"]
    stop = threading.Event()
    lock = threading.Lock()

    def sender(n: int) -> None:
        i = 0
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                uid = f"{n}.{i}"
                i += 1
                p = phase[0]
                try:
                    status = client.post(
                        f"{base}/webhooks/ivr", params={"token": TOKEN},
                        data={"app": APP, "event": "IN", "uniqueid": uid, "cli": "98"},
                    ).status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    results[uid] = (p, status)
                time.sleep(0.02)

    try:
        wait_ready(base)
        threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        phase[0] = "during"
        broker.stop()
        time.sleep(6)
        phase[0] = "after"
        broker.start()
        # the ingress recovers by itself: 202s again without a restart
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                recovered = sum(1 for p, s in results.values() if p == "after" and s == 202)
            if recovered >= 20:
                break
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        statuses = {s for _, s in results.values()}
        assert statuses <= {202, 503}, statuses  # never a 500, never a dropped connection
        by_phase = {ph: [s for p, s in results.values() if p == ph] for ph in ("before", "during", "after")}
        assert 202 in by_phase["before"] and 503 in by_phase["during"]
        assert by_phase["after"].count(202) >= 20
        accepted = {uid for uid, (_, s) in results.items() if s == 202}
        stored = {v["uniqueid"] for _, v in read_all(broker.bootstrap, f"{prefix}ivr.events", settle=3.0)}
        assert accepted - stored == set()  # every 202 is durable
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 200
    finally:
        stop.set()
        service.stop()
        broker.stop()
