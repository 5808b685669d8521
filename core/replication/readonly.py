"""A store that can only be read: the primary while it is replicated, a replica while it is restored from.

Replication reads the primary and must never change it; a restore from a replica
must not write into the replica (only the replication run keeps it). Wrapping the
store makes both a property of the code path, not a promise: any write raises
VaultError naming the store, before anything reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator

from core.errors import VaultError
from core.storage.base import ObjectInfo, Store


class ReadOnlyStore(Store):
    """``inner`` with every write refused (VaultError, exit 3), the lifecycle ones (destroy, legal hold,
    storage class, thaw) included; reads and lifecycle queries pass through unchanged."""

    def __init__(self, inner: Store, why: str) -> None:
        self.inner = inner
        self.why = why  # completes "... is read-only here: <why>"

    @property
    def capabilities(self):  # type: ignore[override]
        return self.inner.capabilities

    def _refuse(self, action: str, key: str) -> VaultError:
        return VaultError(f"{self.inner.describe()} is read-only here ({self.why}); refused to {action} {key}")

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        raise self._refuse("write", key)

    def create(self, key: str, data: bytes) -> str | None:
        raise self._refuse("create", key)

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        raise self._refuse("replace", key)

    def delete(self, key: str) -> None:
        raise self._refuse("delete", key)

    def delete_if(self, key: str, version: str) -> bool:
        raise self._refuse("delete", key)

    def copy_from(self, source: Store, key: str, dest_key: str | None = None) -> bool:
        raise self._refuse("copy into", dest_key or key)

    # The lifecycle operations change what is stored (or how): refused like any write.

    def destroy(self, key: str, *, passes: int = 1) -> None:
        raise self._refuse("destroy", key)

    def set_legal_hold(self, key: str, on: bool) -> None:
        raise self._refuse("set the legal hold of", key)

    def set_storage_class(self, key: str, storage_class: str) -> None:
        raise self._refuse("change the storage class of", key)

    def thaw(self, key: str, *, days: int = 7, tier: str = "Standard") -> str:
        raise self._refuse("thaw", key)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_versioned(key)

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def children(self, prefix: str) -> list[str]:
        return self.inner.children(prefix)

    # Lifecycle queries only read: 'hold list' and retention status on a replica see its locks.

    def lock_supported(self) -> bool:
        return self.inner.lock_supported()

    def legal_hold(self, key: str) -> bool:
        return self.inner.legal_hold(key)

    def close(self) -> None:
        self.inner.close()
