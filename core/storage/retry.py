"""One wrapper around any store: transient faults retried with backoff and counted.

Backends sort their errors (core/storage/base.py): ``TransientStoreError`` is
retried here with exponential backoff and full jitter, up to a number of
attempts; then ``StoreUnavailableError`` (exit 17) says how long it tried.
Everything else, ``StoreAccessError`` above all, passes through at once: a
wrong region or a denied write never gets better by waiting.

A conditional create retried after a transient fault may find the object its
own first attempt wrote (the request landed, the answer was lost): the bytes
are compared, so our own write is not mistaken for another writer's.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TypeVar

from core.storage.base import ObjectInfo, ObjectNotFound, Store, StoreUnavailableError, TransientStoreError

T = TypeVar("T")

DEFAULT_ATTEMPTS = 8
DEFAULT_BASE_DELAY = 0.1
DEFAULT_MAX_DELAY = 8.0


def retry_settings() -> tuple[int, float, float]:
    """(attempts, first delay, largest delay) from GENESIS_DR_STORE_RETRIES / _RETRY_DELAY / _RETRY_MAX_DELAY."""
    return (
        max(1, int(os.environ.get("GENESIS_DR_STORE_RETRIES", DEFAULT_ATTEMPTS))),
        float(os.environ.get("GENESIS_DR_STORE_RETRY_DELAY", DEFAULT_BASE_DELAY)),
        float(os.environ.get("GENESIS_DR_STORE_RETRY_MAX_DELAY", DEFAULT_MAX_DELAY)),
    )


class RetryingStore(Store):
    """Retries ``inner``'s transient faults; ``retries`` counts them per operation, ``gave_up`` the failures."""

    def __init__(
        self,
        inner: Store,
        *,
        attempts: int | None = None,
        base_delay: float | None = None,
        max_delay: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        default_attempts, default_base, default_max = retry_settings()
        self.inner = inner
        self.attempts = attempts if attempts is not None else default_attempts
        self.base_delay = base_delay if base_delay is not None else default_base
        self.max_delay = max_delay if max_delay is not None else default_max
        self._sleep = sleep
        self._lock = threading.Lock()
        self.retries: Counter[str] = Counter()
        self.gave_up: Counter[str] = Counter()

    @property
    def capabilities(self):  # type: ignore[override]
        return self.inner.capabilities

    @property
    def retried(self) -> int:
        """Transient faults absorbed so far (every operation)."""
        return sum(self.retries.values())

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except TransientStoreError as exc:
                if attempt == self.attempts:
                    with self._lock:
                        self.gave_up[op] += 1
                    raise StoreUnavailableError(
                        f"{self.inner.describe()}: {op} {key} still failing after {attempt} attempts over "
                        f"{time.monotonic() - started:.1f} s ({exc}); the store is down or throttling - retry later, "
                        "or raise GENESIS_DR_STORE_RETRIES; nothing already stored was changed"
                    ) from None
                with self._lock:
                    self.retries[op] += 1
                delay = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
                self._sleep(random.uniform(delay / 2, delay))
        raise AssertionError("unreachable")

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        tried = [False]

        def attempt() -> None:
            if tried[0] and not overwrite:
                # A retried immutable put whose first try landed: the same bytes are success.
                try:
                    if self.inner.get(key) == data:
                        return
                except ObjectNotFound:
                    pass
            try:
                self.inner.put(key, data, overwrite=overwrite)
            except TransientStoreError:
                tried[0] = True
                raise

        self._call("put", key, attempt)

    def create(self, key: str, data: bytes) -> str | None:
        tried = [False]

        def attempt() -> str | None:
            try:
                version = self.inner.create(key, data)
            except TransientStoreError:
                tried[0] = True
                raise
            if version is None and tried[0]:
                try:
                    body, current = self.inner.get_versioned(key)
                except ObjectNotFound:
                    return None
                if body == data:
                    return current  # our own earlier attempt landed before the fault
            return version

        return self._call("create", key, attempt)

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        tried = [False]

        def attempt() -> str | None:
            try:
                new = self.inner.replace(key, data, version=version)
            except TransientStoreError:
                tried[0] = True
                raise
            if new is None and tried[0]:
                try:
                    body, current = self.inner.get_versioned(key)
                except ObjectNotFound:
                    return None
                if body == data:
                    return current  # our swap landed before the fault
            return new

        return self._call("replace", key, attempt)

    def get(self, key: str) -> bytes:
        return self._call("get", key, lambda: self.inner.get(key))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self._call("get", key, lambda: self.inner.get_versioned(key))

    def stat(self, key: str) -> ObjectInfo | None:
        return self._call("stat", key, lambda: self.inner.stat(key))

    def exists(self, key: str) -> bool:
        return self._call("stat", key, lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self._call("list", prefix, lambda: list(self.inner.list(prefix))))

    def children(self, prefix: str) -> list[str]:
        return self._call("list", prefix, lambda: self.inner.children(prefix))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def delete_if(self, key: str, version: str) -> bool:
        tried = [False]

        def attempt() -> bool:
            try:
                deleted = self.inner.delete_if(key, version)
            except TransientStoreError:
                tried[0] = True
                raise
            if not deleted and tried[0] and self.inner.stat(key) is None:
                return True  # our delete landed before the fault; its answer was lost
            return deleted

        return self._call("delete", key, attempt)

    def copy_from(self, source: Store, key: str, dest_key: str | None = None) -> bool:
        source = source.inner if isinstance(source, RetryingStore) else source
        return self._call("copy", key, lambda: self.inner.copy_from(source, key, dest_key))

    # Lifecycle operations are idempotent (destroying an absent key, a hold already set, a class
    # already set), so a retry after a lost answer is safe; a retried thaw may say "in-progress"
    # where the lost answer said "requested" - both mean "wait".

    def destroy(self, key: str, *, passes: int = 1) -> None:
        self._call("destroy", key, lambda: self.inner.destroy(key, passes=passes))

    def lock_supported(self) -> bool:
        return self._call("stat", "the object lock configuration", self.inner.lock_supported)

    def set_legal_hold(self, key: str, on: bool) -> None:
        self._call("legal hold", key, lambda: self.inner.set_legal_hold(key, on))

    def legal_hold(self, key: str) -> bool:
        return self._call("legal hold", key, lambda: self.inner.legal_hold(key))

    def set_storage_class(self, key: str, storage_class: str) -> None:
        self._call("storage class", key, lambda: self.inner.set_storage_class(key, storage_class))

    def thaw(self, key: str, *, days: int = 7, tier: str = "Standard") -> str:
        return self._call("thaw", key, lambda: self.inner.thaw(key, days=days, tier=tier))

    def close(self) -> None:
        self.inner.close()


def unwrap(store: Store) -> Store:
    """The backend under any RetryingStore layers (for capability checks and server-side copy)."""
    while isinstance(store, RetryingStore):
        store = store.inner
    return store
