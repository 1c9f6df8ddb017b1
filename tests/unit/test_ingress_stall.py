"""An ingress stalled past its timers (SIGSTOP then SIGCONT; a VM pause or CPU starvation does the
same) answers the requests clients sent meanwhile, rather than resetting their connections.

The launcher's protocol and configuration in a real process, with short timers (keep-alive 1 s,
header timeout 1.5 s) so that a 2.5 s stop outlasts both; no broker (`/healthz` needs none)."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local_kafka import free_port
from tests.helpers import Service, python, wait_http

SERVE = """
import sys
import uvicorn
from ingress import app, server
server.GuardedH11Protocol.header_timeout_s = 1.5
app.BODY_TIMEOUT_S = 1.0
uvicorn.Server(server.config("127.0.0.1", int(sys.argv[1]), timeout_keep_alive=1, loop=sys.argv[2])).run()
"""
GET = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(params=["uvloop", "asyncio"])
def ingress(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Service, int]]:
    port = free_port()
    env = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}", "WEBHOOK_TOKENS": "unit-token-0123456789",
           "PRODUCE_TIMEOUT_S": "1"}
    service = Service(python("-c", SERVE, str(port), request.param), env, tmp_path / "ingress.log").start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=service, timeout=60)
        yield service, port
    finally:
        assert service.proc is not None
        os.kill(service.proc.pid, signal.SIGCONT)  # if a failed test left it stopped
        service.stop()


def _response(s: socket.socket) -> bytes:
    """One response (headers and its Content-Length body), or what came before the connection ended."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := s.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def _keep_alive_connection(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(GET)
    assert _response(s).startswith(b"HTTP/1.1 200"), "the first request"
    return s


def test_a_request_sent_while_the_ingress_was_stopped_is_answered(ingress: tuple[Service, int]) -> None:
    service, port = ingress
    assert service.proc is not None
    pid = service.proc.pid
    busy = _keep_alive_connection(port)
    idle = _keep_alive_connection(port)
    time.sleep(0.3)
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(0.2)
        busy.sendall(GET)  # well inside the keep-alive, but the server reads it only once it runs again
        time.sleep(2.5)  # past the keep-alive and the header timeout of both connections
    finally:
        os.kill(pid, signal.SIGCONT)
    try:
        reply = _response(busy)
    except ConnectionResetError:
        reply = b"(reset)"
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    busy.sendall(GET)  # and the connection is still a working keep-alive one
    assert _response(busy).startswith(b"HTTP/1.1 200")
    # the connection that sent nothing is still closed (after a short grace), without a response
    started = time.monotonic()
    assert idle.recv(65536) == b""
    assert time.monotonic() - started < 5
    log = service.log()
    assert "Traceback" not in log and log.count("connection timers fired") == 1, log


def test_a_body_sent_while_the_ingress_was_stopped_is_read(ingress: tuple[Service, int]) -> None:
    """Headers before the stop, the body during it: the body's 10 s wait, spent while the process
    did not run, answered 408 and the webhook was lost (a new user's simulation lost an H)."""
    service, port = ingress
    assert service.proc is not None
    body = b"app=4e11fe2082b044b4a3b55718c79c29d5&event=H&uniqueid=1.1&duration=3"
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /webhooks/ivr HTTP/1.1\r\nHost: x\r\nX-Webhook-Token: unit-token-0123456789\r\n"
              b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n" % len(body))
    time.sleep(0.3)
    os.kill(service.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(0.2)
        s.sendall(body)
        time.sleep(2.5)  # past the body's wait (1 s here)
    finally:
        os.kill(service.proc.pid, signal.SIGCONT)
    reply = _response(s)
    # read and handled: no broker here, so not durable (503); a 408 is the defect
    assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
