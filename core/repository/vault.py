"""The backup repository ("vault"), format v2 (docs/FORMAT.md); reads v1 vaults as they are.

Layout on any store::

    config.json                                  vault format + version (checked on open)
    catalog/<source>/<id>.json                   v2: the index of each source's backups (written after the
                                                 manifest, which stays the commit point)
    logs/, logdata/, logkeys/                    v2: each source's log (see log.py)
    locks/<name>.lock                            leases (see lock.py)
    backups/<id>/started.json                    written first: whose run this is (source, host, pid, lease)
    backups/<id>/keys.json                       the data key, wrapped per recipient
    backups/<id>/streams/<stream>/<00000000>     sealed chunks
    backups/<id>/manifest.json                   written last: the commit point
    keychecks/<name>.json                        key-check values of the passphrase (newest is current)
    retention/deleting/<id>.json                 a deletion in progress (core/retention/shred.py): DELETING
    backups/<id>/archived.json                   the data moved to an archive vault: opened there (--vault)

A backup without a manifest does not exist. A failed run writes a manifest with
status FAILED and its error, and its chunks are removed. A killed run leaves a
partial directory; the next backup of its source (under the source's lease)
records it FAILED ("interrupted") and removes its chunks.

One damaged backup affects only itself: the catalog (``Vault.entries``) lists an
unreadable manifest as CORRUPT with the reason, and ``list_backups`` (what
planners choose from) holds only readable manifests.

Opening and reading never write to the store, so restores work from a read-only
replica or a full disk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import BinaryIO

from core import cancel
from core.crypto.envelope import Opener, Sealer
from core.crypto.keys import Keyring, key_check_matches, new_key_check
from core.engines.base import BackupResult
from core.errors import (
    BackupNotFoundError,
    ConfigError,
    DRError,
    FormatError,
    IntegrityError,
    VaultError,
    WrongKeyError,
)
from core.repository.lock import (
    Lease,
    describe_holder,
    holder_alive_here,
    lease_names,
    lease_stale,
    process_start_time,
    read_lease,
)
from core.repository.log import LogIndex, LogReader, PieceRecord
from core.repository.manifest import (
    ABANDONED,
    COMPLETED,
    CORRUPT,
    FAILED,
    IN_PROGRESS,
    Manifest,
    StartRecord,
    StreamRecord,
    now_iso,
    parse_manifest,
    parse_start_record,
    valid_backup_id,
)
from core.repository.streams import StreamReader, StreamWriter, chunk_key, in_flight, open_reader
from core.storage.base import ObjectNotFound, Store
from core.timing import StageClock

VAULT_FORMAT = "genesis-dr-vault"
VAULT_VERSION = 2
READABLE_VAULT_VERSIONS = (1, 2)  # v1: no catalog and no logs; read as is, written as v2 from then on
DEFAULT_CHUNK_SIZE = 4 << 20
CAPTURE_LEASE_PREFIX = "capture."  # locks/capture.<source>.lock: one capture per source, beside its backups' lease
_STREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# A backup whose deletion began (retention/deleting/<id>.json, written before anything is removed):
# listed, never chosen, never opened; the next retention run finishes it.
DELETING = "DELETING"
DELETING_PREFIX = "retention/deleting/"


def default_chunk_size() -> int:
    return int(os.environ.get("GENESIS_DR_CHUNK_SIZE", DEFAULT_CHUNK_SIZE))


def new_backup_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"backup_{now:%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


def _backup_started(backup_id: str) -> float:
    """The UTC start second encoded in a backup id."""
    return datetime.strptime(backup_id[7:22], "%Y%m%d_%H%M%S").replace(tzinfo=UTC).timestamp()


class VaultMissingError(VaultError):
    """The store holds no vault at all: nothing was ever backed up there. Exit 3."""


@dataclass(frozen=True)
class BackupEntry:
    """One backup directory of the catalog, readable or not: what ``genesis-dr list`` shows.

    ``state`` is COMPLETED or FAILED (from a readable manifest), CORRUPT (a
    manifest that cannot be read or names another backup), IN_PROGRESS or
    ABANDONED (no manifest yet; see ``Vault.entries``). ``reason`` says why for
    every state but COMPLETED (the FAILED error, the corruption, the run).
    """

    id: str
    state: str
    manifest: Manifest | None = None
    source: str | None = None  # known without a readable manifest when started.json names it
    reason: str | None = None
    start: StartRecord | None = None

    def summary(self) -> dict:
        """Secret-free record for listings: the manifest's summary, or what is known of the directory."""
        if self.manifest is not None:
            return self.manifest.summary() | {"status": self.state, "error": self.reason}
        start = self.start
        return {
            "id": self.id,
            "source": self.source,
            "kind": start.kind if start else None,
            "type": start.type if start else None,
            "status": self.state,
            "started_at": start.started_at if start else None,
            "ended_at": None,
            "plain_bytes": None,
            "stored_bytes": None,
            "position": {},
            "position_text": "",
            "labels": {},
            "skipped": [],
            "key_ids": [],
            "error": self.reason,
        }


