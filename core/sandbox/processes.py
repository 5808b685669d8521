"""Finding server binaries, choosing ports and waiting for a server to listen, for sandboxes."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

from core.engines.tools import last_line
from core.errors import SandboxError

HOST = "127.0.0.1"  # a sandbox never listens anywhere else
START_TIMEOUT_S = 120.0

_handed_out: set[int] = set()  # ports given to sandboxes of this process (threads of one drill)
_ports_lock = threading.Lock()


def find_binary(name: str, package: str, *fallbacks: str, source: str) -> str:
    """``name`` on PATH, else the first executable of ``fallbacks`` (globs; the newest version wins)."""
    found = shutil.which(name)
    if found:
        return found
    for pattern in fallbacks:
        for path in sorted(glob.glob(pattern), reverse=True):
            if os.access(path, os.X_OK):
                return path
    raise SandboxError(
        f"sandbox for {source}: {name} not found on PATH; install the Debian package {package} (or put {name} on PATH)"
    )


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((HOST, port)) == 0


def choose_port(port: int | None, source: str) -> int:
    """``port`` if it is free (SandboxError if taken), else a free one."""
    if port is not None:
        if listening(port) or not _bindable(port):
            raise SandboxError(
                f"sandbox for {source}: port {HOST}:{port} is taken; choose another port, or none to use a free one"
            )
        return port
    with _ports_lock:
        for _ in range(50):
            with socket.socket() as s:
                s.bind((HOST, 0))
                candidate = s.getsockname()[1]
            if candidate not in _handed_out:
                _handed_out.add(candidate)
                return candidate
    raise SandboxError(f"sandbox for {source}: no free port on {HOST}; free some ports and run again")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def log_tail(path: Path) -> str:
    try:
        return last_line(path.read_text(errors="replace")[-4000:]) or "(empty log)"
    except OSError:
        return "(no log)"


def wait_listening(proc: subprocess.Popen, port: int, log: Path, what: str, source: str) -> None:
    """Until ``proc`` listens on ``port``; SandboxError with the log's last line if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SandboxError(
                f"sandbox for {source}: {what} did not start on {HOST}:{port} (exit {proc.returncode}): {log_tail(log)}"
            )
        if listening(port):
            return
        time.sleep(0.05)
    raise SandboxError(
        f"sandbox for {source}: {what} did not listen on {HOST}:{port} within {START_TIMEOUT_S:.0f}s: {log_tail(log)}"
    )


def run_tool(argv: list[str], what: str, source: str, log: Path | None = None, env: dict | None = None) -> None:
    """Run a set-up tool (initdb, mariadb-install-db); SandboxError with its first error line on failure."""
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, env=env and os.environ | env
    )
    if proc.returncode != 0:
        detail = (
            first_error(proc.stderr)
            or last_line(proc.stderr)
            or last_line(proc.stdout)
            or (log_tail(log) if log else "")
        )
        raise SandboxError(f"sandbox for {source}: {what} failed (exit {proc.returncode}): {detail}")


def first_error(text: str) -> str:
    """The first '[ERROR]' line that says why (MariaDB ends with a bare '[ERROR] Aborting')."""
    for line in text.splitlines():
        if "[ERROR]" in line and not line.rstrip().endswith("Aborting"):
            return line.strip()
    return ""
