"""The Redis replication protocol, both sides, over plain (or, to a TLS source, TLS) sockets.

Backup plays a *replica*: ``PSYNC ? -1`` makes the master fork and send a
consistent RDB snapshot over the socket, so nothing has to be read from the
Redis host's disk. Restore plays a *master*: the target is told ``REPLICAOF``
us, asks for a full sync, and loads the RDB we stream to it.

Errors carry ``label`` (e.g. ``redis 'cache' at 10.0.0.5:6379``) and never a
secret: server error text is redacted before it is quoted.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core import tls
from core.engines.redis.rdb import ByteReader
from core.errors import TRANSIENT_OS_ERRORS, EngineError, SourceUnavailableError, redact
from core.tls import TLSConfig

CONNECT_TIMEOUT = 10.0
# Masters send a newline every second while they prepare the snapshot, and data
# flows after that, so a minute of silence means the link is dead.
IO_TIMEOUT = 60.0
RECV_SIZE = 1 << 18
EOF_MARK_LEN = 40


class RespError(Exception):
    """An error reply (``-ERR ...``) from the peer."""


class SyncRefusedError(EngineError):
    """The server will not replicate to us (managed services, an ACL without SYNC/PSYNC)."""


def connection_reason(exc: BaseException) -> str:
    """A short, secret-free reason for a socket-level failure."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "host name not found"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection reset by the server"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__


def transient_os_error(exc: BaseException) -> bool:
    """A socket failure that may pass by itself (refused, reset, timed out): the task retries it."""
    return isinstance(exc, TRANSIENT_OS_ERRORS)


def open_link(host: str, port: int, label: str, tls_config: TLSConfig | None, name: str) -> socket.socket:
    """A connected socket to the server, over TLS when ``tls_config`` says so (the handshake verified
    here: a refused certificate is a TLSError naming the source and the remedy), at ``IO_TIMEOUT``."""
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        raise SourceUnavailableError(
            f"{label}: {connection_reason(exc)}; check the server is running and host/port in the stack file",
            transient=transient_os_error(exc),
        ) from None
    if tls_config is not None:
        try:
            sock = tls.wrap_socket(sock, tls_config, host, label)
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise tls.tls_error(name, f"{host}:{port}", exc, tls_config, "redis") from None
        except OSError as exc:
            # A plain server closes or resets the link on our ClientHello: it does not speak TLS there.
            if isinstance(exc, ConnectionResetError | BrokenPipeError) or tls.tls_problem(exc):
                raise tls.tls_error(
                    name, f"{host}:{port}", "server does not support SSL", tls_config, "redis"
                ) from None
            raise SourceUnavailableError(
                f"{label}: {connection_reason(exc)} during the TLS handshake; check the server and tls: in the stack file",
                transient=transient_os_error(exc),
            ) from None
    sock.settimeout(IO_TIMEOUT)
    return sock


