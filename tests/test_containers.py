"""deploy/Dockerfile and docker-compose.yml, checked without a Docker engine: hadolint lints the
Dockerfile, Debian's docker-compose parses and resolves the compose file, and both say what an
operator relies on. Neither an image build nor a `docker compose up` is run here."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.healthcheck import healthy
from deploy.local_kafka import free_port
from tests.monitoring_exprs import MONITORING

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def tool(name: str, hint: str) -> str:
    pinned = Path(sys.executable).parent / name
    found = str(pinned) if pinned.exists() else shutil.which(name)
    if found is None:
        if os.environ.get("IVR_REQUIRE_DEPLOY_TOOLS"):
            pytest.fail(f"{name} is missing ({hint})")
        pytest.skip(f"{name} is missing ({hint})")
    return found


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint", "make installs it from requirements-dev.lock")
    run = subprocess.run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or (line.startswith("ARG") and not out):
            continue
        if line.startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


def test_dockerfile_is_multi_stage_locked_and_runs_unprivileged() -> None:
    build, final = stages()[0], stages()[-1]
    assert len(stages()) >= 2
    assert any("--require-hashes" in i and "requirements.lock" in i for i in build)
    # the final image gets the built virtualenv, not sources, tests, benchmarks or compilers
    copies = [i for i in final if i.startswith(("COPY", "ADD"))]
    assert copies and all(i.startswith("COPY --from=build ") for i in copies), copies
    assert not any(re.search(r"apt-get|apk |gcc|build-essential", i) for i in final)
    user = [i for i in final if i.startswith("USER ")]
    assert user and user[-1].split()[1].split(":")[0] not in {"0", "root"}
    assert any(i.startswith("HEALTHCHECK ") and "deploy.healthcheck" in i for i in final)
    copied = " ".join(i for i in build if i.startswith("COPY"))
    assert "tests" not in copied and "bench" not in copied and "local_kafka" not in copied
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*", ".dockerignore lets in only what the image needs"
    assert not any("tests" in line or "bench" in line for line in ignore[1:])


@pytest.fixture
def http_ok() -> Iterator[int]:
    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_image_healthcheck_asks_both_roles(http_ok: int) -> None:
    closed = free_port()
    assert healthy([closed, http_ok])
    assert not healthy([closed])


def compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    compose = tool("docker-compose", "Debian: apt-get install docker-compose; .ci/run installs it")
    clean = {k: v for k, v in os.environ.items() if k not in {"WEBHOOK_TOKENS", "GRAFANA_ADMIN_PASSWORD"}}
    return subprocess.run([compose, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                          text=True, cwd=ROOT, env={**clean, **env}, timeout=120)


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (kind, source), from the short (docker-compose 1.x) or the long (Compose v2) form."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            out[target] = ("bind" if source.startswith(("/", ".")) else "volume", source)
        else:
            out[v["target"]] = (v["type"], v["source"])
    return out


def test_compose_file_resolves_and_keeps_what_operators_rely_on() -> None:
    run = compose_config({"WEBHOOK_TOKENS": "example-token", "GRAFANA_ADMIN_PASSWORD": "example-password"})
    assert run.returncode == 0, run.stderr
    doc = yaml.safe_load(run.stdout)
    services: dict[str, Any] = doc["services"]
    assert set(services) == {"kafka", "ingress", "worker", "prometheus", "grafana"}
    for name, svc in services.items():
        assert svc.get("restart") == "unless-stopped", name
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    for name in ("ingress", "worker"):
        assert services[name]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
        assert services[name]["read_only"] is True
    kafka = services["kafka"]
    env = kafka["environment"]
    assert mounts(kafka)[env["KAFKA_LOG_DIRS"]] == ("volume", "kafka-data")
    assert "HOST://localhost:29092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert any(str(p.get("published")) == "29092" for p in kafka["ports"])
    worker = services["worker"]
    assert mounts(worker)[worker["environment"]["WORKER_DATA_DIR"]] == ("volume", "worker-data")
    assert set(doc["volumes"]) >= {"kafka-data", "worker-data", "prometheus-data"}
    # Prometheus: the project's scrape config and rules; its targets are these services
    prom = mounts(services["prometheus"])
    assert prom["/etc/prometheus/prometheus.yml"] == ("bind", str(MONITORING / "prometheus.yml"))
    assert prom["/etc/prometheus/rules"] == ("bind", str(MONITORING / "rules"))
    scrape = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"ingress:8080", "worker:6066"}
    grafana = mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == ("bind", str(MONITORING / "grafana" / "provisioning"))
    assert grafana["/var/lib/grafana/dashboards/ivr-stream.json"] == (
        "bind", str(MONITORING / "grafana" / "ivr-stream.json"))


def test_compose_refuses_to_start_without_the_secrets() -> None:
    run = compose_config({"GRAFANA_ADMIN_PASSWORD": "example-password"})
    assert run.returncode != 0 and "WEBHOOK_TOKENS" in run.stderr
