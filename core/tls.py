"""Transport security to a source: one model for PostgreSQL, MariaDB/MySQL and Redis.

Verification is on by default: a source with ``tls:`` is reached only over TLS,
its certificate checked against ``ca_file`` (or the system's CA store) and its
name against the host (``verify-full``). ``verify-ca`` skips the name check
(a server reached by address whose certificate names a host), ``require``
encrypts without checking (refused unless asked for by name). Client
certificates (``cert_file`` + ``key_file``) authenticate us where the server
asks for them. Files are read at run time on the host that runs the flow; none
of them is a secret stored in Prefect (a client key's path is, not the key).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from core.errors import TLSError

TlsMode = Literal["require", "verify-ca", "verify-full"]


class TLSConfig(BaseModel):
    """TLS to a source server, verified by default (``mode: verify-full``)."""

    model_config = ConfigDict(extra="forbid")
    mode: TlsMode = Field(
        "verify-full",
        description="verify-full (default: the certificate chains to ca_file and names the host), verify-ca "
        "(chains to ca_file, any name) or require (encrypted, not verified: only where nothing else is possible).",
    )
    ca_file: str | None = Field(
        None, description="PEM file of the CA(s) that sign the server's certificate (default: the system's CA store)."
    )
    cert_file: str | None = Field(None, description="PEM client certificate, where the server asks for one.")
    key_file: str | None = Field(None, description="PEM private key of cert_file (a path; the file stays on the host).")
    server_name: str | None = Field(
        None,
        description="The name the certificate must carry, when it differs from host (e.g. host is an address).",
    )

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both (a client certificate) or neither")
        return self

    @property
    def verify(self) -> bool:
        return self.mode != "require"

    @property
    def check_hostname(self) -> bool:
        return self.mode == "verify-full"


# ---------------------------------------------------------------------------------------------- helpers

# Where a verify-* connection without ca_file finds the system's CAs. libpq's own "system" value needs
# libpq 16; a file path works for every client (libpq 15's tools, psycopg's bundled libpq, the MariaDB client).
_SYSTEM_CA_PATHS = (
    ssl.get_default_verify_paths().cafile,
    ssl.get_default_verify_paths().openssl_cafile,
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
)


def system_ca_file() -> str | None:
    """The system's CA bundle (a PEM file), or None when this host has none."""
    for path in _SYSTEM_CA_PATHS:
        if path and os.path.isfile(path):
            return path
    return None


def ca_of(tls: TLSConfig) -> str | None:
    """The CA file a verified connection checks against: ca_file, else the system's bundle."""
    return tls.ca_file or system_ca_file()


class _NamedContext(ssl.SSLContext):
    """A client context that checks (and sends as SNI) ``expected_name`` whatever name the library that
    wraps the socket passes: pymysql and redis-py pass the host they connect to."""

    expected_name: str | None = None

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        if self.expected_name:
            kwargs["server_hostname"] = self.expected_name
        return super().wrap_socket(sock, *args, **kwargs)


def ssl_context(tls: TLSConfig, where: str = "") -> ssl.SSLContext:
    """An SSLContext verifying per ``tls.mode``: the chain against ca_file (or the system store), the name
    (tls.server_name, else the host the caller connects to) under verify-full; the client certificate
    loaded where one is configured. Files are read here, so a missing or unreadable one fails before any
    connection (TLSError naming ``where``, e.g. "mysql 'app-db'", and the field)."""
    prefix = f"{where}: " if where else ""
    ctx = _NamedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.expected_name = tls.server_name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.check_hostname
    if tls.verify:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if tls.ca_file:
                ctx.load_verify_locations(cafile=tls.ca_file)
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(
                f"{prefix}tls.ca_file {tls.ca_file}: {_file_problem(exc)}; give a PEM file of the CA"
            ) from None
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file and tls.key_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSError(
                f"{prefix}tls.cert_file {tls.cert_file} / tls.key_file: {_file_problem(exc)}; give the PEM client "
                "certificate and its private key"
            ) from None
    return ctx


