"""Leases that keep two runs off the same backup chain.

A lock is an object created only-if-absent. Its holder renews it every third of
its TTL from a heartbeat thread, each renewal a compare-and-swap on the version
its previous write returned: a renewal never overwrites a lease another run has
taken over, and a holder whose swap fails knows at once that it lost the lease
(``Lease.check`` then raises LeaseLostError, and a backup does not commit). A
killed run stops renewing, so its lock expires on its own and the next run takes
it over with a compare-and-swap on the stale record's version: of two racing
runs exactly one swap succeeds (docs/FORMAT.md, "Locks"). On the same host a lock whose
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

from core.errors import ConfigError, LockedError, VaultError
from core.storage.base import ObjectNotFound, Store

DEFAULT_TTL = 300.0


class LeaseLostError(LockedError):
    """This run's lease was taken over by another run (it stalled past the TTL): nothing is
    committed. Exit 18."""

    exit_code = 18


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


def _parse_lease(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"expires_at": 0, "purpose": "unreadable lock"}
    return data if isinstance(data, dict) else {"expires_at": 0, "purpose": "unreadable lock"}


def read_lease_versioned(store: Store, name: str) -> tuple[dict, str] | None:
    """The holder record of ``locks/<name>.lock`` and its version, None if absent; an unreadable
    record reads as expired."""
    try:
        raw, version = store.get_versioned(f"locks/{name}.lock")
    except ObjectNotFound:
        return None
    return _parse_lease(raw), version


def read_lease(store: Store, name: str) -> dict | None:
    """The holder record of ``locks/<name>.lock``, None if absent; an unreadable one reads as expired."""
    found = read_lease_versioned(store, name)
    return found[0] if found else None


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
    found = read_lease_versioned(store, name)
    if found is None:
        held = ", ".join(lease_names(store)) or "none"
        raise ConfigError(f"no lease '{name}' in {store.describe()} (leases held there: {held}); nothing removed")
    holder, version = found
    if holder_alive_here(holder):
        raise LockedError(
            f"'{name}' is held by a live process on this host ({describe_holder(holder)}); stop that run "
            f"(kill {holder.get('pid')}) instead - unlock only removes the lease of a dead run"
        )
    moved = _keep_stale(store, name, holder)
    if not store.delete_if(f"locks/{name}.lock", version):
        raise ConfigError(f"lease '{name}' in {store.describe()} was renewed or released meanwhile; nothing removed")
    return f"removed lease '{name}' ({describe_holder(holder)}) from {store.describe()}; kept as {moved}"


def _keep_stale(store: Store, name: str, holder: dict) -> str:
    """A copy of a lease about to be taken over or broken, for forensics (``locks/stale/``)."""
    moved = f"locks/stale/{name}.{uuid.uuid4().hex}"
    store.put(moved, json.dumps(holder, sort_keys=True).encode())
    return moved


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
        self._version: str | None = None  # of our last write: every renewal swaps exactly this version
        self._renewing = threading.Lock()
        self.lost: str | None = None  # why the lease was lost, once it was

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
        """True between a successful ``acquire`` and ``release``, while the lease was not lost."""
        return self._thread is not None and not self._stop.is_set() and self.lost is None

    def acquire(self) -> Lease:
        for _ in range(5):
            version = self.store.create(self.key, self._record())
            if version is not None:
                self._version = version
                self._start_heartbeat()
                return self
            found = read_lease_versioned(self.store, self.name)
            if found is None:
                continue
            holder, current = found
            if self._stale(holder):
                _keep_stale(self.store, self.name, holder)
                # Of two runs taking over the same stale lease, one swap succeeds; the other sees
                # the winner's fresh lease on its next turn.
                version = self.store.replace(self.key, self._record(), version=current)
                if version is not None:
                    self._version = version
                    self._start_heartbeat()
                    return self
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

    def renew(self, *, raise_errors: bool = False) -> bool:
        """Extend the lease by its TTL with a compare-and-swap on our last version; False (and
        ``lost`` set) if another run took it over or it vanished."""
        with self._renewing:
            if self.lost is not None:
                return False
            try:
                version = self.store.replace(self.key, self._record(), version=self._version or "")
            except VaultError:
                # The store is unreachable (after the retry layer's budget): the lease still runs
                # until its expiry and the next beat tries again; a commit's check() re-raises it.
                if raise_errors:
                    raise
                return True
            if version is None:
                holder = self._holder()
                self.lost = f"taken over by {describe_holder(holder)}" if holder else "removed (genesis-dr unlock?)"
                return False
            self._version = version
            return True

    def check(self, what: str) -> None:
        """Raise LeaseLostError unless this run still holds the lease; renews it first, so the
        caller holds it for a full TTL after this returns (commit points call this)."""
        if self.lost is None:
            self.renew(raise_errors=True)
        if self.lost is not None:
            raise LeaseLostError(
                f"{what}: the lease '{self.name}' was {self.lost} while this run stalled past its TTL "
                f"({self.ttl:.0f} s); nothing was committed - run it again"
            )

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            if not self.renew():
                return  # lost: the run's commit will refuse (check())

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self.lost is None and self._version is not None:
            with self._renewing:
                self.store.delete_if(self.key, self._version)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
