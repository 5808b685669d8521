"""Where sandboxes live, who owns them, and how a crashed run's leftovers are swept.

Every sandbox is one directory below the sandbox root (``GENESIS_DR_SANDBOX_DIR``,
default ``<tmp>/genesis-dr-sandboxes-<uid>``: outside any home directory, so the
``postgres`` and ``mysql`` users can enter it). Its ``sandbox.json`` marker names the
owner process (pid and start time, so a reused pid is not taken for the owner), the
server processes it started and the PostgreSQL clusters in it (also one a restore
started there). Teardown reads only the marker: the same code stops a sandbox at the
end of its block and one a killed run left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import SandboxError

ROOT_ENV = "GENESIS_DR_SANDBOX_DIR"
MARKER = "sandbox.json"
# A directory without a marker is a sandbox being created; older than this, a crash left it.
UNMARKED_GRACE_S = 120.0
STOP_TIMEOUT_S = 15.0

_lock = threading.Lock()


def sandbox_root(workdir: str | Path | None = None) -> Path:
    explicit = workdir or os.environ.get(ROOT_ENV)
    root = Path(explicit) if explicit else Path(tempfile.gettempdir()) / f"genesis-dr-sandboxes-{os.geteuid()}"
    try:
        root.mkdir(mode=0o711, parents=True, exist_ok=True)
    except OSError as exc:
        raise SandboxError(f"sandbox directory {root} cannot be created ({exc.strerror}); set {ROOT_ENV}") from None
    info = root.lstat()
    if root.is_symlink() or info.st_uid != os.geteuid():
        raise SandboxError(
            f"sandbox directory {root} is not owned by this user (or is a link); remove it or set {ROOT_ENV}"
        )
    # Traversable by the server users (postgres, mysql), listable by us only.
    root.chmod(0o711)
    return root


def process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (None: no such process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def alive(entry: dict[str, Any]) -> bool:
    """The process a marker names (``pid``, ``start``) is still that process."""
    start = process_start(int(entry.get("pid", 0) or 0))
    return start is not None and start == entry.get("start")


def me() -> dict[str, int]:
    return {"pid": os.getpid(), "start": process_start(os.getpid()) or 0}


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def write_marker(path: Path, marker: dict[str, Any]) -> None:
    tmp = path / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(marker, sort_keys=True))
    tmp.chmod(0o600)
    tmp.rename(path / MARKER)


def as_user(user: str | None, argv: list[str]) -> list[str]:
    """``argv`` run as ``user`` when we are root (the servers refuse root), else as ourselves."""
    return ["runuser", "-u", user, "--", *argv] if user and os.geteuid() == 0 else argv


def _stop_cluster(data_dir: Path, user: str | None, pg_ctl: str | None) -> None:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return
    if pg_ctl and os.access(pg_ctl, os.X_OK):
        subprocess.run(
            as_user(user, [pg_ctl, "-D", str(data_dir), "-m", "immediate", "-w", "-t", "30", "stop"]),
            capture_output=True,
            check=False,
            timeout=60,
        )
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    _kill({"pid": pid, "start": process_start(pid)}, sig=signal.SIGQUIT)  # pg_ctl missing or failed


def _kill(entry: dict[str, Any], sig: int = signal.SIGTERM) -> None:
    if not alive(entry):
        return
    pid = int(entry["pid"])
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while alive(entry) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
    if alive(entry):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        while alive(entry) and time.monotonic() < deadline + STOP_TIMEOUT_S:
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)


def _reap(pid: int) -> None:
    """Collect our own child's exit status (a zombie still has a /proc entry)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def teardown(path: Path) -> None:
    """Stop everything the marker of sandbox ``path`` names, then remove the directory."""
    marker = read_marker(path) or {}
    for cluster in marker.get("clusters", []):
        _stop_cluster(Path(cluster["data_dir"]), cluster.get("user"), cluster.get("pg_ctl"))
    for proc in marker.get("processes", []):
        _kill(proc)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # a server still writing into it: once more, after it stopped
        time.sleep(0.5)
        shutil.rmtree(path, ignore_errors=True)


def _abandoned(path: Path) -> bool:
    marker = read_marker(path)
    if marker is None:
        try:
            return time.time() - path.stat().st_mtime > UNMARKED_GRACE_S
        except OSError:
            return False
    return not alive(marker.get("owner", {}))


def sweep(root: Path | None = None) -> list[str]:
    """Tear down the sandboxes of runs that are gone (killed, crashed); returns their names."""
    root = root or sandbox_root()
    swept = []
    with _lock:
        for path in sorted(root.iterdir()):
            if path.is_dir() and not path.is_symlink() and _abandoned(path):
                teardown(path)
                swept.append(path.name)
    return swept


def live_sandboxes(workdir: str | Path | None = None) -> list[str]:
    """Sandboxes of this process still standing, and leftovers of dead runs not swept yet (tests
    assert this is empty). Other live processes' sandboxes are theirs, and not listed."""
    root = sandbox_root(workdir)
    out = []
    for path in sorted(root.iterdir()):
        if not path.is_dir():
            continue
        marker = read_marker(path)
        owner = (marker or {}).get("owner", {})
        if marker is None or owner.get("pid") == os.getpid() or not alive(owner):
            out.append(path.name)
    return out
