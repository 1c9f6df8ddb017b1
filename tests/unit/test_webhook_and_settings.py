from __future__ import annotations

import os
import socket
import subprocess
import sys
from zoneinfo import ZoneInfo

import pytest

from config.settings import Settings, SettingsError, load
from schemas.generate import main as generate_main
from schemas.timefmt import format_ts, parse_provider_time, parse_ts
from schemas.webhook import InvalidWebhook, event_id, normalise

KOLKATA = ZoneInfo("Asia/Kolkata")


def test_settings_defaults_and_parsing() -> None:
    s = load({})
    assert s == Settings() and s.kafka_bootstrap_servers == "localhost:9092" and s.webhook_tokens == ()
    assert s.agent_window_s == 3600 and s.provider_tz == "Asia/Kolkata" and s.topic("ivr.events") == "ivr.events"
    s = load({"WEBHOOK_TOKENS": " a, b ,,", "TOPIC_PREFIX": "x.", "HANGUP_GRACE_S": "2.5", "AGENT_WINDOW_S": "60"})
    assert s.webhook_tokens == ("a", "b") and s.topic("ivr.events") == "x.ivr.events"
    assert s.hangup_grace_s == 2.5 and s.agent_window_s == 60
    with pytest.raises(SettingsError, match="AGENT_WINDOW_S"):
        load({"AGENT_WINDOW_S": "soon"})
    with pytest.raises(SettingsError, match="PROVIDER_TZ"):
        load({"PROVIDER_TZ": "IST"})
    assert load({"UPGRADE_FROM": "0.1"}).writes_0_1_formats and not s.writes_0_1_formats
    with pytest.raises(SettingsError, match=r"UPGRADE_FROM='0\.0'"):
        load({"UPGRADE_FROM": "0.0"})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "Infinity"])
def test_a_number_setting_must_be_finite(value: str) -> None:
    """A worker given RECONCILE_INTERVAL_S=nan joined its group, then died on a conversion naming
    no variable; the other settings took it as a timeout or rate that never ends."""
    for name in ("RECONCILE_INTERVAL_S", "CALL_IDLE_TIMEOUT_S", "PROVIDER_MAX_RPS", "SHORT_ABANDON_S"):
        with pytest.raises(SettingsError, match=f"{name}='{value}' is not a number"):
            load({name: value})


@pytest.mark.parametrize("prefix", ["bad/prefix", "a b.", "ü.", "x:"])
def test_a_topic_prefix_kafka_cannot_name_a_topic_with_is_refused(prefix: str) -> None:
    """The ingress waited for ever for topics it could not create (and ignored SIGTERM meanwhile)."""
    with pytest.raises(SettingsError, match="TOPIC_PREFIX"):
        load({"TOPIC_PREFIX": prefix})
    assert load({"TOPIC_PREFIX": "prod-eu_1."}).topic("ivr.events") == "prod-eu_1.ivr.events"
    with pytest.raises(SettingsError, match="TOPIC_PREFIX is 201 characters"):
        load({"TOPIC_PREFIX": "p" * 201})


@pytest.mark.parametrize(("value", "expected"), [
    ("2017-06-22T11:17:18+05:30", "2017-06-22T05:47:18.000Z"),
    ("2017-06-22 11:17:18", "2017-06-22T05:47:18.000Z"),  # naive: Asia/Kolkata
    ("2017-06-22T11:17:18", "2017-06-22T05:47:18.000Z"),
    ("2017-06-22T05:47:18Z", "2017-06-22T05:47:18.000Z"),
    ("1498110438", "2017-06-22T05:47:18.000Z"),
    ("1498110438123", "2017-06-22T05:47:18.123Z"),
    ("1498110438.5", "2017-06-22T05:47:18.500Z"),
    (1498110438, "2017-06-22T05:47:18.000Z"),
    # the offset's `+` sent unencoded in a query string or form, read as a space
    ("2017-06-22T11:17:18 05:30", "2017-06-22T05:47:18.000Z"),
    ("2017-06-22 11:17:18 0530", "2017-06-22T05:47:18.000Z"),
    ("2017-06-22 11:17", "2017-06-22T05:47:00.000Z"),  # naive, no seconds: no offset taken from it
])
def test_provider_time_formats(value: str | int, expected: str) -> None:
    assert format_ts(parse_provider_time(value, KOLKATA)) == expected
    assert parse_ts(expected) == pytest.approx(parse_provider_time(value, KOLKATA))


