"""A store that injects faults over a real store, for the retry and failure tests.

``FaultyStore`` wraps any store (local, S3 on moto, GCS on the emulator) and raises
an error instead of (``when="before"``: the request never arrived) or after
(``when="after"``: the request landed, its answer was lost) passing a call
through. The real store underneath is never patched: every call that is let
through does what it does in production.

``FaultProxy`` does the same one level down, on the wire: an HTTP server in front of
the moto server that answers chosen requests with an S3 error document (503
SlowDown, 500, 409, a 301 to another region, ...) or drops the connection, so the
S3 store's classification is tested on the responses botocore really parses.

Which calls fail:

* ``fail_every=N``: every Nth call of the chosen operations (``N=1``: all of them,
  a storm that outlasts any retry budget);
* ``first_call=True``: in each thread, the first call of every (operation, key)
  fails and later ones pass: under RetryingStore every operation on every object
  is retried once, whatever other threads do (a fault that recurred on every
  other call would also hit the read RetryingStore makes inside a retried create,
  and exhaust its attempts on a schedule no real service follows);
* ``schedule``: a callable ``(op, key, n) -> bool`` deciding call ``n`` (1-based, of
  the chosen operations) itself;
* ``after=N``: let the first N chosen calls through before faults start.

``injected`` counts the faults per operation name (``put``, ``create``, ``replace``,
``get``, ``get_versioned``, ``stat``, ``exists``, ``list``, ``children``,
``delete``, ``delete_if``, ``copy_from``).
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from core.errors import VaultError
from core.storage.base import ObjectInfo, Store, TransientStoreError

ALL_OPS = frozenset(
    {
        "put",
        "create",
        "replace",
        "get",
        "get_versioned",
        "stat",
        "exists",
        "list",
        "children",
        "delete",
        "delete_if",
        "copy_from",
    }
)
WRITE_OPS = frozenset({"put", "create", "replace", "delete", "delete_if", "copy_from"})


class FaultyStore(Store):
    """Injects ``error`` into chosen calls of ``inner``; see the module docstring."""

    def __init__(
        self,
        inner: Store,
        *,
        fail_every: int | None = None,
        first_call: bool = False,
        schedule: Callable[[str, str, int], bool] | None = None,
        error: type[VaultError] | Callable[[str, str], VaultError] = TransientStoreError,
        ops: Iterable[str] = ALL_OPS,
        when: str = "before",
        after: int = 0,
    ) -> None:
        if sum(x is not None and x is not False for x in (fail_every, schedule, first_call or None)) != 1:
            raise ValueError("give exactly one of fail_every, first_call, schedule")
        unknown = set(ops) - ALL_OPS
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}")
        if when not in ("before", "after"):
            raise ValueError("when is 'before' or 'after'")
        self.inner = inner
        self.ops = frozenset(ops)
        self.when = when
        self.after = after
        self._fail_every = fail_every
        self._first = first_call
        self._schedule = schedule
        self._error = error
        self._lock = threading.Lock()
        self._calls = 0
        self._local = threading.local()
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()  # calls per operation, faulted or not
        self.enabled = True

    @property
    def capabilities(self):  # type: ignore[override]
        return self.inner.capabilities

    @property
    def injected_total(self) -> int:
        return sum(self.injected.values())

    def _make_error(self, op: str, key: str) -> VaultError:
        if isinstance(self._error, type):
            return self._error(f"{self.inner.describe()}: injected fault in {op} {key} (SlowDown)")
        return self._error(op, key)

    def _should_fail(self, op: str, key: str) -> bool:
        with self._lock:
            self.calls[op] += 1
        if not self.enabled or op not in self.ops:
            return False
        if self._first:
            seen = self._local.__dict__.setdefault("seen", set())
            with self._lock:
                self._calls += 1
                if self._calls <= self.after:
                    return False
            if (op, key) in seen:
                return False
            seen.add((op, key))
            return True
        with self._lock:
            self._calls += 1
            n = self._calls - self.after
        if n <= 0:
            return False
        if self._schedule is not None:
            return self._schedule(op, key, n)
        return n % self._fail_every == 0

    def _run(self, op: str, key: str, fn: Callable):
        fail = self._should_fail(op, key)
        if fail and self.when == "before":
            with self._lock:
                self.injected[op] += 1
            raise self._make_error(op, key)
        result = fn()
        if fail:
            with self._lock:
                self.injected[op] += 1
            raise self._make_error(op, key)
        return result

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        self._run("put", key, lambda: self.inner.put(key, data, overwrite=overwrite))

    def create(self, key: str, data: bytes) -> str | None:
        return self._run("create", key, lambda: self.inner.create(key, data))

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        return self._run("replace", key, lambda: self.inner.replace(key, data, version=version))

    def get(self, key: str) -> bytes:
        return self._run("get", key, lambda: self.inner.get(key))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self._run("get_versioned", key, lambda: self.inner.get_versioned(key))

    def stat(self, key: str) -> ObjectInfo | None:
        return self._run("stat", key, lambda: self.inner.stat(key))

    def exists(self, key: str) -> bool:
        return self._run("exists", key, lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self._run("list", prefix, lambda: list(self.inner.list(prefix))))

    def children(self, prefix: str) -> list[str]:
        return self._run("children", prefix, lambda: self.inner.children(prefix))

    def delete(self, key: str) -> None:
        self._run("delete", key, lambda: self.inner.delete(key))

    def delete_if(self, key: str, version: str) -> bool:
        return self._run("delete_if", key, lambda: self.inner.delete_if(key, version))

    def copy_from(self, source: Store, key: str, dest_key: str | None = None) -> bool:
        return self._run("copy_from", key, lambda: self.inner.copy_from(source, key, dest_key))

    def close(self) -> None:
        self.inner.close()


# -- faults on the wire ---------------------------------------------------------------------------


@dataclass
class HTTPFault:
    """What the proxy answers instead of forwarding: an S3 error document (``status``, ``code``,
    extra ``headers`` and error fields), or a dropped connection (``reset=True``)."""

    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    headers: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)
    reset: bool = False

    def body(self) -> bytes:
        extra = "".join(f"<{k}>{v}</{k}>" for k, v in self.fields.items())
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{self.code}</Code>'
            f"<Message>{self.message}</Message>{extra}<RequestId>injected</RequestId></Error>"
        ).encode()


class FaultProxy:
    """A real HTTP server in front of an S3 endpoint (moto) that answers chosen requests with a fault.

    ``rule(method, path_and_query, n)`` (``n``: 1-based count of requests so far) returns an
    HTTPFault, or None to forward the request unchanged. botocore parses the faults exactly as it
    parses S3's own, so the store's error handling is tested end to end on real responses.
    """

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.rule: Callable[[str, str, int], HTTPFault | None] = lambda method, path, n: None
        self.requests = 0
        self.faults: list[tuple[str, str, str]] = []  # (method, path, code) of every fault answered
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    n = proxy.requests
                fault = proxy.rule(self.command, self.path, n)
                if fault is not None:
                    with proxy._lock:
                        proxy.faults.append((self.command, self.path, "reset" if fault.reset else fault.code))
                    if fault.reset:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    payload = b"" if self.command == "HEAD" else fault.body()
                    self.send_response(fault.status)
                    for name, value in fault.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(fault.body()) if self.command != "HEAD" else 0))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(name, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length or "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
