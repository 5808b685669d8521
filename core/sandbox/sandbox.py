"""``open_sandbox``: a throw-away target of a source's kind, torn down whatever happens.

The production counterpart of the test fixtures: a fresh ``postgres`` (or, for a
physical PostgreSQL restore, a new data directory and a free port the restore starts
its own cluster on), ``mariadbd``, ``redis-server`` or directory, on 127.0.0.1 and a
free port, started by our code. The ``with`` block's end stops and removes it, also
on an exception, KeyboardInterrupt or a cancelled run; a run killed outright leaves a
marker that the next ``open_sandbox`` sweeps (see ``registry``), and an exiting
interpreter tears down what is still open.
"""

from __future__ import annotations

import atexit
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import SandboxError
from core.sandbox import servers
from core.sandbox.processes import HOST, choose_port
from core.sandbox.registry import me, sandbox_root, sweep, teardown, write_marker

# A port a server of ours could not bind after it looked free (another process took it in
# between): a new free port is tried this many times.
PORT_ATTEMPTS = 3

_open: dict[Path, Sandbox] = {}
_open_lock = threading.Lock()


@dataclass
class Sandbox:
    """One throw-away target: ``config`` is a source config of the same kind and name pointing at it."""

    kind: str
    source: str
    path: Path
    config: Any = None
    port: int | None = None
    physical: bool = False
    started_s: float = 0.0
    procs: list[subprocess.Popen] = field(default_factory=list)
    marker: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "files":
            return f"sandbox directory {self.config.root}" if self.config else f"sandbox {self.path.name}"
        if self.physical:
            return f"sandbox postgres cluster {self.path / 'data'} on {HOST}:{self.port}"
        server = {"postgres": "postgres", "mysql": "mariadbd", "redis": "redis-server"}[self.kind]
        return f"sandbox {server} on {HOST}:{self.port} ({self.path.name})"

    def add_process(self, pid: int, start: int | None) -> None:
        self.marker.setdefault("processes", []).append({"pid": pid, "start": start})
        write_marker(self.path, self.marker)

    def add_cluster(self, data_dir: Path, user: str | None, pg_ctl: str | None) -> None:
        self.marker.setdefault("clusters", []).append({"data_dir": str(data_dir), "user": user, "pg_ctl": pg_ctl})
        write_marker(self.path, self.marker)


_STARTERS = {
    "postgres": servers.start_postgres,
    "mysql": servers.start_mysql,
    "redis": servers.start_redis,
}


def _start(box: Sandbox, source_config: Any, port: int | None) -> None:
    name = source_config.name
    if box.kind == "files":
        box.config = servers.files_root(box, source_config)
        return
    if box.physical:
        box.port = choose_port(port, name)
        box.config = servers.physical_postgres(box, source_config, box.port)
        return
    for attempt in range(PORT_ATTEMPTS if port is None else 1):
        box.port = choose_port(port, name)
        try:
            box.config = _STARTERS[box.kind](box, source_config, box.port)
            return
        except SandboxError as exc:
            if port is not None or attempt == PORT_ATTEMPTS - 1 or "in use" not in str(exc).lower():
                raise
            _clear(box)  # another process took the port after we chose it: start again on another


def _clear(box: Sandbox) -> None:
    """Stop what a failed start left and empty the directory (keeping it and its marker's owner)."""
    teardown(box.path)
    for proc in box.procs:
        proc.poll()
    box.procs.clear()
    box.path.mkdir(mode=0o711)
    box.marker = {k: v for k, v in box.marker.items() if k not in ("processes", "clusters")}
    write_marker(box.path, box.marker)


@contextmanager
def open_sandbox(
    source_config: Any, *, workdir: str | Path | None = None, port: int | None = None, physical: bool = False
) -> Iterator[Sandbox]:
    """A throw-away target for ``source_config``'s kind, stopped and removed when the block ends.

    ``workdir``: the directory sandboxes are made (and swept) in, default the sandbox root
    (``registry.sandbox_root``); ``port``: this port or SandboxError if it is taken (default a
    free one); ``physical``: PostgreSQL only, a data directory and a free port with no server
    (a physical restore builds and starts the cluster itself, and teardown stops it).
    """
    kind, name = source_config.kind, source_config.name
    if kind not in ("postgres", "mysql", "redis", "files"):
        raise SandboxError(f"sandbox for {name}: no sandbox for {kind} sources; validate it at integrity level")
    if physical and kind != "postgres":
        raise SandboxError(f"sandbox for {name}: a physical sandbox is for PostgreSQL only, not {kind}")
    root = sandbox_root(workdir)
    sweep(root)
    path = root / f"{kind}-{name[:40]}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o711)  # the server users enter it (their own directories below are 0700)
    box = Sandbox(kind=kind, source=name, path=path, physical=physical)
    box.marker = {"owner": me(), "kind": kind, "source": name, "created": time.time()}
    write_marker(path, box.marker)
    with _open_lock:
        _open[path] = box
    try:
        started = time.monotonic()
        _start(box, source_config, port)
        box.started_s = round(time.monotonic() - started, 3)
        yield box
    finally:
        try:
            teardown(path)
            for proc in box.procs:
                proc.poll()  # reaped: no zombie left behind
        finally:
            with _open_lock:
                _open.pop(path, None)


@atexit.register
def _at_exit() -> None:
    """An interpreter leaving with sandboxes open (a thread still in one): stop them now."""
    with _open_lock:
        paths = list(_open)
    for path in paths:
        teardown(path)
