"""The ingress's HTTP edges with real sockets, a real server and the real broker.

Each test runs against both ways of starting the ingress: the project launcher
(`python -m ingress`: h11 with a header timeout) and the contract's plain `uvicorn ingress.app:app`
(httptools when installed). What only the launcher can enforce is marked so.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from deploy.local_kafka import KafkaBroker, free_port
from tests.conftest import OTHER_TOKEN, TOKEN
from tests.helpers import Service, new_prefix, python, read_all, read_topic, wait_http
from tests.token_forms import OLD_SECRET, leaks, leaks_in_text, token_forms

pytestmark = pytest.mark.kafka

APP = "4e11fe2082b044b4a3b55718c79c29d5"
IN = {"app": APP, "event": "IN", "uniqueid": "1498110438.13", "cli": "9716700271", "time": "2017-06-22 11:17:18"}
LAUNCHERS = {
    "launcher": ("-m", "ingress"),
    "uvicorn": ("-m", "uvicorn", "ingress.app:app"),
}


@dataclass
class Server:
    kind: str
    base: str
    port: int
    prefix: str
    bootstrap: str
    service: Service

    def topic(self, base: str) -> str:
        return f"{self.prefix}{base}"

    def log(self) -> str:
        return self.service.log()

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module", params=list(LAUNCHERS))
def server(request: pytest.FixtureRequest, kafka: KafkaBroker,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    kind = request.param
    tmp = tmp_path_factory.mktemp(f"ingress-{kind}")
    prefix, port = new_prefix(), free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
           "WEBHOOK_TOKENS": f"{TOKEN},{OTHER_TOKEN}", "PRODUCE_TIMEOUT_S": "5"}
    service = Service(python(*LAUNCHERS[kind], "--host", "127.0.0.1", "--port", str(port)), env,
                      tmp / "ingress.log").start()
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", proc=service, timeout=60)
    wait_http(f"{base}/readyz", want=200, timeout=60)
    yield Server(kind, base, port, prefix, kafka.bootstrap, service)
    service.stop()


def _connect(server: Server, timeout: float = 60.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    s.settimeout(timeout)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_body_cut_short_writes_nothing(server: Server) -> None:
    body = urlencode(dict(IN, uniqueid="cut.1")).encode()
    counter = 'ivr_ingress_incomplete_requests_total{why="disconnected"}'
    before = server.metric(counter)
    for n in range(10):
        s = _connect(server)
        s.sendall(b"POST /webhooks/ivr HTTP/1.1\r\nHost: x\r\nX-Webhook-Token: " + TOKEN.encode()
                  + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body)
                  + body[: 20 + n * 5])
        time.sleep(0.05)
        s.close()
    _wait_for(lambda: server.metric(counter) >= before + 10, "10 incomplete bodies counted")
    # a whole event afterwards is the only record: none of the cut ones was produced
    assert httpx.post(f"{server.base}/webhooks/ivr", params={"token": TOKEN}, data=IN).status_code == 202
    records = read_all(server.bootstrap, server.topic("ivr.events"), settle=2.0)
    assert [v["uniqueid"] for _, v in records] == [IN["uniqueid"]], records
    assert "Traceback" not in server.log()


def test_a_body_that_stops_arriving_is_refused_after_a_bound(server: Server) -> None:
    s = _connect(server)
    s.sendall(b"POST /webhooks/ivr HTTP/1.1\r\nHost: x\r\nX-Webhook-Token: " + TOKEN.encode()
              + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 500\r\n\r\napp=a&ev")
    reply = _read_until_closed(s)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_no_token_stored_in_dead_letters_or_logged(server: Server) -> None:
    url = f"{server.base}/webhooks/ivr"
    forms = token_forms(url, TOKEN, OTHER_TOKEN, dict(IN, event="XX", uniqueid="tok.1"))
    with httpx.Client(timeout=30) as client:
        for name, form in forms.items():
            kw = dict(form)
            r = client.request(kw.pop("method", "POST"), kw.pop("url"), **kw)
            assert r.status_code == 422, (name, r.text)
    dead = read_topic(server.bootstrap, server.topic("ivr.events.invalid"), len(forms))
    assert len(dead) == len(forms)
    for _, record in dead:
        assert leaks(record, TOKEN, OTHER_TOKEN, OLD_SECRET) == [], record
    log = server.log()
    assert "/webhooks/ivr" in log  # the access log is on ...
    assert leaks_in_text(log, TOKEN, OTHER_TOKEN) == []  # ... and holds no token in any form


def test_caller_numbers_masked_in_the_access_log(server: Server) -> None:
    r = httpx.get(f"{server.base}/webhooks/ivr", params={**IN, "uniqueid": "cli.1", "cli": "9716755555",
                                                         "token": TOKEN})
    assert r.status_code == 202
    _wait_for(lambda: "uniqueid=cli.1" in server.log(), "the access log line")
    line = next(x for x in server.log().splitlines() if "uniqueid=cli.1" in x)
    assert "9716755555" not in line and "cli=***5555" in line


def test_headers_over_the_limit_are_refused_with_431(server: Server) -> None:
    s = _connect(server)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200_000 + b"\r\n\r\n")
    reply = _read_until_closed(s)
    assert reply.startswith(b"HTTP/1.1 431"), reply[:200]
    assert httpx.get(f"{server.base}/healthz").status_code == 200


@pytest.mark.parametrize("kind", list(LAUNCHERS))
def test_pipelined_connection_closed_early_logs_no_error(kind: str, tmp_path: Path) -> None:
    """Each response takes 1 s (the broker is unreachable: 503), so the client is gone when it is written."""
    port = free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "WEBHOOK_TOKENS": TOKEN, "PRODUCE_TIMEOUT_S": "1"}
    service = Service(python(*LAUNCHERS[kind], "--host", "127.0.0.1", "--port", str(port)), env,
                      tmp_path / "ingress.log").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=service, timeout=60)
        body = urlencode(IN).encode()
        request = (b"POST /webhooks/ivr HTTP/1.1\r\nHost: x\r\nX-Webhook-Token: " + TOKEN.encode()
                   + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body)
                   + body)
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(request * 20)
            s.close()
        _wait_for(lambda: service.log().count("not made durable") >= 10, "the 10 first requests answered")
        time.sleep(1)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        service.stop()
    log = service.log()
    # aiokafka's ERRORs say the broker is away (it is, on purpose); nothing else is an error
    errors = [line for line in log.splitlines() if "ERROR" in line and "aiokafka" not in line]
    assert "Traceback" not in log and errors == [], log[-3000:]
    assert log.count("client closed the connection") <= 10


def test_idle_connections_are_closed(server: Server) -> None:
    if server.kind != "launcher":
        pytest.skip("plain uvicorn has no timeout for a connection that has not sent a request (see README)")
    silent = _connect(server)
    blank = _connect(server)
    blank_closed = False
    for _ in range(300):  # blank lines every 0.2 s, until the server closes (well under 60 s)
        try:
            blank.sendall(b"\r\n")
        except OSError:
            blank_closed = True
            break
        time.sleep(0.2)
    assert blank_closed or _read_until_closed(blank) != b""
    reply = _read_until_closed(silent)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
