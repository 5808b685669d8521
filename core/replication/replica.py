"""Bring one replica of a vault up to date: every committed backup and log piece, verified, resumable.

A replica is the same vault (the primary's ``config.json``, so it opens as that
vault) on another store: another region, or another provider. What it receives,
in this order (docs/FORMAT.md, "Replicas"):

1. ``config.json`` (a replica holding another vault's identity is refused), then
   the replication lease ``locks/replicate.<replica>.lock`` on the REPLICA, so two
   runs for one replica never interleave; ``keychecks/``;
2. every COMPLETED backup the primary holds (never a FAILED, unfinished or
   unreadable one): ``keys.json`` and every chunk, each verified on the replica
   against the manifest (objects.py), then ``manifest.json`` - only-if-absent,
   after every object it names is verified, so the replica never shows a backup
   it cannot restore - then its catalog hint;
   A backup whose data the primary moved to an archive vault (``backups/<id>/archived.json``)
   reaches a replica that lacks it as its records only - ``keys.json``, ``archived.json``, then
   the manifest - so the replica lists it and names the archive vault, as the primary does; the
   archive vault itself and a replica that copied the data before the move keep the data;
3. each source's log: ``logkeys/<source>/``, then per piece its chunks and then
   its record (the piece's commit point), in sequence order;
4. the compliance records (``holds/``, ``erasure/``, ``certificates/``, ``retention/authorisations/``,
   copied BEFORE the backups so a replica never holds a backup without the holds and erasure requests
   that concern it) and the audit trail: created only if absent, never overwritten, so a restore from
   the replica after the primary is lost still re-applies every erasure and 'hold list' still sees every
   hold. A record that differs between the two is named in ``damaged_on_primary``, never spread.

The primary is only read (``ReadOnlyStore``). Nothing is ever sent twice: an
object already on the replica is checked (by size for backups the replica
already holds, unless ``verify``; by reading it back and hashing for everything
being copied, so an interrupted run resumes where it stopped) and sent again
only when it is missing or wrong, which counts as a repair. Commit points
(manifests, piece records) are compared byte for byte on every run: a key
rotation on the primary re-signs manifests and rewrites ``keys.json``, and both
reach the replica. Nothing is ever deleted from a replica here: a backup retention deleted on the
primary (and, through ``core.retention.shred``, on the replicas) is simply no longer listed, so it is
neither copied back nor counted as missing; one the deletion did not reach on this replica is named in
``not_on_primary`` with its certificate, for an operator to remove. Copies run on a
bounded thread pool (the stores' ``io_threads``); memory is a few chunks per
thread, whatever the vault's size.

The lag is the age of the oldest committed backup or log piece of the primary
that the replica lacks after the run (zero in sync): objects the primary itself
holds damaged are never copied and keep the lag growing until someone acts, so
a run fails (ReplicationError) once the lag passes the stack's limit.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from core import cancel
from core.audit.trail import ENTRIES, HEAD, entry_hash, entry_key
from core.chains import parse_iso
from core.errors import DRError, FormatError, IntegrityError, ReplicationError, VaultError
from core.replication.objects import Counts, ObjectCopier, PrimaryDamagedError, VaultObject
from core.replication.readonly import ReadOnlyStore
from core.repository.lock import Lease
from core.repository.log import LogIndex, parse_piece
from core.repository.manifest import COMPLETED, parse_manifest, valid_backup_id
from core.repository.streams import chunk_key
from core.repository.vault import VAULT_FORMAT, Vault
from core.stack import PRIMARY
from core.storage.base import ObjectNotFound, Store
from core.storage.retry import unwrap

LEASE_PREFIX = "replicate."
# Signed, never-rewritten records that must survive the primary (see the module doc, step 4).
# self/: the self-backup snapshots, so a replica can bootstrap genesis-dr after the primary is lost.
COMPLIANCE_PREFIXES = ("holds/", "erasure/", "certificates/", "retention/authorisations/", "self/")
_RECORD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.json$")
ARCHIVED_RECORD = "archived.json"
DEFAULT_MAX_LAG_SECONDS = 600.0
_SHOWN = 3
_UNKNOWN = datetime.fromtimestamp(
    0, UTC
)  # when a damaged piece record was committed: unknown, so the oldest  # missing items named in an error (the report lists them all)


@dataclass
class ReplicaReport:
    """What one replication run did to one replica (``to_dict`` is what flows and monitoring read)."""

    replica: str
    location: str
    backups_copied: int = 0
    log_pieces_copied: int = 0
    objects_copied: int = 0
    bytes_copied: int = 0
    server_side_copies: int = 0
    objects_repaired: int = 0
    objects_verified: int = 0
    verified_by_store_md5: int = 0  # of the verified: attested by the replica's MD5 of what it stored (S3 ETag)
    objects_checked: int = 0
    backups_on_replica: int = 0
    log_pieces_on_replica: int = 0
    lag_seconds: float = 0.0
    max_lag_seconds: float | None = None
    audit_entries_copied: int = 0
    audit_head: int | None = None  # the seq of the audit trail's head on the replica after the run
    records_copied: int = 0  # compliance records (holds, erasure requests, certificates, authorisations)
    archived: list[str] = field(default_factory=list)  # their data moved to an archive vault by the primary
    skipped_deleting: list[str] = field(default_factory=list)  # being deleted on the primary: never copied
    # Backups this replica holds that the primary no longer does (deleted while the replica was out of reach of
    # the deletion): never counted missing, never copied back, named with the certificate of their deletion.
    not_on_primary: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # what the replica still lacks, oldest first
    damaged_on_primary: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)  # keys rewritten on the replica
    verify: bool = False
    seconds: float = 0.0

    @property
    def in_sync(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict:
        return asdict(self) | {"in_sync": self.in_sync}


@dataclass
class _Unit:
    """A backup or a log piece: its objects, then its commit objects (the first one is the commit point)."""

    label: str
    committed_at: datetime
    objects: list[VaultObject]
    commit: list[VaultObject]
    on_replica: bool
    is_backup: bool
    hint_key: str | None = None  # a backup's catalog hint, copied after its manifest
    archived_to: str | None = None  # the archive vault holding a backup's data (its archived.json)
    records_only: bool = False  # an archived backup brought over without its data
    present: frozenset[str] | None = None  # keys under the unit's prefix on the replica, listed once (new units)


def _age(now: datetime, when: datetime) -> float:
    return max(0.0, (now - when).total_seconds())


def replicate(
    primary: Vault,
    replica_store: Store,
    *,
    name: str,
    progress: Callable[[str], None] | None = None,
    verify: bool = False,
    max_lag_seconds: float | None = DEFAULT_MAX_LAG_SECONDS,
    now: Callable[[], datetime] | None = None,
    on_bytes: Callable[[int, int | None], None] | None = None,
) -> ReplicaReport:
    """Copy what ``replica_store`` lacks of ``primary`` and report it (see the module doc).

    ``verify`` re-reads and hashes every object of the backups and pieces the replica
    already holds (default: a size check of those; objects being copied are always
    read back and hashed). Raises ReplicationError (exit 20, ``report`` attached) when
    the lag after the run passes ``max_lag_seconds``; store failures of either side
    propagate as one-line errors naming the replica, with nothing half-committed. ``on_bytes(done, total)`` is
    told the bytes copied so far after each object copied (a progress display; ``total`` is None).
    """
    say = progress or (lambda message: None)
    clock = now or (lambda: datetime.now(UTC))
    run = _Run(primary, replica_store, name, say, verify, on_bytes)
    try:
        report = run.execute()
    except DRError as exc:
        if isinstance(exc, ReplicationError):
            raise
        raise type(exc)(
            f"replication to replica {name} ({replica_store.describe()}) stopped: {exc} - nothing is half-committed "
            "on the replica (a manifest or piece record is written only after its verified objects); run it again"
        ) from None
    _lag(run, report, clock())
    report.max_lag_seconds = max_lag_seconds
    report.seconds = round(time.monotonic() - run.started, 3)
    say(_summary(report))
    if max_lag_seconds is not None and report.lag_seconds > max_lag_seconds:
        shown = "; ".join(report.missing[:_SHOWN]) + (
            f"; and {len(report.missing) - _SHOWN} more" if len(report.missing) > _SHOWN else ""
        )
        error = ReplicationError(
            f"replica {name} ({report.location}) lags {report.lag_seconds:.0f} s behind the primary (limit "
            f"{max_lag_seconds:g} s): it lacks {shown}; fix what is named and run 'genesis-dr replicate "
            f"--replica {name}' again"
        )
        error.report = report.to_dict()
        raise error
    return report


def _summary(report: ReplicaReport) -> str:
    state = "in sync" if report.in_sync else f"lags {report.lag_seconds:.0f} s ({len(report.missing)} missing)"
    return (
        f"replica {report.replica}: {report.backups_copied} backups and {report.log_pieces_copied} log pieces copied, "
        f"{report.bytes_copied} bytes ({report.server_side_copies} objects server-side), {report.objects_repaired} "
        f"repaired, {report.objects_verified} read back and verified, {report.objects_checked} size-checked"
        + (f", {len(report.archived)} archived (data in an archive vault)" if report.archived else "")
        + (f", {report.records_copied} compliance records copied" if report.records_copied else "")
        + f"; {state}"
    )


def _lag(run: _Run, report: ReplicaReport, now: datetime) -> None:
    missing = sorted(run.missing, key=lambda item: item[0])
    report.missing = [
        f"{label} ({why}, committed {_age(now, when):.0f} s ago)" if when > _UNKNOWN else f"{label} ({why})"
        for when, label, why in missing
    ]
    report.lag_seconds = round(_age(now, missing[0][0]), 1) if missing else 0.0


class _Run:
    def __init__(
        self,
        primary: Vault,
        replica: Store,
        name: str,
        say: Callable[[str], None],
        verify: bool,
        on_bytes: Callable[[int, int | None], None] | None = None,
    ) -> None:
        self.name, self.say, self.verify = name, say, verify
        self.started = time.monotonic()
        backend = primary.store
        self.source = ReadOnlyStore(backend, "it is the primary of a replication")
        self.replica = replica
        self.counts = Counts(on_bytes=on_bytes)
        self.report = ReplicaReport(replica=name, location=replica.describe(), verify=verify)
        self.missing: list[tuple[datetime, str, str]] = []
        src_caps, dst_caps = unwrap(backend).capabilities, unwrap(replica).capabilities
        server_side = src_caps.server_side_copy and dst_caps.server_side_copy and src_caps.provider == dst_caps.provider
        self.copier = ObjectCopier(
            self.source, replica, name, self.counts, server_side_from=unwrap(backend) if server_side else None
        )
        self.threads = max(1, src_caps.io_threads, dst_caps.io_threads)
        self.lease: Lease | None = None
        self.deleting: set[str] = set()
        self.deleting_logs: dict[str, list[tuple[int, int]]] = {}

    # -- the run --------------------------------------------------------------------

    def execute(self) -> ReplicaReport:
        self._identity()
        self.lease = Lease(self.replica, LEASE_PREFIX + self.name, f"replication to replica {self.name}")
        with self.lease, ThreadPoolExecutor(self.threads, thread_name_prefix=f"replicate-{self.name[:12]}") as pool:
            self.pool = pool
            for key in self.source.list("keychecks/"):
                self.copier.sync(VaultObject(key, data=self.source.get(key)), deep=True)
            self._deletions()
            self._records()
            self._commit_units(self._backup_units())
            self._not_on_primary()
            for source in self.source.children("logs/"):
                for key in self.source.list(f"logkeys/{source}/"):
                    self.copier.sync(VaultObject(key, data=self.source.get(key)), deep=True)
                self._commit_units(self._piece_units(source))
            self._audit()
        if not self.source.exists("config.json"):
            raise VaultError(
                f"the primary vault {self.source.describe()} lost its config.json during the replication (deleted?); "
                "check the primary before trusting it"
            )
        report = self.report
        for name in (
            "objects_copied",
            "bytes_copied",
            "server_side_copies",
            "objects_repaired",
            "objects_verified",
            "verified_by_store_md5",
            "objects_checked",
        ):
            setattr(report, name, getattr(self.counts, name))
        report.repaired = list(self.counts.repaired_keys)
        return report

    def _identity(self) -> None:
        """The primary's config.json on the replica: written if absent, repaired if damaged, and a replica
        that holds ANOTHER vault's identity is refused (its backups would be mixed with ours)."""
        try:
            ours = self.source.get("config.json")
        except ObjectNotFound:
            raise VaultError(
                f"no vault at the primary {self.source.describe()} (no config.json); nothing to replicate - check "
                "the stack's vault, or whether the primary was lost"
            ) from None
        config = json.loads(ours)
        try:
            held = self.replica.get("config.json")
        except ObjectNotFound:
            held = None
        if held == ours:
            self.counts.add(objects_verified=1)
            return
        if held is not None:
            try:
                theirs = json.loads(held)
            except ValueError:
                theirs = None
            if isinstance(theirs, dict) and theirs.get("format") == VAULT_FORMAT and theirs.get("id") != config["id"]:
                raise ReplicationError(
                    f"replica {self.name} ({self.replica.describe()}) holds another vault (id {theirs.get('id')}; the "
                    f"primary is {config['id']}); point the replica at an empty bucket, prefix or directory"
                )
        self.copier.sync(VaultObject("config.json", data=ours), deep=True)

    def _deletions(self) -> None:
        """What retention is deleting on the primary (``retention/deleting/<id>.json``, ``retention/deleting-log/
        <source>/<first>-<last>.json``): never copied, so a replica never resurrects a half-deleted backup."""
        for key in self.source.list("retention/deleting/"):
            self.deleting.add(key.rsplit("/", 1)[-1].removesuffix(".json"))
        for key in self.source.list("retention/deleting-log/"):
            parts = key.split("/")
            bounds = parts[-1].removesuffix(".json").split("-")
            if len(parts) == 4 and len(bounds) == 2 and all(b.isdigit() for b in bounds):
                self.deleting_logs.setdefault(parts[2], []).append((int(bounds[0]), int(bounds[1])))

    def _records(self) -> None:
        """The compliance records the replica lacks (``replicate_records``)."""
        cancel.check(f"replication to replica {self.name}")
        done = replicate_records(self.source, self.replica, verify=self.verify, pool=self.pool)
        self.report.records_copied = done["copied"]
        for why in done["diverged"]:
            self.report.damaged_on_primary.append(why)
            self.say(f"replica {self.name}: {why}")

    def _not_on_primary(self) -> None:
        """Backups left on the replica after the primary deleted them (one listing per side; the primary's
        certificates are read only when there are such backups)."""
        ours = set(self.source.children("backups/"))
        extra = [i for i in self.replica.children("backups/") if valid_backup_id(i) and i not in ours]
        if not extra:
            return
        certified: dict[str, str] = {}
        for key in self.source.list("certificates/"):
            try:
                cert = json.loads(self.source.get(key))
            except (ObjectNotFound, ValueError):
                continue
            if isinstance(cert, dict) and isinstance(cert.get("subject"), str):
                certified[cert["subject"]] = str(cert.get("id"))
        for backup_id in sorted(extra):
            cert_id = certified.get(backup_id)
            line = (
                f"{backup_id} (deleted on the primary, certificate {cert_id}; the deletion did not reach this copy, "
                f"which still holds the data: remove backups/{backup_id}/ from this replica)"
                if cert_id
                else f"{backup_id} (not on the primary, and no certificate there names it)"
            )
            self.report.not_on_primary.append(line)
            self.say(f"replica {self.name}: backup {line}")

    def _audit(self) -> None:
        """The audit trail's new entries, then its head (see ``replicate_audit``)."""
        cancel.check(f"replication to replica {self.name}")
        assert self.lease is not None
        self.lease.check(f"replica {self.name}: the audit trail")
        done = replicate_audit(self.source, self.replica, verify=self.verify)
        self.report.audit_entries_copied, self.report.audit_head = done["entries_copied"], done["head"]
        if done["diverged"]:
            self.report.damaged_on_primary.append(f"audit trail: {done['diverged']}")
            self.say(f"replica {self.name}: audit trail NOT advanced: {done['diverged']}")

    # -- what there is to copy ------------------------------------------------------

    def _backup_units(self) -> Iterator[_Unit]:
        ids = [i for i in self.source.children("backups/") if valid_backup_id(i)]
        # Reading each manifest (and asking the replica whether it holds it) is one request each: in parallel.
        for unit in self.pool.map(self._backup_unit, ids):
            if unit is not None:
                yield unit

    def _backup_unit(self, backup_id: str) -> _Unit | None:
        if backup_id in self.deleting:
            self.report.skipped_deleting.append(backup_id)
            return None  # retention is deleting it on the primary
        key = f"backups/{backup_id}/manifest.json"
        try:
            raw = self.source.get(key)
        except ObjectNotFound:
            return None  # in progress or abandoned: not a backup (yet)
        try:
            manifest = parse_manifest(raw, f"backup {backup_id}")
        except (IntegrityError, FormatError):
            return None  # CORRUPT on the primary: listed there as such; nothing here can vouch for it
        if manifest.status != COMPLETED or manifest.id != backup_id:
            return None  # FAILED records stay on the primary: a replica holds restorable backups only
        label = f"backup {backup_id} of {manifest.source}"
        committed_at = parse_iso(manifest.ended_at)
        archived = self._archived_on_primary(backup_id)
        if archived is False:
            self.missing.append((committed_at, label, f"its {ARCHIVED_RECORD} is damaged on the primary"))
            self.report.damaged_on_primary.append(f"backups/{backup_id}/{ARCHIVED_RECORD}")
            return None
        objects = [VaultObject(f"backups/{backup_id}/keys.json", sha256=manifest.keys_sha256)]
        on_replica = self.replica.stat(key) is not None
        records_only = False
        if archived is not None:
            self.report.archived.append(backup_id)
            # The archive vault holds the data (the archive copied it there); so does a replica that copied the
            # backup before it moved. Any other replica receives the records: it lists the backup and names the
            # archive vault, and never looks like a copy it cannot restore.
            record_key = f"backups/{backup_id}/{ARCHIVED_RECORD}"
            records_only = archived["vault"] != self.name and (
                not on_replica or self.replica.stat(record_key) is not None
            )
            if records_only:
                objects.append(VaultObject(record_key, data=archived["raw"]))
        if not records_only:
            for stream in manifest.streams:
                for index, chunk in enumerate(stream.chunks):
                    objects.append(VaultObject(chunk_key(backup_id, stream.name, index), chunk.sha256, chunk.stored))
        return _Unit(
            label=label,
            committed_at=committed_at,
            objects=objects,
            commit=[VaultObject(key, data=raw)],
            on_replica=on_replica,
            is_backup=True,
            hint_key=f"catalog/{manifest.source}/{backup_id}.json",
            archived_to=archived["vault"] if archived is not None else None,
            records_only=records_only,
            # One listing tells which objects of a backup being copied are there already (an interrupted run's).
            present=None if on_replica else frozenset(self.replica.list(f"backups/{backup_id}/")),
        )

    def _archived_on_primary(self, backup_id: str) -> dict | None | bool:
        """The primary's ``archived.json`` of a backup ({"vault", "raw"}), None when its data is there, False
        when the record is unreadable (the data is in an archive vault it no longer names)."""
        try:
            raw = self.source.get(f"backups/{backup_id}/{ARCHIVED_RECORD}")
        except ObjectNotFound:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return False
        if not isinstance(record, dict) or not isinstance(record.get("vault"), str):
            return False
        return {"vault": record["vault"], "raw": raw}

    def _piece_units(self, source: str) -> Iterator[_Unit]:
        seqs = LogIndex(self.source, source).seqs()
        for unit in self.pool.map(lambda seq: self._piece_unit(source, seq), seqs):
            if unit is not None:
                yield unit

    def _piece_unit(self, source: str, seq: int) -> _Unit | None:
        if any(first <= seq <= last for first, last in self.deleting_logs.get(source, ())):
            return None  # retention is deleting this range on the primary
        key = f"logs/{source}/{seq:012d}.json"
        label = f"log piece {seq} of {source}"
        try:
            raw = self.source.get(key)
        except ObjectNotFound:
            return None
        try:
            record = parse_piece(raw, label)
        except (IntegrityError, FormatError) as exc:
            # A piece record the primary cannot read: a gap in the log there (planners refuse to cross it).
            self.missing.append((_UNKNOWN, label, f"its record is damaged on the primary: {exc}"))
            self.report.damaged_on_primary.append(key)
            return None
        prefix = f"logdata/{source}/{seq:012d}"
        objects = [
            VaultObject(chunk_key("", "log", index, prefix), chunk.sha256, chunk.stored)
            for index, chunk in enumerate(record.stream.chunks)
        ]
        on_replica = self.replica.stat(key) is not None
        return _Unit(
            label=label,
            committed_at=parse_iso(record.shipped_at),
            objects=objects,
            commit=[VaultObject(key, data=raw)],
            on_replica=on_replica,
            is_backup=False,
            present=None if on_replica else frozenset(self.replica.list(prefix + "/")),
        )

    # -- copying, committing ----------------------------------------------------------

    def _commit_units(self, units: Iterator[_Unit]) -> None:
        """Copy the units' objects on the pool (a bounded window of them in flight) and commit each unit,
        in order, once all of its objects are verified on the replica."""
        slots = threading.BoundedSemaphore(self.threads * 2)
        pending: deque[tuple[_Unit, list[Future]]] = deque()

        def sync(obj: VaultObject, deep: bool, committed: bool, absent: bool) -> None:
            try:
                self.copier.sync(obj, deep=deep, committed=committed, absent=absent)
            finally:
                slots.release()

        try:
            for unit in units:
                deep = self.verify or not unit.on_replica
                futures = []
                for obj in unit.objects:
                    # SIGINT/SIGTERM (an operator, a cancelled run): stop sending; what is committed stays whole.
                    cancel.check(f"replication to replica {self.name}")
                    self._settle(pending, block=False)
                    slots.acquire()
                    absent = unit.present is not None and obj.key not in unit.present
                    futures.append(self.pool.submit(sync, obj, deep, unit.on_replica, absent))
                pending.append((unit, futures))
                self._settle(pending, block=False)
            self._settle(pending, block=True)
        except BaseException:
            for _unit, futures in pending:
                for future in futures:
                    future.cancel()
            wait([f for _u, fs in pending for f in fs])  # nothing of this run writes after it failed
            raise

    def _settle(self, pending: deque, *, block: bool) -> None:
        while pending:
            unit, futures = pending[0]
            if not block and not all(f.done() for f in futures):
                return
            wait(futures)
            pending.popleft()
            damaged = None
            for future in futures:
                exc = future.exception()
                if isinstance(exc, PrimaryDamagedError):
                    damaged = damaged or exc
                elif exc is not None:
                    raise exc
            if damaged is not None:
                self._damaged(unit, damaged)
                continue
            cancel.check(f"replication to replica {self.name}")  # interrupted: nothing more is committed
            self._commit(unit)

    def _damaged(self, unit: _Unit, exc: PrimaryDamagedError) -> None:
        if unit.is_backup and not self.source.exists(unit.commit[0].key):
            return  # deleted on the primary meanwhile (retention): nothing to copy, nothing missing
        backup_dir = unit.commit[0].key.rsplit("/", 1)[0]
        if unit.is_backup and unit.archived_to is None and self.source.exists(f"{backup_dir}/{ARCHIVED_RECORD}"):
            # Moved to an archive vault meanwhile: the next run brings its records.
            self.say(f"replica {self.name}: {unit.label} was moved to an archive vault during the run; next run")
            return
        if unit.archived_to is not None:
            why = (
                f"{exc.key} is missing or wrong on this replica, and the primary moved the backup's data to archive "
                f"vault {unit.archived_to}: restore it with --vault {unit.archived_to}"
                if unit.archived_to != self.name
                else f"{exc.key} is missing or wrong in this archive vault, which holds the backup's only copy"
            )
            self.missing.append((unit.committed_at, unit.label, why))
            self.say(f"replica {self.name}: {unit.label}: {why}")
            return
        why = f"damaged on the primary: {exc.key} is missing there or does not match its record"
        self.missing.append((unit.committed_at, unit.label, why))
        self.report.damaged_on_primary.append(unit.label)
        self.say(f"replica {self.name}: {unit.label} NOT copied: {exc}")

    def _commit(self, unit: _Unit) -> None:
        point = unit.commit[0]
        if unit.on_replica:
            # The commit point: its bytes, always (small; a key rotation on the primary re-signs it).
            self.copier.sync(point, deep=True, committed=True)
        else:
            assert self.lease is not None
            self.lease.check(f"replica {self.name}: {unit.label}")  # never commit after losing the replica's lease
            # Only-if-absent (an existing one must be ours, byte for byte), verified as stored like any object.
            self.copier.sync(point, deep=True, absent=True)
        if unit.hint_key is not None:
            self._hint(unit.hint_key, fresh=not unit.on_replica)
        if unit.records_only:
            if not unit.on_replica:
                self.say(
                    f"replica {self.name}: {unit.label} committed as records only (its data is in archive vault "
                    f"{unit.archived_to})"
                )
            return
        if unit.on_replica:
            if unit.is_backup:
                self.report.backups_on_replica += 1
            else:
                self.report.log_pieces_on_replica += 1
            return
        if unit.is_backup:
            self.report.backups_copied += 1
            self.report.backups_on_replica += 1
        else:
            self.report.log_pieces_copied += 1
            self.report.log_pieces_on_replica += 1
        size = sum(o.size or 0 for o in unit.objects)
        self.say(f"replica {self.name}: {unit.label} committed ({len(unit.objects)} objects, {size} bytes verified)")

    def _hint(self, key: str, *, fresh: bool) -> None:
        """The catalog hint of a backup (written after its manifest): copied when new or absent, its bytes
        compared under --verify. A backup without one (v1) is found from its directory."""
        if not fresh and not self.verify and self.replica.exists(key):
            self.counts.add(objects_checked=1)
            return
        try:
            hint = self.source.get(key)
        except ObjectNotFound:
            return
        self.copier.sync(VaultObject(key, data=hint), deep=True)