def _file_problem(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "not readable by this user"
    return "not a valid PEM file"


def server_name(tls: TLSConfig, host: str) -> str:
    """The name the certificate must carry: tls.server_name, else the host we connect to."""
    return tls.server_name or host


def resolve_address(host: str) -> str:
    """An IP address of ``host`` (itself when already one): libpq's hostaddr takes addresses only."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        return host  # libpq then reports the unknown host itself


def postgres_tls(tls: TLSConfig | None, sslmode: str | None) -> TLSConfig | None:
    """The TLS a PostgreSQL source asks for: ``tls:`` wins; the older ``sslmode`` string still works
    (verify-ca/verify-full without tls: libpq's own root certificate where it has one, PGSSLROOTCERT or
    ~/.postgresql/root.crt, else the system CA store; disable/allow/prefer: libpq's own behaviour)."""
    if tls is not None:
        return tls
    if sslmode in ("require", "verify-ca", "verify-full"):
        return TLSConfig(mode=sslmode)
    return None


def libpq_params(tls: TLSConfig | None, host: str | None = None, sslmode: str | None = None) -> dict[str, str]:
    """libpq connection parameters for ``tls`` (verify-full by default): sslmode, sslrootcert, sslcert,
    sslkey; and, with a server_name, host=server_name + hostaddr=<address of host> (libpq checks the
    certificate against ``host`` and connects to ``hostaddr``). ``sslmode`` alone (no tls) passes through."""
    resolved = postgres_tls(tls, sslmode)
    if resolved is None:
        return {"sslmode": sslmode} if sslmode else {}
    out = {"sslmode": resolved.mode}
    ca = ca_of(resolved) if resolved.verify else None
    if tls is None and _libpq_finds_root_cert():
        ca = None  # sslmode alone: libpq's own root certificate, as stacks written before tls: relied on
    if ca:
        out["sslrootcert"] = ca
    if resolved.cert_file and resolved.key_file:
        out["sslcert"] = resolved.cert_file
        out["sslkey"] = resolved.key_file
    if resolved.server_name and host:
        out["host"] = resolved.server_name
        out["hostaddr"] = resolve_address(host)
    return out


def _libpq_finds_root_cert() -> bool:
    """Whether libpq finds a root certificate by itself (PGSSLROOTCERT, ~/.postgresql/root.crt)."""
    return bool(os.environ.get("PGSSLROOTCERT")) or os.path.isfile(os.path.expanduser("~/.postgresql/root.crt"))


_LIBPQ_ENV = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
}


def libpq_env(params: dict[str, str]) -> dict[str, str]:
    """The same parameters as libpq environment variables (PGSSLMODE, ...) for the command-line tools."""
    return {_LIBPQ_ENV[k]: v for k, v in params.items()}


def pymysql_ssl(tls: TLSConfig | None, where: str = "") -> dict[str, Any]:
    """pymysql.connect keyword arguments for ``tls`` (none without it)."""
    if tls is None:
        return {}
    # An SSLContext of ours: pymysql's own ssl_* options cannot check a name other than host.
    return {"ssl": ssl_context(tls, where)}


def mysql_tool_args(tls: TLSConfig | None) -> list[str]:
    """MariaDB/MySQL client flags (mariadb, mariadb-dump, mariadb-binlog) for ``tls``: --ssl always,
    --ssl-verify-server-cert under verify-full (the client checks the chain whenever given --ssl-ca)."""
    if tls is None:
        return []
    args = ["--ssl"]
    ca = ca_of(tls) if tls.verify else None
    if ca:
        args.append(f"--ssl-ca={ca}")
    if tls.cert_file and tls.key_file:
        args += [f"--ssl-cert={tls.cert_file}", f"--ssl-key={tls.key_file}"]
    # The clients check the name against --host only: with a server_name the tools check the chain and the
    # name is checked by the engine's own (pymysql) session to the same server, opened before every tool.
    if tls.check_hostname and not tls.server_name:
        args.append("--ssl-verify-server-cert")
    return args


def redis_kwargs(tls: TLSConfig | None) -> dict[str, Any]:
    """redis.Redis keyword arguments for ``tls`` (none without it)."""
    if tls is None:
        return {}
    out: dict[str, Any] = {
        "ssl": True,
        "ssl_cert_reqs": "required" if tls.verify else "none",
        "ssl_check_hostname": tls.check_hostname,
        "ssl_min_version": ssl.TLSVersion.TLSv1_2,
    }
    if tls.verify:
        out["ssl_ca_certs"] = ca_of(tls)
    if tls.cert_file and tls.key_file:
        out["ssl_certfile"] = tls.cert_file
        out["ssl_keyfile"] = tls.key_file
    return out


def redis_client(tls: TLSConfig | None, name: str, kind: str = "redis", **kwargs: Any) -> Any:
    """A ``redis.Redis`` (``kwargs`` as for it) to source ``name``, over TLS per ``tls``, verified by our own
    SSLContext so a ``server_name`` is both the SNI and the name checked (redis-py checks ``host`` only).
    A refused handshake raises TLSError at once: redis-py would otherwise retry it as a lost connection."""
    import redis

    client = redis.Redis(**kwargs, **redis_kwargs(tls))
    if tls is not None:
        pool = client.connection_pool
        pool.connection_class = _verified_connection_class()
        # Built (and its files read) now: a missing CA file fails here, once, naming the source.
        pool.connection_kwargs["tls_context"] = ssl_context(tls, f"{kind} '{name}'")
        pool.connection_kwargs["tls_source"] = (name, kind, tls)
    return client


_VERIFIED: list[type] = []


def _verified_connection_class() -> type:
    if not _VERIFIED:
        from redis.connection import SSLConnection

        class VerifiedSSLConnection(SSLConnection):
            """redis-py's TLS connection with the handshake done by ``ssl_context`` (the name checked is
            tls.server_name or host)."""

            def __init__(
                self, tls_context: ssl.SSLContext, tls_source: tuple[str, str, TLSConfig], **kwargs: Any
            ) -> None:
                self.tls_context = tls_context
                self.tls_source = tls_source
                super().__init__(**kwargs)

            def _wrap_socket_with_ssl(self, sock: socket.socket) -> ssl.SSLSocket:
                # The handshake within the connect timeout, not the (long) read timeout: a plain server
                # never answers a ClientHello.
                sock.settimeout(self.socket_connect_timeout)
                try:
                    wrapped = handshake(self.tls_context, sock, self.host)
                except ssl.SSLError as exc:
                    sock.close()
                    name, kind, tls = self.tls_source
                    raise tls_error(name, f"{self.host}:{self.port}", exc, tls, kind) from None
                wrapped.settimeout(self.socket_timeout)
                return wrapped

        _VERIFIED.append(VerifiedSSLConnection)
    return _VERIFIED[0]


class NoTLSAnswer(ssl.SSLError):
    """The server did not answer our ClientHello: it speaks no TLS on that port (a plain Redis waits for a
    line that never comes). An SSLError, not a timeout, so no client library retries it."""


def handshake(ctx: ssl.SSLContext, sock: socket.socket, host: str) -> ssl.SSLSocket:
    """``ctx.wrap_socket`` with a silent peer reported as ``NoTLSAnswer``."""
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except TimeoutError:
        raise NoTLSAnswer(f"server does not support SSL: no answer to the TLS handshake from {host}") from None


def wrap_socket(sock: socket.socket, tls: TLSConfig | None, host: str, where: str = "") -> socket.socket:
    """``sock`` over TLS per ``tls`` (itself without): the handshake happens here, so its failures
    (``ssl.SSLError``) come from this call."""
    if tls is None:
        return sock
    try:
        return handshake(ssl_context(tls, where), sock, server_name(tls, host))
    except BaseException:
        sock.close()
        raise


# ---------------------------------------------------------------------------------------------- errors

_NOT_SIGNED = (
    "certificate verify failed",
    "unable to get local issuer certificate",
    "self-signed certificate",
    "self signed certificate",
    "unable to get issuer certificate",
    "certificate signature failure",
)
# The server's alerts about our client certificate (a server that asks for one: tls-auth-clients, clientcert).
_CLIENT_REFUSED = (
    "alert unknown ca",
    "alert bad certificate",
    "alert certificate required",
    "alert access denied",
    # TLS 1.2: a server that requires a client certificate and got none ends the handshake with this one.
    "alert handshake failure",
)
_WRONG_NAME = (
    "does not match host name",
    "hostname mismatch",
    "ip address mismatch",
    "doesn't match",
    "does not match",
    "certificate is not valid for",
    "match host name",
)
_NO_TLS = (
    "server does not support ssl",  # libpq, and our NoTLSAnswer
    "ssl is required but the server doesn't support it",  # pymysql
    "ssl connection error: ssl is required",  # the MariaDB client tools
)
# What a plain server's reply to a ClientHello looks like from the TLS layer: handshake-only errors (an EOF
# is not one of them: a TLS session the server drops mid-query says that too, and that may pass by itself).
_PLAIN_REPLY = ("wrong version number", "record layer failure", "packet length too long")
_EXPIRED = ("certificate has expired", "certificate is not yet valid")
_FILE = (
    'root certificate file "',
    "could not read root certificate",
    "could not load private key",
    "could not open certificate",
)


def tls_problem(exc: BaseException | str) -> str | None:
    """Which TLS failure ``exc`` (an ssl, libpq, pymysql or redis error, or a tool's stderr) reports:
    'not-signed', 'wrong-name', 'expired', 'client-refused', 'no-tls', 'file', or None when it is not one."""
    text = (exc if isinstance(exc, str) else _chain_text(exc)).lower()
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify failed" in text:
        if any(m in text for m in _WRONG_NAME):
            return "wrong-name"
        if any(m in text for m in _EXPIRED):
            return "expired"
        return "not-signed"
    if any(m in text for m in _WRONG_NAME) and ("certificate" in text or "ssl" in text or "tls" in text):
        return "wrong-name"
    if any(m in text for m in _EXPIRED):
        return "expired"
    if any(m in text for m in _CLIENT_REFUSED):
        return "client-refused"
    if any(m in text for m in _NOT_SIGNED):
        return "not-signed"
    if any(m in text for m in _FILE):
        return "file"
    if any(m in text for m in _NO_TLS) or ("ssl" in text and any(m in text for m in _PLAIN_REPLY)):
        return "no-tls"
    return None


def _chain_text(exc: BaseException) -> str:
    parts, seen = [], set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return " | ".join(parts)


def tls_error(
    source_name: str, host: str, exc: BaseException | str, tls: TLSConfig | None = None, kind: str = "source"
) -> TLSError:
    """One line for a TLS failure of ``source_name`` at ``host`` (host:port) with its remedy. Never
    carries key material: only file paths and the names the server's certificate is checked for."""
    problem = tls_problem(exc) or "other"
    name_only = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    expected = tls.server_name if tls and tls.server_name else name_only
    ca = (tls.ca_file if tls else None) or "the system CA store"
    if problem == "not-signed":
        reason = f"certificate of {host} is not signed by {ca}: set tls.ca_file to the CA that signed it"
    elif problem == "wrong-name":
        reason = (
            f"certificate of {host} does not name {expected}: set tls.server_name to a name it carries or connect "
            "by the name it carries (mode: verify-ca skips the name check)"
        )
    elif problem == "expired":
        reason = f"certificate of {host} has expired or is not yet valid: renew the server's certificate"
    elif problem == "client-refused":
        reason = (
            f"server at {host} refused our client certificate (or its absence): set tls.cert_file and tls.key_file "
            "to a certificate signed by a CA the server trusts"
        )
    elif problem == "no-tls":
        reason = f"server at {host} offers no TLS: enable ssl on the server or remove tls:"
    elif problem == "file":
        reason = f"{_unreadable(tls)}: give a readable PEM file there (or remove the field)"
    else:
        reason = f"TLS handshake with {host} failed ({_short(exc)}): check the server's TLS settings and tls:"
    return TLSError(f"{kind} '{source_name}': {reason}")


def _unreadable(tls: TLSConfig | None) -> str:
    """Which configured TLS file this host cannot read, e.g. 'tls.ca_file /etc/x.pem: no such file'."""
    for field in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, field, None) if tls else None
        if path and not os.access(path, os.R_OK):
            return f"tls.{field} {path}: {'not readable by this user' if os.path.exists(path) else 'no such file'}"
    return "a TLS file (tls.ca_file, tls.cert_file or tls.key_file) could not be read"


