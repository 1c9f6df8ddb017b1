"""The ingress and a worker against a broker that demands SASL_SSL or TLS client certificates.

The broker's listeners: SASL_SSL (SCRAM users made when the data directory is formatted) and SSL
requiring a client certificate, with certificates from a CA this test makes. A call runs end to
end over each; refused credentials or certificates stop both processes at start with one line, and an
ingress that meets a refusal later (the broker away at its start) recovers once they are accepted.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.fake_provider import FakeProvider
from bench.simulator import APP as SIMULATED_APP
from bench.simulator import Profile, generate_timed
from config import kafka_client
from config.settings import load
from deploy.local_kafka import ROOT, BrokerSecurity, KafkaBroker, free_port
from deploy.tls import Pki, make_ca, make_pki
from tests.conftest import (
    PROVIDER_KEY,
    STACK_TIMINGS,
    TOKEN,
    start_ingress,
    start_worker,
    wait_ready,
    wait_worker_ready,
)
from tests.helpers import Service, new_prefix, python, read_all

pytestmark = pytest.mark.kafka

APP = "4e11fe2082b044b4a3b55718c79c29d5"
USER, PASSWORD = "ivr-svc", "right-horse-battery"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_kafka(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    security = BrokerSecurity(pki.ca_file, pki.broker_keystore, ((USER, PASSWORD),))
    broker = KafkaBroker(tmp_path_factory.mktemp("secure-kafka"), partitions=3, security=security)
    broker.start()
    yield broker
    broker.stop()


def sasl_env(broker: KafkaBroker, pki: Pki, password: str = PASSWORD) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": broker.sasl_ssl_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": password,
            "KAFKA_SSL_CAFILE": str(pki.ca_file)}


def mtls_env(broker: KafkaBroker, pki: Pki) -> dict[str, str]:
    return {"KAFKA_BOOTSTRAP_SERVERS": broker.ssl_bootstrap, "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CAFILE": str(pki.ca_file), "KAFKA_SSL_CERTFILE": str(pki.client_cert),
            "KAFKA_SSL_KEYFILE": str(pki.client_key)}


def stack_env(kafka_env: dict[str, str], tmp: Path) -> dict[str, str]:
    return {**kafka_env, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "3", "WEBHOOK_TOKENS": TOKEN,
            "WORKER_STORE": "memory://", "WORKER_DATA_DIR": str(tmp / "worker"), **STACK_TIMINGS}


def one_call(base: str) -> str:
    u = f"{int(time.time())}.{uuid.uuid4().hex[:6]}"
    events: list[dict[str, Any]] = [
        {"event": "IN", "uniqueid": u, "cli": "9810000001", "time": "2026-03-02 10:00:00"},
        {"event": "TA", "uniqueid": u, "attemptid": f"{u}.1", "to": "A1", "time": "2026-03-02 10:00:05"},
        {"event": "TC", "uniqueid": u, "attemptid": f"{u}.1", "to": "A1", "time": "2026-03-02 10:00:09"},
        {"event": "TE", "uniqueid": u, "attemptid": f"{u}.1", "to": "A1", "result": "answered", "duration": 60},
        {"event": "H", "uniqueid": u, "cli": "9810000001", "duration": 75},
    ]
    with httpx.Client(base_url=base, params={"token": TOKEN}, timeout=30) as c:
        for e in events:
            r = c.post("/webhooks/ivr", data={"app": APP, **{k: str(v) for k, v in e.items()}})
            assert r.status_code == 202, r.text
    return u


@pytest.mark.parametrize("mode", ["sasl_ssl", "ssl_client_cert"])
def test_call_end_to_end_over_secured_kafka(mode: str, secure_kafka: KafkaBroker, pki: Pki, tmp_path: Path) -> None:
    kafka_env = sasl_env(secure_kafka, pki) if mode == "sasl_ssl" else mtls_env(secure_kafka, pki)
    env = stack_env(kafka_env, tmp_path)
    ingress, base = start_ingress(env, tmp_path / "ingress.log")
    worker, _ = start_worker(env, tmp_path / "worker.log")
    try:
        wait_ready(base)
        wait_worker_ready(worker, timeout=120)
        u = one_call(base)
        # read back over the same secured listener, with the same client settings
        client = kafka_client.aiokafka_kwargs(load(env))
        topic = f"{env['TOPIC_PREFIX']}ivr.calls.completed"
        deadline = time.monotonic() + 90
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not found:
            found = [v for _, v in read_all(client, topic, settle=1.0) if v["uniqueid"] == u]
        assert found, f"no completed record for {u}:\n{worker.log()[-3000:]}"
        assert found[-1]["outcome"] == "answered" and found[-1]["answered_by"] == "A1"
        assert PASSWORD not in ingress.log() + worker.log()  # never logged
    finally:
        worker.stop()
        ingress.stop()


def _exits_with_one_line(service: Service, expected: list[str], timeout: float = 60.0) -> str:
    """The process exits non-zero on its own, and its log has the one line naming the setting."""
    assert service.proc is not None
    try:
        code = service.proc.wait(timeout)
    except Exception:
        service.kill()
        raise AssertionError(f"still running after {timeout}s (a retry loop?):\n{service.log()[-3000:]}") from None
    log = service.log()
    assert code != 0, log[-3000:]
    lines = [line for line in log.splitlines() if all(e in line for e in expected)]
    assert lines, f"no line with {expected}:\n{log[-3000:]}"
    return lines[0]


EnvFor = Callable[[KafkaBroker, Pki, Path], dict[str, str]]
REFUSALS: dict[str, tuple[EnvFor, list[str]]] = {
    "wrong_password": (lambda b, p, o: sasl_env(b, p, password="not-the-password"),
                       ["KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD", "invalid credentials"]),
    "untrusted_broker_certificate": (lambda b, p, o: {**sasl_env(b, p), "KAFKA_SSL_CAFILE": str(o)},
                                     ["KAFKA_SSL_CAFILE", "not trusted"]),
    "no_client_certificate": (lambda b, p, o: {k: v for k, v in mtls_env(b, p).items()
                                               if k not in ("KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")},
                              ["KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE", "BAD_CERTIFICATE"]),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refused_credentials_stop_ingress_and_worker_at_start(case: str, secure_kafka: KafkaBroker, pki: Pki,
                                                              tmp_path: Path) -> None:
    other_ca, _, _ = make_ca(tmp_path / "other-ca", "some other CA")
    make_env, expected = REFUSALS[case]
    env = stack_env(make_env(secure_kafka, pki, other_ca), tmp_path)
    ingress = Service(python("-m", "uvicorn", "ingress.app:app", "--host", "127.0.0.1", "--port", "0"),
                      env, tmp_path / "ingress.log").start()
    worker = Service(python("-m", "faust", "-A", "processors.app", "worker", "-l", "info"),
                     {**env, "WORKER_WEB_PORT": str(free_port())}, tmp_path / "worker.log").start()
    try:
        for service in (ingress, worker):
            line = _exits_with_one_line(service, expected)
            print(f"{case}: {line.strip()[-300:]}")
            assert "not-the-password" not in service.log()
        # the `ivr` command says the same, not that Kafka cannot be reached
        cli = subprocess.run(python("-m", "ivr_cli", "topics"), env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=120, cwd=ROOT)
        assert cli.returncode == 1 and all(e in cli.stderr for e in expected), cli.stderr
        assert "cannot reach" not in cli.stderr and "not-the-password" not in cli.stdout + cli.stderr
    finally:
        worker.kill()
        ingress.kill()


async def topic_names(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


def test_ingress_recovers_once_refused_credentials_are_accepted(pki: Pki, tmp_path: Path) -> None:
    """A broker away when the ingress starts, then refusing its credentials (its SCRAM user not made
    yet: an operator's user created after the deployment) and accepting them later: the ingress
    answers 503 meanwhile, then 202 without a restart (it used to stay at 503 until restarted)."""
    user, password = "ivr-late", "made-after-start"
    security = BrokerSecurity(pki.ca_file, pki.broker_keystore, ((USER, PASSWORD),))
    broker = KafkaBroker(tmp_path / "kafka", partitions=3, security=security)  # not started yet
    env = {**stack_env(sasl_env(broker, pki), tmp_path), "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": password,
           "PRODUCE_TIMEOUT_S": "2"}
    ingress, base = start_ingress(env, tmp_path / "ingress.log")
    try:
        with httpx.Client(base_url=base, params={"token": TOKEN}, timeout=30) as c:
            event = {"app": APP, "event": "IN", "uniqueid": "1700000000.1", "cli": "9810000001",
                     "time": "2026-03-02 10:00:00"}
            assert c.post("/webhooks/ivr", data=event).status_code == 503  # no broker
            broker.start()
            deadline = time.monotonic() + 60
            while "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD" not in ingress.log():
                assert time.monotonic() < deadline, ingress.log()[-3000:]
                time.sleep(0.5)
            assert c.post("/webhooks/ivr", data=event).status_code == 503  # refused: not durable
            assert c.get("/readyz").status_code == 503
            broker.add_scram_user(user, password)
            deadline = time.monotonic() + 90
            while (status := c.post("/webhooks/ivr", data=event).status_code) != 202:
                assert status == 503 and ingress.alive(), ingress.log()[-3000:]
                assert time.monotonic() < deadline, f"still {status} after the user was made:\n{ingress.log()[-3000:]}"
                time.sleep(1.0)
            assert c.get("/readyz").status_code == 200
        assert password not in ingress.log()
        written = read_all(broker.bootstrap, f"{env['TOPIC_PREFIX']}ivr.events", settle=1.0)
        assert "1700000000.1" in [v["uniqueid"] for _, v in written]  # 202: durable
        # the topics it could not make at start are made once connected (nothing was written to this one)
        assert f"{env['TOPIC_PREFIX']}ivr.events.invalid" in asyncio.run(topic_names(broker.bootstrap))
    finally:
        ingress.stop()
        broker.stop()


def test_worker_health_and_reconciliation_over_sasl_ssl(secure_kafka: KafkaBroker, pki: Pki, tmp_path: Path,
                                                        provider: tuple[FakeProvider, str]) -> None:
    """Every Kafka client of the worker connects with the secured settings, not only its consumer
    and producer: the liveness monitor sees the group from the broker (`/healthz` says it is
    reachable and the worker in its group; in plaintext it saw nothing, so the stall watchdog was
    off), and the reconciler reads its cursors and heals calls whose webhooks were all lost (every
    pass failed)."""
    fake, url = provider
    _, truth = generate_timed(4, time.time() - 5400, 600, Profile(), seed=3, prefix=new_prefix())
    fake.calls = {SIMULATED_APP: truth}
    env = {**stack_env(sasl_env(secure_kafka, pki), tmp_path), "PROVIDER_API_URL": url,
           "PROVIDER_API_KEY": PROVIDER_KEY, "PROVIDER_APPS": SIMULATED_APP, "RECONCILE_INTERVAL_S": "3",
           "RECONCILE_LOOKBACK_S": str(3 * 3600), "PROVIDER_MAX_RPS": "20",
           "WORKER_STALL_TIMEOUT_S": "10"}  # the monitor looks every 2 s
    worker, port = start_worker(env, tmp_path / "worker.log")
    try:
        wait_worker_ready(worker, timeout=120)
        deadline, health = time.monotonic() + 90, dict[str, Any]()
        while time.monotonic() < deadline and not (health.get("in_group") and health.get("broker_reachable")):
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json()
            time.sleep(1)
        assert (health["broker_reachable"], health["in_group"]) == (True, True), health
        client = kafka_client.aiokafka_kwargs(load(env))
        topic = f"{env['TOPIC_PREFIX']}ivr.calls.completed"
        want, got = {t.uniqueid for t in truth}, set[str]()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and got != want:
            got = {v["uniqueid"] for _, v in read_all(client, topic, settle=1.0)} & want
        assert got == want, worker.log()[-3000:]
        log = worker.log()
        assert PASSWORD not in log and PROVIDER_KEY not in log
    finally:
        worker.stop()