def replicate_records(
    primary: Store, replica: Store, *, verify: bool = False, pool: ThreadPoolExecutor | None = None
) -> dict:
    """Copy the compliance records (``COMPLIANCE_PREFIXES``) the replica lacks, only-if-absent: a record the
    replica holds is never overwritten (each is signed and never rewritten on the primary, so a difference
    means one copy was altered; the replica keeps its evidence). Under ``verify`` every record both hold is
    compared. Names outside the record formats are never spread.

    Returns ``{"copied": n, "diverged": [one line per record that differs]}``."""
    theirs: set[str] = set()
    wanted: list[str] = []
    for prefix in COMPLIANCE_PREFIXES:
        theirs.update(replica.list(prefix))
        for key in primary.list(prefix):
            if _RECORD_NAME.match(key[len(prefix) :]) and (verify or key not in theirs):
                wanted.append(key)

    def one(key: str) -> tuple[int, str | None]:
        try:
            data = primary.get(key)
        except ObjectNotFound:
            return 0, None  # removed meanwhile (an interrupted record)
        if key not in theirs and replica.create(key, data) is not None:
            return 1, None
        if replica.get(key) != data:
            return 0, f"{key} differs between the primary and the replica (kept as it is on the replica)"
        return 0, None

    done = list(pool.map(one, wanted) if pool is not None else map(one, wanted))
    return {"copied": sum(n for n, _ in done), "diverged": [why for _, why in done if why is not None]}


