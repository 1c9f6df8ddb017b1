"""Kafka security settings and the client settings built from them (no broker needed)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from config import kafka_client
from config.settings import SettingsError, load
from deploy.local_kafka import BrokerSecurity, KafkaBroker, KafkaCluster, free_port
from deploy.tls import Pki, make_pki

SASL = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "ivr", "KAFKA_SASL_PASSWORD": "s3cret-pw"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_plaintext_by_default() -> None:
    s = load({})
    assert s.kafka_security_protocol == "PLAINTEXT" and s.kafka_sasl_mechanism == ""
    assert kafka_client.aiokafka_kwargs(s) == {"bootstrap_servers": "localhost:9092", "security_protocol": "PLAINTEXT"}
    assert kafka_client.faust_credentials(s) is None
    assert kafka_client.faust_broker_url(load({"KAFKA_BOOTSTRAP_SERVERS": "a:1, b:2"})) == "kafka://a:1;kafka://b:2"


@pytest.mark.parametrize("env, names", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
    ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM"),
    ({**SASL, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-1"}, "KAFKA_SASL_MECHANISM"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "ivr"}, "KAFKA_SASL_PASSWORD"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_PASSWORD": "x"}, "KAFKA_SASL_USERNAME"),
    ({"KAFKA_SASL_USERNAME": "ivr", "KAFKA_SASL_PASSWORD": "x"}, "KAFKA_SASL_USERNAME"),
    ({"KAFKA_SSL_CAFILE": "/etc/hostname"}, "KAFKA_SSL_CAFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "KAFKA_SSL_CAFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "/etc/hostname"}, "KAFKA_SSL_KEYFILE"),
    ({"KAFKA_NODES": "2"}, "KAFKA_NODES"),
])
def test_bad_security_settings_name_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        load(env)


def test_password_never_in_repr_or_log_form() -> None:
    s = load(SASL)
    assert "s3cret-pw" not in repr(s) and "s3cret-pw" not in str(s)
    assert "s3cret-pw" not in repr(kafka_client.faust_credentials(s))
    assert "s3cret-pw" not in str(kafka_client.redacted(kafka_client.aiokafka_kwargs(s)))


def test_sasl_defaults_to_plain_and_case_is_normalised() -> None:
    s = load({**SASL, "KAFKA_SECURITY_PROTOCOL": "sasl_plaintext"})
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_PLAINTEXT", "PLAIN")
    kw = kafka_client.aiokafka_kwargs(s)
    assert kw == {"bootstrap_servers": "localhost:9092", "security_protocol": "SASL_PLAINTEXT",
                  "sasl_mechanism": "PLAIN", "sasl_plain_username": "ivr", "sasl_plain_password": "s3cret-pw"}
    creds = kafka_client.faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials) and creds.protocol.value == "SASL_PLAINTEXT"
    assert (creds.username, creds.password, creds.mechanism.value) == ("ivr", "s3cret-pw", "PLAIN")


def test_sasl_ssl_scram_with_own_ca(pki: Pki) -> None:
    s = load({**SASL, "KAFKA_SASL_MECHANISM": "scram-sha-512", "KAFKA_SSL_CAFILE": str(pki.ca_file)})
    kw = kafka_client.aiokafka_kwargs(s, bootstrap="h:9")
    assert kw["bootstrap_servers"] == "h:9" and kw["security_protocol"] == "SASL_SSL"
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    context = kw["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ivr-stream test CA"),),)]
    creds = kafka_client.faust_credentials(s)
    assert isinstance(creds, faust.SASLCredentials) and creds.protocol.value == "SASL_SSL"
    assert creds.mechanism.value == "SCRAM-SHA-512" and creds.ssl_context is not None


def test_ssl_system_trust_store_and_mutual_tls(pki: Pki) -> None:
    system = kafka_client.aiokafka_kwargs(load({"KAFKA_SECURITY_PROTOCOL": "SSL"}))
    assert isinstance(system["ssl_context"], ssl.SSLContext) and "sasl_mechanism" not in system
    s = load({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(pki.ca_file),
              "KAFKA_SSL_CERTFILE": str(pki.client_cert), "KAFKA_SSL_KEYFILE": str(pki.client_key)})
    creds = kafka_client.faust_credentials(s)
    assert isinstance(creds, faust.SSLCredentials) and creds.protocol.value == "SSL"


def test_unreadable_client_key_is_a_setup_error(pki: Pki) -> None:
    s = load({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(pki.client_cert),
              "KAFKA_SSL_KEYFILE": str(pki.ca_file)})  # a certificate where the key should be
    with pytest.raises(kafka_client.KafkaSetupError, match="KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE"):
        kafka_client.aiokafka_kwargs(s)


def test_refusals_name_the_setting_and_what_the_broker_said() -> None:
    s = load({**SASL, "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    line = kafka_client.describe_refusal(s, "k:9093", SaslAuthenticationFailed("Authentication failed: invalid creds"))
    assert line is not None and "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD" in line and "invalid creds" in line
    assert "s3cret-pw" not in line
    line = kafka_client.describe_refusal(s, "k:9093", UnsupportedSaslMechanismError("enabled: ['PLAIN']"))
    assert line is not None and line.startswith("KAFKA_SASL_MECHANISM=SCRAM-SHA-512")
    cert_error = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert_error.verify_message = "unable to get local issuer certificate"
    line = kafka_client.describe_refusal(s, "k:9093", cert_error)
    assert line is not None and line.startswith("KAFKA_SSL_CAFILE") and "local issuer" in line
    # not up yet: the caller keeps retrying
    assert kafka_client.describe_refusal(s, "k:9093", KafkaConnectionError("refused")) is None
    assert kafka_client.describe_refusal(s, "k:9093", ConnectionRefusedError()) is None


def test_check_connection_returns_when_no_broker_listens() -> None:
    s = load({**SASL, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    asyncio.run(kafka_client.check_connection(s, timeout_s=2))  # broker not up: no verdict, no error


def _props(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_three_node_cluster_config(tmp_path: Path, pki: Pki) -> None:
    security = BrokerSecurity(pki.ca_file, pki.broker_keystore, (("ivr", "pw"),))
    cluster = KafkaCluster(tmp_path, 3, security=security)
    configs = [_props(n._write_config()) for n in cluster.nodes]
    voters = {c["controller.quorum.voters"] for c in configs}
    assert len(voters) == 1 and len(voters.pop().split(",")) == 3
    assert [c["node.id"] for c in configs] == ["1", "2", "3"]
    for c in configs:
        assert c["offsets.topic.replication.factor"] == "3" and c["default.replication.factor"] == "3"
        assert c["min.insync.replicas"] == "2" and c["transaction.state.log.min.isr"] == "2"
        assert c["ssl.keystore.type"] == "PEM" and c["listener.name.ssl.ssl.client.auth"] == "required"
        assert "SASL_SSL://localhost:" in c["advertised.listeners"]
    single = _props(KafkaBroker(tmp_path / "one")._write_config())
    assert single["offsets.topic.replication.factor"] == "1" and single["min.insync.replicas"] == "1"
    assert "SASL_SSL" not in single["listeners"]
