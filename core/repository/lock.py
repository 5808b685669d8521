"""Leases that keep two runs off the same backup chain.

A lock is an object created only-if-absent. Its holder renews it every third of
its TTL from a heartbeat thread; a killed run stops renewing, so its lock
expires on its own and the next run takes it over (an atomic rename of the stale
object decides which of two racing runs wins). On the same host a lock whose
process is gone is stale at once.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

from core.errors import LockedError
from core.storage.base import Store
from core.storage.local import ObjectNotFound

DEFAULT_TTL = 300.0


def lock_ttl() -> float:
    return float(os.environ.get("GENESIS_DR_LOCK_TTL", DEFAULT_TTL))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

    def _record(self) -> bytes:
        now = time.time()
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "purpose": self.purpose,
                "acquired_at": self._acquired_at,
                "expires_at": now + self.ttl,
            },
            sort_keys=True,
        ).encode()

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.store.get(self.key))
        except ObjectNotFound:
            return None
        except (ValueError, UnicodeDecodeError):
            return {"expires_at": 0}  # unreadable lock: treat as stale rather than block forever

    def _stale(self, holder: dict) -> bool:
        if holder.get("expires_at", 0) < time.time():
            return True
        return holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", 0)))

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
            since = datetime.fromtimestamp(holder.get("acquired_at", 0), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            until = datetime.fromtimestamp(holder["expires_at"], UTC).strftime("%H:%M:%SZ")
            raise LockedError(
                f"'{self.name}' is locked by {holder.get('purpose', 'another run')} on {holder.get('host')} "
                f"pid {holder.get('pid')} since {since}; wait for it to finish (a killed run's lock expires at {until})"
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
