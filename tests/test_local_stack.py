"""Starting and stopping: `make run` (ports, signals), a worker started from anywhere, start-up logs."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.logs import StartupNoise
from deploy.local_kafka import KafkaBroker, free_port
from tests.conftest import wait_worker_ready
from tests.helpers import ROOT, Service, interruptible, wait_http


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_pair() -> int:
    """A free port whose next one up is free too (Kafka and its controller)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and not _busy(port + 1):
            return port
    raise RuntimeError("no two free ports in a row")


def _descendants(pid: int) -> set[int]:
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            children = [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            continue
        found.update(children)
        todo.extend(children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _run_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "TOPIC_", "WORKER_", "INGRESS_"))}
    return {**env, "KAFKA_PORT": str(_free_pair()), "INGRESS_PORT": str(free_port()),
            "WORKER_WEB_PORT": str(free_port()), "RUN_DIR": str(tmp_path / "run"), "WORKER_STORE": "memory://"}


def test_a_port_in_use_names_the_variable_to_set(tmp_path: Path) -> None:
    env = _run_env(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        env["INGRESS_PORT"] = str(holder.getsockname()[1])
        out = subprocess.run([sys.executable, "-m", "deploy.run_local"], env=env, cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 1
    assert f"port {env['INGRESS_PORT']} (for the ingress) is already in use" in out.stderr
    assert "INGRESS_PORT=" in out.stderr


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path]]:
    env = _run_env(tmp_path)
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        # a session of its own: nothing reaches it but what the test sends to make's pid
        proc = subprocess.Popen(["make", "--no-print-directory", "run"], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=interruptible)
    try:
        yield proc, env, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _descendants(proc.pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.kafka
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_makes_pid_stops_the_whole_stack(
    make_run: tuple[subprocess.Popen[bytes], dict[str, str], Path], sig: signal.Signals
) -> None:
    proc, env, log = make_run
    deadline = time.monotonic() + 300
    while b"\nready." not in log.read_bytes():
        assert proc.poll() is None, log.read_text()[-4000:]
        assert time.monotonic() < deadline, log.read_text()[-4000:]
        time.sleep(0.5)
    assert f"webhook URL   http://127.0.0.1:{env['INGRESS_PORT']}/webhooks/ivr" in log.read_text()
    ports = [int(env["KAFKA_PORT"]), int(env["INGRESS_PORT"]), int(env["WORKER_WEB_PORT"])]
    wait_http(f"http://127.0.0.1:{env['WORKER_WEB_PORT']}/healthz", timeout=60)
    assert all(_busy(p) for p in ports)
    stack = _descendants(proc.pid)
    assert len(stack) >= 4, stack  # the launcher, the broker, the ingress, the worker

    os.kill(proc.pid, sig)  # make's pid only, as `kill -INT <pid>` from a script does
    proc.wait(180)
    text = log.read_text()
    assert "stopped." in text, text[-4000:]
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in stack) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in stack if _alive(p)]
    assert not [p for p in ports if _busy(p)]


@pytest.mark.kafka
def test_worker_starts_from_another_directory_with_a_data_dir_not_there_yet(
    kafka: KafkaBroker, prefix: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "TOPIC_PREFIX": prefix, "TOPIC_PARTITIONS": "3",
           "WORKER_DATA_DIR": "x/y/z", "WORKER_WEB_PORT": str(free_port())}
    worker = Service([sys.executable, "-m", "faust", "-A", "processors.app", "worker", "-l", "info"], env,
                     tmp_path / "worker.log")
    worker.start(cwd=elsewhere)
    try:
        wait_worker_ready(worker, timeout=120)
        assert (elsewhere / "x" / "y" / "z").is_dir()
        log = worker.log()
        assert "FileNotFoundError" not in log
        assert "[ERROR] Group Coordinator" not in log and "not found in cluster metadata" not in log
    finally:
        worker.stop()


def test_group_coordinator_retries_at_start_are_not_errors() -> None:
    flt = StartupNoise(startup_s=60)
    error = "[Error 15] GroupCoordinatorNotAvailableError"
    record = logging.LogRecord("aiokafka.consumer.group_coordinator", logging.ERROR, __file__, 1,
                               "Group Coordinator Request failed: %s", (error,), None)
    assert flt.filter(record)
    assert record.levelno == logging.INFO and record.levelname == "INFO"
    assert "normal while" in record.getMessage() and "GroupCoordinatorNotAvailableError" in record.getMessage()
    late = StartupNoise(startup_s=0)
    record = logging.LogRecord("aiokafka.consumer.group_coordinator", logging.ERROR, __file__, 1,
                               "Group Coordinator Request failed: %s", ("x",), None)
    late.filter(record)
    assert record.levelname == "WARNING"
    other = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, "Unable connect to node", (), None)
    late.filter(other)
    assert other.levelname == "ERROR"
    missing = logging.LogRecord("aiokafka.cluster", logging.ERROR, __file__, 1,
                                "Topic %s not found in cluster metadata", ("g-calls-changelog",), None)
    assert not flt.filter(missing)  # dropped while starting
    assert late.filter(missing) and missing.levelname == "WARNING"
    dead = logging.LogRecord("aiokafka.consumer.group_coordinator", logging.WARNING, __file__, 1,
                             "Marking the coordinator dead (node %s)for group %s.", (1, "g"), None)
    assert flt.filter(dead) and dead.levelname == "INFO"
