"""Helpers for integration tests: processes on loopback and reading topics back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import httpx

from deploy.topic_reader import read_all, read_topic

__all__ = ["Service", "new_prefix", "python", "read_all", "read_topic", "wait_http"]

ROOT = Path(__file__).resolve().parent.parent


def interruptible() -> None:
    """`preexec_fn` of a child a test interrupts with SIGINT: its SIGINT acts as from a terminal,
    whatever the tests were started from (a non-interactive shell starts a background job with
    SIGINT ignored, and every child inherits that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def create_topics(env: Mapping[str, str]) -> None:
    """The project's topics, as a worker with `env` would create them."""
    from config.settings import load
    from config.topics import ensure_topics

    asyncio.run(ensure_topics(load(dict(env))))


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}."


class Service:
    """A project process (ingress or worker) started as a real subprocess."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.args = args
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, cwd: Path = ROOT) -> Service:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, env=self.env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, no chance to flush or commit: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_http(url: str, timeout: float = 30.0, proc: Service | None = None, want: int | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"process died while starting:\n{proc.log()[-3000:]}")
        try:
            status = httpx.get(url, timeout=3.0).status_code
            if status == want or (want is None and status < 500):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer in {timeout}s" + (f"\n{proc.log()[-3000:]}" if proc else ""))


def python(*args: str) -> list[str]:
    return [sys.executable, *args]