class Vault:
    def __init__(self, store: Store, config: dict) -> None:
        self.store = store
        self.config = config
        self._leases: dict[str, Lease] = {}  # taken through this vault, so a writer knows its own lease

    @staticmethod
    def _holds_backups(store: Store) -> bool:
        return bool(store.children("backups/") or store.children("locks/"))

    @classmethod
    def open(cls, store: Store, create: bool = False) -> Vault:
        """Open the vault in ``store``; create it if asked and absent. Refuses unknown versions.

        Never writes unless ``create`` is true and the store is empty (VaultMissingError
        if there is no vault and ``create`` is false). A store that holds backups or
        locks but no config.json has lost its identity: refused both ways, with the
        recovery in the message, rather than silently given a new one.
        """
        try:
            raw = store.get("config.json")
        except ObjectNotFound:
            raw = None
        if raw is None and cls._holds_backups(store):
            # Read again: a concurrent first backup writes config.json before any lock or backup.
            try:
                raw = store.get("config.json")
            except ObjectNotFound:
                raise VaultError(
                    f"vault {store.describe()} holds backups but its config.json (the vault identity) is missing; "
                    "restore config.json from a replica or a backup of the vault, or if no copy exists run "
                    "'genesis-dr repair-vault --new-identity' (see docs/FORMAT.md, config.json)"
                ) from None
        if raw is None:
            if not create:
                raise VaultMissingError(
                    f"no vault at {store.describe()}; run a backup first, or check the stack's vault settings"
                )
            cls._write_config(store)
            raw = store.get("config.json")
        try:
            config = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"vault {store.describe()}: config.json is not valid JSON (corrupt)") from None
        if config.get("format") != VAULT_FORMAT:
            raise FormatError(f"{store.describe()} is not a genesis-dr vault (config.json has no genesis-dr format)")
        if config.get("version") not in READABLE_VAULT_VERSIONS:
            raise FormatError(
                f"vault {store.describe()} has format version {config.get('version')!r}; this genesis-dr reads "
                f"version {VAULT_VERSION} - upgrade genesis-dr"
            )
        return cls(store, config)

    @staticmethod
    def _write_config(store: Store, **extra) -> None:
        config = {
            "format": VAULT_FORMAT,
            "version": VAULT_VERSION,
            "id": uuid.uuid4().hex,
            "created_at": now_iso(),
            **extra,
        }
        store.create("config.json", json.dumps(config, sort_keys=True, indent=2).encode())

    @classmethod
    def recreate_identity(cls, store: Store) -> Vault:
        """Write a NEW config.json into a store whose backups lost theirs (operator's explicit choice).

        Backups do not depend on the vault id (each carries its own keys and MAC), so
        they stay readable; the new identity records that it replaced a lost one.
        Refused when config.json exists or the store holds no backups.
        """
        if store.exists("config.json"):
            raise VaultError(f"vault {store.describe()} already has a config.json; nothing to repair")
        if not cls._holds_backups(store):
            raise VaultMissingError(f"no backups at {store.describe()}; a first backup creates the vault")
        cls._write_config(store, recreated_at=now_iso(), note="identity recreated; the original config.json was lost")
        return cls.open(store)

    def describe(self) -> str:
        return self.store.describe()

    # -- listing ------------------------------------------------------------------

    def backup_ids(self) -> list[str]:
        """Ids of backups that have a manifest (readable or not)."""
        return [
            i
            for i in self.store.children("backups/")
            if valid_backup_id(i) and self.store.exists(f"backups/{i}/manifest.json")
        ]

    def _start_record(self, backup_id: str) -> StartRecord | None:
        try:
            return parse_start_record(self.store.get(f"backups/{backup_id}/started.json"))
        except ObjectNotFound:
            return None

    def _partial_state(
        self, backup_id: str, start: StartRecord | None, own_token: str | None = None
    ) -> tuple[str, str]:
        """IN_PROGRESS or ABANDONED, and why, for a backup directory without a manifest."""
        if start is not None and start.lease and start.lease_token:
            holder = read_lease(self.store, start.lease)
            if holder and holder.get("token") == start.lease_token and not lease_stale(holder):
                return IN_PROGRESS, f"no manifest yet; its run holds lease '{start.lease}' ({describe_holder(holder)})"
            return ABANDONED, (
                f"no manifest and its run's lease '{start.lease}' is gone (run on {start.host} pid {start.pid}, "
                f"started {start.started_at})"
            )
        if start is not None:
            alive = holder_alive_here({"host": start.host, "pid": start.pid, "pid_start": start.pid_start})
            if alive is False:
                return ABANDONED, f"no manifest and its process is gone ({start.host} pid {start.pid})"
            return IN_PROGRESS, f"no manifest yet; written without a lease by {start.host} pid {start.pid}"
        # No start record (older genesis-dr, or unreadable): it can only belong to a live
        # lease taken before it started.
        started = _backup_started(backup_id)
        for name in lease_names(self.store):
            if name.startswith(CAPTURE_LEASE_PREFIX):
                continue  # a capture writes log pieces, never backup directories
            holder = read_lease(self.store, name)
            try:
                since = float(holder.get("acquired_at", 0)) if holder else float("inf")
            except (TypeError, ValueError):
                continue
            if holder and holder.get("token") == own_token:
                continue  # the caller's own lease: its writer starts only after this check
            if holder and not lease_stale(holder) and since <= started + 1:
                return IN_PROGRESS, f"no manifest and no start record; live lease '{name}' may own it"
        return ABANDONED, "no manifest, no start record, and no live lease that could own it"

    def entry(self, backup_id: str, *, own_token: str | None = None) -> BackupEntry:
        """The catalog entry of one backup directory (never raises for a damaged one)."""
        if not valid_backup_id(backup_id):
            return BackupEntry(backup_id, CORRUPT, reason="not a backup id: a stray object in backups/")
        try:
            raw = self.store.get(f"backups/{backup_id}/manifest.json")
        except ObjectNotFound:
            start = self._start_record(backup_id)
            state, reason = self._partial_state(backup_id, start, own_token)
            return BackupEntry(backup_id, state, source=start.source if start else None, reason=reason, start=start)
        try:
            manifest = parse_manifest(raw, f"backup {backup_id}")
        except (IntegrityError, FormatError) as exc:
            start = self._start_record(backup_id)
            return BackupEntry(backup_id, CORRUPT, source=start.source if start else None, reason=str(exc), start=start)
        if manifest.id != backup_id:
            start = self._start_record(backup_id)
            reason = f"backup {backup_id}: manifest names another backup ({manifest.id}); the manifest is corrupt"
            return BackupEntry(backup_id, CORRUPT, source=start.source if start else None, reason=reason, start=start)
        return BackupEntry(backup_id, manifest.status, manifest=manifest, source=manifest.source, reason=manifest.error)

    def catalogued(self, source: str) -> list[BackupEntry]:
        """Entries of ``source`` from its catalog index: one listing, then each backup's own manifest
        (the commit point, so a damaged manifest shows as CORRUPT whatever the index says)."""
        return [
            self.entry(name.removesuffix(".json"))
            for name in self.store.children(f"catalog/{source}/")
            if name.endswith(".json") and valid_backup_id(name.removesuffix(".json"))
        ]

    def _catalog_ids(self) -> set[str]:
        return {
            name.removesuffix(".json")
            for source in self.store.children("catalog/")
            for name in self.store.children(f"catalog/{source}/")
        }

    def entries(self, source: str | None = None, *, partial: bool = True) -> list[BackupEntry]:
        """The catalog: every backup directory, damaged or unfinished ones included, oldest first.

        Catalogued backups are read from ``catalog/<source>/`` (with ``source``, only that
        source's); directories without a catalog entry (partial runs, v1 backups) are read
        as before. With ``source``, a CORRUPT or partial entry whose source is unknown is kept
        (it may be this source's). ``partial=False`` leaves out IN_PROGRESS/ABANDONED
        directories (nothing reads them).
        """
        sources = [source] if source is not None else self.store.children("catalog/")
        found = {e.id: e for name in sources for e in self.catalogued(name)}
        known = found.keys() | (self._catalog_ids() if source is not None else set())
        deleting = self.deleting_ids()
        for backup_id in self.store.children("backups/"):
            if backup_id in known:
                continue
            entry = self.entry(backup_id)
            if not partial and entry.state in (IN_PROGRESS, ABANDONED) and backup_id not in deleting:
                continue
            if source is not None and entry.source not in (source, None):
                continue
            found[backup_id] = entry
        for backup_id in deleting:
            entry = found.get(backup_id)
            if entry is None:
                # Every object of the directory is gone already; the marker alone says whose it was.
                marker = self.deleting_marker(backup_id) or {}
                if source is not None and marker.get("source") not in (source, None):
                    continue
                entry = BackupEntry(backup_id, DELETING, source=marker.get("source"))
            found[backup_id] = replace(
                entry,
                state=DELETING,
                reason=f"deletion in progress ({DELETING_PREFIX}{backup_id}.json); the next 'genesis-dr retention "
                "run' finishes it",
            )
        return [found[k] for k in sorted(found)]

    def deleting_ids(self) -> set[str]:
        """Backups marked for deletion: one listing of ``retention/deleting/``."""
        return {
            name.removesuffix(".json")
            for name in self.store.children(DELETING_PREFIX)
            if name.endswith(".json") and valid_backup_id(name.removesuffix(".json"))
        }

    def deleting_marker(self, backup_id: str) -> dict | None:
        """The deletion marker of ``backup_id`` (what, why, by which authority), or None."""
        try:
            marker = json.loads(self.store.get(f"{DELETING_PREFIX}{backup_id}.json"))
        except ObjectNotFound:
            return None
        except ValueError:
            return {}  # damaged, but still a marker: the backup stays DELETING
        return marker if isinstance(marker, dict) else {}

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
        """Readable manifests (COMPLETED and FAILED) only: a CORRUPT entry is skipped, never fatal, and a
        DELETING one is never offered."""
        return [
            e.manifest
            for e in self.entries(source, partial=False)
            if e.manifest is not None and e.state != DELETING and (source is None or e.manifest.source == source)
        ]

    # -- the passphrase's key check ------------------------------------------------

    _INITIAL_KEY_CHECK = "keychecks/00000000T000000Z-initial.json"

    def key_check(self) -> dict | None:
        """The current key-check record (the newest under keychecks/), or None if none was set yet."""
        names = [n for n in self.store.children("keychecks/") if n.endswith(".json")]
        if not names:
            return None
        raw = self.store.get(f"keychecks/{max(names)}")
        try:
            record = json.loads(raw)
            record["key_id"]  # noqa: B018 - present in every record
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"vault {self.describe()}: key check keychecks/{max(names)} is not valid (corrupt); restore it from a "
                "replica"
            ) from None
        return record

    def check_passphrase(self, keyring: Keyring) -> str | None:
        """The key id of the passphrase new backups use, once it is known to be the vault's.

        The first writer of a vault without a key check records one (vaults created
        before key checks get theirs on their next backup). A passphrase that does
        not match the current key check is refused (WrongKeyError, exit 6): new
        backups would otherwise be written under another key without anyone noticing.
        None when the keyring writes no passphrase recipient.
        """
        passphrase = keyring.write_passphrase()
        if passphrase is None:
            return None
        record = self.key_check()
        if record is None:
            record = new_key_check(passphrase, now_iso())
            if self.store.create(self._INITIAL_KEY_CHECK, json.dumps(record, sort_keys=True, indent=1).encode()):
                return record["key_id"]
            record = self.key_check()  # another writer set it first; ours must match theirs
        if not key_check_matches(passphrase, record):
            raise WrongKeyError(
                f"vault {self.describe()}: the passphrase does not match the vault's key (key id {record['key_id']}); "
                f"set the vault's passphrase, or change it on purpose with 'genesis-dr key rotate --stack "
                f"{keyring.stack or 'default'}'"
            )
        return record["key_id"]

    def rotate_key(self, keyring: Keyring) -> tuple[str | None, str]:
        """Make the keyring's passphrase the vault's key from now on; returns (old key id, new key id).

        Earlier backups keep their wraps and open with the passphrase they were written
        with (``genesis-dr list`` shows each backup's key id). The record is a new
        immutable object; the old ones stay, so the history of keys is kept.
        """
        passphrase = keyring.write_passphrase()
        if passphrase is None:
            raise ConfigError(
                "key rotate: the stack names no passphrase (encryption.passphrase_from); nothing to rotate"
            )
        current = self.key_check()
        if current is not None and key_check_matches(passphrase, current):
            return current["key_id"], current["key_id"]
        record = new_key_check(passphrase, now_iso())
        record["previous"] = current["key_id"] if current else None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self.store.put(
            f"keychecks/{stamp}-{record['key_id']}.json", json.dumps(record, sort_keys=True, indent=1).encode()
        )
        return (current["key_id"] if current else None), record["key_id"]

    # -- writing ------------------------------------------------------------------

    def lock(self, name: str, purpose: str) -> Lease:
        lease = Lease(self.store, name, purpose)
        self._leases[name] = lease
        return lease

    def recover_abandoned(self, source: str, *, found_by: str = "the next backup") -> list[Manifest]:
        """Record abandoned partial backups of ``source`` as FAILED and remove their chunk objects.

        Call only under the source's lease (``begin_backup`` does): then no other run of
        the source can be writing. Partials with no start record are taken too when no
        live lease could own them. The FAILED manifest is written first (an atomic
        no-overwrite put claims the id, so a run that wakes up later cannot commit),
        then the chunks go; FAILED backups of ``source`` that still hold chunks (a
        cleanup cut short) are swept as well. Returns the FAILED records written.
        """
        recorded = []
        own = self._leases.get(source)
        own_token = own.token if own is not None and own.held else None
        deleting = self.deleting_ids()  # retention is removing these: a FAILED record would bring one back
        for backup_id in self.store.children("backups/"):
            if backup_id in deleting:
                continue
            entry = self.entry(backup_id, own_token=own_token)
            if entry.state == FAILED and entry.source == source:
                self._remove_chunks(backup_id)
                continue
            if entry.state != ABANDONED or entry.source not in (source, None):
                continue
            manifest = self._abandoned_manifest(entry, source, found_by)
            try:
                self.store.put(f"backups/{backup_id}/manifest.json", manifest.canonical())
            except VaultError:
                if self.store.exists(f"backups/{backup_id}/manifest.json"):
                    continue  # someone else recorded (or committed) it meanwhile
                raise
            self._remove_chunks(backup_id)
            self.catalog(manifest)
            recorded.append(manifest)
        return recorded

    def catalog(self, manifest: Manifest) -> None:
        """Index a written manifest under ``catalog/<source>/`` (after its commit point). An index
        write that fails leaves the backup listed from its directory, as a v1 backup is."""
        hint = {"id": manifest.id, "type": manifest.type, "status": manifest.status, "ended_at": manifest.ended_at}
        self.store.put(
            f"catalog/{manifest.source}/{manifest.id}.json", json.dumps(hint, sort_keys=True).encode(), overwrite=True
        )

    def _remove_chunks(self, backup_id: str) -> None:
        for key in list(self.store.list(f"backups/{backup_id}/streams/")):
            self.store.delete(key)

    def _abandoned_manifest(self, entry: BackupEntry, source: str, found_by: str) -> Manifest:
        start = entry.start
        try:
            keys_sha256 = hashlib.sha256(self.store.get(f"backups/{entry.id}/keys.json")).hexdigest()
        except ObjectNotFound:
            keys_sha256 = ""
        started = datetime.fromtimestamp(_backup_started(entry.id), UTC).isoformat().replace("+00:00", "Z")
        return Manifest(
            id=entry.id,
            source=start.source if start else "unknown",
            kind=start.kind if start else "unknown",
            type=start.type if start else "full",
            status=FAILED,
            target=start.target if start else "unknown",
            started_at=start.started_at if start else started,
            ended_at=now_iso(),
            compression=start.compression if start else "unknown",
            chunk_size=start.chunk_size if start else 0,
            keys_sha256=keys_sha256,
            # No data key here, so no MAC: a FAILED record is never read for data.
            error=(
                f"interrupted (abandoned partial backup found by {found_by} of {source!r} at {now_iso()}: "
                f"{entry.reason}; its chunk objects were removed)"
            ),
        )

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
        chain: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> BackupWriter:
        """Start a backup. Under the source's lease (taken with ``lock(source)``), abandoned
        partial backups of the source are recorded FAILED first and the writer records the
        lease in its ``started.json``."""
        lease = self._leases.get(source)
        if lease is not None and not lease.held:
            lease = None
        key_id = self.check_passphrase(keyring)  # before anything is written
        if lease is not None:
            self.recover_abandoned(source)
        writer = BackupWriter(
            self, source, kind, backup_type, target, keyring, compression, parent, labels or {}, lease, key_id
        )
        writer.set_chain(chain)
        return writer

    # -- the log ------------------------------------------------------------------

    def log_index(self, source: str) -> LogIndex:
        return LogIndex(self.store, source)

    def log_pieces(self, source: str) -> list[PieceRecord]:
        """Every piece record of ``source``'s log, in sequence order (no chunk is read)."""
        return LogIndex(self.store, source).records()

    def log_reader(self, source: str, keyring: Keyring) -> LogReader:
        return LogReader(self.store, source, keyring)

    def capture_running(self, source: str) -> dict | None:
        """The live holder of ``source``'s capture lease, or None."""
        holder = read_lease(self.store, CAPTURE_LEASE_PREFIX + source)
        return holder if holder and not lease_stale(holder) else None

    # -- reading ------------------------------------------------------------------

    def _refuse_moved_or_deleting(self, backup_id: str) -> None:
        """A backup being deleted is never read; one moved to an archive vault is read there."""
        if not valid_backup_id(backup_id):
            return  # manifest() names the bad id
        if self.store.exists(f"{DELETING_PREFIX}{backup_id}.json"):
            raise BackupNotFoundError(
                f"backup {backup_id} is being deleted by retention ({DELETING_PREFIX}{backup_id}.json); choose "
                "another backup from 'genesis-dr list'"
            )
        try:
            raw = self.store.get(f"backups/{backup_id}/archived.json")
        except ObjectNotFound:
            return
        try:
            moved = json.loads(raw)
            name, at = str(moved["vault"]), str(moved.get("at") or "an unrecorded date")
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(
                f"backup {backup_id}: archived.json is not valid (corrupt); find the archive vault holding it with "
                "'genesis-dr list --vault NAME' for each replica"
            ) from None
        raise BackupNotFoundError(
            f"backup {backup_id} was moved to archive vault '{name}' on {at}; restore it with --vault {name}"
        )

    def open_backup(self, backup_id: str, keyring: Keyring) -> BackupReader:
        self._refuse_moved_or_deleting(backup_id)
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
        try:
            keys_doc = json.loads(keys_raw)
            recipients = keys_doc["recipients"]
        except (ValueError, KeyError, TypeError):
            keys_doc, recipients = {}, None
        if isinstance(keys_doc, dict) and keys_doc.get("shredded_at"):
            # core/retention/shred.py replaced every wrapped copy of the data key: no key opens it any more.
            raise WrongKeyError(
                f"backup {backup_id}: its data key was crypto-shredded on {keys_doc['shredded_at']} (every wrapped "
                "copy destroyed); no key can read it - choose another backup from 'genesis-dr list'"
            )
        # A keys.json re-wrapped by 'genesis-dr key rotate' whose manifest was not
        # re-signed yet (a rotation stopped between the two) names the manifest's keys_sha256 as the one it
        # replaced; it is accepted only if the key it unwraps verifies the manifest's MAC.
        rotating = hashlib.sha256(keys_raw).hexdigest() != manifest.keys_sha256
        if rotating and (not isinstance(keys_doc, dict) or keys_doc.get("rewrapped_from") != manifest.keys_sha256):
            raise IntegrityError(f"backup {backup_id}: key file does not match its SHA-256 in the manifest (corrupt)")
        if recipients is None:
            raise IntegrityError(f"backup {backup_id}: key file is not valid (corrupt)")
        try:
            data_key = keyring.unwrap(backup_id, recipients)
        except WrongKeyError as exc:
            if not rotating:
                raise
            raise WrongKeyError(
                f"{exc}; its keys were re-wrapped by an unfinished 'genesis-dr key rotate' (rotation in progress): "
                "open it with the stack's new keys, or run the rotation again"
            ) from None
        if rotating:
            try:
                manifest.verify(data_key)
            except IntegrityError:
                raise IntegrityError(
                    f"backup {backup_id}: key file does not match its SHA-256 in the manifest and does not hold the "
                    "key the manifest was signed with (corrupt)"
                ) from None
        manifest.verify(data_key)
        reader = BackupReader(self, manifest, data_key)
        reader.rotation_in_progress = rotating
        return reader


