"""One object of the vault brought onto a replica, verified as stored there.

The reference for every object is what the primary's commit records say (a
chunk's SHA-256 and size in its manifest or piece record, ``keys_sha256`` for
``keys.json``) or, for the small objects no record covers (``config.json``, key
checks, log keys, manifests, piece records, catalog hints), the primary's own
bytes. An object is:

* already on the replica: checked - by its size alone (``deep=False``, the cheap
  pass over backups the replica already holds), or by reading it back and hashing
  it (``deep=True``: objects of a backup being copied, and every object under
  ``--verify``). Intact: nothing is sent. Wrong: rewritten (counted as repaired);
* absent: copied server-side when both stores can (S3 to S3 across regions), then
  read back from the replica and hashed; else read from the primary, checked
  against the record BEFORE it is sent (a damaged primary object is never
  copied), and written only-if-absent. What counts is what the replica stores:
  where the replica's answer states the MD5 of the bytes it stored (an S3 ETag of
  a single-request upload without SSE-KMS) and it equals the MD5 of the bytes
  just checked against the record's SHA-256, the replica has attested them
  without a second transfer; otherwise the object is read back and hashed.

Objects are at most one chunk (4 MiB by default), so a copy holds at most two
copies of one chunk in memory per thread.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from core.errors import IntegrityError
from core.storage.base import ObjectNotFound, Store

_MD5 = re.compile(r"[0-9a-f]{32}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stored_md5(version: str | None) -> str | None:
    """The MD5 a version token states, when it is one: S3's ETag of an object written in one request
    (without SSE-KMS) is the MD5 of the bytes it stored. Other tokens (local inode-size-mtime, GCS
    generations, multipart or KMS ETags) state none, and the object is read back instead."""
    token = (version or "").strip('"')
    return token if _MD5.fullmatch(token) else None


class PrimaryDamagedError(IntegrityError):
    """An object on the primary is missing or does not match its record: it is not copied."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class VaultObject:
    """An object to bring over: ``sha256``/``size`` from a record, or ``data`` (the primary's bytes)."""

    key: str
    sha256: str | None = None
    size: int | None = None
    data: bytes | None = None

    def expected(self) -> tuple[str, int | None]:
        if self.data is not None:
            return sha256(self.data), len(self.data)
        assert self.sha256 is not None
        return self.sha256, self.size


@dataclass
class Counts:
    """What the copies did (thread-safe increments through ``add``).

    ``on_bytes(done, total)``, when given, is told the running ``bytes_copied`` after each object copied (one call
    per object of at most one chunk, never per read; ``total`` None: what a run will copy is not known ahead)."""

    objects_copied: int = 0
    bytes_copied: int = 0
    server_side_copies: int = 0
    objects_repaired: int = 0
    objects_verified: int = 0  # read back from the replica and hashed, or attested by the replica (below)
    verified_by_store_md5: int = 0  # of those: the replica's own MD5 of what it stored matched (no read-back)
    objects_checked: int = 0  # size compared only (the cheap pass)
    on_bytes: Callable[[int, int | None], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.repaired_keys: list[str] = []

    def add(self, *, repaired_key: str | None = None, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)
            if repaired_key is not None:
                self.repaired_keys.append(repaired_key)
            if self.on_bytes is not None and counts.get("bytes_copied"):
                # Under the lock, so the totals arrive in order from the copying threads (the sink only records).
                self.on_bytes(self.bytes_copied, None)


class ObjectCopier:
    """Brings single objects from ``source`` (read only) to ``replica``, verified; see the module doc."""

    def __init__(
        self, source: Store, replica: Store, replica_name: str, counts: Counts, *, server_side_from: Store | None
    ) -> None:
        self.source, self.replica, self.name, self.counts = source, replica, replica_name, counts
        # The primary's backend, when the replica's provider can copy from it without the bytes passing here.
        self.server_side_from = server_side_from

    def sync(self, obj: VaultObject, *, deep: bool, committed: bool = False, absent: bool = False) -> None:
        """Make ``obj`` intact on the replica (see the module doc); raises PrimaryDamagedError, store errors.

        ``committed``: the object belongs to a backup or piece the replica already shows as committed, so
        finding it missing is a repair too (a deleted replica object), not a first copy. ``absent``: a
        listing just showed the object is not there (no request to ask again; the write is conditional
        anyway, so an object that appeared meanwhile is never overwritten unchecked).
        """
        want_sha, want_size = obj.expected()
        info = None if absent else self.replica.stat(obj.key)
        exists = info is not None
        if exists:
            if want_size is not None and info.size != want_size:
                pass  # wrong size: rewritten below
            elif deep or want_size is None:
                try:
                    held = self.replica.get(obj.key)
                except ObjectNotFound:
                    held, exists = None, False
                if held is not None and sha256(held) == want_sha:
                    self.counts.add(objects_verified=1)
                    return
            else:
                self.counts.add(objects_checked=1)
                return
        self._copy(obj, want_sha, want_size, overwrite=exists, repair=exists or committed)

    def _copy(self, obj: VaultObject, want_sha: str, want_size: int | None, *, overwrite: bool, repair: bool) -> None:
        if obj.data is None and not overwrite and self.server_side_from is not None:
            if self.replica.copy_from(self.server_side_from, obj.key):
                back = self.replica.get(obj.key)
                if sha256(back) == want_sha and (want_size is None or len(back) == want_size):
                    self.counts.add(
                        objects_repaired=int(repair),
                        objects_copied=int(not repair),
                        bytes_copied=len(back),
                        server_side_copies=1,
                        objects_verified=1,
                        repaired_key=obj.key if repair else None,
                    )
                    return
                # The copy does not match the record: the primary's object is damaged (checked below, before
                # anything else is sent) or the copy broke; either way it is replaced, never committed as is.
                overwrite = True
        data = obj.data if obj.data is not None else self._read_source(obj.key)
        if sha256(data) != want_sha or (want_size is not None and len(data) != want_size):
            raise PrimaryDamagedError(
                f"{obj.key} on the primary {self.source.describe()} does not match the SHA-256 and size its manifest "
                "or record holds (corrupt on the primary); it is not copied - restore that backup from another copy",
                obj.key,
            )
        if overwrite:
            self.replica.put(obj.key, data, overwrite=True)
            info = self.replica.stat(obj.key)
            version = info.version if info is not None else None
        else:
            version = self.replica.create(obj.key, data)
            if version is None:  # it appeared since we looked: check what is there like any existing object
                self.sync(obj, deep=True, committed=repair)
                return
        # What counts is what the replica stores: its own MD5 of the stored bytes where its version token
        # states one (equal to the MD5 of bytes just checked against the record's SHA-256), else a read-back.
        attested = stored_md5(version) == hashlib.md5(data, usedforsecurity=False).hexdigest()
        if not attested and sha256(self.replica.get(obj.key)) != want_sha:
            raise IntegrityError(
                f"replica {self.name} ({self.replica.describe()}): {obj.key} reads back different bytes from those "
                "just written; the replica store is damaging data - check it before trusting this replica"
            )
        self.counts.add(
            objects_repaired=int(repair),
            objects_copied=int(not repair),
            bytes_copied=len(data),
            objects_verified=1,
            verified_by_store_md5=int(attested),
            repaired_key=obj.key if repair else None,
        )

    def _read_source(self, key: str) -> bytes:
        try:
            return self.source.get(key)
        except ObjectNotFound:
            raise PrimaryDamagedError(
                f"{key} is missing on the primary {self.source.describe()} although its manifest or record names it",
                key,
            ) from None
