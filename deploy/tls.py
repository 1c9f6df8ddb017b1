"""A throw-away certificate authority for local TLS brokers and tests (needs `cryptography`).

Everything is PEM, the format both Kafka (`ssl.keystore.type=PEM`) and Python's ssl module read:
a CA, a broker certificate for `localhost` and `127.0.0.1` (hostname checking stays on), and a
client certificate for mutual TLS. Keys are unencrypted PKCS#8 files readable by the owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Pki:
    ca_file: Path  # the CA certificate: clients' KAFKA_SSL_CAFILE, the brokers' truststore
    broker_keystore: Path  # the broker's key and certificate chain in one PEM file
    client_cert: Path  # a client certificate signed by the CA (KAFKA_SSL_CERTFILE)
    client_key: Path  # its key (KAFKA_SSL_KEYFILE)


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _pem_cert(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _certificate(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool,
                 server: bool = False, client: bool = False) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
            decipher_only=False), critical=True)
    else:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_ca(folder: Path, name: str = "ivr-stream test CA") -> tuple[Path, Any, Any]:
    """A self-signed CA: its certificate file, certificate and key."""
    folder.mkdir(parents=True, exist_ok=True)
    key = _key()
    cert = _certificate(name, key, name, key, ca=True)
    return _write(folder / "ca.pem", _pem_cert(cert)), cert, key


def make_pki(folder: Path) -> Pki:
    """A CA, a broker certificate (localhost, 127.0.0.1) and a client certificate, under `folder`."""
    ca_file, ca_cert, ca_key = make_ca(folder)
    issuer = ca_cert.subject.rfc4514_string().removeprefix("CN=")
    broker_key = _key()
    broker = _certificate("localhost", broker_key, issuer, ca_key, ca=False, server=True, client=True)
    # the broker's keystore: its key, then its certificate chain (leaf first)
    keystore = _write(folder / "broker-keystore.pem", _pem_key(broker_key) + _pem_cert(broker) + _pem_cert(ca_cert),
                      private=True)
    client_key = _key()
    client = _certificate("ivr-client", client_key, issuer, ca_key, ca=False, client=True)
    return Pki(
        ca_file=ca_file,
        broker_keystore=keystore,
        client_cert=_write(folder / "client.pem", _pem_cert(client)),
        client_key=_write(folder / "client-key.pem", _pem_key(client_key), private=True),
    )
