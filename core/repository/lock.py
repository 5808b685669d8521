"""Leases that keep two runs off the same backup chain.

A lock is an object created only-if-absent. Its holder renews it every third of
its TTL from a heartbeat thread; a killed run stops renewing, so its lock
expires on its own and the next run takes it over (an atomic rename of the stale
object decides which of two racing runs wins). On the same host a lock whose
process is gone is stale at once, and so is one whose pid now belongs to another
process (its start time, /proc/<pid>/stat field 22, differs from the recorded one).

``break_lock`` is the operator's override (``genesis-dr unlock``): it works on any
store holding leases (the vault, or a target-lock store) and refuses to remove a
lease whose holder is provably alive on this host.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

from core.errors import ConfigError, LockedError
from core.storage.base import Store
from core.storage.local import ObjectNotFound

DEFAULT_TTL = 300.0


def lock_ttl() -> float:
    return float(os.environ.get("GENESIS_DR_LOCK_TTL", DEFAULT_TTL))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may hold spaces or ')': split after the last one.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # fields[0] is field 3 (state), so field 22 is fields[19]
    except (IndexError, ValueError):
        return None


def holder_alive_here(holder: dict) -> bool | None:
    """Whether a lease's process is alive on this host: True/False, or None if it is on another host."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        pid = int(holder.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if not _pid_alive(pid):
        return False
    recorded = holder.get("pid_start")
    if recorded is None:
        return True  # a lease written before start times were recorded: trust the pid
    return process_start_time(pid) == recorded


def lease_stale(holder: dict, now: float | None = None) -> bool:
    """A lease past its expiry, or whose process is provably gone (same host, pid dead or reused)."""
    try:
        expires = float(holder.get("expires_at", 0))
    except (TypeError, ValueError):
        return True
    if expires < (now if now is not None else time.time()):
        return True
    return holder_alive_here(holder) is False


def read_lease(store: Store, name: str) -> dict | None:
    """The holder record of ``locks/<name>.lock``, None if absent; an unreadable one reads as expired."""
    try:
        data = json.loads(store.get(f"locks/{name}.lock"))
    except ObjectNotFound:
        return None
    except (ValueError, UnicodeDecodeError):
        return {"expires_at": 0, "purpose": "unreadable lock"}
    return data if isinstance(data, dict) else {"expires_at": 0, "purpose": "unreadable lock"}


def lease_names(store: Store) -> list[str]:
    """Names of the leases currently in ``store`` (``locks/<name>.lock``)."""
    names = []
    for key in store.list("locks/"):
        rest = key[len("locks/") :]
        if "/" not in rest and rest.endswith(".lock"):
            names.append(rest[: -len(".lock")])
    return names


def describe_holder(holder: dict) -> str:
    since = datetime.fromtimestamp(float(holder.get("acquired_at", 0) or 0), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return f"{holder.get('purpose', 'another run')} on {holder.get('host')} pid {holder.get('pid')} since {since}"


def break_lock(store: Store, name: str) -> str:
    """Remove the lease ``name`` from ``store`` for an operator who knows its run is dead.

    Refuses (LockedError) a lease whose process is alive on this host with the
    recorded start time. The lease is moved to ``locks/stale/`` (kept for
    forensics), not deleted. Returns a one-line description of what was removed.
    """
    holder = read_lease(store, name)
    if holder is None:
        held = ", ".join(lease_names(store)) or "none"
        raise ConfigError(f"no lease '{name}' in {store.describe()} (leases held there: {held}); nothing removed")
    if holder_alive_here(holder):
        raise LockedError(
            f"'{name}' is held by a live process on this host ({describe_holder(holder)}); stop that run "
            f"(kill {holder.get('pid')}) instead - unlock only removes the lease of a dead run"
        )
    moved = f"locks/stale/{name}.{uuid.uuid4().hex}"
    if not store.rename(f"locks/{name}.lock", moved):
        raise ConfigError(f"lease '{name}' in {store.describe()} was released meanwhile; nothing removed")
    return f"removed lease '{name}' ({describe_holder(holder)}) from {store.describe()}; kept as {moved}"


class Lease:
    def __init__(self, store: Store, name: str, purpose: str, ttl: float | None = None) -> None:
        self.store = store
        self.name = name
        self.key = f"locks/{name}.lock"
        self.purpose = purpose
        self.ttl = ttl if ttl is not None else lock_ttl()
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._acquired_at = time.time()
        self._pid_start = process_start_time(os.getpid())

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pid_start": self._pid_start,
                "purpose": self.purpose,
                "acquired_at": self._acquired_at,
                "expires_at": now + self.ttl,
            },
            sort_keys=True,
        ).encode()

    def _holder(self) -> dict | None:
        return read_lease(self.store, self.name)  # unreadable: reads as expired rather than block forever

    def _stale(self, holder: dict) -> bool:
        return lease_stale(holder)

    @property
    def held(self) -> bool:
        """True between a successful ``acquire`` and ``release``."""
        return self._thread is not None and not self._stop.is_set()

    def acquire(self) -> Lease:
        for _ in range(5):
            if self.store.create(self.key, self._record()):
                self._start_heartbeat()
                return self
            holder = self._holder()
            if holder is None:
                continue
            if self._stale(holder):
                self.store.rename(self.key, f"locks/stale/{self.name}.{uuid.uuid4().hex}")
                continue
            until = datetime.fromtimestamp(float(holder["expires_at"]), UTC).strftime("%H:%M:%SZ")
            raise LockedError(
                f"'{self.name}' is locked by {describe_holder(holder)}; wait for it to finish (a killed run's lock "
                f"expires at {until}; if you know it is dead: genesis-dr unlock --lock {self.name})"
            )
        raise LockedError(f"'{self.name}': could not take the lock after repeated contention; retry the run")

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            holder = self._holder()
            if not holder or holder.get("token") != self.token:
                return  # lost the lease; the run's own commit will find out via its checks
            self.store.put(self.key, self._record(), overwrite=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        holder = self._holder()
        if holder and holder.get("token") == self.token:
            self.store.delete(self.key)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
