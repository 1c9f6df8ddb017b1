"""`make run`: a local Apache Kafka broker (or three), the ingress and one worker, in the foreground.

Ctrl-C stops them all (worker, ingress, then Kafka) and leaves no process behind; so do SIGINT,
SIGTERM or SIGHUP sent to this process or to the `make` that started it. A broker that exits is
started again, and so is the worker (`Restarts`); the ingress exiting stops the rest.
Ports: KAFKA_PORT (and the next one up, for the controller), INGRESS_PORT, WORKER_WEB_PORT.
State lives under RUN_DIR, ./var by default (broker data, worker tables, logs, the dev token).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from config.settings import Settings, load_or_exit
from deploy.local_kafka import ROOT, BrokerError, KafkaBroker, KafkaCluster, cluster_ports, local_cluster


def state_dir(settings: Settings) -> Path:
    """RUN_DIR, relative to the checkout unless absolute."""
    return ROOT / settings.run_dir  # an absolute run_dir replaces ROOT


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _caught_signals(pid: int) -> int | None:
    """The signals `pid` has a handler for (Linux: SigCgt in /proc/<pid>/status), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return None


def watch_make(on_stop: Callable[[], None], interval: float = 0.3) -> threading.Thread | None:
    """Call `on_stop` once when the `make` that started us is told to stop, or exits.

    GNU make passes SIGTERM on to its recipe, but on SIGINT, SIGHUP or SIGQUIT it only waits for
    the recipe to end (it expects the terminal to have sent the signal to the whole group, as
    Ctrl-C does). So `kill -INT <make's pid>` from a script would leave make waiting forever. What
    can be seen from here: make's handler of a fatal signal resets itself to the default before
    it waits, so the signal disappears from make's caught set.
    """
    ppid = os.getppid()
    try:
        if Path(f"/proc/{ppid}/comm").read_text().strip() not in {"make", "gmake"}:
            return None
    except OSError:
        return None
    fatal = [s for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)]
    first = _caught_signals(ppid) or 0
    watched = [s for s in fatal if first & (1 << (s - 1))]

    def run() -> None:
        while True:
            time.sleep(interval)
            now = _caught_signals(ppid)
            if os.getppid() != ppid or now is None or any(not now & (1 << (s - 1)) for s in watched):
                on_stop()
                return

    thread = threading.Thread(target=run, name="watch-make", daemon=True)
    thread.start()
    return thread


def _dev_token(var: Path) -> str:
    path = var / "dev-token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    print(f"  logs: {log}")
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes] | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    print(f"stopping {name} ...")
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


class Supervised(Protocol):
    """A process `make run` keeps running: a broker, or the worker."""

    log_path: Path

    def alive(self) -> bool: ...

    def launch(self) -> None: ...

    def status(self) -> int | None: ...

    def restartable(self) -> bool:
        """Its exit asks for a restart (else the stack stops)."""
        ...


class Broker:
    def __init__(self, node: KafkaBroker) -> None:
        self.node = node
        self.log_path = node.log_path

    def alive(self) -> bool:
        return self.node.alive()

    def launch(self) -> None:
        self.node.launch()

    def status(self) -> int | None:
        return None if self.node.proc is None else self.node.proc.returncode

    def restartable(self) -> bool:
        return True


