"""`make run`: a local Apache Kafka broker, the ingress and one worker, in the foreground.

Ctrl-C stops all three (worker, ingress, then the broker) and leaves no process behind.
State lives under ./var (broker data, worker tables, the dev token).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from config.settings import load
from deploy.local_kafka import ROOT, BrokerError, KafkaBroker

VAR = ROOT / "var"
INGRESS_PORT = 8080
WORKER_WEB_PORT = 6066


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _dev_token() -> str:
    path = VAR / "dev-token"
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


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows when piped
    VAR.mkdir(exist_ok=True)
    settings = load()
    for port, what in ((9092, "Kafka"), (9093, "Kafka's controller"), (INGRESS_PORT, "the ingress"),
                       (WORKER_WEB_PORT, "the worker's web server")):
        if _busy(port):
            print(f"error: port {port} (for {what}) is already in use; stop whatever holds it", file=sys.stderr)
            return 1
    token = settings.webhook_tokens[0] if settings.webhook_tokens else _dev_token()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092",
        "WEBHOOK_TOKENS": ",".join(settings.webhook_tokens) or token,
        "WORKER_DATA_DIR": str(VAR / "worker"),
        "WORKER_WEB_PORT": str(WORKER_WEB_PORT),
    }
    broker = KafkaBroker(VAR / "kafka", 9092, 9093)
    ingress: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C even when started with SIGINT ignored (a background job of a script inherits that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        print("starting Apache Kafka (single-node KRaft) ...")
        print(f"  logs: {broker.log_path}")
        broker.start()
        print("starting the ingress ...")
        ingress = _spawn([sys.executable, "-m", "ingress", "--host", "127.0.0.1",
                          "--port", str(INGRESS_PORT)], env, VAR / "ingress.log")
        print("starting a worker ...")
        worker = _spawn([sys.executable, "-m", "faust", "-A", "processors.app", "worker", "-l", "info"],
                        env, VAR / "worker.log")
        if not _wait_http(f"http://127.0.0.1:{INGRESS_PORT}/readyz", ingress, 60):
            print(f"error: the ingress did not become ready; see {VAR / 'ingress.log'}", file=sys.stderr)
            return 1
        _wait_http(f"http://127.0.0.1:{WORKER_WEB_PORT}/healthz", worker, 60)
        url = f"http://127.0.0.1:{INGRESS_PORT}/webhooks/ivr"
        print(f"""
ready.
  webhook URL   {url}
  dev token     {token}   (X-Webhook-Token header or ?token=)
  ingress       http://127.0.0.1:{INGRESS_PORT}/metrics   worker http://127.0.0.1:{WORKER_WEB_PORT}/metrics
  try:
    curl -i -X POST '{url}' -H 'X-Webhook-Token: {token}' \\
      -d app=4e11fe2082b044b4a3b55718c79c29d5 -d event=IN -d uniqueid=1498110438.13 \\
      -d cli=9716700271 -d 'time=2017-06-22 11:17:18'
  Ctrl-C stops everything.
""", flush=True)
        while not stopping:
            for proc, name in ((ingress, "ingress"), (worker, "worker"), (broker.proc, "broker")):
                if proc is None or proc.poll() is not None:
                    print(f"error: the {name} exited; stopping the rest (see its log under {VAR})", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean stop short
        _stop(worker, "worker")
        _stop(ingress, "ingress")
        print("stopping Kafka ...")
        broker.stop()
        print("stopped.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
