"""The backup repository ("vault"), format v1 (docs/FORMAT.md).

Layout on any store::

    config.json                                  vault format + version (checked on open)
    locks/<name>.lock                            leases (see lock.py)
    backups/<id>/keys.json                       the data key, wrapped per recipient
    backups/<id>/streams/<stream>/<00000000>     sealed chunks
    backups/<id>/manifest.json                   written last: the commit point

A backup without a manifest does not exist. A failed run writes a manifest with
status FAILED and its error, and its chunks are removed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO

from core import cancel
from core.crypto.envelope import Opener, Sealer
from core.crypto.keys import Keyring
from core.engines.base import BackupResult
from core.errors import BackupNotFoundError, DRError, FormatError, IntegrityError, VaultError
from core.repository.lock import Lease
from core.repository.manifest import (
    COMPLETED,
    FAILED,
    Manifest,
    StreamRecord,
    now_iso,
    parse_manifest,
    valid_backup_id,
)
from core.repository.streams import IN_FLIGHT, StreamReader, StreamWriter, chunk_key, open_reader
from core.storage.base import Store
from core.storage.local import ObjectNotFound

VAULT_FORMAT = "genesis-dr-vault"
VAULT_VERSION = 1
DEFAULT_CHUNK_SIZE = 4 << 20
_STREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def default_chunk_size() -> int:
    return int(os.environ.get("GENESIS_DR_CHUNK_SIZE", DEFAULT_CHUNK_SIZE))


def new_backup_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"backup_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


class Vault:
    def __init__(self, store: Store, config: dict) -> None:
        self.store = store
        self.config = config

    @classmethod
    def open(cls, store: Store, create: bool = False) -> Vault:
        """Open the vault in ``store``; create it if asked and absent. Refuses unknown versions."""
        try:
            raw = store.get("config.json")
        except ObjectNotFound:
            if not create:
                raise VaultError(
                    f"no vault at {store.describe()}; run a backup first, or check the stack's vault settings"
                ) from None
            config = {
                "format": VAULT_FORMAT,
                "version": VAULT_VERSION,
                "id": uuid.uuid4().hex,
                "created_at": now_iso(),
            }
            store.create("config.json", json.dumps(config, sort_keys=True, indent=2).encode())
            raw = store.get("config.json")
        try:
            config = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"vault {store.describe()}: config.json is not valid JSON (corrupt)") from None
        if config.get("format") != VAULT_FORMAT:
            raise FormatError(f"{store.describe()} is not a genesis-dr vault (config.json has no genesis-dr format)")
        if config.get("version") != VAULT_VERSION:
            raise FormatError(
                f"vault {store.describe()} has format version {config.get('version')!r}; this genesis-dr reads "
                f"version {VAULT_VERSION} - upgrade genesis-dr"
            )
        return cls(store, config)

    def describe(self) -> str:
        return self.store.describe()

    # -- listing ------------------------------------------------------------------

    def backup_ids(self) -> list[str]:
        ids = set()
        for key in self.store.list("backups/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == "manifest.json":
                ids.add(parts[1])
        return sorted(ids)

    def manifest(self, backup_id: str) -> Manifest:
        if not valid_backup_id(backup_id):
            raise BackupNotFoundError(
                f"{backup_id!r} is not a backup id (expected backup_YYYYMMDD_HHMMSS_xxxxxxxx); see 'genesis-dr list'"
            )
        key = f"backups/{backup_id}/manifest.json"
        try:
            raw = self.store.get(key)
        except ObjectNotFound:
            raise BackupNotFoundError(
                f"backup {backup_id} not found in vault {self.describe()} (no manifest); see 'genesis-dr list'"
            ) from None
        manifest = parse_manifest(raw, f"backup {backup_id} manifest")
        if manifest.id != backup_id:
            raise IntegrityError(
                f"backup {backup_id}: manifest names another backup ({manifest.id}); the vault is corrupt"
            )
        return manifest

    def list_backups(self, source: str | None = None) -> list[Manifest]:
        manifests = [self.manifest(i) for i in self.backup_ids()]
        return [m for m in manifests if source is None or m.source == source]

    # -- writing ------------------------------------------------------------------

    def lock(self, name: str, purpose: str) -> Lease:
        return Lease(self.store, name, purpose)

    def begin_backup(
        self,
        *,
        source: str,
        kind: str,
        backup_type: str,
        target: str,
        keyring: Keyring,
        compression: str = "zstd",
        parent: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> BackupWriter:
        return BackupWriter(self, source, kind, backup_type, target, keyring, compression, parent, labels or {})

    # -- reading ------------------------------------------------------------------

    def open_backup(self, backup_id: str, keyring: Keyring) -> BackupReader:
        manifest = self.manifest(backup_id)
        if manifest.status != COMPLETED:
            raise BackupNotFoundError(
                f"backup {backup_id} is {manifest.status} ({manifest.error}); choose a completed backup from 'genesis-dr list'"
            )
        try:
            keys_raw = self.store.get(f"backups/{backup_id}/keys.json")
        except ObjectNotFound:
            raise IntegrityError(
                f"backup {backup_id}: key file is missing (crypto-shredded or lost); the backup cannot be read"
            ) from None
        if hashlib.sha256(keys_raw).hexdigest() != manifest.keys_sha256:
            raise IntegrityError(f"backup {backup_id}: key file does not match its SHA-256 in the manifest (corrupt)")
        try:
            recipients = json.loads(keys_raw)["recipients"]
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"backup {backup_id}: key file is not valid (corrupt)") from None
        data_key = keyring.unwrap(backup_id, recipients)
        manifest.verify(data_key)
        return BackupReader(self, manifest, data_key)


class BackupWriter:
    """A backup in progress: the StreamSink engines write to."""

    def __init__(self, vault, source, kind, backup_type, target, keyring, compression, parent, labels) -> None:
        self.vault, self.store = vault, vault.store
        self.id = new_backup_id()
        self.started_at = now_iso()
        self._data_key = os.urandom(32)
        self._sealer = Sealer(self._data_key, self.id, compression)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"seal-{self.id[-8:]}")
        # Engines may write several streams at once (parallel pg_dump): guard the registry.
        self._registry = threading.Lock()
        self._slots = threading.Semaphore(IN_FLIGHT)
        self._streams: list[StreamRecord] = []
        self._open: list[StreamWriter] = []
        self._chunk_size = default_chunk_size()
        self._base = dict(
            id=self.id,
            source=source,
            kind=kind,
            type=backup_type,
            parent=parent,
            labels=labels,
            target=target,
            started_at=self.started_at,
            compression=compression,
            chunk_size=self._chunk_size,
        )
        keys = json.dumps({"version": 1, "recipients": keyring.wrap(self.id, self._data_key)}, sort_keys=True, indent=1)
        self._keys_raw = keys.encode()
        # Key file first: if this fails (vault unwritable/full) nothing else was written.
        self.store.put(f"backups/{self.id}/keys.json", self._keys_raw)

    def _new_stream(self, name: str) -> StreamWriter:
        with self._registry:
            if not _STREAM_NAME.match(name) or any(s.name == name for s in self._streams + self._open):
                raise ValueError(f"invalid or duplicate stream name {name!r}")
            writer = StreamWriter(self.store, self._sealer, self._pool, self.id, name, self._chunk_size, self._slots)
            self._open.append(writer)
        return writer

    @contextmanager
    def open_stream(self, name: str) -> Iterator[StreamWriter]:
        """A writer for one stream; several streams may be open at once (one thread each)."""
        writer = self._new_stream(name)
        try:
            yield writer
        except BaseException:
            writer.abort()
            with self._registry:
                self._open.remove(writer)
            raise
        record = writer.close()
        with self._registry:
            self._streams.append(record)
            self._open.remove(writer)

    def write_stream(self, name: str, data: BinaryIO) -> int:
        with self.open_stream(name) as out:
            while True:
                piece = data.read(1 << 20)
                if not piece:
                    break
                out.write(piece)
        return out.close().plain_bytes

    def _manifest(self, status: str, **fields) -> Manifest:
        return Manifest(
            **self._base,
            status=status,
            ended_at=now_iso(),
            keys_sha256=hashlib.sha256(self._keys_raw).hexdigest(),
            **fields,
        )

    def commit(self, result: BackupResult) -> Manifest:
        """Write the manifest: from here on the backup exists."""
        cancel.check(f"backup {self.id}")  # never commit a run the operator has interrupted
        checks = json.dumps(result.checks, sort_keys=True, default=str).encode()
        sealed = base64.b64encode(self._sealer.seal_blob("checks", checks)).decode()
        manifest = self._manifest(
            COMPLETED,
            streams=self._streams,
            position=result.position,
            tool_versions=result.tool_versions,
            skipped=list(result.skipped),
            sealed_checks=sealed,
        )
        manifest.sign(self._data_key)
        self.store.put(f"backups/{self.id}/manifest.json", manifest.canonical())
        self._pool.shutdown()
        return manifest

    def fail(self, error: BaseException) -> Manifest:
        """Record a truthful FAILED manifest and remove the partial chunks."""
        for writer in list(self._open):
            writer.abort()
        self._pool.shutdown()
        for key in list(self.store.list(f"backups/{self.id}/streams/")):
            self.store.delete(key)
        message = str(error) if isinstance(error, DRError) else f"{type(error).__name__}: {error}"
        manifest = self._manifest(FAILED, error=message[:2000])
        manifest.sign(self._data_key)
        self.store.put(f"backups/{self.id}/manifest.json", manifest.canonical())
        return manifest


class BackupReader:
    """A committed backup opened with its key: the StreamSource engines read from."""

    def __init__(self, vault: Vault, manifest: Manifest, data_key: bytes) -> None:
        self.vault, self.manifest = vault, manifest
        self._opener = Opener(data_key, manifest.id)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"open-{manifest.id[-8:]}")
        checks = {}
        if manifest.sealed_checks:
            blob = base64.b64decode(manifest.sealed_checks)
            checks = json.loads(self._opener.open_blob("checks", blob, f"backup {manifest.id} checks"))
        self.result = BackupResult(position=manifest.position, checks=checks, tool_versions=manifest.tool_versions)

    def stream_names(self) -> list[str]:
        return [s.name for s in self.manifest.streams]

    def _record(self, name: str) -> StreamRecord:
        for s in self.manifest.streams:
            if s.name == name:
                return s
        raise IntegrityError(
            f"backup {self.manifest.id} has no stream {name!r}; the manifest does not match the engine"
        )

    def iter_stream(self, name: str) -> Iterator[bytes]:
        return iter(StreamReader(self.vault.store, self._opener, self._pool, self.manifest.id, self._record(name)))

    def open_stream(self, name: str):
        return open_reader(lambda: self.iter_stream(name))

    def verify_objects(self) -> int:
        """Read and authenticate every chunk of every stream; returns plaintext bytes checked."""
        total = 0
        for name in self.stream_names():
            for piece in self.iter_stream(name):
                total += len(piece)
        return total

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Vault", "BackupWriter", "BackupReader", "new_backup_id", "chunk_key"]
