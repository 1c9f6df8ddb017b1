"""The one place that reads the environment.

Every other module receives a `Settings` value. Names and defaults are documented in the
README's configuration table; the provider contract fixes the first eight.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used."""


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
SSL_PROTOCOLS = ("SSL", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
#: UPGRADE_FROM's values: none, or a version whose workers read other internal formats than this one's
UPGRADE_FROM = ("", "0.1")
#: the table stores a worker can use (WORKER_STORE, a Faust store URL)
WORKER_STORES = ("rocksdb", "memory")
TOPIC_PREFIX_CHARS = re.compile(r"[A-Za-z0-9._-]*")  # what Kafka takes in a topic name
#: the longest name made from it, `<prefix>ivr-processor-agent_windows-changelog`, within Kafka's 249
MAX_TOPIC_PREFIX = 200
MAX_TOPIC_NAME = 249
LONGEST_CHANGELOG_SUFFIX = "-agent_windows-changelog"  # the tables' changelogs: <prefix><PROCESSOR_ID><suffix>


@dataclass(frozen=True, slots=True)
class Settings:
    # --- fixed by the contract ---
    kafka_bootstrap_servers: str = "localhost:9092"
    webhook_tokens: tuple[str, ...] = ()
    provider_tz: str = "Asia/Kolkata"
    call_idle_timeout_s: float = 900.0
    hangup_grace_s: float = 10.0
    short_abandon_s: float = 5.0
    agent_window_s: int = 3600
    topic_prefix: str = ""
    # Kafka security, the same for every client (empty: not set)
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""  # PLAIN when SASL is on and this is empty
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)  # never in a repr, hence never in a log
    kafka_ssl_cafile: str = ""  # empty: the system trust store
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    # call-log reconciliation (names fixed by the contract); no API key: reconciliation is off
    provider_api_url: str = "https://mycalls.sukamapps.com/api/v1"
    provider_api_key: str = field(default="", repr=False)  # never in a log, not even via repr()
    provider_apps: tuple[str, ...] = ()
    reconcile_interval_s: float = 300.0
    reconcile_lookback_s: float = 3600.0
    provider_max_rps: float = 2.0
    # --- our own ---
    kafka_nodes: int = 1  # brokers `make run` starts locally (1 or 3)
    provider_timeout_s: float = 10.0
    provider_max_attempts: int = 6
    connected_idle_timeout_s: float = 0.0  # 0: the same as CALL_IDLE_TIMEOUT_S (see `calls.lifecycle_config`)
    closed_call_retention_s: float = 86400.0
    metrics_grace_s: float = 1800.0
    metrics_idle_close_s: float = 960.0
    metrics_interim_interval_s: float = 5.0
    service_level_s: float = 20.0
    topic_partitions: int = 6
    topic_replication: int = 1
    max_body_bytes: int = 16384
    log_caller_numbers: str = "masked"  # masked | full: caller numbers in the logs (ingress and worker)
    produce_timeout_s: float = 5.0
    worker_store: str = "rocksdb://"
    worker_data_dir: str = "./var/worker"
    worker_web_port: int = 6066
    worker_web_host: str = "0.0.0.0"  # the address the worker's web port listens on (probes reach it from outside)
    worker_rocksdb_cache_mb: int = 8
    worker_session_timeout_s: float = 30.0
    worker_batch_max: int = 2000  # reached only with a backlog; BENCHMARKS.md "Round seven"
    worker_batch_window_s: float = 0.02
    # one produce batch per topic partition and request: below the broker's default
    # message.max.bytes (1 MiB); BENCHMARKS.md "Round eight"
    worker_produce_batch_bytes: int = 524288
    worker_stall_timeout_s: float = 120.0
    worker_stall_exit_s: float = 180.0
    processor_id: str = "ivr-processor"
    metrics_agent_label: bool = True  # METRICS_AGENT_LABEL=off: per-agent gauges summed per app
    # UPGRADE_FROM=0.1 while workers of 0.1 may still run in the group: the worker writes its
    # internal topics and tables as 0.1 reads them (README "Upgrading")
    upgrade_from: str = ""
    # --- `make run` (the local stack) only ---
    kafka_port: int = 9092  # the controller listens on the next port up
    ingress_port: int = 8080
    run_dir: str = "var"  # broker data, worker tables, logs, dev token; relative: to the checkout

    @property
    def kafka_uses_sasl(self) -> bool:
        return self.kafka_security_protocol in SASL_PROTOCOLS

    @property
    def kafka_uses_ssl(self) -> bool:
        return self.kafka_security_protocol in SSL_PROTOCOLS

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.provider_tz)

    @property
    def writes_0_1_formats(self) -> bool:
        """Caller facts one record each and metric window items one row each, as 0.1 reads them."""
        return self.upgrade_from == "0.1"

    def topic(self, base: str) -> str:
        """Full topic name: every topic gets `TOPIC_PREFIX` in front."""
        return f"{self.topic_prefix}{base}"