class BackupWriter:
    """A backup in progress: the StreamSink engines write to."""

    def __init__(
        self, vault, source, kind, backup_type, target, keyring, compression, parent, labels, lease=None, key_id=None
    ) -> None:
        self.vault, self.store = vault, vault.store
        self._lease = lease
        self.id = new_backup_id()
        self.started_at = now_iso()
        # From KMS GenerateDataKey when the keyring names a KMS key (a disabled or denied
        # key is refused here, before anything is written), else random; wrapped for every recipient.
        self._data_key, recipients = keyring.new_data_key(self.id, key_id)
        self._sealer = Sealer(self._data_key, self.id, compression)
        # As many sealers/uploaders as the store serves requests in parallel (2 local, 8 on S3).
        self._pool = ThreadPoolExecutor(
            max_workers=self.store.capabilities.io_threads, thread_name_prefix=f"seal-{self.id[-8:]}"
        )
        # Engines may write several streams at once (parallel pg_dump): guard the registry.
        self._registry = threading.Lock()
        self._slots = threading.Semaphore(in_flight(self.store))
        self._streams: list[StreamRecord] = []
        self._open: list[StreamWriter] = []
        self._chunk_size = default_chunk_size()
        # Told the plaintext bytes of every chunk once it is stored (core.repository.streams.ByteCounter.add).
        self.moved: Callable[[int], None] | None = None
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
            key_ids=keyring.key_ids(key_id),
        )
        keys = json.dumps({"version": 1, "recipients": recipients}, sort_keys=True, indent=1)
        self._keys_raw = keys.encode()
        start = StartRecord(
            id=self.id,
            source=source,
            kind=kind,
            type=backup_type,
            target=target,
            started_at=self.started_at,
            compression=compression,
            chunk_size=self._chunk_size,
            host=socket.gethostname(),
            pid=os.getpid(),
            pid_start=process_start_time(os.getpid()),
            lease=lease.name if lease else None,
            lease_token=lease.token if lease else None,
        )
        # Start record first, so even a run killed at once leaves a partial that says whose it is;
        # if this fails (vault unwritable/full) nothing else was written.
        self.store.put(f"backups/{self.id}/started.json", start.canonical())
        self.store.put(f"backups/{self.id}/keys.json", self._keys_raw)

    def set_chain(self, chain: str | None, log: dict | None = None) -> None:
        """The full this backup builds on (None: it is a full, its own chain), and the log range it records."""
        self._base["chain"] = chain or self.id
        self._base["log"] = log

    def _new_stream(self, name: str) -> StreamWriter:
        with self._registry:
            if not _STREAM_NAME.match(name) or any(s.name == name for s in self._streams + self._open):
                raise ValueError(f"invalid or duplicate stream name {name!r}")
            writer = StreamWriter(
                self.store, self._sealer, self._pool, self.id, name, self._chunk_size, self._slots, moved=self.moved
            )
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
        if self._lease is not None:
            # Never commit once another run took the source over: check() renews the lease, so
            # nobody can take it for a TTL after this returns, longer than the put below needs.
            self._lease.check(f"backup {self.id}")
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
        self.vault.catalog(manifest)
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
        # The failure's class, for 'status' and the failures-by-class metric (the message alone names ours as text).
        self._base["labels"] = {**(self._base.get("labels") or {}), "error_class": type(error).__name__}
        manifest = self._manifest(FAILED, error=message[:2000])
        manifest.sign(self._data_key)
        self.store.put(f"backups/{self.id}/manifest.json", manifest.canonical())
        self.vault.catalog(manifest)
        return manifest


