"""The storage interface every vault backend implements.

Deliberately small (borgstore has 12 methods, Litestream 8): named objects with
atomic writes. Keys are '/'-separated relative names. Everything a caller may
catch is defined here, not by one backend: ``ObjectNotFound``, and the two
kinds of fault every backend sorts its errors into:

* ``TransientStoreError``: throttling, 5xx, timeouts, connection resets; the
  same call may succeed later. ``RetryingStore`` (core/storage/retry.py) retries
  these with backoff and counts them; when it gives up it raises
  ``StoreUnavailableError`` (exit 17).
* ``StoreAccessError`` (permanent, exit 16): wrong or missing credentials,
  access denied, no such bucket, a bucket in another region. Never retried; the
  message names the bucket and the remedy.

There is no rename: object stores have none. Objects that change (leases, the
catalog's hints) are replaced with a compare-and-swap on the version token a
read returned (S3 ``If-Match`` on the ETag, GCS ``ifGenerationMatch``, a
content digest under an flock locally); objects that must exist once (chunks,
manifests, log records, lock creation) are created only-if-absent (S3
``If-None-Match: *``, GCS ``ifGenerationMatch=0``, ``link()`` locally).

Retries, rate limits and fault injection belong in wrappers, not in each backend.

Lifecycle operations (retention, legal holds, archive tiers) are a second, small
group with defaults here, so wrappers and test stores need not know them:
``destroy`` (every stored version, irreversibly; a locked object raises
``ObjectLockedError``), ``lock_supported`` / ``set_legal_hold`` / ``legal_hold``
(S3 Object Lock legal holds, GCS event-based holds), ``set_storage_class``,
``thaw`` (an S3 restore request) and ``ObjectInfo.frozen`` (a read would fail
with ``ObjectFrozenError`` until the object is thawed). A backend without one of
them raises VaultError naming the store; callers ask ``lock_supported()`` first.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field

from core.errors import VaultError


class ObjectNotFound(VaultError):
    """An object the vault expected is missing."""


class TransientStoreError(VaultError):
    """A fault that may pass by itself (throttling, 5xx, timeout, reset): retry the same call."""

    exit_code = 17


class StoreUnavailableError(VaultError):
    """Transient faults went on past the retry budget: the store is down or throttling hard. Exit 17."""

    exit_code = 17


class StoreAccessError(VaultError):
    """A permanent fault: credentials, access denied, no such bucket, wrong region. Exit 16."""

    exit_code = 16


def checked_key(where: str, key: str) -> str:
    """``key`` if it is a valid object name ('/'-separated, relative, no empty, '.' or '..' part);
    VaultError naming the store ``where`` otherwise. Every backend checks names the same way."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise VaultError(f"vault {where}: invalid object name {key!r}")
    return key


