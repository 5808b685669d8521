"""The storage interface every vault backend implements.

Deliberately small (borgstore has 12 methods, Litestream 8): named immutable
objects with atomic writes. Retries, rate limits and dry-run belong in wrappers,
not in each backend. Keys are '/'-separated relative names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator


class Store(ABC):
    """A flat namespace of immutable objects."""

    @abstractmethod
    def describe(self) -> str:
        """Secret-free location, e.g. 'local:/srv/vault' or 's3://bucket/prefix'."""

    @abstractmethod
    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        """Store ``data`` atomically: readers see the old object or the whole new one.

        Raises VaultError if the object exists and ``overwrite`` is false, or the
        store is unwritable/full.
        """

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Create ``key`` only if absent (atomically); False if it already exists. Used for locks."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

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

    @abstractmethod
    def rename(self, key: str, new_key: str) -> bool:
        """Move ``key`` to ``new_key`` atomically if ``key`` exists; False if it did not (lock takeover)."""
