"""How every Kafka client of the project connects: one place, built from `Settings`.

aiokafka clients (the ingress producer, the output producer, topic creation, the topic reader,
the simulator, the `ivr` CLI) take `aiokafka_kwargs(settings)`; the Faust worker (its consumer,
producer and admin) takes `faust_credentials(settings)` as `broker_credentials`. Both use the
libraries' own types (an `ssl.SSLContext` from aiokafka's helper, Faust's credential classes).

A bad password or an untrusted certificate will not fix itself: `check_connection` tells those
apart from a broker that is not up yet, so that a process stops at start with one line saying
which setting and what the broker said, instead of retrying for ever.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from aiokafka.errors import (
    AuthenticationFailedError,
    AuthenticationMethodNotSupported,
    IllegalSaslStateError,
    KafkaError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from config.settings import Settings

log = logging.getLogger("config.kafka")

_SASL_ERRORS = (SaslAuthenticationFailed, AuthenticationFailedError, IllegalSaslStateError)
_MECHANISM_ERRORS = (UnsupportedSaslMechanismError, AuthenticationMethodNotSupported)


class KafkaSetupError(KafkaError):  # type: ignore[misc]
    """The broker refused this client's credentials or certificates: retrying cannot help.

    A KafkaError, so that code which answers 503 for broker trouble does so for this as well."""


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (hostname checked; the system trust store unless
    KAFKA_SSL_CAFILE names a CA; a client certificate for mutual TLS); None without TLS."""
    if not settings.kafka_uses_ssl:
        return None
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None,
        )
        return context
    except ssl.SSLError as e:  # unreadable PEM, a key that does not match the certificate
        names = "KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE" if settings.kafka_ssl_certfile else "KAFKA_SSL_CAFILE"
        raise KafkaSetupError(f"{names}: cannot be loaded ({e.reason or e})") from None


def aiokafka_kwargs(settings: Settings, bootstrap: str | None = None) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (AIOKafkaProducer, AIOKafkaConsumer,
    AIOKafkaAdminClient): the brokers and the security settings. `bootstrap` overrides
    KAFKA_BOOTSTRAP_SERVERS (a command-line flag, say)."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": bootstrap or settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        kwargs["ssl_context"] = context
    if settings.kafka_uses_sasl:
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password
    return kwargs


def faust_credentials(settings: Settings) -> Any:
    """Faust's `broker_credentials` for the same settings (None for PLAINTEXT)."""
    import faust

    context = ssl_context(settings)
    if settings.kafka_uses_sasl:
        # SASLCredentials picks SASL_SSL when given a context, SASL_PLAINTEXT otherwise
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def faust_broker_url(settings: Settings) -> str:
    """KAFKA_BOOTSTRAP_SERVERS as Faust's broker list (`kafka://h1:p;kafka://h2:p`)."""
    hosts = [h.strip() for h in settings.kafka_bootstrap_servers.split(",") if h.strip()]
    return ";".join(f"kafka://{h}" for h in hosts)


def describe_refusal(settings: Settings, host: str, error: BaseException) -> str | None:
    """One line naming the setting at fault and what the broker said, when `error` is a refusal
    that retrying cannot cure; None when it may be a broker that is not up yet."""
    said = str(error).strip() or type(error).__name__
    where = f"Kafka at {host}"
    if isinstance(error, _SASL_ERRORS):
        return (f"KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD ({settings.kafka_sasl_mechanism}) rejected by {where}: "
                f"{said}")
    if isinstance(error, _MECHANISM_ERRORS):
        if "AIOKafkaConnection" in said:  # the handshake's error carries no message of its own
            said = f"{type(error).__name__}: the broker does not enable this mechanism on this listener"
        return f"KAFKA_SASL_MECHANISM={settings.kafka_sasl_mechanism} refused by {where}: {said}"
    if isinstance(error, ssl.SSLCertVerificationError):
        ca = settings.kafka_ssl_cafile or "the system trust store"
        return f"KAFKA_SSL_CAFILE: the certificate of {where} is not trusted by {ca}: {error.verify_message or said}"
    if isinstance(error, ssl.SSLError):
        cert = settings.kafka_ssl_certfile or "none given"
        return (f"KAFKA_SSL_CERTFILE/KAFKA_SSL_KEYFILE (client certificate: {cert}): TLS with {where} failed: "
                f"{error.reason or said}")
    return None


def _tls_cause(error: BaseException) -> BaseException:
    """aiokafka wraps a TLS alert read after the handshake (a client certificate refused under
    TLS 1.3) in a connection error: find the ssl.SSLError underneath."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return error


async def check_connection(settings: Settings, timeout_s: float = 10.0) -> None:
    """Connect and authenticate to each bootstrap broker in turn until one accepts.

    Raises KafkaSetupError (after logging its one line) when a broker refuses the credentials
    or the certificates; returns quietly when a broker accepts or none can be reached (not up
    yet: the caller's own retries deal with that)."""
    from aiokafka.conn import create_conn

    if settings.kafka_security_protocol == "PLAINTEXT":
        return  # nothing a plaintext broker could refuse
    kwargs = aiokafka_kwargs(settings)
    hosts = [h.strip() for h in settings.kafka_bootstrap_servers.split(",") if h.strip()]
    for hostport in hosts:
        host, _, port = hostport.rpartition(":") if not hostport.endswith("]") else (hostport, "", "")
        if not host:  # `host` alone: Kafka's default port
            host, port = hostport, ""
        try:
            conn = await asyncio.wait_for(create_conn(
                host.strip("[]"), int(port or 9092), client_id="ivr-check",
                request_timeout_ms=int(timeout_s * 1000),
                ssl_context=kwargs.get("ssl_context"), security_protocol=kwargs["security_protocol"],
                sasl_mechanism=kwargs.get("sasl_mechanism", "PLAIN"),
                sasl_plain_username=kwargs.get("sasl_plain_username"),
                sasl_plain_password=kwargs.get("sasl_plain_password"),
            ), timeout_s)
            # a refused client certificate (TLS 1.3) shows on the first request, not the handshake
            await asyncio.wait_for(conn.send(_metadata_request()), timeout_s)
        except (OSError, KafkaError, TimeoutError) as e:
            line = describe_refusal(settings, hostport, _tls_cause(e))
            if line is not None:
                log.error("%s", line)
                raise KafkaSetupError(line) from None
            continue
        conn.close()
        return


def _metadata_request() -> Any:
    from aiokafka.protocol.metadata import MetadataRequest

    return MetadataRequest([])


def redacted(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` fit for a log line: the password replaced."""
    return {k: ("***" if k == "sasl_plain_password" else v) for k, v in kwargs.items()}