@dataclass(frozen=True)
class Capabilities:
    """What a store can do beyond the interface, so replication and retention can ask.

    ``server_side_copy``: ``copy_from`` copies from another store of the same
    provider without the bytes passing through us. ``object_lock``: objects can
    carry a legal hold / retention. ``storage_classes``: the classes ``put`` may
    be given (first is the default). ``io_threads``: how many requests in flight
    pay off (a local disk wants 2, an object store 8 or more).
    """

    provider: str
    server_side_copy: bool = False
    object_lock: bool = False
    storage_classes: tuple[str, ...] = ()
    io_threads: int = 2


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object's identity: its size and the version token a compare-and-swap takes.

    ``storage_class``: the provider's class (S3: "STANDARD" when S3 omits it; GCS: the blob's
    class; local: None). ``frozen``: the object sits in an archive tier (S3 GLACIER or
    DEEP_ARCHIVE) without a finished restore, so ``get`` raises ObjectFrozenError until
    ``thaw`` has brought a copy back.
    """

    key: str
    size: int
    version: str
    storage_class: str | None = None
    metadata: dict = field(default_factory=dict)
    frozen: bool = False


class Store(ABC):
    """A flat namespace of objects."""

    capabilities: Capabilities = Capabilities(provider="abstract")

    @abstractmethod
    def describe(self) -> str:
        """Secret-free location, e.g. 'local:/srv/vault' or 's3://bucket/prefix'."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        """Store ``data`` atomically: readers see the old object or the whole new one.

        Without ``overwrite`` the write is conditional on the object being absent and
        raises VaultError if it exists (stored objects are immutable).
        """

    @abstractmethod
    def create(self, key: str, data: bytes) -> str | None:
        """Create ``key`` only if absent (atomically): its version token, or None if it already existed.

        A backend whose first attempt may have landed before a transient fault must not
        report its own write as someone else's (RetryingStore compares the bytes).
        """

    @abstractmethod
    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        """Overwrite ``key`` only if its current version is ``version``: the new version, or None
        if the object changed or vanished meanwhile (someone else won)."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound if absent, ObjectFrozenError (exit 35) if it sits
        in an archive tier and was not thawed (``stat().frozen``)."""

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str]:
        """The object's bytes and version token (for a later ``replace``); ObjectNotFound if absent."""

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and version of ``key`` without reading it; None if absent."""

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix``, in lexical order."""

    def children(self, prefix: str) -> list[str]:
        """Distinct names directly below ``prefix`` (ending in '/'), sorted: objects and 'folders' alike.

        Lets the catalog list backup directories without listing every chunk. This
        default derives it from ``list``; backends override it with a cheaper call
        (a directory read, an S3 delimiter listing).
        """
        return sorted({key[len(prefix) :].split("/", 1)[0] for key in self.list(prefix)})

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error (deletes are idempotent)."""

    def delete_if(self, key: str, version: str) -> bool:
        """Remove ``key`` only if its version is still ``version`` (a lease being released or broken).

        The default reads the version first (a small race); backends with a conditional
        delete override it."""
        info = self.stat(key)
        if info is None or info.version != version:
            return False
        self.delete(key)
        return True

    def copy_from(self, source: Store, key: str, dest_key: str | None = None) -> bool:
        """Copy ``key`` of ``source`` here server-side if the provider can; False if it cannot
        (the caller then streams it). Never partial: the copy is atomic like ``put``."""
        return False

    # -- lifecycle: retention, legal holds, archive tiers ------------------------------------------

    def _unsupported(self, what: str) -> VaultError:
        return VaultError(f"{self.describe()}: {what} is not supported by this store")

    def destroy(self, key: str, *, passes: int = 1) -> None:
        """Remove EVERY stored version of ``key`` irreversibly (``delete`` on a versioned bucket
        only hides the object behind a delete marker). Absent keys are not an error.

        Local: the file is overwritten in place ``passes`` times with random bytes (fsynced each
        pass), then unlinked. S3: every version and delete marker of exactly ``key``. GCS: every
        generation. An object under a legal hold or an unexpired retention raises
        ``ObjectLockedError`` naming the object and why; nothing of it is removed then.
        """
        raise self._unsupported("secure deletion (destroy)")

    def lock_supported(self) -> bool:
        """Whether ``set_legal_hold`` works here (S3: the bucket has Object Lock enabled; GCS: yes)."""
        return False

    def set_legal_hold(self, key: str, on: bool) -> None:
        """Put (``on``) or lift a legal hold on ``key``'s current version: while on, ``destroy``
        and the provider itself refuse to remove it. VaultError where ``lock_supported()`` is False."""
        raise self._unsupported("a legal hold")

    def legal_hold(self, key: str) -> bool:
        """Whether ``key``'s current version carries a legal hold (False where holds do not exist)."""
        return False

    def set_storage_class(self, key: str, storage_class: str) -> None:
        """Move ``key`` to ``storage_class`` in place (same key, same bytes); ObjectNotFound if
        absent, VaultError for a class the backend does not know or a store without classes."""
        raise self._unsupported("changing the storage class")

    def thaw(self, key: str, *, days: int = 7, tier: str = "Standard") -> str:
        """Make a frozen object readable for ``days``: "ready" (readable now), "requested" (a
        restore was started by this call) or "in-progress" (one was already running). Stores
        without archive tiers are always "ready"."""
        return "ready"

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections (clients, pools); the store is unusable afterwards."""
