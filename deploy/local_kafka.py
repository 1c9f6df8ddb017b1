"""A real Apache Kafka broker for local runs, tests and benchmarks, without Docker.

The broker jars come from Maven Central (see `deploy/kafka/pom.xml`), fetched once into a
cache folder. The broker runs single-node KRaft (broker and controller in one JVM) on loopback.

    python -m deploy.local_kafka            # run in the foreground until Ctrl-C
    python -m deploy.local_kafka --fetch    # only fetch the jars
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_VERSION = "4.1.1"
CACHE = Path.home() / ".cache" / "ivr-stream" / f"kafka-{KAFKA_VERSION}"


class BrokerError(RuntimeError):
    pass


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` was not found on PATH. {hint}")
    return path


def _check_java(java: str) -> None:
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    # 'openjdk version "17.0.15"' or 'java version "1.8.0_..."'
    try:
        major = out.split('"')[1].split(".")[0]
        if int(major) < 17:
            raise BrokerError(f"Kafka {KAFKA_VERSION} needs Java 17 or newer; found {out.splitlines()[0]}")
    except (IndexError, ValueError):
        pass


def fetch_jars(cache: Path = CACHE) -> Path:
    """Download the broker jars once; return the folder that holds them."""
    libs = cache / "libs"
    marker = cache / ".complete"
    if marker.exists():
        return libs
    mvn = _require("mvn", "Install Apache Maven 3.6+ (Debian: `apt-get install maven`).")
    tmp = cache / "libs.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={tmp}",
    ]
    print(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {libs} ...", file=sys.stderr)
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerError(f"mvn failed to fetch the Kafka jars:\n{result.stdout}\n{result.stderr}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(KAFKA_VERSION)
    return libs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class KafkaBroker:
    """One single-node KRaft broker process on loopback, owning a data directory."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "768m",
        partitions: int = 6,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.partitions = partitions
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.log_path = self.data_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        logs = self.data_dir / "logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": str(self.partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java_cmd(self, libs: Path, *args: str) -> list[str]:
        java = _require("java", "Install a Java 17+ runtime (Debian: `apt-get install openjdk-17-jre-headless`).")
        _check_java(java)
        return [
            java, f"-Xms{self.heap}", f"-Xmx{self.heap}", "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dorg.slf4j.simpleLogger.log.kafka.log=warn",
            "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.storage=warn",
            "-cp", f"{libs}/*", *args,
        ]

    def start(self, timeout: float = 90.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        libs = fetch_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        cluster_id_file = self.data_dir / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(uuid.uuid4().hex[:22])
        cluster_id = cluster_id_file.read_text().strip()
        fmt = subprocess.run(
            self._java_cmd(libs, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                           "-c", str(config), "--ignore-formatted"),
            capture_output=True, text=True,
        )
        if fmt.returncode != 0:
            raise BrokerError(f"formatting the Kafka data directory failed:\n{fmt.stdout}{fmt.stderr}")
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                self._java_cmd(libs, "kafka.Kafka", str(config)),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"the broker exited with {self.proc.returncode}; see {self.log_path}")
            if _port_open(self.port) and self._ready():
                return
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"the broker did not become ready in {timeout:.0f}s; see {self.log_path}")

    def _ready(self) -> bool:
        # The broker logs this line once it serves requests (after the controller elected itself).
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return b"Kafka Server started" in f.read()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (SIGTERM), then SIGKILL if it takes too long."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", action="store_true", help="only fetch the broker jars")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--controller-port", type=int, default=9093)
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "kafka")
    args = parser.parse_args(argv)
    try:
        if args.fetch:
            print(fetch_jars())
            return 0
        broker = KafkaBroker(args.data_dir, args.port, args.controller_port)
        broker.start()
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Kafka {KAFKA_VERSION} ready at {broker.bootstrap} (data: {args.data_dir}); Ctrl-C stops it")
    try:
        while broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