class Worker:
    """The worker: it exits to be started again when it cannot go on (3: stalled; 70: a batch it
    could not complete, or learnt it must not deliver), and is started again then, or when a
    signal killed it, as under any supervisor. Another status is a worker that cannot start (a
    setting at odds with the cluster, say, its one line in its log): the stack stops."""

    RESTART_ON = frozenset({3, 70})

    ARGS = (sys.executable, "-m", "faust", "-A", "processors.app", "worker", "-l", "info")

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def launch(self) -> None:
        self.proc = _spawn(list(self.ARGS), self.env, self.log_path)

    def status(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def restartable(self) -> bool:
        status = self.status()
        return status is not None and (status < 0 or status in self.RESTART_ON)


class Restarts:
    """A broker or the worker that exits is started again, as a supervisor would, `RESTART_AFTER_S`
    later; the rest go on meanwhile (with three brokers, a broker's loss can be tried here). One that
    keeps exiting (`GIVE_UP_AFTER` times in a row, each within `STABLE_S` of its start) raises
    BrokerError."""

    RESTART_AFTER_S = 10.0
    STABLE_S = 60.0
    GIVE_UP_AFTER = 3

    def __init__(self, processes: dict[str, Supervised], started: float) -> None:
        self.processes = processes  # name ("broker 1", "the worker") -> process
        self.down_since: dict[str, float] = {}  # name -> when its exit was seen
        self.started = dict.fromkeys(processes, started)  # name -> when it was last started
        self.quick_exits: dict[str, int] = {}

    def check(self, now: float) -> None:
        for name, process in self.processes.items():
            if process.alive():
                if now - self.started[name] > self.STABLE_S:
                    self.quick_exits.pop(name, None)
                continue
            if name not in self.down_since:
                self.down_since[name] = now
                if now - self.started[name] <= self.STABLE_S:
                    self.quick_exits[name] = self.quick_exits.get(name, 0) + 1
                if not process.restartable():
                    raise BrokerError(f"{name} exited (status {process.status()}); see {process.log_path}")
                if self.quick_exits.get(name, 0) >= self.GIVE_UP_AFTER:
                    raise BrokerError(f"{name} keeps exiting; see {process.log_path}")
                print(f"warning: {name} exited (status {process.status()}); the rest go on; starting it again "
                      f"in {self.RESTART_AFTER_S:.0f}s (its log: {process.log_path})", file=sys.stderr)
            elif now - self.down_since[name] >= self.RESTART_AFTER_S:
                del self.down_since[name]
                self.started[name] = now
                process.launch()
                print(f"{name} started again", file=sys.stderr)


def _ports(settings: Settings) -> list[tuple[int, str, str]]:
    # node i of KAFKA_NODES listens on KAFKA_PORT + 2i, its controller on KAFKA_PORT + 2i + 1
    kafka, controllers = cluster_ports(settings.kafka_nodes, settings.kafka_port)
    return [*((p, "Kafka", "KAFKA_PORT") for p in kafka),
            *((p, "Kafka's controller (KAFKA_PORT + 1)", "KAFKA_PORT") for p in controllers),
            (settings.ingress_port, "the ingress", "INGRESS_PORT"),
            (settings.worker_web_port, "the worker's web server", "WORKER_WEB_PORT")]


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows when piped
    settings = load_or_exit()
    var = state_dir(settings)
    var.mkdir(parents=True, exist_ok=True)
    for port, what, variable in _ports(settings):
        if _busy(port):
            print(f"error: port {port} (for {what}) is already in use; stop whatever holds it, "
                  f"or choose another with {variable}=<port>", file=sys.stderr)
            return 1
    token = settings.webhook_tokens[0] if settings.webhook_tokens else _dev_token(var)
    broker = local_cluster(var / "kafka", settings.kafka_nodes, settings.kafka_port)  # KAFKA_NODES: 1 or 3
    bootstrap = broker.bootstrap
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        # three nodes: replicated topics unless TOPIC_REPLICATION says otherwise
        "TOPIC_REPLICATION": str(settings.topic_replication if settings.topic_replication > 1
                                 else min(3, settings.kafka_nodes)),
        "WEBHOOK_TOKENS": ",".join(settings.webhook_tokens) or token,
        "WORKER_DATA_DIR": str(var / "worker"),
        "WORKER_WEB_PORT": str(settings.worker_web_port),
        "WORKER_WEB_HOST": "127.0.0.1",  # as the ingress: nothing here is for other machines
    }
    ingress: subprocess.Popen[bytes] | None = None
    worker = Worker(env, var / "worker.log")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:  # as Ctrl-C, even while still starting; once stopping, let the stop finish
            stopping = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # Ctrl-C even when started with SIGINT ignored (a background job of a script inherits that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # make told to stop: stop as on Ctrl-C, whatever we are doing (even while the broker starts)
    watch_make(lambda: None if stopping else os.kill(os.getpid(), signal.SIGINT))
    try:
        nodes = broker.nodes if isinstance(broker, KafkaCluster) else [broker]
        print(f"starting Apache Kafka (KRaft, {len(nodes)} node(s)) ...")
        for node in nodes:
            print(f"  logs: {node.log_path}")
        broker.start()
        print("starting the ingress ...")
        ingress = _spawn([sys.executable, "-m", "ingress", "--host", "127.0.0.1",
                          "--port", str(settings.ingress_port)], env, var / "ingress.log")
        print("starting a worker ...")
        worker.launch()
        assert worker.proc is not None
        if not _wait_http(f"http://127.0.0.1:{settings.ingress_port}/readyz", ingress, 60):
            print(f"error: the ingress did not become ready; see {var / 'ingress.log'}", file=sys.stderr)
            return 1
        _wait_http(f"http://127.0.0.1:{settings.worker_web_port}/healthz", worker.proc, 60)
        url = f"http://127.0.0.1:{settings.ingress_port}/webhooks/ivr"
        # what `ivr` needs to find this stack when the ports are not the defaults
        ivr_env = "" if bootstrap == "127.0.0.1:9092" else f"KAFKA_BOOTSTRAP_SERVERS={bootstrap} "
        sim_env = ivr_env + ("" if settings.ingress_port == 8080 else f"INGRESS_PORT={settings.ingress_port} ")
        metrics = (f"http://127.0.0.1:{settings.ingress_port}/metrics (ingress)   "
                   f"http://127.0.0.1:{settings.worker_web_port}/metrics (worker)")
        print(f"""
ready.
  webhook URL   {url}
  dev token     {token}   (X-Webhook-Token header or ?token=)
  kafka         {bootstrap}
  metrics       {metrics}
  see the outputs (in another terminal, in this directory):
    {ivr_env}.venv/bin/ivr tail calls          # completed calls as they close (Ctrl-C stops)
    {ivr_env}.venv/bin/ivr alerts              # callers to call back
    {sim_env}.venv/bin/ivr simulate            # 1000 simulated calls of the last hour
  try (the README's "Getting started" posts a whole answered call and a missed one):
    curl -i -X POST '{url}' -H 'X-Webhook-Token: {token}' \\
      -d app=4e11fe2082b044b4a3b55718c79c29d5 -d event=IN -d uniqueid=1498110438.13 \\
      -d cli=9716700271 -d 'time=2017-06-22 11:17:18'
  Ctrl-C (or SIGINT/SIGTERM to this process or to make) stops everything.
""", flush=True)
        supervised: dict[str, Supervised] = {f"broker {node.node_id}": Broker(node) for node in nodes}
        restarts = Restarts({**supervised, "the worker": worker}, time.monotonic())
        while not stopping:
            if ingress is None or ingress.poll() is not None:
                print(f"error: the ingress exited; stopping the rest (see its log under {var})", file=sys.stderr)
                return 1
            restarts.check(time.monotonic())
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        stopping = True
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean stop short
        _stop(worker.proc, "worker")
        _stop(ingress, "ingress")
        print("stopping Kafka ...")
        broker.stop()
        print("stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