def readable(sock: socket.socket, timeout: float) -> bool:
    """Whether a recv on ``sock`` returns without waiting: TLS may hold decrypted bytes select cannot see."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], timeout)[0])


def is_auth_error(message: str) -> bool:
    upper = message.upper()
    return upper.startswith(("WRONGPASS", "NOAUTH", "NOPERM")) or "PASSWORD" in upper


class RespSocket:
    """A minimal RESP2 connection: commands out, replies and raw bytes in."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def send(self, *args: bytes | str | int) -> None:
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(parts))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def unread(self, data: bytes) -> None:
        """Put bytes read past a payload back in front of the buffer (the replication
        stream that follows a snapshot, when we keep the link)."""
        self._buf[:0] = data

    def _recv(self) -> bytes:
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionResetError("peer closed the connection")
        return data

    def read_line(self) -> bytes:
        """One line without its terminator (``\\r\\n`` or a bare ``\\n``)."""
        while True:
            idx = self._buf.find(b"\n")
            if idx >= 0:
                line = bytes(self._buf[:idx])
                del self._buf[: idx + 1]
                return line[:-1] if line.endswith(b"\r") else line
            self._buf += self._recv()

    def read_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += self._recv()
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def take_buffered(self) -> bytes:
        """What is buffered (possibly nothing), without reading the socket."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def read_some(self) -> bytes:
        """Buffered bytes first, then whatever one ``recv`` returns."""
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            return data
        return self._recv()

    def read_reply(self) -> Any:
        line = self.read_line()
        while not line:  # keepalive newlines (a master waiting for a BGSAVE)
            line = self.read_line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.read_exact(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read_reply() for _ in range(n)]
        raise EngineError(f"unexpected redis protocol line {line[:40]!r}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@dataclass
class SyncHeader:
    """What the master announced before the RDB payload."""

    replid: str
    offset: int
    redis_version: str
    length: int | None  # ``$<len>`` transfer
    eof_mark: bytes | None  # diskless ``$EOF:<mark>`` transfer
    # ``+CONTINUE``: no snapshot follows, the stream goes on after ``offset`` (a resumed link).
    continued: bool = False


class ReplicaSync:
    """One full synchronisation from a master, as a replica.

    ``announce_eof`` tells the master we accept the diskless format, so it
    streams the snapshot from a forked child straight to the socket and writes
    nothing to its own disk (the master's ``repl-diskless-sync`` decides).

    ``rdb_only`` (backups) asks for the snapshot alone; without it the master keeps
    streaming its commands after the snapshot (log capture). ``resume`` =
    ``(replid, offset)`` asks to continue after ``offset`` (``PSYNC replid offset+1``);
    ``header.continued`` says whether the master could, else a snapshot follows.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        label: str,
        announce_eof: bool = True,
        rdb_only: bool = True,
        resume: tuple[str, int] | None = None,
        tls_config: TLSConfig | None = None,
        name: str = "",
    ) -> None:
        self.label = label
        self._rdb_only = rdb_only
        self._resume = resume
        self._secrets = [password]
        sock = open_link(host, port, label, tls_config, name)
        self.conn = RespSocket(sock)
        try:
            self.header = self._handshake(username, password, announce_eof)
        except BaseException:
            self.conn.close()
            raise

    def _command(self, *args: str | int | bytes, tolerate: bool = False) -> Any:
        """Send one command and read its reply; ``tolerate``: None on an error reply."""
        try:
            self.conn.send(*args)
            return self.conn.read_reply()
        except RespError as exc:
            text = redact(str(exc), self._secrets)
            if is_auth_error(text) and (args[0] == "AUTH" or text.upper().startswith("NOAUTH")):
                raise SourceUnavailableError(
                    f"{self.label}: login refused ({text.split('.')[0]}); check username/password in the stack file"
                ) from None
            if tolerate:
                return None
            if args[0] == "REPLCONF" or text.upper().startswith("NOPERM"):
                raise SyncRefusedError(
                    f"{self.label}: the server refused a replication sync ({text[:200]}); "
                    "managed Redis services often do - use mode 'logical' for this source"
                ) from None
            raise EngineError(f"{self.label}: {args[0]} failed: {text[:200]}") from None
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: {connection_reason(exc)} during the handshake", transient=transient_os_error(exc)
            ) from None

    def _handshake(self, username: str | None, password: str | None, announce_eof: bool) -> SyncHeader:
        if password:
            self._command("AUTH", *([username] if username else []), password)
        info = self._command("INFO", "server").decode()
        version = _info_field(info, "redis_version")
        capas = ["capa", "eof", "capa", "psync2"] if announce_eof else ["capa", "psync2"]
        self._command("REPLCONF", *capas)
        if self._rdb_only:
            # Redis >= 7: no replication stream after the snapshot, and the master
            # does not keep us in its replica list. Older servers just refuse it.
            self._command("REPLCONF", "rdb-only", "1", tolerate=True)
        # A replica asks for the byte after the last one it has.
        wanted = (self._resume[0], self._resume[1] + 1) if self._resume else ("?", -1)
        try:
            self.conn.send("PSYNC", *wanted)
            reply = self.conn.read_reply()
        except RespError as exc:
            raise SyncRefusedError(
                f"{self.label}: the server refused a replication sync ({redact(str(exc), self._secrets)}); "
                "managed Redis services often do - use mode 'logical' for this source"
            ) from None
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: {connection_reason(exc)} waiting for the sync", transient=transient_os_error(exc)
            ) from None
        parts = str(reply).split()
        if self._resume and parts and parts[0] == "CONTINUE":
            # "+CONTINUE <new replid>" after a failover: the offsets go on under the new id.
            replid = parts[1] if len(parts) > 1 else self._resume[0]
            return SyncHeader(replid, self._resume[1], version, None, None, continued=True)
        if len(parts) != 3 or parts[0] != "FULLRESYNC":
            raise EngineError(f"{self.label}: unexpected reply to PSYNC: {str(reply)[:60]!r}")
        replid, offset = parts[1], int(parts[2])
        try:
            line = self.conn.read_line()
            while not line:  # keepalives while the master forks and saves
                line = self.conn.read_line()
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: {connection_reason(exc)} waiting for the snapshot", transient=transient_os_error(exc)
            ) from None
        if line.startswith(b"-"):
            raise EngineError(
                f"{self.label}: the snapshot failed: {redact(line[1:].decode(errors='replace'), self._secrets)}"
            )
        if line.startswith(b"$EOF:"):
            mark = line[5:]
            if len(mark) != EOF_MARK_LEN:
                raise EngineError(f"{self.label}: malformed diskless transfer header")
            return SyncHeader(replid, offset, version, None, mark)
        if line.startswith(b"$"):
            return SyncHeader(replid, offset, version, int(line[1:]), None)
        raise EngineError(f"{self.label}: unexpected snapshot header {line[:40]!r}")

    def payload_reader(self, on_consumed: Callable[[bytes], object]) -> ByteReader:
        """A reader over the RDB payload that tees consumed bytes to ``on_consumed``.

        With a ``$<len>`` transfer, reads never go past the payload; with the
        EOF-marker transfer the RDB's own end (checksum after the EOF opcode)
        delimits it, and ``finish`` checks the marker that follows.
        """
        remaining = [self.header.length]

        def fill() -> bytes:
            try:
                if remaining[0] is None:
                    return self.conn.read_some()
                if remaining[0] == 0:
                    return b""
                data = self.conn.read_some()
                if len(data) > remaining[0]:
                    # Only the replication stream (ignored) follows the payload.
                    data = data[: remaining[0]]
                remaining[0] -= len(data)
                return data
            except OSError as exc:
                raise SourceUnavailableError(
                    f"{self.label}: {connection_reason(exc)} while receiving the snapshot; "
                    "see the server's log (a failed fork or a full disk stops the transfer)",
                    transient=transient_os_error(exc),
                ) from None

        self._reader = ByteReader(fill, on_consumed)
        return self._reader

    def pump(self, on_data: Callable[[bytes], object]) -> int:
        """Hand the raw RDB payload to ``on_data`` as it arrives, without parsing it; returns its size.

        A ``$<len>`` transfer ends after ``len`` bytes; a diskless one where
        its 40-byte EOF marker appears (random per sync, so never inside
        the data: replicas find the end the same way).
        """
        conn = self.conn
        try:
            if self.header.length is not None:
                left = self.header.length
                while left:
                    data = conn.read_some()
                    if len(data) > left:
                        # The replication stream follows: kept for a capture that goes on reading.
                        conn.unread(data[left:])
                        data = data[:left]
                    left -= len(data)
                    on_data(data)
                return self.header.length
            mark = self.header.eof_mark
            assert mark is not None
            tail = b""
            size = 0
            while True:
                data = tail + conn.read_some()
                end = data.find(mark)
                if end >= 0:
                    on_data(data[:end])
                    conn.unread(data[end + EOF_MARK_LEN :])
                    return size + end
                keep = len(data) - EOF_MARK_LEN + 1
                if keep > 0:
                    on_data(data[:keep])
                    size += keep
                    tail = data[keep:]
                else:
                    tail = data
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: {connection_reason(exc)} while receiving the snapshot; "
                "see the server's log (a failed fork or a full disk stops the transfer)",
                transient=transient_os_error(exc),
            ) from None

    def finish(self) -> int:
        """Check the payload ended where the master said; returns its size."""
        reader = self._reader
        reader.flush()
        size = reader.consumed
        if self.header.length is not None:
            if size != self.header.length or reader.buffered():
                raise EngineError(
                    f"{self.label}: snapshot size mismatch (announced {self.header.length}, parsed {size})"
                )
            return size
        reader.stop_tee()  # the marker is framing, not part of the RDB
        if reader.read(EOF_MARK_LEN) != self.header.eof_mark:
            raise EngineError(f"{self.label}: the diskless snapshot did not end with its EOF marker")
        return size

    def close(self) -> None:
        self.conn.close()


