"""A real Apache Kafka broker for local runs, tests and benchmarks, without Docker.

The broker jars come from Maven Central (see `deploy/kafka/pom.xml`), fetched once into a
cache folder. Each node runs KRaft with broker and controller in one JVM, on loopback; one node, or
three that vote together (replication 3, min.insync.replicas 2).

    python -m deploy.local_kafka            # run in the foreground until Ctrl-C
    python -m deploy.local_kafka --nodes 3  # three KRaft nodes (9092, 9094, 9096), all voters
    python -m deploy.local_kafka --secure   # also SASL_SSL (9192) and SSL (9193) listeners, certificates under var/
    python -m deploy.local_kafka --fetch    # only fetch the jars
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_VERSION = "4.1.1"
CACHE = Path.home() / ".cache" / "ivr-stream" / f"kafka-{KAFKA_VERSION}"


_ACTIVE_CONTROLLER = re.compile(rb"\[QuorumController id=(\d+)\] Becoming the active controller at epoch (\d+)")


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


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """Secured listeners beside the plaintext one: SASL_SSL (SCRAM-SHA-512 and -256 users created
    when the data directory is formatted) and SSL that requires a client certificate signed by
    the CA. Certificates are PEM files (`deploy.tls.make_pki` makes a set)."""

    ca_file: Path
    keystore: Path  # the broker's key and certificate chain, PEM
    scram_users: tuple[tuple[str, str], ...] = ()  # (name, password)


class KafkaBroker:
    """One KRaft node (broker and controller in one JVM) on loopback, owning a data directory.

    Alone it is a single-node cluster; `KafkaCluster` starts three that vote together."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "768m",
        partitions: int = 6,
        *,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
        replication: int = 1,
        security: BrokerSecurity | None = None,
        secure_ports: tuple[int, int] | None = None,  # SASL_SSL, SSL (with security; default: free ports)
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.controller_port = controller_port or free_port()
        self.heap = heap
        self.partitions = partitions
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{self.controller_port}"
        self.cluster_id = cluster_id
        self.replication = replication
        self.security = security
        self.sasl_ssl_port, self.ssl_port = secure_ports or ((free_port(), free_port()) if security else (0, 0))
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self.log_path = self.data_dir / "broker.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return f"localhost:{self.sasl_ssl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        return f"localhost:{self.ssl_port}"

    def _listeners(self) -> tuple[dict[str, str], str, str]:
        """Extra properties, the listeners and the advertised listeners."""
        listeners = [f"PLAINTEXT://127.0.0.1:{self.port}"]
        advertised = list(listeners)
        props: dict[str, str] = {}
        sec = self.security
        if sec is not None:
            # advertised as localhost: the name the broker certificate carries
            listeners += [f"SASL_SSL://127.0.0.1:{self.sasl_ssl_port}", f"SSL://127.0.0.1:{self.ssl_port}"]
            advertised += [f"SASL_SSL://localhost:{self.sasl_ssl_port}", f"SSL://localhost:{self.ssl_port}"]
            props.update({
                "ssl.keystore.type": "PEM",
                "ssl.keystore.location": str(sec.keystore),
                "ssl.truststore.type": "PEM",
                "ssl.truststore.location": str(sec.ca_file),
                "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256",
                "listener.name.ssl.ssl.client.auth": "required",
            })
            for mech in ("scram-sha-512", "scram-sha-256"):
                props[f"listener.name.sasl_ssl.{mech}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;")
        listeners.append(f"CONTROLLER://127.0.0.1:{self.controller_port}")
        return props, ",".join(listeners), ",".join(advertised)

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        rf = str(self.replication)
        min_isr = "2" if self.replication >= 3 else "1"
        extra, listeners, advertised = self._listeners()
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "listeners": listeners,
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map":
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL",
            "log.dirs": str(logs),
            "num.partitions": str(self.partitions),
            # with three nodes every internal topic (group offsets, transactions) and every
            # topic created without its own settings (Faust's changelogs) survives one node down
            "default.replication.factor": rf,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": rf,
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": min_isr,
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.segment.bytes": str(64 * 1024 * 1024),
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            **extra,
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

    def launch(self) -> None:
        """Format the data directory (once) and start the JVM; `wait_ready` waits for it."""
        if self.proc is not None and self.proc.poll() is None:
            return
        libs = fetch_jars()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        cluster_id_file = self.data_dir / "cluster.id"
        if not cluster_id_file.exists():
            cluster_id_file.write_text(self.cluster_id or uuid.uuid4().hex[:22])
        cluster_id = cluster_id_file.read_text().strip()
        scram = []
        for name, password in self.security.scram_users if self.security else ():
            for mech in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
                scram += ["--add-scram", f"{mech}=[name={name},password={password}]"]
        fmt = subprocess.run(
            self._java_cmd(libs, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                           "-c", str(config), "--ignore-formatted", *scram),
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

    def add_scram_user(self, name: str, password: str) -> None:
        """Create (or change) a SCRAM-SHA-512 user on the running broker, through its plaintext
        listener, as an operator would with `kafka-configs --alter --add-config`."""
        done = subprocess.run(
            self._java_cmd(fetch_jars(), "kafka.admin.ConfigCommand", "--bootstrap-server", self.bootstrap,
                           "--alter", "--add-config", f"SCRAM-SHA-512=[password={password}]",
                           "--entity-type", "users", "--entity-name", name),
            capture_output=True, text=True, timeout=120,
        )
        if done.returncode != 0:
            raise BrokerError(f"creating the SCRAM user {name} failed:\n{done.stdout}{done.stderr}")

    def wait_ready(self, timeout: float = 90.0) -> None:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(f"the broker exited with {self.proc.returncode}; see {self.log_path}")
            if _port_open(self.port) and self._ready():
                return
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"the broker did not become ready in {timeout:.0f}s; see {self.log_path}")

    def start(self, timeout: float = 90.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.launch()
        self.wait_ready(timeout)

    def _ready(self) -> bool:
        # The broker logs this line once it serves requests (after the controller elected itself).
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return b"Kafka Server started" in f.read()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

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


class KafkaCluster:
    """`nodes` KRaft nodes on loopback, each broker and controller, all of them voters.

    With three, internal topics and topics created without explicit settings get replication 3
    and min.insync.replicas 2: one node may be lost (or restarted) without losing a write."""

    def __init__(self, data_dir: Path, nodes: int = 3, heap: str = "512m", partitions: int = 6,
                 ports: list[int] | None = None, controller_ports: list[int] | None = None,
                 security: BrokerSecurity | None = None, secure_ports: list[tuple[int, int]] | None = None) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.data_dir = Path(data_dir)
        ports = ports or [free_port() for _ in range(nodes)]
        cports = controller_ports or [free_port() for _ in range(nodes)]
        voters = ",".join(f"{i + 1}@127.0.0.1:{cports[i]}" for i in range(nodes))
        cluster_id = uuid.uuid4().hex[:22]
        self.nodes = [
            KafkaBroker(self.data_dir / f"node{i + 1}", ports[i], cports[i], heap, partitions, node_id=i + 1,
                        voters=voters, cluster_id=cluster_id, replication=min(nodes, 3), security=security,
                        secure_ports=secure_ports[i] if secure_ports else None)
            for i in range(nodes)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def sasl_ssl_bootstrap(self) -> str:
        return ",".join(n.sasl_ssl_bootstrap for n in self.nodes)

    @property
    def ssl_bootstrap(self) -> str:
        return ",".join(n.ssl_bootstrap for n in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    def active_controller(self) -> int | None:
        """The node id of the active KRaft controller: the latest epoch a node's log says it became
        active at (a node takes over with a higher epoch)."""
        best: tuple[int, int | None] = (-1, None)
        for n in self.nodes:
            if n.log_path.exists():
                for m in _ACTIVE_CONTROLLER.finditer(n.log_path.read_bytes()):
                    best = max(best, (int(m.group(2)), int(m.group(1))), key=lambda b: b[0])
        return best[1]

    def start(self, timeout: float = 120.0) -> None:
        # all at once: no node serves before a majority of voters has elected a controller
        try:
            for n in self.nodes:
                n.launch()
            for n in self.nodes:
                n.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def cluster_ports(nodes: int, port: int = 9092) -> tuple[list[int], list[int]]:
    """Fixed local ports: node i listens on port + 2i, its controller on port + 2i + 1."""
    return [port + 2 * i for i in range(nodes)], [port + 2 * i + 1 for i in range(nodes)]


def local_cluster(data_dir: Path, nodes: int, port: int = 9092,
                  security: BrokerSecurity | None = None) -> KafkaBroker | KafkaCluster:
    """What `make run` and `python -m deploy.local_kafka` start: one node, or three voters.
    With `security`, node i also serves SASL_SSL on port + 100 + 2i and SSL on port + 101 + 2i."""
    secure = [(port + 100 + 2 * i, port + 101 + 2 * i) for i in range(nodes)] if security else None
    if nodes == 1:
        return KafkaBroker(data_dir, port, port + 1, security=security, secure_ports=secure[0] if secure else None)
    ports, cports = cluster_ports(nodes, port)
    return KafkaCluster(data_dir / f"cluster{nodes}", nodes, ports=ports, controller_ports=cports, security=security,
                        secure_ports=secure)


def _secure(data_dir: Path) -> tuple[BrokerSecurity, str]:
    """Certificates and a SCRAM user for --secure, made once under the data directory."""
    import secrets

    from deploy.tls import make_pki

    folder = data_dir / "tls"
    password_file = folder / "scram-password"
    if not password_file.exists():
        make_pki(folder)
        password_file.write_text(secrets.token_urlsafe(18))
        password_file.chmod(0o600)
    password = password_file.read_text().strip()
    security = BrokerSecurity(folder / "ca.pem", folder / "broker-keystore.pem", (("ivr", password),))
    pki_env = (f"  KAFKA_SECURITY_PROTOCOL=SASL_SSL KAFKA_SASL_MECHANISM=SCRAM-SHA-512 KAFKA_SASL_USERNAME=ivr\n"
               f"  KAFKA_SASL_PASSWORD=$(cat {password_file}) KAFKA_SSL_CAFILE={folder / 'ca.pem'}\n"
               f"  (mutual TLS instead: KAFKA_SECURITY_PROTOCOL=SSL KAFKA_SSL_CERTFILE={folder / 'client.pem'} "
               f"KAFKA_SSL_KEYFILE={folder / 'client-key.pem'})")
    return security, pki_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fetch", action="store_true", help="only fetch the broker jars")
    parser.add_argument("--nodes", type=int, choices=(1, 3), default=1,
                        help="KRaft nodes (each broker and controller); 3: ports 9092, 9094, 9096")
    parser.add_argument("--port", type=int, default=9092, help="first node's port (its controller: +1)")
    parser.add_argument("--secure", action="store_true",
                        help="also SASL_SSL (SCRAM user `ivr`) and SSL (client certificate) listeners")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var" / "kafka")
    args = parser.parse_args(argv)
    try:
        if args.fetch:
            print(fetch_jars())
            return 0
        security, secure_env = _secure(args.data_dir) if args.secure else (None, "")
        kafka = local_cluster(args.data_dir, args.nodes, args.port, security)
        kafka.start()
    except BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Kafka {KAFKA_VERSION} ({args.nodes} node(s)) ready at {kafka.bootstrap} (data: {args.data_dir}); "
          "Ctrl-C stops it")
    if security is not None:
        print(f"SASL_SSL:\n  KAFKA_BOOTSTRAP_SERVERS={kafka.sasl_ssl_bootstrap}\n{secure_env}\n"
              f"  (and KAFKA_BOOTSTRAP_SERVERS={kafka.ssl_bootstrap})")
    nodes = kafka.nodes if isinstance(kafka, KafkaCluster) else [kafka]

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM, and Ctrl-C even when started with SIGINT ignored (a background job), stop the nodes
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while all(n.alive() for n in nodes):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        kafka.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
