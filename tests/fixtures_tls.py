"""A test PKI and TLS-only throw-away servers (PostgreSQL, MariaDB, Redis).

``tls_pki`` (session): a CA made here with ``cryptography``, a server certificate it signs for
``localhost`` and ``127.0.0.1``, a second CA that signed nothing of ours (the "wrong CA"), and a
certificate of the right CA for another host name only. EC P-256 keys: made in milliseconds.

The servers accept TLS only, so a test that passes proves the connection was encrypted:
PostgreSQL with ``hostssl`` lines alone in its pg_hba.conf, MariaDB with
``require_secure_transport=ON`` (the unix socket stays open for the fixture's own setup),
Redis with ``port 0`` and a ``tls-port``. One server per kind for the session.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.fixtures_cloud import _moto_server_binary
from tests.fixtures_gcs import fake_gcs_server_binary
from tests.fixtures_mysql import MySQLServer, _running
from tests.fixtures_postgres import PostgresServer, _server_fixture
from tests.fixtures_redis import RedisServer, start_redis
from tests.servers import free_port, serving, shared_tmpdir

OTHER_NAME = "db.other.test"


@dataclass
class TlsPKI:
    dir: Path
    ca: Path  # the CA that signed the servers' certificates
    wrong_ca: Path  # a CA that signed nothing of ours
    server_cert: Path  # localhost, 127.0.0.1
    server_key: Path
    other_cert: Path  # signed by ca, names OTHER_NAME only
    other_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.chmod(0o644)


def _make_ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, names: list[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_pki(directory: Path) -> TlsPKI:
    ca_key, ca_cert = _make_ca("genesis-dr test CA")
    _, wrong_cert = _make_ca("genesis-dr wrong CA")
    server_key, server_cert = _make_leaf(ca_key, ca_cert, ["localhost", "127.0.0.1"])
    other_key, other_cert = _make_leaf(ca_key, ca_cert, [OTHER_NAME])
    pki = TlsPKI(
        dir=directory,
        ca=directory / "ca.pem",
        wrong_ca=directory / "wrong-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        other_cert=directory / "other.pem",
        other_key=directory / "other.key",
    )
    _write_cert(ca_cert, pki.ca)
    _write_cert(wrong_cert, pki.wrong_ca)
    _write_cert(server_cert, pki.server_cert)
    _write_key(server_key, pki.server_key)
    _write_cert(other_cert, pki.other_cert)
    _write_key(other_key, pki.other_key)
    return pki


@pytest.fixture(scope="session")
def tls_pki() -> Iterator[TlsPKI]:
    directory = shared_tmpdir("gdr-pki-")
    try:
        yield make_pki(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_tls_server(tls_pki: TlsPKI) -> Iterator[PostgresServer]:
    """PostgreSQL that takes TCP logins over TLS only (hostssl), replication included."""
    conf = shared_tmpdir("gdr-pg-tls-conf-")
    # The server (user postgres) refuses a key readable by others or owned by someone else.
    key = conf / "server.key"
    shutil.copy(tls_pki.server_key, key)
    key.chmod(0o600)
    shutil.chown(key, "postgres")
    hba = conf / "pg_hba.conf"
    hba.write_text(
        "local all all trust\n"
        "hostssl all all 127.0.0.1/32 scram-sha-256\n"
        "hostssl replication all 127.0.0.1/32 scram-sha-256\n"
    )
    hba.chmod(0o644)
    options = (
        f"-c ssl=on -c ssl_cert_file={tls_pki.server_cert} -c ssl_key_file={key} -c ssl_ca_file={tls_pki.ca}"
        f" -c hba_file={hba}"
    )
    yield from _server_fixture("gdr-pg-tls-", options, conf_dir=conf)


# ---------------------------------------------------------------------------------------- MariaDB


@pytest.fixture(scope="session")
def mysql_tls_server(tls_pki: TlsPKI) -> Iterator[MySQLServer]:
    """MariaDB (binlog on) that refuses TCP connections without TLS."""
    extra = (
        f"--ssl-ca={tls_pki.ca}",
        f"--ssl-cert={tls_pki.server_cert}",
        f"--ssl-key={tls_pki.server_key}",
        "--require-secure-transport=ON",
    )
    with _running(binlog=True, extra=extra) as server:
        yield server


# ---------------------------------------------------------------------------------------- Redis


class RedisTLSServer(RedisServer):
    """A redis-server listening on a TLS port only (``port 0``)."""

    def client(self, db: int = 0, **kwargs: Any):
        import redis

        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            db=db,
            ssl=True,
            ssl_ca_certs=str(self.ca),
            ssl_certfile=str(self.client_cert),
            ssl_keyfile=str(self.client_key),
            **kwargs,
        )


@pytest.fixture(scope="session")
def redis_tls_server(tls_pki: TlsPKI) -> Iterator[RedisTLSServer]:
    started = start_redis(
        tls=True,
        tls_cert_file=str(tls_pki.server_cert),
        tls_key_file=str(tls_pki.server_key),
        tls_ca_cert_file=str(tls_pki.ca),
        tls_auth_clients="no",
    )
    server = RedisTLSServer(started.port, None, started.dir, started.proc)
    server.ca = tls_pki.ca
    # The fixture's own client presents a certificate, so tests may turn tls-auth-clients on.
    server.client_cert, server.client_key = tls_pki.other_cert, tls_pki.other_key
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------- object stores over HTTPS


@pytest.fixture(scope="module")
def moto_https(tls_pki, tmp_path_factory) -> Iterator[str]:
    """moto over HTTPS with the test CA's certificate for 127.0.0.1."""
    port = free_port()
    argv = [
        _moto_server_binary(),
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
        "-c",
        str(tls_pki.server_cert),
        "-k",
        str(tls_pki.server_key),
    ]
    with serving(argv, port, tmp_path_factory.mktemp("moto-https") / "moto.log"):
        yield f"https://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gcs_https(tls_pki, tmp_path_factory) -> Iterator[str]:
    """fake-gcs-server over HTTPS with the test CA's certificate for 127.0.0.1."""
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    argv = [fake_gcs_server_binary(), "-scheme", "https", "-backend", "memory", "-host", "127.0.0.1"]
    argv += ["-port", str(port), "-external-url", url, "-log-level", "warn"]
    argv += ["-cert-location", str(tls_pki.server_cert), "-private-key-location", str(tls_pki.server_key)]
    with serving(argv, port, tmp_path_factory.mktemp("gcs-https") / "gcs.log", timeout=30):
        yield url