def _info_field(info: str, name: str) -> str:
    for line in info.splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return "unknown"


class ReplicationMaster:
    """Serves one RDB to one replica (``start_sync``, then ``send``), then keeps the link open until told to stop.

    Listens on ``bind``; only a peer whose address is in ``allowed_peers``
    (when given) gets the data, since the snapshot is the whole dataset.
    """

    def __init__(self, bind: tuple[str, int], allowed_peers: set[str] | None, label: str) -> None:
        self.label = label
        self.allowed_peers = allowed_peers
        family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(bind)
        except OSError as exc:
            self.listener.close()
            raise EngineError(
                f"{label}: cannot listen on {bind[0]}:{bind[1]} to serve the snapshot ({exc.strerror}); "
                "set GENESIS_DR_REDIS_RESTORE_BIND to an address of this host the target can reach"
            ) from None
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.replica: RespSocket | None = None
        self.length = self.sent = 0

    def start_sync(self, length: int, accept_timeout: float) -> None:
        """Wait for the replica, answer its handshake and announce a ``length``-byte payload.

        The replica keeps its data until all ``length`` bytes have arrived
        (then it flushes and loads), so a transfer cut short leaves it as it was.
        """
        conn = self._accept(accept_timeout)
        self.replica = conn
        while True:
            try:
                command = conn.read_reply()
            except OSError as exc:
                raise EngineError(
                    f"{self.label}: the target dropped the replication handshake ({connection_reason(exc)})"
                ) from None
            if not isinstance(command, list) or not command:
                raise EngineError(f"{self.label}: unexpected data from the target during the handshake")
            name = bytes(command[0]).upper()
            if name == b"PING":
                conn.send_raw(b"+PONG\r\n")
            elif name in (b"AUTH", b"REPLCONF"):
                conn.send_raw(b"+OK\r\n")
            elif name in (b"PSYNC", b"SYNC"):
                if name == b"PSYNC":
                    # A fresh replication id: the restored server must never
                    # claim a partial-resync history with the original source.
                    conn.send_raw(b"+FULLRESYNC %s 0\r\n" % os.urandom(20).hex().encode())
                break
            else:
                conn.send_raw(b"-ERR genesis-dr restore master only serves a full sync\r\n")
        conn.send_raw(b"$%d\r\n" % length)
        self.length, self.sent = length, 0

    def send(self, data: bytes) -> None:
        """Send the next payload bytes (after ``start_sync``)."""
        assert self.replica is not None
        try:
            self.replica.send_raw(data)
        except OSError as exc:
            raise EngineError(
                f"{self.label}: the target dropped the link after {self.sent} of {self.length} bytes "
                f"({connection_reason(exc)}); see the target's log"
            ) from None
        self.sent += len(data)

    def _accept(self, timeout: float) -> RespSocket:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EngineError(
                    f"{self.label}: the target did not connect back to {self.listener.getsockname()[0]}:{self.port} "
                    f"within {timeout:.0f}s; set GENESIS_DR_REDIS_RESTORE_BIND/ADVERTISE to an address it can reach"
                )
            self.listener.settimeout(left)
            try:
                sock, peer = self.listener.accept()
            except TimeoutError:
                continue
            if self.allowed_peers is not None and peer[0] not in self.allowed_peers:
                sock.close()  # not the target: never hand the dataset to a stranger
                continue
            sock.settimeout(IO_TIMEOUT)
            return RespSocket(sock)

    def replica_alive(self) -> bool:
        """False once the replica closed the link (e.g. it failed to load)."""
        if self.replica is None:
            return False
        sock = self.replica.sock
        while True:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return True
            try:
                data = sock.recv(RECV_SIZE)  # REPLCONF ACKs: not needed
            except OSError:
                return False
            if not data:
                return False

    def close(self) -> None:
        """Drop the replica's link and stop listening; safe to call twice."""
        if self.replica is not None:
            try:
                self.replica.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.replica.close()
        self.listener.close()
