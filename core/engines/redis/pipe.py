"""Deep pipelines on one plain connection: SCAN + DUMP + PTTL for every key.

redis-py packs each command in Python and parses replies one call at a time;
for a million keys (two million commands) that alone took half a minute.
Here commands are formatted as bytes, written a batch at a time together
with the next ``SCAN``, and replies are parsed by hiredis (C) when it is
installed (the pinned dependency), else by ``redis_sync.RespSocket``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

from core.engines.redis.sync import RespError, connection_reason, open_link, transient_os_error
from core.errors import EngineError, SourceUnavailableError, redact
from core.tls import TLSConfig

try:
    import hiredis
except ImportError:  # pragma: no cover - the pure-Python parser below still works
    hiredis = None

SCAN_COUNT = 1000
# A batch is sized to hold about this much of DUMP payloads (judged by the largest seen so far),
# so neither the server's output buffer nor ours grows with the values.
BATCH_BYTES = 8 << 20
RECV_SIZE = 1 << 18


def command(*args: bytes | str | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespPipe:
    """One connection, logged in and on database ``db``."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None,
        password: str | None,
        db: int,
        label: str,
        tls_config: TLSConfig | None = None,
        name: str = "",
    ) -> None:
        self.label = label
        self._secrets = [password]
        self.sock = open_link(host, port, label, tls_config, name)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = hiredis.Reader(replyError=RespError) if hiredis is not None else None
        self._fallback = None
        if self._reader is None:
            from core.engines.redis.sync import RespSocket

            self._fallback = RespSocket(self.sock)
        try:
            if password:
                self.call("AUTH", *([username] if username else []), password)
            if db:
                self.call("SELECT", db)
        except BaseException:
            self.close()
            raise

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: {connection_reason(exc)}", transient=transient_os_error(exc)
            ) from None

    def _reply(self) -> Any:
        """The next reply; an error reply is returned as a ``RespError``, not raised."""
        try:
            if self._fallback is not None:
                try:
                    return self._fallback.read_reply()
                except RespError as exc:
                    return exc
            while True:
                reply = self._reader.gets()
                if reply is not False:
                    return reply
                data = self.sock.recv(RECV_SIZE)
                if not data:
                    raise ConnectionResetError("peer closed the connection")
                self._reader.feed(data)
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: {connection_reason(exc)}", transient=transient_os_error(exc)
            ) from None

    def _check(self, reply: Any, what: str) -> Any:
        if isinstance(reply, RespError):
            text = redact(str(reply), self._secrets)
            upper = text.upper()
            if upper.startswith(("WRONGPASS", "NOAUTH")):
                raise SourceUnavailableError(f"{self.label}: login refused; check username/password in the stack file")
            if upper.startswith("NOPERM"):
                raise SourceUnavailableError(f"{self.label}: the user may not run {what}; grant it in the server's ACL")
            if upper.startswith("LOADING"):
                raise SourceUnavailableError(
                    f"{self.label}: the server is still loading its dataset; try again once it has finished",
                    transient=True,
                )
            raise EngineError(f"{self.label}: {what} failed: {text[:200]}")
        return reply

    def call(self, *args: bytes | str | int) -> Any:
        self._send(command(*args))
        return self._check(self._reply(), str(args[0]))

    def execute(self, commands: bytes, count: int) -> list[Any]:
        """Send ``count`` pre-formatted commands at once; their replies, error replies as ``RespError``."""
        self._send(commands)
        return [self._reply() for _ in range(count)]

    def scan_dump(self, count: int = SCAN_COUNT) -> Iterator[tuple[bytes, int, bytes]]:
        """(key, pttl, DUMP payload) of every key of the database; keys gone
        between ``SCAN`` and ``DUMP`` are skipped (see ``redis_logical``)."""
        step = 16  # grows once the payloads are known to be small
        self._send(command("SCAN", 0, "COUNT", count))
        cursor, keys = self._check(self._reply(), "SCAN")
        pending: list[bytes] = []
        while True:
            pending.extend(keys)
            batch, pending = pending[:step], pending[step:]
            more = cursor != b"0"
            out = [
                b"*2\r\n$4\r\nDUMP\r\n$%d\r\n%s\r\n*2\r\n$4\r\nPTTL\r\n$%d\r\n%s\r\n" % (len(k), k, len(k), k)
                for k in batch
            ]
            # The next page is asked for with this batch, once the pending keys run low.
            ask = more and len(pending) < count
            if ask:
                out.append(command("SCAN", cursor, "COUNT", count))
            if out:
                self._send(b"".join(out))
            largest = 1
            for key in batch:
                payload = self._check(self._reply(), "DUMP")
                pttl = self._check(self._reply(), "PTTL")
                if payload is None or pttl == -2:
                    continue
                largest = max(largest, len(payload))
                yield key, pttl, payload
            if batch:
                step = max(1, min(4 * count, BATCH_BYTES // largest))
            if ask:
                cursor, keys = self._check(self._reply(), "SCAN")
            else:
                keys = []
                if not more and not pending:
                    return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RespPipe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
