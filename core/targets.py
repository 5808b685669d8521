"""Restore targets: their locks and in-progress marks, kept on the restoring host, never in the vault.

A restore only reads the vault, so it works from a read-only replica or a full
disk; what it must serialise is the *target*. Two restores into the same
database (of one source or two) take the same lock; restores of one source into
two targets do not wait for each other.

While a restore runs, a mark names the target, the backup, the rollback point
and any staged sibling. A restore killed halfway leaves the mark behind: the next
restore into that target and `genesis-dr list` report it, and the next restore
removes the abandoned staged sibling. The mark is cleared once the target is
verified (or put back to its rollback point).

The state directory is ``$GENESIS_DR_STATE_DIR``, else
``$XDG_STATE_HOME/genesis-dr`` (``~/.local/state/genesis-dr``). It is per host:
restores of one target from two hosts are not serialised by it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from core.repository.lock import Lease
from core.repository.manifest import now_iso
from core.storage.base import ObjectNotFound
from core.storage.local import LocalStore

STATE_ENV = "GENESIS_DR_STATE_DIR"


def state_dir() -> str:
    explicit = os.environ.get(STATE_ENV)
    if explicit:
        return explicit
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "genesis-dr")


def state_store() -> LocalStore:
    return LocalStore(state_dir())


def target_slug(target_key: str) -> str:
    """A file-name-safe, stable name for a target (its description may hold any character)."""
    return "target-" + hashlib.sha256(target_key.encode()).hexdigest()[:20]


@dataclass
class TargetMark:
    """A restore in progress (or one that was killed before it was verified)."""

    target: str
    backup_id: str
    started_at: str
    host: str
    pid: int
    rollback_backup_id: str | None = None
    staged_tag: str | None = None  # the sibling a staged restore writes into, removed if abandoned

    def describe(self) -> str:
        rollback = f"; rollback point {self.rollback_backup_id}" if self.rollback_backup_id else ""
        return (
            f"{self.target}: a restore of {self.backup_id} started {self.started_at} on {self.host} "
            f"(pid {self.pid}) never finished verification{rollback}"
        )


class TargetGuard:
    """The held lock of one target, and its mark."""

    def __init__(self, store: LocalStore, target: str, previous: TargetMark | None) -> None:
        self.store = store
        self.target = target
        self.key = f"marks/{target_slug(target)}.json"
        self.previous = previous  # left by an interrupted restore

    def mark(self, backup_id: str, rollback_backup_id: str | None, staged_tag: str | None) -> None:
        mark = TargetMark(
            target=self.target,
            backup_id=backup_id,
            started_at=now_iso(),
            host=socket.gethostname(),
            pid=os.getpid(),
            rollback_backup_id=rollback_backup_id,
            staged_tag=staged_tag,
        )
        self.store.put(self.key, json.dumps(asdict(mark), sort_keys=True).encode(), overwrite=True)

    def clear(self) -> None:
        self.store.delete(self.key)
        self.previous = None


def _read_mark(store: LocalStore, key: str) -> TargetMark | None:
    try:
        data = json.loads(store.get(key))
        return TargetMark(**data)
    except ObjectNotFound:
        return None
    except (ValueError, TypeError):
        # An unreadable mark still means "something was interrupted here".
        return TargetMark(target="?", backup_id="?", started_at="?", host="?", pid=0)


@contextmanager
def guard(target: str, purpose: str) -> Iterator[TargetGuard]:
    """Hold the lock of ``target`` (LockedError if another restore holds it)."""
    store = state_store()
    with Lease(store, target_slug(target), purpose):
        g = TargetGuard(store, target, None)
        g.previous = _read_mark(store, g.key)
        yield g


def unfinished_restores() -> list[TargetMark]:
    """Every target a restore was interrupted on (what `genesis-dr list` reports)."""
    store = state_store()
    marks = []
    for key in store.list("marks/"):
        mark = _read_mark(store, key)
        if mark:
            marks.append(mark)
    return marks
