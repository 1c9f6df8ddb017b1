"""A real Prometheus (Debian's binary) scrapes a real ingress and worker with the project's scrape
config and alert rules; and every metric the rules and the dashboard read is one they expose."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy.local_kafka import KafkaBroker, free_port
from tests.conftest import TOKEN, start_ingress, start_worker, wait_ready, wait_worker_ready
from tests.helpers import Service, read_all
from tests.monitoring_exprs import MONITORING, dashboard_exprs, metric_names, rule_exprs

pytestmark = pytest.mark.kafka
APP = "0123456789abcdef0123456789abcdef"
BUILT_IN = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("IVR_REQUIRE_DEPLOY_TOOLS"):
            pytest.fail(f"{name} is missing (Debian: apt-get install prometheus)")
        pytest.skip(f"{name} is missing (Debian: apt-get install prometheus; .ci/run installs it)")
    return found


class Running:
    def __init__(self, env: dict[str, str], ingress: Service, base: str, worker: Service, worker_port: int) -> None:
        self.env, self.ingress, self.base, self.worker, self.worker_port = env, ingress, base, worker, worker_port


@pytest.fixture(scope="module")
def running(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Ingress + worker that have handled one answered call, so the window gauges exist."""
    tmp = tmp_path_factory.mktemp("prom-stack")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}.",
        "TOPIC_PARTITIONS": "3", "WEBHOOK_TOKENS": TOKEN, "WORKER_STORE": "memory://",
        "WORKER_DATA_DIR": str(tmp / "worker"), "HANGUP_GRACE_S": "1", "METRICS_INTERIM_INTERVAL_S": "1",
    }
    ingress, base = start_ingress(env, tmp / "ingress.log")
    worker, port = start_worker(env, tmp / "worker.log")
    wait_ready(base)
    wait_worker_ready(worker)
    u = f"{int(time.time())}.prom"
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    events = [
        {"event": "IN", "uniqueid": u, "cli": "9810000001", "time": now},
        {"event": "TA", "uniqueid": u, "attemptid": f"{u}.1", "to": "101", "time": now},
        {"event": "TC", "uniqueid": u, "attemptid": f"{u}.1", "to": "101", "time": now},
        {"event": "TE", "uniqueid": u, "attemptid": f"{u}.1", "to": "101", "result": "answered", "duration": "30"},
        {"event": "H", "uniqueid": u, "cli": "9810000001", "duration": "40"},
    ]
    with httpx.Client(base_url=base, params={"token": TOKEN}) as c:
        for e in events:
            assert c.post("/webhooks/ivr", data={"app": APP, **e}).status_code == 202
        c.post("/webhooks/ivr", params={"token": "wrong"}, data={"app": APP, **events[0]})  # a 401
    topic = env["TOPIC_PREFIX"] + "ivr.metrics.agents"
    deadline = time.monotonic() + 90
    while not read_all(kafka.bootstrap, topic, settle=1.0):
        assert time.monotonic() < deadline, f"no agent window record:\n{worker.log()[-3000:]}"
    yield Running(env, ingress, base, worker, port)
    worker.stop()
    ingress.stop()


def exposed(url: str) -> set[str]:
    """Sample names a /metrics page can give (from its families, with or without samples yet)."""
    text = httpx.get(url, timeout=10).text
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + sfx for sfx in ("_bucket", "_sum", "_count"))
    return names


def test_rules_and_dashboard_read_only_metrics_that_exist(running: Running) -> None:
    have = exposed(f"{running.base}/metrics") | exposed(f"http://127.0.0.1:{running.worker_port}/metrics")
    assert "ivr_worker_app_window_offered" in have and "ivr_worker_agent_window_answer_rate" in have
    missing = {}
    for where, expr in {**rule_exprs(), **dashboard_exprs()}.items():
        unknown = metric_names(expr) - have - BUILT_IN
        if unknown:
            missing[where] = sorted(unknown)
    assert not missing, missing


def api(base: str, path: str) -> Any:
    r = httpx.get(f"{base}/api/v1/{path}", timeout=10)
    r.raise_for_status()
    return r.json()["data"]


def test_real_prometheus_scrapes_both_and_the_worker_down_alert_goes_pending(
        running: Running, tmp_path: Path) -> None:
    prometheus = binary("prometheus")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    targets = {"ivr-ingress": running.base.removeprefix("http://"), "ivr-worker": f"127.0.0.1:{running.worker_port}"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets.pop(job["job_name"])]}]
    assert not targets, f"jobs missing from the scrape config: {targets}"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copytree(MONITORING / "rules", tmp_path / "rules")
    port = free_port()
    prom = Service([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                   {}, tmp_path / "prometheus.log").start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            assert prom.alive(), prom.log()[-3000:]
            try:
                active = api(base, "targets")["activeTargets"]
                health = {t["labels"]["job"]: t["health"] for t in active}
            except httpx.HTTPError:
                pass
            if health == {"ivr-ingress": "up", "ivr-worker": "up"}:
                break
            time.sleep(0.5)
        assert health == {"ivr-ingress": "up", "ivr-worker": "up"}, prom.log()[-3000:]
        rules = api(base, "rules")["groups"]
        assert sum(len(g["rules"]) for g in rules) == len(rule_exprs())
        assert api(base, "query?query=ivr_ingress_requests_total")["result"], "no ingress series scraped"

        def worker_down_state() -> str | None:
            for a in api(base, "alerts")["alerts"]:
                if a["labels"]["alertname"] == "IvrWorkerDown":
                    return str(a["state"])
            return None

        assert worker_down_state() is None
        running.worker.stop()
        deadline = time.monotonic() + 60
        state = None
        while time.monotonic() < deadline and state is None:
            time.sleep(0.5)
            state = worker_down_state()
        assert state in {"pending", "firing"}, prom.log()[-3000:]
        assert api(base, 'query?query=up{job="ivr-worker"}')["result"][0]["value"][1] == "0"
    finally:
        prom.stop()
