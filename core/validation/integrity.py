"""Integrity validation: every stored object read back, and with a key decrypted and authenticated.

Without a key, each object's SHA-256 and size are checked against the manifest (or the log
piece's record): that proves the store still holds what was written. With a key the backup is
opened like a restore opens it (the manifest's MAC, every chunk's digest and GCM tag, every
stream's plaintext SHA-256) while the engines' own tools (``core.validation.tools``) read the
same plaintext: one pass over the objects serves both. Each object is read at most once per
run (log pieces shared by several backups, ``--all``), and backups verified recently are not
re-read at all (``validation.reverify_after_hours``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

from core import cancel
from core.chains import iso, parse_iso
from core.crypto.keys import Keyring
from core.errors import ConfigError, DRError, WrongKeyError
from core.history import History
from core.repository.log import LogReader, PieceRecord
from core.repository.manifest import ChunkRecord, Manifest
from core.repository.streams import open_reader
from core.repository.vault import BackupReader, Vault
from core.storage.base import ObjectNotFound
from core.validation.quick import REMEDY_REPLICA, chunk_keys, first_part, listed, log_records, piece_keys
from core.validation.results import CheckResult, not_checked

NO_KEY = "no private key: chunks were not decrypted or authenticated"
# Errors that mean "this keyring cannot open it" (a passphrase variable unset counts: a
# validation host may hold no secret at all), as opposed to "it is damaged".
_NO_KEY_ERRORS = (WrongKeyError, ConfigError)


def _is_data(key: str) -> bool:
    return key.startswith("logdata/") or (key.startswith("backups/") and "/streams/" in key)


class CountingStore:
    """The vault's store, counting the data objects (chunks) read through it: the run's
    ``objects_read`` and ``bytes_read`` are what was transferred, not what was planned."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.objects = 0
        self.bytes = 0

    def get(self, key: str) -> bytes:
        data = self._store.get(key)
        if _is_data(key):
            with self._lock:
                self.objects += 1
                self.bytes += len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class SharedReader:
    """A BackupReader the engines' tools read from, while it verifies every stream for us.

    A tool may stop early (``pg_restore --list`` reads a dump's table of contents only):
    its stream's iterator is kept and drained afterwards, so every chunk is still read,
    authenticated and hashed into the stream's digest, and none twice.
    """

    def __init__(self, reader: BackupReader) -> None:
        self._reader = reader
        self._lock = threading.Lock()
        self._open: dict[str, Iterator[bytes]] = {}  # started, not read to the end yet
        self.done: set[str] = set()
        self.errors: dict[str, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def iter_stream(self, name: str) -> Iterator[bytes]:
        with self._lock:
            if name in self.errors:
                raise DRError(self.errors[name])
            self._open.pop(name, None)  # a second reader of the stream starts again from its first chunk
            under = self._reader.iter_stream(name)
            self._open[name] = under
        return self._relay(name, under)

    def _relay(self, name: str, under: Iterator[bytes]) -> Iterator[bytes]:
        try:
            # Not `yield from`: that would close `under` when the consumer stops early; we drain it later.
            for piece in under:  # noqa: UP028
                yield piece
        except DRError as exc:
            self._failed(name, under, exc)
            raise
        with self._lock:
            if self._open.get(name) is under:
                del self._open[name]
            self.done.add(name)

    def _failed(self, name: str, under: Iterator[bytes], exc: DRError) -> None:
        with self._lock:
            self.errors.setdefault(name, str(exc))
            if self._open.get(name) is under:
                del self._open[name]

    def open_stream(self, name: str):
        return open_reader(lambda: self.iter_stream(name))

    def drain(self) -> None:
        """Read every stream no tool read to its end: continue the ones a tool stopped in."""
        for name in self._reader.stream_names():
            with self._lock:
                if name in self.done or name in self.errors:
                    continue
                under = self._open.pop(name, None) or self._reader.iter_stream(name)
            try:
                for _ in under:
                    pass
            except DRError as exc:
                self._failed(name, under, exc)
                continue
            with self._lock:
                self.done.add(name)


class IntegrityRun:
    """One run's integrity checks: the read-once bookkeeping, counters and the key state."""

    def __init__(
        self,
        vault: Vault,
        keyring: Keyring | None,
        *,
        history: History | None = None,
        reverify_after_hours: float = 0,
        now: datetime,
        progress: Callable[[str], None] | None = None,
        tools: bool = True,
    ) -> None:
        self.store = CountingStore(vault.store)
        self.vault = Vault(self.store, vault.config)  # reads go through the counter
        self.keyring = keyring
        self.history = history
        self.reverify_after = timedelta(hours=reverify_after_hours)
        self.now = now
        self.progress = progress or (lambda _message: None)
        self.tools = tools
        self.seen: set[str] = set()  # data objects read in this run (a log piece is read once for all)
        self.decryption_checked = True
        self.reused: dict[str, str] = {}
        self._log_readers: dict[str, LogReader] = {}

    # -- reverification interval ------------------------------------------------------------
    def _manifest_sha256(self, backup_id: str) -> str | None:
        try:
            return hashlib.sha256(self.vault.store.get(f"backups/{backup_id}/manifest.json")).hexdigest()
        except ObjectNotFound:
            return None

    def _recently_verified(self, manifest: Manifest, digest: str | None) -> dict | None:
        if self.history is None or not self.reverify_after or digest is None:
            return None
        doc = self.history.verified(manifest.id)
        if not doc or not doc.get("decrypted") or doc.get("manifest_sha256") != digest:
            return None
        try:
            when = parse_iso(str(doc["verified_at"]))
        except (KeyError, ValueError):
            return None
        return doc if timedelta(0) <= self.now - when <= self.reverify_after else None

    # -- one backup ---------------------------------------------------------------------------
    def check_backup(self, manifest: Manifest) -> list[CheckResult]:
        """Read back the objects of one COMPLETED backup (and of its log range); record a clean read."""
        cancel.check(f"validation of {manifest.id}")
        digest = self._manifest_sha256(manifest.id)
        doc = self._recently_verified(manifest, digest)
        if doc is not None:
            self.reused[manifest.id] = str(doc["verified_at"])
            hours = self.reverify_after.total_seconds() / 3600
            return [
                CheckResult(
                    "read back",
                    True,
                    f"not re-read: every object was read back and authenticated at {doc['verified_at']} "
                    f"(within validation.reverify_after_hours = {hours:g})",
                    source=manifest.source,
                    backup_id=manifest.id,
                )
            ]
        objects, size = self.store.objects, self.store.bytes
        self.progress(f"reading back {manifest.id} ({manifest.source}, {len(chunk_keys(manifest))} chunks)")
        results = self._read_backup(manifest)
        results += self._read_log(manifest)
        decrypted = all(r.checked for r in results if r.name in ("decryption", "log decryption"))
        if self.history is not None and decrypted and digest and not any(r.failed for r in results):
            self.history.mark_verified(
                manifest.id,
                {
                    "verified_at": iso(self.now),
                    "objects": self.store.objects - objects,
                    "bytes": self.store.bytes - size,
                    "manifest_sha256": digest,
                    "decrypted": True,
                },
            )
        return results

    def _result(self, manifest: Manifest, name: str, passed: bool, detail: str, remedy: str = "", **kw) -> CheckResult:
        return CheckResult(
            name, passed, detail, "" if passed else remedy, source=manifest.source, backup_id=manifest.id, **kw
        )

    def _open(self, manifest: Manifest) -> tuple[BackupReader | None, CheckResult | None]:
        """The backup opened with the keyring, or None and why (no key: not checked; damage: failed)."""
        if self.keyring is None:
            return None, not_checked("decryption", NO_KEY, source=manifest.source, backup_id=manifest.id)
        try:
            return self.vault.open_backup(manifest.id, self.keyring), None
        except _NO_KEY_ERRORS:
            return None, not_checked("decryption", NO_KEY, source=manifest.source, backup_id=manifest.id)
        except DRError as exc:
            # The manifest's MAC or keys.json failed: the objects' digests can still be checked.
            remedy = "restore the backup from a replica, or take a new full backup"
            return None, self._result(manifest, "manifest authentication", False, first_part(str(exc)), remedy)

    def _read_backup(self, manifest: Manifest) -> list[CheckResult]:
        started = time.monotonic()
        reader, why = self._open(manifest)
        if reader is None:
            if why is not None and not why.checked:
                self.decryption_checked = False
            results = [why] if why is not None else []
            return [self._digests(manifest, chunk_keys(manifest), "object digests", started), *results]
        try:
            results = [self._result(manifest, "manifest authentication", True, "the manifest's MAC matches")]
            shared = SharedReader(reader)
            tool_results = self._tools(shared, manifest) if self.tools else []
            shared.drain()
            for key, _chunk in chunk_keys(manifest):
                self.seen.add(key)
        finally:
            reader.close()
        seconds = time.monotonic() - started
        if shared.errors:
            failed = [f"stream {name}: {first_part(msg)}" for name, msg in sorted(shared.errors.items())]
            results.append(
                self._result(manifest, "read back", False, "; ".join(failed), REMEDY_REPLICA, seconds=seconds)
            )
        elif not manifest.streams:
            results.append(self._result(manifest, "read back", True, "no chunks of its own: its data is its log range"))
        else:
            streams = f"{len(shared.done)} stream" + ("s" if len(shared.done) != 1 else "")
            results.append(
                self._result(
                    manifest,
                    "read back",
                    True,
                    f"{len(chunk_keys(manifest))} chunks read back: their SHA-256 and authentication tags and the "
                    f"plaintext SHA-256 of {streams} ({manifest.plain_bytes} bytes) match",
                    seconds=seconds,
                )
            )
        return results + tool_results

    def _tools(self, reader: SharedReader, manifest: Manifest) -> list[CheckResult]:
        """The engines' own tools on the plaintext (``core.validation.tools``)."""
        try:
            from core.validation.tools import verify_streams
        except ImportError:
            return [
                not_checked(
                    "engine tools",
                    "this genesis-dr has no engine tool checks (core.validation.tools)",
                    source=manifest.source,
                    backup_id=manifest.id,
                )
            ]
        try:
            return list(verify_streams(reader))
        except DRError as exc:
            return [
                self._result(
                    manifest, "engine tools", False, first_part(str(exc)), "see the tool's message; " + REMEDY_REPLICA
                )
            ]

    def _digests(
        self, manifest: Manifest, objects: list[tuple[str, ChunkRecord]], name: str, started: float
    ) -> CheckResult:
        """Each object read once and its size and SHA-256 compared with its record (no key needed)."""
        missing, damaged, read = [], [], 0
        for key, chunk in objects:
            cancel.check(f"validation of {manifest.id}")
            if key in self.seen:
                continue
            self.seen.add(key)
            try:
                blob = self.store.get(key)
            except ObjectNotFound:
                missing.append(key)
                continue
            read += 1
            if len(blob) != chunk.stored or hashlib.sha256(blob).hexdigest() != chunk.sha256:
                damaged.append(key)
        problems = []
        if missing:
            problems.append(f"{len(missing)} objects missing: {listed(missing)}")
        if damaged:
            problems.append(f"{len(damaged)} objects do not match their SHA-256 in the manifest: {listed(damaged)}")
        seconds = time.monotonic() - started
        if problems:
            return self._result(manifest, name, False, "; ".join(problems), REMEDY_REPLICA, seconds=seconds)
        return self._result(
            manifest, name, True, f"{len(objects)} objects match their recorded SHA-256 and size", seconds=seconds
        )

    # -- the log range a backup records -------------------------------------------------------
    def _log_reader(self, source: str) -> LogReader:
        if source not in self._log_readers:
            self._log_readers[source] = LogReader(self.store, source, self.keyring)
        return self._log_readers[source]

    def _read_log(self, manifest: Manifest) -> list[CheckResult]:
        """The log pieces of the backup's range: each read once per run, decrypted when a key opens it.

        A missing piece record is the quick check's finding ("log range"); here the pieces that
        are there are read."""
        records, _missing = log_records(self.vault, manifest)
        fresh = [r for r in records if not all(key in self.seen for key, _ in piece_keys(r))]
        if not records:
            return []
        started = time.monotonic()
        if not fresh:
            return [self._result(manifest, "log pieces", True, f"{len(records)} pieces already read in this run")]
        problems: list[str] = []
        no_key = self.keyring is None
        for record in fresh:
            cancel.check(f"validation of {manifest.id}")
            if not no_key:
                try:
                    self._read_piece(record)
                    continue
                except _NO_KEY_ERRORS:
                    no_key = True
                except DRError as exc:
                    problems.append(first_part(str(exc)))
                    continue
            check = self._digests(manifest, piece_keys(record), "log pieces", started)
            if check.failed:
                problems.append(f"piece {record.seq}: {check.detail}")
        results = []
        if no_key:
            self.decryption_checked = False
            results.append(not_checked("log decryption", NO_KEY, source=manifest.source, backup_id=manifest.id))
        seconds = time.monotonic() - started
        first, last = records[0].seq, records[-1].seq
        if problems:
            results.insert(
                0,
                self._result(
                    manifest,
                    "log pieces",
                    False,
                    f"pieces {first}..{last}: " + "; ".join(problems),
                    "restore the log pieces from a replica, or take a new full backup of the source",
                    seconds=seconds,
                ),
            )
        else:
            how = "object digests matched" if no_key else "read back, authenticated and their digests matched"
            results.insert(
                0,
                self._result(
                    manifest, "log pieces", True, f"pieces {first}..{last} ({len(fresh)} read): {how}", seconds=seconds
                ),
            )
        return results

    def _read_piece(self, record: PieceRecord) -> None:
        keys = [key for key, _ in piece_keys(record)]
        for _ in self._log_reader(record.source).iter_piece(record):
            pass
        self.seen.update(keys)

    def close(self) -> None:
        for reader in self._log_readers.values():
            reader.close()
