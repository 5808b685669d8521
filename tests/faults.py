"""A store that injects faults over a real store, for the retry and failure tests.

``FaultyStore`` wraps any store (local, S3 on moto, GCS on the emulator) and raises
an error instead of (``when="before"``: the request never arrived) or after
(``when="after"``: the request landed, its answer was lost) passing a call
through. The real store underneath is never patched: every call that is let
through does what it does in production.

Which calls fail:

* ``fail_every=N``: every Nth call of the chosen operations (``N=1``: all of them,
  a storm that outlasts any retry budget);
* ``first_call=True``: in each thread, the first call of every (operation, key)
  fails and later ones pass: under RetryingStore every operation on every object
  is retried once, whatever other threads do (a fault that recurred on every
  other call would also hit the read RetryingStore makes inside a retried create,
  and exhaust its attempts on a schedule no real service follows);
* ``schedule``: a callable ``(op, key, n) -> bool`` deciding call ``n`` (1-based, of
  the chosen operations) itself;
* ``after=N``: let the first N chosen calls through before faults start.

``injected`` counts the faults per operation name (``put``, ``create``, ``replace``,
``get``, ``get_versioned``, ``stat``, ``exists``, ``list``, ``children``,
``delete``, ``delete_if``, ``copy_from``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from core.errors import VaultError
from core.storage.base import ObjectInfo, Store, TransientStoreError

ALL_OPS = frozenset(
    {
        "put",
        "create",
        "replace",
        "get",
        "get_versioned",
        "stat",
        "exists",
        "list",
        "children",
        "delete",
        "delete_if",
        "copy_from",
    }
)
WRITE_OPS = frozenset({"put", "create", "replace", "delete", "delete_if", "copy_from"})


class FaultyStore(Store):
    """Injects ``error`` into chosen calls of ``inner``; see the module docstring."""

    def __init__(
        self,
        inner: Store,
        *,
        fail_every: int | None = None,
        first_call: bool = False,
        schedule: Callable[[str, str, int], bool] | None = None,
        error: type[VaultError] | Callable[[str, str], VaultError] = TransientStoreError,
        ops: Iterable[str] = ALL_OPS,
        when: str = "before",
        after: int = 0,
    ) -> None:
        if sum(x is not None and x is not False for x in (fail_every, schedule, first_call or None)) != 1:
            raise ValueError("give exactly one of fail_every, first_call, schedule")
        unknown = set(ops) - ALL_OPS
        if unknown:
            raise ValueError(f"unknown operations {sorted(unknown)}")
        if when not in ("before", "after"):
            raise ValueError("when is 'before' or 'after'")
        self.inner = inner
        self.ops = frozenset(ops)
        self.when = when
        self.after = after
        self._fail_every = fail_every
        self._first = first_call
        self._schedule = schedule
        self._error = error
        self._lock = threading.Lock()
        self._calls = 0
        self._local = threading.local()
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()  # calls per operation, faulted or not
        self.enabled = True

    @property
    def capabilities(self):  # type: ignore[override]
        return self.inner.capabilities

    @property
    def injected_total(self) -> int:
        return sum(self.injected.values())

    def _make_error(self, op: str, key: str) -> VaultError:
        if isinstance(self._error, type):
            return self._error(f"{self.inner.describe()}: injected fault in {op} {key} (SlowDown)")
        return self._error(op, key)

    def _should_fail(self, op: str, key: str) -> bool:
        with self._lock:
            self.calls[op] += 1
        if not self.enabled or op not in self.ops:
            return False
        if self._first:
            seen = self._local.__dict__.setdefault("seen", set())
            with self._lock:
                self._calls += 1
                if self._calls <= self.after:
                    return False
            if (op, key) in seen:
                return False
            seen.add((op, key))
            return True
        with self._lock:
            self._calls += 1
            n = self._calls - self.after
        if n <= 0:
            return False
        if self._schedule is not None:
            return self._schedule(op, key, n)
        return n % self._fail_every == 0

    def _run(self, op: str, key: str, fn: Callable):
        fail = self._should_fail(op, key)
        if fail and self.when == "before":
            with self._lock:
                self.injected[op] += 1
            raise self._make_error(op, key)
        result = fn()
        if fail:
            with self._lock:
                self.injected[op] += 1
            raise self._make_error(op, key)
        return result

    def describe(self) -> str:
        return self.inner.describe()

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        self._run("put", key, lambda: self.inner.put(key, data, overwrite=overwrite))

    def create(self, key: str, data: bytes) -> str | None:
        return self._run("create", key, lambda: self.inner.create(key, data))

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        return self._run("replace", key, lambda: self.inner.replace(key, data, version=version))

    def get(self, key: str) -> bytes:
        return self._run("get", key, lambda: self.inner.get(key))

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        return self._run("get_versioned", key, lambda: self.inner.get_versioned(key))

    def stat(self, key: str) -> ObjectInfo | None:
        return self._run("stat", key, lambda: self.inner.stat(key))

    def exists(self, key: str) -> bool:
        return self._run("exists", key, lambda: self.inner.exists(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        return iter(self._run("list", prefix, lambda: list(self.inner.list(prefix))))

    def children(self, prefix: str) -> list[str]:
        return self._run("children", prefix, lambda: self.inner.children(prefix))

    def delete(self, key: str) -> None:
        self._run("delete", key, lambda: self.inner.delete(key))

    def delete_if(self, key: str, version: str) -> bool:
        return self._run("delete_if", key, lambda: self.inner.delete_if(key, version))

    def copy_from(self, source: Store, key: str, dest_key: str | None = None) -> bool:
        return self._run("copy_from", key, lambda: self.inner.copy_from(source, key, dest_key))

    def close(self) -> None:
        self.inner.close()