class BackupReader:
    """A committed backup opened with its key: the StreamSource engines read from."""

    def __init__(self, vault: Vault, manifest: Manifest, data_key: bytes) -> None:
        self.vault, self.manifest = vault, manifest
        # Told (name, plaintext bytes, seconds) once each stream has been read to its end and its
        # SHA-256 matched: the restore's progress log.
        self.on_stream_read: Callable[[str, int, float], None] | None = None
        # keys.json re-wrapped by a key rotation that has not re-signed the manifest yet.
        self.rotation_in_progress = False
        self.clock: StageClock | None = None  # set by a drill: fetch/decrypt seconds of this reader's chunks
        self.moved: Callable[[int], None] | None = None  # set by a restore: plaintext bytes of each chunk read
        self._opener = Opener(data_key, manifest.id)
        self._pool = ThreadPoolExecutor(
            max_workers=vault.store.capabilities.io_threads, thread_name_prefix=f"open-{manifest.id[-8:]}"
        )
        checks = {}
        if manifest.sealed_checks:
            blob = base64.b64decode(manifest.sealed_checks)
            checks = json.loads(self._opener.open_blob("checks", blob, f"backup {manifest.id} checks"))
        self.result = BackupResult(
            position=manifest.position, checks=checks, tool_versions=manifest.tool_versions, skipped=manifest.skipped
        )

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
        pieces = iter(
            StreamReader(
                self.vault.store,
                self._opener,
                self._pool,
                self.manifest.id,
                self._record(name),
                clock=self.clock,
                moved=self.moved,
            )
        )
        return pieces if self.on_stream_read is None else self._reported(name, pieces, self.on_stream_read)

    @staticmethod
    def _reported(name: str, pieces: Iterator[bytes], report: Callable[[str, int, float], None]) -> Iterator[bytes]:
        started, size = time.monotonic(), 0
        for piece in pieces:
            size += len(piece)
            yield piece
        report(name, size, time.monotonic() - started)  # after StreamReader checked the stream's SHA-256

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


__all__ = [
    "Vault",
    "VaultMissingError",
    "BackupEntry",
    "BackupWriter",
    "BackupReader",
    "DELETING",
    "new_backup_id",
    "chunk_key",
]