@pytest.mark.parametrize("value", ["yesterday", "1e5", "-1498110438", "12", "3000-01-01T00:00:00Z", "22/06/2017",
                                   "2017-06-22"])
def test_bad_times_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_provider_time(value, KOLKATA)


def test_event_id_is_deterministic_and_order_free() -> None:
    assert event_id({"a": "1", "b": "2"}) == event_id({"b": "2", "a": "1"}) != event_id({"a": "1", "b": "3"})


def test_normalise_names_every_bad_field() -> None:
    with pytest.raises(InvalidWebhook) as e:
        normalise({"event": "te", "uniqueid": "u", "to": "", "duration": "x", "token": "secret"}, 0.0, KOLKATA)
    fields = {err.field for err in e.value.errors}
    assert fields == {"app", "attemptid", "to", "result", "duration"}


def test_normalise_keeps_raw_without_token_and_upper_cases() -> None:
    ev = normalise({"app": "a", "event": "te", "uniqueid": "u", "attemptid": "u.1", "to": "9", "result": "Busy",
                    "token": "secret", "extra": "kept"}, 1_700_000_000.0, KOLKATA)
    assert ev.event == "TE" and ev.result == "busy" and ev.time_source == "received" and ev.origin == "webhook"
    assert ev.raw == {"app": "a", "event": "te", "uniqueid": "u", "attemptid": "u.1", "to": "9", "result": "Busy",
                      "extra": "kept"}


def test_json_schema_files_are_generated_from_the_records() -> None:
    assert generate_main(["--check"]) == 0


def test_normalise_records_the_origin_it_is_given() -> None:
    fields = {"app": "a", "event": "H", "uniqueid": "u", "duration": "3"}
    assert normalise(fields, 1_700_000_000.0, KOLKATA, origin="call_log").origin == "call_log"


def test_the_worker_web_port_listens_where_worker_web_host_says() -> None:
    from processors.faust_app import create_app

    assert create_app(load({})).conf.web_bind == "0.0.0.0"  # probes reach it from outside the pod
    assert create_app(load({"WORKER_WEB_HOST": "127.0.0.1"})).conf.web_bind == "127.0.0.1"  # as `make run` sets


@pytest.mark.parametrize("program", [["-m", "ingress", "--port", "1"],
                                     ["-m", "uvicorn", "ingress.app:app", "--port", "1"],  # the contract's
                                     ["-m", "faust", "-A", "processors.app", "worker"],
                                     ["-m", "deploy.run_local"]])  # make run
