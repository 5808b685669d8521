"""Writing and reading the chunked, sealed streams of one backup.

Writer: plaintext is cut into fixed-size chunks; each is hashed into the
stream's SHA-256 (in chunk order), compressed, encrypted and stored by a small
thread pool while the next is being read, with a bound on chunks in flight so
memory stays flat whatever the stream's size. The producer (pg_dump's pipe, the
files engine's walk) thus only copies bytes: every per-byte cost runs beside it.
A chunk is sealed as non-final only once we know more data follows, so the last
chunk always carries the "final" flag in its associated data (truncation shows).

Reader: fetches and opens chunks ahead of the consumer (bounded), checks each
stored object's SHA-256 against the manifest, then the GCM tag, then the whole
stream's plaintext SHA-256 (fed in chunk order by the same tasks) and length at
the end.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO

from core import cancel
from core.crypto.envelope import Opener, Sealer
from core.errors import IntegrityError
from core.repository.manifest import ChunkRecord, StreamRecord
from core.storage.base import ObjectNotFound, Store
from core.timing import StageClock

# Told the plaintext bytes of each chunk as it moves (stored by a writer, handed over by a reader):
# once per chunk, never per read, so a progress display costs nothing in the data path.
Moved = Callable[[int], None]


class ByteCounter:
    """A running total of the bytes an operation moved, from any of its threads, told to
    ``on_bytes(done, total)`` (``total``: the expected size, None when unknown) after each chunk."""

    def __init__(self, on_bytes: Callable[[int, int | None], None], total: int | None = None) -> None:
        self._on_bytes, self.total = on_bytes, total
        self.done = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        # Told under the lock, so ``done`` reaches the callback in increasing order; the callback only
        # records the figures (tasks/progress.py draws and publishes them from its own thread).
        with self._lock:
            self.done += n
            self._on_bytes(self.done, self.total)


def in_flight(store: Store) -> int:
    """Chunks buffered or in transfer at once for ``store``: twice the requests
    it serves in parallel (``capabilities.io_threads``), so a thread never waits for a chunk to be
    sealed or opened; 4 on a local disk, 16 on S3. Memory stays within chunk size x this."""
    return 2 * store.capabilities.io_threads


def chunk_key(backup_id: str, stream: str, index: int, prefix: str | None = None) -> str:
    """Where chunk ``index`` of a stream lives: under its backup, or under ``prefix`` (a log piece's
    ``logdata/<source>/<seq>``)."""
    if prefix is not None:
        return f"{prefix}/{index:08d}"
    return f"backups/{backup_id}/streams/{stream}/{index:08d}"


class StreamWriter:
    """File-like writer for one stream; ``close()`` returns its StreamRecord."""

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        pool: ThreadPoolExecutor,
        backup_id: str,
        name: str,
        chunk_size: int,
        slots: threading.Semaphore,
        prefix: str | None = None,
        moved: Moved | None = None,
    ):
        self._prefix = prefix
        self._moved = moved
        self._store, self._sealer, self._pool = store, sealer, pool
        self._backup_id, self.name, self._chunk_size = backup_id, name, chunk_size
        self._buf = bytearray()
        self._index = 0
        self._hash = hashlib.sha256()
        # The stream hash is fed by the pool's tasks, each waiting for its chunk's turn.
        self._turn = threading.Condition()
        self._hashed = 0
        self._plain = 0
        self._futures: deque[Future] = deque()
        self._records: list[ChunkRecord] = []
        # Shared by every stream of the backup: memory stays bounded however many are open.
        self._slots = slots
        self.record: StreamRecord | None = None

    def _hash_in_order(self, index: int, data: bytes) -> None:
        """Add chunk ``index`` to the stream's SHA-256 once every earlier chunk is in it.

        Tasks start in submission order, so chunk ``index - 1`` is always already
        running or done when chunk ``index`` waits here: the wait cannot deadlock."""
        with self._turn:
            while self._hashed != index:
                self._turn.wait()
        self._hash.update(data)
        with self._turn:
            self._hashed += 1
            self._turn.notify_all()

    def _store_chunk(self, index: int, final: bool, data: bytes) -> ChunkRecord:
        try:
            self._hash_in_order(index, data)
            blob = self._sealer.seal(self.name, index, final, data)
            self._store.put(chunk_key(self._backup_id, self.name, index, self._prefix), blob)
            if self._moved is not None:
                self._moved(len(data))
            return ChunkRecord(sha256=hashlib.sha256(blob).hexdigest(), stored=len(blob), plain=len(data))
        finally:
            self._slots.release()

    def _emit(self, data: bytes, final: bool) -> None:
        cancel.check(f"backup {self._backup_id}")  # SIGINT/SIGTERM: stop here, the backup ends FAILED
        self._plain += len(data)
        self._slots.acquire()  # back-pressure: at most in_flight(store) chunks buffered per backup
        self._futures.append(self._pool.submit(self._store_chunk, self._index, final, data))
        self._index += 1
        while self._futures and self._futures[0].done():
            self._records.append(self._futures.popleft().result())

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            if len(self._buf) == self._chunk_size:
                # A full chunk and more data to come: it is not the last. The buffer itself
                # goes to the pool (nothing touches it again): one copy less per chunk.
                full, self._buf = self._buf, bytearray()
                self._emit(full, final=False)
            take = self._chunk_size - len(self._buf)
            self._buf += view[:take]
            view = view[take:]
        return size

    def close(self) -> StreamRecord:
        if self.record is None:
            self._emit(bytes(self._buf), final=True)
            self._buf = bytearray()
            while self._futures:
                self._records.append(self._futures.popleft().result())
            self.record = StreamRecord(
                name=self.name,
                chunks=self._records,
                plain_bytes=self._plain,
                stored_bytes=sum(c.stored for c in self._records),
                plain_sha256=self._hash.hexdigest(),
            )
        return self.record

    def abort(self) -> None:
        """Wait for in-flight chunks so nothing writes after the caller cleans up."""
        while self._futures:
            try:
                self._futures.popleft().result()
            except Exception:
                pass  # the backup is already failing with the original error


class StreamReader:
    """Yields the verified plaintext of one stream."""

    def __init__(
        self,
        store: Store,
        opener: Opener,
        pool: ThreadPoolExecutor,
        backup_id: str,
        record: StreamRecord,
        prefix: str | None = None,
        clock: StageClock | None = None,
        moved: Moved | None = None,
    ):
        self._prefix = prefix
        self._moved = moved
        self._clock = clock  # a drill's: store GETs are "fetch", checking and opening a chunk "decrypt"
        self._store, self._opener, self._pool = store, opener, pool
        self._backup_id, self.record = backup_id, record
        self._digest = hashlib.sha256()
        self._turn = threading.Condition()
        self._hashed = 0
        self._broken = False  # a chunk failed: later ones must not wait for its turn

    def _fetch(self, index: int) -> bytes:
        try:
            data = self._open_chunk(index)
        except BaseException:
            with self._turn:
                self._broken = True
                self._turn.notify_all()
            raise
        # Into the stream's SHA-256 in chunk order (see StreamWriter._hash_in_order). After a
        # failed chunk nothing is hashed: the consumer stops at that chunk's error.
        with self._turn:
            while self._hashed != index and not self._broken:
                self._turn.wait()
            if self._broken:
                return data
        self._digest.update(data)
        with self._turn:
            self._hashed += 1
            self._turn.notify_all()
        return data

    def _open_chunk(self, index: int) -> bytes:
        rec = self.record.chunks[index]
        key = chunk_key(self._backup_id, self.record.name, index, self._prefix)
        started = time.monotonic()
        try:
            blob = self._store.get(key)
        except ObjectNotFound:
            raise IntegrityError(
                f"backup {self._backup_id}: object {key} is missing (stream truncated); restore from another backup or replica"
            ) from None
        if len(blob) != rec.stored or hashlib.sha256(blob).hexdigest() != rec.sha256:
            raise IntegrityError(
                f"backup {self._backup_id}: object {key} does not match its SHA-256 in the manifest (corrupt); "
                "restore from another backup or replica"
            )
        fetched = time.monotonic()
        final = index == len(self.record.chunks) - 1
        data = self._opener.open(self.record.name, index, final, blob, f"backup {self._backup_id} object {key}")
        if self._clock is not None:
            self._clock.add("fetch", fetched - started)
            self._clock.add("decrypt", time.monotonic() - fetched)
        return data

    def __iter__(self) -> Iterator[bytes]:
        total = len(self.record.chunks)
        if total == 0:
            raise IntegrityError(
                f"backup {self._backup_id}: stream {self.record.name} has no chunks; the manifest is corrupt"
            )
        size = 0
        ahead: deque[Future] = deque()
        next_index = 0
        try:
            while next_index < total or ahead:
                while next_index < total and len(ahead) < in_flight(self._store):
                    ahead.append(self._pool.submit(self._fetch, next_index))
                    next_index += 1
                data = ahead.popleft().result()
                size += len(data)
                if self._moved is not None:
                    self._moved(len(data))
                yield data
        finally:
            for fut in ahead:
                fut.cancel()
        if self._broken or size != self.record.plain_bytes or self._digest.hexdigest() != self.record.plain_sha256:
            raise IntegrityError(
                f"backup {self._backup_id}: stream {self.record.name} plaintext does not match its recorded SHA-256; "
                "the restore is not trustworthy - restore from another backup"
            )


class IterReader(io.RawIOBase):
    """A read-only file object over an iterator of byte pieces."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._current:
            try:
                self._current = memoryview(next(self._pieces))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


@contextmanager
def open_reader(pieces: Callable[[], Iterator[bytes]]) -> Iterator[BinaryIO]:
    gen = pieces()
    raw = IterReader(gen)
    try:
        yield io.BufferedReader(raw, buffer_size=1 << 20)  # type: ignore[misc]
    finally:
        gen.close()