def replicate_audit(primary: Store, replica: Store, *, verify: bool = False) -> dict:
    """Copy the audit entries the replica lacks (only-if-absent: an entry the replica holds is never
    overwritten, so it keeps the evidence if the primary's is later altered), then move the replica's head to
    the primary's newest entry - only forward along the same chain. A primary whose trail no longer contains
    the entry the replica's head records (a deleted or rewritten tail) leaves the replica's head where it is;
    ``diverged`` says why, and 'audit verify' names the entries.

    Returns ``{"entries_copied", "head" (seq on the replica, or None), "diverged" (one line or None)}``."""
    theirs = set(replica.list(ENTRIES))
    copied, last, diverged = 0, 0, None
    for key in primary.list(ENTRIES):
        name = key[len(ENTRIES) :]
        if len(name) != 17 or not name[:12].isdigit() or name[12:] != ".json":
            continue  # not an entry (verify names it): never spread
        last = max(last, int(name[:12]))
        if key in theirs and not verify:
            continue
        try:
            data = primary.get(key)
        except ObjectNotFound:
            continue
        if key in theirs or replica.create(key, data) is None:
            if replica.get(key) != data:
                diverged = diverged or f"{key} differs between the primary and the replica"
            continue
        copied += 1
    head = _replica_head(primary, replica, last)
    if isinstance(head, str):
        return {"entries_copied": copied, "head": _head_seq(replica), "diverged": diverged or head}
    return {"entries_copied": copied, "head": head, "diverged": diverged}