def _short(exc: BaseException | str) -> str:
    text = exc if isinstance(exc, str) else str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[-1] if lines else type(exc).__name__
    # Never echo PEM content (a key file given where a cert belongs would otherwise show up here).
    if "-----BEGIN" in line:
        return "PEM content withheld"
    return line[:160]


# ---------------------------------------------------------------------------------------------- HTTPS endpoints

_LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (127.0.0.0/8, ::1, localhost): traffic to it never crosses a network."""
    if host.lower() in _LOOPBACK_NAMES or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str) -> str:
    """An object-store or cloud API endpoint: https, or plain http to this machine only (a test server or
    emulator on loopback, where nothing crosses a network). Raises ValueError (the config loaders turn it
    into the field's message) for http to any other host or a scheme that is neither."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https":
        return url
    if parts.scheme == "http" and parts.hostname and is_loopback(parts.hostname):
        return url
    if parts.scheme == "http":
        raise ValueError(
            f"{url} is plain http to another host: backups and credentials would cross the network unencrypted; "
            "use https:// (with ca_file for a private CA). http:// is accepted only for a test server on this "
            "machine (127.0.0.1, ::1, localhost)"
        )
    raise ValueError(f"{url} is not an http(s) URL; give https://host[:port]")


def _endpoint_field(url: str | None) -> str | None:
    return check_endpoint(url) if url else url


# An endpoint field of a config: refused when the stack is loaded (and again where it is used, as a copy of a
# config may skip validation), so `genesis-dr apply` names a plain-http endpoint before anything runs.
EndpointUrl = Annotated[str | None, AfterValidator(_endpoint_field)]


def https_verify(ca_file: str | None) -> str | None:
    """botocore's ``verify=``: the CA file, else None, its default, which verifies against AWS_CA_BUNDLE or the
    system's store. Never False: certificates of object stores and cloud APIs are always checked."""
    return ca_file or None


def check_ca_file(where: str, ca_file: str | None) -> None:
    """Refuse a ``ca_file`` this host cannot use before any request is sent (TLSError naming ``where`` and the
    field): otherwise every request would fail its handshake with a less telling message. Read here, at run
    time, on the host that runs the flow, as the sources' ``tls.ca_file`` is."""
    if not ca_file:
        return
    try:
        ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(
            f"{where}: ca_file {ca_file}: {_file_problem(exc)}; give a PEM file of the CA that signed the "
            "endpoint's certificate"
        ) from None


def https_error(
    where: str, url: str | None, exc: BaseException, ca_file: str | None, ca_setting: str = "ca_file"
) -> TLSError:
    """One line for an HTTPS certificate refused by us (botocore/requests SSLError), with the remedy.
    ``ca_setting``: what the operator sets to trust a private CA there (an AWS API client without a ca_file
    field of ours reads AWS_CA_BUNDLE)."""
    from urllib.parse import urlsplit

    if ca_file is None and ca_setting.isupper():  # an environment variable the client library reads itself
        ca_file = os.environ.get(ca_setting) or None
    host = urlsplit(url).netloc if url else "the endpoint"
    problem = tls_problem(exc)
    ca = ca_file or "the system CA store"
    if problem == "wrong-name":
        reason = f"the certificate of {host} does not name it: use the name the certificate carries in endpoint_url"
    elif problem == "file":
        reason = f"{ca_setting} {ca_file} cannot be read: give a readable PEM file of the CA"
    elif problem == "no-tls":
        reason = f"{host} does not speak HTTPS there: fix endpoint_url (scheme and port)"
    else:
        reason = f"the certificate of {host} is not signed by {ca}: set {ca_setting} to the CA that signed it"
    return TLSError(f"{where}: {reason}")
