"""Fixtures. Tests that need Kafka ask for `kafka` (one real broker per session, started lazily)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local_kafka import KafkaBroker, free_port
from tests.helpers import Service, new_prefix, python, wait_http

TOKEN = "test-token-0123456789"
OTHER_TOKEN = "rotated-token-abcdef"


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"), partitions=3)
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def prefix() -> str:
    """A topic prefix of its own for each test: isolated topics on the shared broker."""
    return new_prefix()


@pytest.fixture
def stack_env(kafka: KafkaBroker, prefix: str, tmp_path: Path) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "TOPIC_PREFIX": prefix,
        "TOPIC_PARTITIONS": "3",
        "WEBHOOK_TOKENS": f"{TOKEN},{OTHER_TOKEN}",
        "PROVIDER_TZ": "Asia/Kolkata",
        "PRODUCE_TIMEOUT_S": "3",
        "WORKER_DATA_DIR": str(tmp_path / "worker"),
        "WORKER_STORE": "memory://",
        "LOG_LEVEL": "INFO",
    }


def start_ingress(env: dict[str, str], log_path: Path) -> tuple[Service, str]:
    port = free_port()
    service = Service(
        python("-m", "uvicorn", "ingress.app:app", "--host", "127.0.0.1", "--port", str(port)),
        env,
        log_path,
    ).start()
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", proc=service)
    return service, base


def wait_ready(base: str) -> None:
    wait_http(f"{base}/readyz", want=200)


@pytest.fixture
def ingress(stack_env: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A running ingress (uvicorn subprocess) on the test's topics; yields its base URL."""
    service, base = start_ingress(stack_env, tmp_path / "ingress.log")
    wait_ready(base)
    yield base
    service.stop()


@pytest.fixture(scope="module")
def ingress_module(kafka: KafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ingress for a whole module (for tests that send thousands of requests)."""
    tmp = tmp_path_factory.mktemp("ingress")
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": new_prefix(), "TOPIC_PARTITIONS": "3",
        "WEBHOOK_TOKENS": TOKEN,
    }
    service, base = start_ingress(env, tmp / "ingress.log")
    wait_ready(base)
    yield base
    service.stop()