def test_a_bad_setting_stops_the_ingress_the_worker_and_make_run_in_one_line(program: list[str]) -> None:
    with socket.socket() as busy:  # were the setting taken, `make run` would stop here, at its port check
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = {**os.environ, "TOPIC_PREFIX": "bad/prefix", "KAFKA_PORT": str(busy.getsockname()[1])}
        done = subprocess.run([sys.executable, *program], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("error: TOPIC_PREFIX='bad/prefix'") and "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["0", "5", "1801"])
def test_a_session_timeout_the_brokers_refuse_is_refused_at_start(value: str) -> None:
    """0 was taken: the worker's JoinGroup was refused (InvalidSessionTimeoutError) every 5 s, for ever."""
    with pytest.raises(SettingsError, match=f"WORKER_SESSION_TIMEOUT_S={value} must be from 6 to 1800"):
        load({"WORKER_SESSION_TIMEOUT_S": value})
    assert load({"WORKER_SESSION_TIMEOUT_S": "6"}).worker_session_timeout_s == 6


def test_a_worker_whose_web_port_is_taken_stops_in_one_line() -> None:
    """Faust bound its web port last, after joining the group, and ended with a traceback (exit 1)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "WORKER_WEB_HOST": "127.0.0.1", "WORKER_WEB_PORT": str(port),
               "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"}  # never reached: the check comes first
        done = subprocess.run([sys.executable, "-m", "faust", "-A", "processors.app", "worker"], env=env,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: the worker's web port 127.0.0.1:{port} cannot be used"), done.stderr
    assert "WORKER_WEB_PORT" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("env", "message"), [
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost:abc"}, "'localhost:abc' is not host:port"),  # was a 500 per webhook
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:70000"}, "'b:70000' is not host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "kafka://a:1"}, "is not host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": " , "}, "KAFKA_BOOTSTRAP_SERVERS is empty"),
    ({"WORKER_WEB_PORT": "99999"}, "WORKER_WEB_PORT=99999 is not a TCP port"),  # was Faust's traceback
    ({"INGRESS_PORT": "0"}, "INGRESS_PORT=0 is not a TCP port"),
    ({"KAFKA_PORT": "70000"}, "KAFKA_PORT=70000 is not a TCP port"),  # was make run's traceback
    ({"KAFKA_PORT": "65535"}, "KAFKA_PORT=65535 is not a TCP port (1 to 65534)"),  # the controller's is next
    ({"KAFKA_PORT": "65532", "KAFKA_NODES": "3"}, "KAFKA_PORT=65532 is not a TCP port (1 to 65530)"),
    ({"PROCESSOR_ID": "p" * 120, "TOPIC_PREFIX": "t" * 120}, "make a changelog topic of 264 characters"),
    ({"WORKER_STORE": "foo://"}, "WORKER_STORE='foo://' must be one of rocksdb://, memory://"),
    ({"PROCESSOR_ID": "a b"}, "PROCESSOR_ID='a b'"),  # the worker hung at "Starting..."
    ({"AGENT_WINDOW_S": "36.5"}, "AGENT_WINDOW_S='36.5' must be a whole number"),
    ({"AGENT_WINDOW_S": "abc"}, "AGENT_WINDOW_S='abc' is not a number"),
    ({"METRICS_AGENT_LABEL": "maybe"}, "METRICS_AGENT_LABEL='maybe': use on or off"),  # was read as off
])
def test_values_no_client_could_use_are_refused_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load(env)
    assert message in str(refused.value)


def test_values_that_mean_the_same_are_taken() -> None:
    assert load({"AGENT_WINDOW_S": "3600.0"}).agent_window_s == 3600  # "is not a number", it said
    assert load({"AGENT_WINDOW_S": "1.8e3"}).agent_window_s == 1800
    assert load({"KAFKA_BOOTSTRAP_SERVERS": "b1:9092, b2:9093,[::1]:9094,kafka"}).kafka_bootstrap_servers
    assert load({"WORKER_STORE": "memory://"}).worker_store == "memory://"
    assert load({"WORKER_STORE": "RocksDB://"}).worker_store == "rocksdb://"  # as the store options read it
    for on, off in (("on", "off"), ("1", "0"), ("TRUE", "false"), ("yes", "no")):
        assert load({"METRICS_AGENT_LABEL": on}).metrics_agent_label
        assert not load({"METRICS_AGENT_LABEL": off}).metrics_agent_label


def test_the_web_port_checked_is_the_one_the_worker_command_will_bind() -> None:
    from processors.worker import web_address

    s = load({"WORKER_WEB_PORT": "7001", "WORKER_WEB_HOST": "127.0.0.1"})
    assert web_address(s, ["-A", "processors.app", "worker", "-l", "info"]) == ("127.0.0.1", 7001)
    assert web_address(s, ["-A", "processors.app", "worker", "--web-port", "7002"]) == ("127.0.0.1", 7002)
    assert web_address(s, ["-A", "processors.app", "worker", "-p", "7003", "--web-bind=0.0.0.0"]) == ("0.0.0.0", 7003)
    assert web_address(s, ["-A", "processors.app", "worker", "--without-web"]) is None
    assert web_address(s, ["-A", "processors.app", "tables"]) is None  # Faust's other commands bind nothing