# field name -> environment variable (the field name upper-cased, except where noted)
_ENV_NAMES = {f.name: f.name.upper() for f in fields(Settings)}


def _parse(name: str, raw: str, default: object) -> object:
    raw = raw.strip()
    if isinstance(default, tuple):
        return tuple(t.strip() for t in raw.split(",") if t.strip())
    if isinstance(default, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{name}={raw!r}: use on or off (1/0, true/false, yes/no)")
    try:
        if isinstance(default, int):
            value: object = _whole(name, raw)
        elif isinstance(default, float):
            value = float(raw)
            if not math.isfinite(value):  # nan, inf, 1e400: no interval, timeout or rate is one
                raise ValueError
        else:
            return raw
    except SettingsError:
        raise
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < 0:  # type: ignore[operator]
        raise SettingsError(f"{name}={raw!r} must not be negative")
    return value


def _whole(name: str, raw: str) -> int:
    """`3600`, and `3600.0` or `3.6e3` too (the same number); `3600.5` is refused as not whole."""
    try:
        return int(raw)
    except ValueError:
        number = float(raw)  # not a number at all: ValueError, said by the caller
        if not number.is_integer():  # (nan and inf are not either)
            raise SettingsError(f"{name}={raw!r} must be a whole number") from None
        return int(number)


def load_or_exit() -> Settings:
    """The process environment's settings, for a program's start: a bad value stops it with one
    line naming the variable (exit status 2), not a traceback through the server that imported it."""
    try:
        return load()
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `environ` (the process environment by default)."""
    env = os.environ if environ is None else environ
    defaults = Settings()
    values: dict[str, object] = {}
    for field_name, env_name in _ENV_NAMES.items():
        if env_name in env and env[env_name].strip() != "":
            values[field_name] = _parse(env_name, env[env_name], getattr(defaults, field_name))
    settings = Settings(**values)  # type: ignore[arg-type]
    try:
        ZoneInfo(settings.provider_tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"PROVIDER_TZ={settings.provider_tz!r} is not an IANA time zone") from None
    if settings.agent_window_s <= 0:
        raise SettingsError("AGENT_WINDOW_S must be positive")
    if settings.worker_batch_max <= 0:
        raise SettingsError("WORKER_BATCH_MAX must be positive")
    if settings.worker_produce_batch_bytes < 1024:
        raise SettingsError("WORKER_PRODUCE_BATCH_BYTES must be at least 1024")
    if settings.log_caller_numbers not in ("masked", "full"):
        raise SettingsError(f"LOG_CALLER_NUMBERS={settings.log_caller_numbers!r}: use masked or full")
    if settings.worker_stall_timeout_s <= 0:
        raise SettingsError("WORKER_STALL_TIMEOUT_S must be positive")
    if not 6 <= settings.worker_session_timeout_s <= 1800:  # Kafka's group.min/max.session.timeout.ms
        raise SettingsError(f"WORKER_SESSION_TIMEOUT_S={settings.worker_session_timeout_s:g} must be from 6 to 1800 "
                            "(the brokers' default bounds: a group refuses others)")
    if settings.reconcile_interval_s <= 0 or settings.provider_max_rps <= 0 or settings.provider_timeout_s <= 0:
        raise SettingsError("RECONCILE_INTERVAL_S, PROVIDER_MAX_RPS and PROVIDER_TIMEOUT_S must be positive")
    if settings.provider_max_attempts <= 0:
        raise SettingsError("PROVIDER_MAX_ATTEMPTS must be positive")
    if settings.topic_partitions <= 0 or settings.topic_replication <= 0:
        raise SettingsError("TOPIC_PARTITIONS and TOPIC_REPLICATION must be positive")
    if settings.upgrade_from not in UPGRADE_FROM:
        raise SettingsError(f"UPGRADE_FROM={settings.upgrade_from!r}: the versions a worker can run beside are "
                            f"{', '.join(v for v in UPGRADE_FROM if v)}")
    if len(settings.topic_prefix) > MAX_TOPIC_PREFIX:
        raise SettingsError(f"TOPIC_PREFIX is {len(settings.topic_prefix)} characters: at most {MAX_TOPIC_PREFIX} "
                            "(Kafka's topic names stop at 249, and the tables' changelogs add the group's)")
    if not TOPIC_PREFIX_CHARS.fullmatch(settings.topic_prefix):
        raise SettingsError(f"TOPIC_PREFIX={settings.topic_prefix!r}: a topic name takes only ASCII letters, digits, "
                            "'.', '_' and '-'")
    if settings.kafka_nodes not in (1, 3):
        raise SettingsError(f"KAFKA_NODES={settings.kafka_nodes} must be 1 or 3")
    # `make run`'s brokers: node i on KAFKA_PORT + 2i, its controller on the next port
    for name, port, top in (("WORKER_WEB_PORT", settings.worker_web_port, 65535),
                            ("INGRESS_PORT", settings.ingress_port, 65535),
                            ("KAFKA_PORT", settings.kafka_port, 65535 - (2 * settings.kafka_nodes - 1))):
        if not 1 <= port <= top:
            raise SettingsError(f"{name}={port} is not a TCP port (1 to {top})")
    _bootstrap_servers(settings.kafka_bootstrap_servers)
    scheme, sep, rest = settings.worker_store.partition("://")
    if scheme.lower() not in WORKER_STORES or not sep:
        raise SettingsError(f"WORKER_STORE={settings.worker_store!r} must be one of "
                            f"{', '.join(s + '://' for s in WORKER_STORES)}")
    settings = replace(settings, worker_store=f"{scheme.lower()}://{rest}")
    if not settings.processor_id or not TOPIC_PREFIX_CHARS.fullmatch(settings.processor_id):
        raise SettingsError(f"PROCESSOR_ID={settings.processor_id!r}: it names the consumer group and the tables' "
                            "changelog topics, so it takes only ASCII letters, digits, '.', '_' and '-'")
    longest = f"{settings.topic_prefix}{settings.processor_id}{LONGEST_CHANGELOG_SUFFIX}"
    if len(longest) > MAX_TOPIC_NAME:
        raise SettingsError(f"TOPIC_PREFIX and PROCESSOR_ID make a changelog topic of {len(longest)} characters "
                            f"({longest[:40]}...): Kafka's topic names stop at {MAX_TOPIC_NAME}")
    return _kafka_security(settings)


def _bootstrap_servers(value: str) -> None:
    """`host:port` (or `host`, port 9092), comma-separated; an IPv6 address in brackets."""
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if not entries:
        raise SettingsError("KAFKA_BOOTSTRAP_SERVERS is empty: give host:port of one broker or more")
    for entry in entries:
        host, port = entry, "9092"
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest:
                port = rest.removeprefix(":") if rest.startswith(":") else "?"
        elif ":" in entry:
            host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535 or "/" in host or " " in host:
            raise SettingsError(f"KAFKA_BOOTSTRAP_SERVERS={value!r}: {entry!r} is not host:port (a port from 1 to "
                                "65535)")


def _kafka_security(settings: Settings) -> Settings:
    """Validate the Kafka security variables together; normalise case and the SASL default.
    A set variable that the chosen protocol would ignore is an error, not a silent no-op."""
    protocol = settings.kafka_security_protocol.strip().upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol!r} must be one of "
                            f"{', '.join(SECURITY_PROTOCOLS)}")
    mechanism = settings.kafka_sasl_mechanism.strip().upper()
    if protocol in SASL_PROTOCOLS:
        mechanism = mechanism or "PLAIN"
        if mechanism not in SASL_MECHANISMS:
            raise SettingsError(f"KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism!r} must be one of "
                                f"{', '.join(SASL_MECHANISMS)}")
        missing = [name for name, value in (("KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                                            ("KAFKA_SASL_PASSWORD", settings.kafka_sasl_password)) if not value]
        if missing:
            raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs {' and '.join(missing)}")
    else:
        for name, value in (("KAFKA_SASL_MECHANISM", mechanism), ("KAFKA_SASL_USERNAME", settings.kafka_sasl_username),
                            ("KAFKA_SASL_PASSWORD", settings.kafka_sasl_password)):
            if value:
                raise SettingsError(f"{name} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use SASL "
                                    f"(use SASL_SSL or SASL_PLAINTEXT)")
    files = (("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile), ("KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile),
             ("KAFKA_SSL_KEYFILE", settings.kafka_ssl_keyfile))
    for name, value in files:
        if value and protocol not in SSL_PROTOCOLS:
            raise SettingsError(f"{name} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
                                f"(use SSL or SASL_SSL)")
        if value and not Path(value).is_file():
            raise SettingsError(f"{name}={value!r}: no such file")
    if settings.kafka_ssl_keyfile and not settings.kafka_ssl_certfile:
        raise SettingsError("KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE")
    return replace(settings, kafka_security_protocol=protocol, kafka_sasl_mechanism=mechanism)
