"""Shared helpers for starting throw-away servers in tests.

Real servers only: a test that cannot find a binary fails (it never skips).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binary(name: str, *candidates: str) -> str:
    """Absolute path of a server binary; fails the test run if it is missing."""
    for cand in (name, *candidates):
        found = shutil.which(cand) or (cand if os.path.isabs(cand) and os.access(cand, os.X_OK) else None)
        if found:
            return found
    raise RuntimeError(f"required binary {name!r} not found on PATH; install it (see .ci/run)")


def shared_tmpdir(prefix: str) -> Path:
    """A temp dir that unprivileged service users (postgres, mysql) can enter."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o777)
    return path


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout}s")


@contextmanager
def serving(argv: list[str], port: int, log: Path, timeout: float = 60.0) -> Iterator[subprocess.Popen]:
    """Run a throw-away server (``argv``, output to ``log``) until the block ends; yields once it
    listens on ``port``. Stopped with SIGTERM, then SIGKILL after 10 s."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, timeout=timeout)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_argvs(tool: str) -> list[list[str]]:
    """argv of this process's running children whose command names ``tool`` (read from /proc,
    i.e. what ``ps`` shows to every user of the machine)."""
    return [argv for _, argv in child_processes(tool)]


def child_processes(tool: str) -> list[tuple[int, list[str]]]:
    """(pid, argv) of this process's running children whose command names ``tool``."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0") if a]
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and argv and os.path.basename(argv[0]) == tool:
            out.append((int(pid), argv))
    return out