def _head_seq(store: Store) -> int | None:
    try:
        seq = json.loads(store.get(HEAD)).get("seq")
    except (ObjectNotFound, ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


def _entry_hash_at(store: Store, seq: int) -> str | None:
    try:
        return entry_hash(json.loads(store.get(entry_key(seq))))
    except (ObjectNotFound, ValueError, TypeError):
        return None


def _replica_head(primary: Store, replica: Store, last: int) -> int | str | None:
    """Move the replica's head to the primary's entry ``last``: its seq, or why not (a line)."""
    if last == 0:
        return _head_seq(replica)
    try:
        entry = json.loads(primary.get(entry_key(last)))
    except (ObjectNotFound, ValueError):
        return f"the primary's newest audit entry {last} cannot be read"
    data = json.dumps({"seq": last, "hash": entry_hash(entry), "at": entry.get("at")}, sort_keys=True).encode()
    try:
        raw, version = replica.get_versioned(HEAD)
    except ObjectNotFound:
        replica.create(HEAD, data)
        return last
    try:
        held = json.loads(raw)
        seq, hashed = held["seq"], held["hash"]
    except (ValueError, KeyError, TypeError):
        replica.replace(HEAD, data, version=version)  # a damaged head on the replica records nothing
        return last
    if not isinstance(seq, int) or seq > last:
        return f"the replica's audit head records entry {seq}, the primary's trail ends at {last} (tail deleted?)"
    if _entry_hash_at(primary, seq) != hashed:
        return f"the primary's audit entry {seq} is not the one the replica's head records (deleted or rewritten)"
    if seq < last:
        replica.replace(HEAD, data, version=version)
    return last


def open_primary(primary: Store, replica: Store, name: str) -> Vault | None:
    """The primary vault to replicate, None when there is none yet (no backup was ever taken: nothing to
    copy). A primary without a vault whose replica holds one was LOST: that is an error, never "in sync"."""
    from core.repository.vault import VaultMissingError

    try:
        return Vault.open(primary)
    except VaultMissingError:
        if replica.exists("config.json"):
            raise ReplicationError(
                f"the primary vault {primary.describe()} is gone (no config.json, no backups) but replica {name} "
                f"holds a copy of it: restore from the replica ('genesis-dr restore --vault {name} ...'), and check "
                "the primary's settings and store before the next backup"
            ) from None
        return None


def open_vault(config: Any, name: str | None) -> Vault:
    """The stack's vault named ``name`` (``config``: anything with ``vault`` and ``vault_named``): the
    primary as always (None or 'primary'), a replica read-only (``open_replica``)."""
    if name in (None, PRIMARY):
        return config.vault.open()
    return open_replica(config.vault_named(name).store(), name)


def open_replica(store: Store, name: str) -> Vault:
    """The vault on a replica's store, opened read-only: a restore from a replica never writes into it
    (only replication does), so a rollback backup (``--force``) is refused there before anything changes."""
    return Vault.open(ReadOnlyStore(store, f"replica {name}: only 'genesis-dr replicate' writes to a replica"))
