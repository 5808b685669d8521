"""Checks that prove a Redis restore: key counts and logical digests per database.

Shape (recorded sealed in the manifest, recomputed on the target)::

    {"algorithm": "redis-checks/2",
     "databases": {"db0": {"keys": 12, "digest": "…", "volatile_keys": 2,
                           "volatile_digest": "…"}, …},
     "first_expiry_ms": 1718000000000,
     "functions": {"mylib": "…"}}   # only if the source had any

``functions`` maps each function library (Redis 7+) to a digest of its code.
Only the backup's libraries are compared: others on the target (a shared
server restored one database at a time) are not the backup's business.

``keys``/``digest`` cover keys without a TTL and are always compared exactly.
``volatile_*`` cover keys with a TTL. Those legitimately disappear once their
TTL runs out, so they are compared only while none of them can have expired
yet (``first_expiry_ms``, minus a margin for clock skew between hosts); after
that, ``reshape_actual`` reports the recorded values for them - they cannot
be verified any more, and a missing session key is not a failed restore.
Keys already expired when the backup was taken are left out of the checks.

A key's digest covers its name, logical type and logical value (see
``core.engines.redis.rdb``), never its TTL, which changes with the clock. A stream's
value includes its consumer groups with their pending entries and consumers.
Checks without ``algorithm`` (``redis-checks/1``, older backups) digested
only the number of pending entries; they are still computed that way.
"""

from __future__ import annotations

import hashlib
from typing import Any

from core.engines.redis.rdb import UnorderedDigest, lp

# Clocks of the backup host, the source and the target may disagree this much.
EXPIRY_MARGIN_MS = 60_000

ALGORITHM = "redis-checks/3"  # see core.engines.redis.rdb_scan: the same shape, cheaper value digests
PREVIOUS = "redis-checks/2"
LEGACY = "redis-checks/1"
KNOWN = (ALGORITHM, PREVIOUS, LEGACY)


def algorithm_of(checks: dict[str, Any]) -> str:
    return checks.get("algorithm", LEGACY)


class KeyspaceChecks:
    """Accumulates per-database counts and digests, one key at a time."""

    def __init__(self, now_ms: int, algorithm: str = ALGORITHM) -> None:
        self.now_ms = now_ms
        self.algorithm = algorithm
        self.pending = algorithm != LEGACY  # see ``core.engines.redis.rdb.read_object``
        self._persistent: dict[int, UnorderedDigest] = {}
        self._volatile: dict[int, UnorderedDigest] = {}
        self.first_expiry_ms: int | None = None
        self._functions: dict[str, str] = {}

    def add_function(self, code: bytes) -> None:
        """Record one function library; its code's first line names it (``#!lua name=mylib``)."""
        self._functions[library_name(code)] = hashlib.sha256(code).hexdigest()

    def add(self, db: int, key: bytes, type_name: str, expire_ms: int | None, value_digest: bytes) -> None:
        """Count one key; ``expire_ms`` is its absolute expiry or None."""
        if expire_ms is not None and expire_ms <= self.now_ms:
            return  # already expired at backup time: logically gone
        entry = key_entry(key, type_name, value_digest)
        if expire_ms is None:
            digest = self._persistent.get(db)
            if digest is None:
                digest = self._persistent[db] = UnorderedDigest()
            digest.add(entry)
        else:
            self._volatile.setdefault(db, UnorderedDigest()).add(entry)
            if self.first_expiry_ms is None or expire_ms < self.first_expiry_ms:
                self.first_expiry_ms = expire_ms

    def add_persistent(self, db: int, entries: list[bytes]) -> None:
        """Count keys without a TTL of one database, given as their ``entry`` bytes (the walker's batches)."""
        digest = self._persistent.get(db)
        if digest is None:
            digest = self._persistent[db] = UnorderedDigest()
        digest.add_many(entries)

    def add_volatile(self, db: int, entries: list[bytes], first_expiry_ms: int) -> None:
        """Count keys with a TTL of one database, none expired yet (the caller drops those), given as
        their ``entry`` bytes and the earliest of their expiries: ``add`` in a batch."""
        digest = self._volatile.get(db)
        if digest is None:
            digest = self._volatile[db] = UnorderedDigest()
        digest.add_many(entries)
        if self.first_expiry_ms is None or first_expiry_ms < self.first_expiry_ms:
            self.first_expiry_ms = first_expiry_ms

    def to_dict(self) -> dict[str, Any]:
        """The checks, shaped as documented above."""
        databases = {}
        for db in sorted(set(self._persistent) | set(self._volatile)):
            databases[db_label(db)] = _entry(self._persistent.get(db), self._volatile.get(db))
        out: dict[str, Any] = {"databases": databases, "first_expiry_ms": self.first_expiry_ms}
        if self.algorithm != LEGACY:
            out["algorithm"] = self.algorithm
            if self._functions:
                out["functions"] = dict(sorted(self._functions.items()))
        return out


_TYPES = {name: lp(name.encode()) for name in ("string", "list", "set", "zset", "hash", "stream")}


def key_entry(key: bytes, type_name: str, value_digest: bytes) -> bytes:
    """What is hashed for one key: its name, its logical type and its value's digest (or part)."""
    return len(key).to_bytes(8, "big") + key + (_TYPES.get(type_name) or lp(type_name.encode())) + value_digest


def _entry(persistent: UnorderedDigest | None, volatile: UnorderedDigest | None) -> dict[str, Any]:
    persistent = persistent or UnorderedDigest()
    volatile = volatile or UnorderedDigest()
    return {
        "keys": persistent.count,
        "digest": _hex(persistent),
        "volatile_keys": volatile.count,
        "volatile_digest": _hex(volatile),
    }


def _hex(d: UnorderedDigest) -> str:
    # Hash the sum once more so the recorded value is a plain SHA-256 string.
    return hashlib.sha256(d.digest()).hexdigest()


def library_name(code: bytes) -> str:
    """The name a function library's code declares in its first line."""
    first = code.split(b"\n", 1)[0].decode("utf-8", "replace")
    for word in first.split():
        if word.startswith("name="):
            return word[5:]
    return first[:80]


def db_label(db: int) -> str:
    return f"db{db}"


def reshape_actual(reference: dict[str, Any], actual: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """Shape live checks like ``reference`` for ``compare_checks``.

    Databases recorded but now empty appear with zero counts; volatile values
    that can no longer be verified are reported as recorded; ``first_expiry_ms``
    is metadata, echoed.
    """
    ref_dbs: dict[str, Any] = reference.get("databases", {})
    dbs = dict(actual.get("databases", {}))
    for label in ref_dbs:
        dbs.setdefault(label, _entry(None, None))
    first = reference.get("first_expiry_ms")
    if first is not None and now_ms + EXPIRY_MARGIN_MS >= first:
        for label, ref in ref_dbs.items():
            dbs[label] = {
                **dbs[label],
                "volatile_keys": ref["volatile_keys"],
                "volatile_digest": ref["volatile_digest"],
            }
    shaped: dict[str, Any] = {"databases": dbs, "first_expiry_ms": first}
    if "algorithm" in actual:
        shaped["algorithm"] = actual["algorithm"]
    if "functions" in reference:
        wanted = reference["functions"]
        shaped["functions"] = {n: d for n, d in actual.get("functions", {}).items() if n in wanted}
    return shaped
