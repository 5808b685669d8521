"""Archive tiers: older backups move somewhere cheaper, stay listed, and stay restorable.

Two destinations (the policy's ``archive_to``):

* **a colder storage class** of the same bucket (S3 ``STANDARD_IA``, ``GLACIER_IR``, ``GLACIER``,
  ``DEEP_ARCHIVE``; GCS ``NEARLINE``, ``COLDLINE``, ``ARCHIVE``): only the data chunks
  (``backups/<id>/streams/``) change class, in place; the manifest, ``keys.json`` and
  ``started.json`` stay STANDARD, so listing, planning and shredding never wait for a thaw.
  GLACIER and DEEP_ARCHIVE objects cannot be read until thawed (``thaw_backup``; a restore
  before that fails with ObjectFrozenError, exit 35, naming the command); the other classes
  read at once.
* **an archive vault** (``vault:<replica name>``: one of the stack's replicas, e.g. a bucket
  whose own lifecycle makes it cold): the backup's directory, the backups it builds on and the
  log pieces they record are copied there and verified against the manifest's digests (the
  replication copier), then ``backups/<id>/archived.json`` ``{"vault", "at", ...}`` is written
  on the primary and only then are the primary's data chunks destroyed. The manifest,
  ``keys.json`` and the record stay, so the backup stays listed (and crypto-shredding still
  reaches its key); ``Vault.open_backup`` names the archive vault, and ``restore --vault NAME``
  reads it from there. A run killed before the record leaves a complete copy and an intact
  primary; one killed after it finishes on the next run (the record is the commit point).

Every archive appends a ``retention.archive`` audit entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from core.audit.trail import AuditTrail
from core.crypto.signing import SigningKey, load_signing_key
from core.errors import BackupNotFoundError, ConfigError, ReplicationError, VaultError
from core.replication.objects import Counts, ObjectCopier, PrimaryDamagedError, VaultObject
from core.repository.log import parse_piece
from core.repository.manifest import COMPLETED, Manifest, now_iso
from core.repository.streams import chunk_key
from core.repository.vault import VAULT_FORMAT, Vault
from core.storage.base import ObjectNotFound, Store
from core.storage.retry import unwrap

RESTORE_DELAY = {
    "STANDARD_IA": "immediate",
    "GLACIER_IR": "milliseconds",
    "GLACIER": "3-5 hours (Standard), 1-5 minutes (Expedited)",
    "DEEP_ARCHIVE": "12 hours",
    "NEARLINE": "immediate",
    "COLDLINE": "immediate",
    "ARCHIVE": "immediate (GCS)",
}
ARCHIVED_RECORD = "archived.json"
VAULT_PREFIX = "vault:"
THAW_STATES = ("ready", "requested", "in-progress")


def restore_delay(storage_class_or_vault: str) -> str:
    """How long a restore waits before its first byte in this tier (what the retention plan prints)."""
    target = (storage_class_or_vault or "").strip()
    if target.startswith(VAULT_PREFIX):
        return f"immediate (restore with --vault {target[len(VAULT_PREFIX) :]})"
    if target.upper() in ("", "STANDARD"):
        return "immediate"
    return RESTORE_DELAY.get(target.upper(), "unknown")


def _archived_record(store: Store, backup_id: str) -> dict | None:
    try:
        record = json.loads(store.get(f"backups/{backup_id}/{ARCHIVED_RECORD}"))
    except ObjectNotFound:
        return None
    except ValueError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("vault"), str):
        raise VaultError(
            f"backup {backup_id}: backups/{backup_id}/{ARCHIVED_RECORD} is not valid (damaged); its data is in an "
            "archive vault it no longer names - check the replicas' listings ('genesis-dr list --vault NAME')"
        )
    return record


def _chain(vault: Vault, backup_id: str) -> list[Manifest]:
    """The backup's manifest and those of the backups it builds on, newest first, down to its full."""
    out: list[Manifest] = []
    seen: set[str] = set()
    current: str | None = backup_id
    while current is not None and current not in seen:
        seen.add(current)
        manifest = vault.manifest(current)
        out.append(manifest)
        current = manifest.parent
    return out


def _signer(signer: SigningKey | None) -> SigningKey:
    return signer if signer is not None else load_signing_key(None, "the host's signing key")


def archive_backup(
    vault: Vault,
    backup_id: str,
    archive_to: str,
    *,
    replicas: dict[str, Store],
    say: Callable[[str], None] = print,
    signer: SigningKey | None = None,
) -> dict:
    """Move ``backup_id``'s data to ``archive_to`` (a storage class, or ``vault:<name>`` of ``replicas``);
    see the module doc. Idempotent: what is already there is skipped, an interrupted move finishes.
    ``signer`` signs the audit entry (the stack's host key; None: this host's default key file).
    Returns what was done: {"backup", "to", "objects", "bytes", "already", "restore_delay"}."""
    manifest = vault.manifest(backup_id)
    if manifest.status != COMPLETED:
        raise BackupNotFoundError(
            f"backup {backup_id} is {manifest.status}; only completed backups are archived (see 'genesis-dr list')"
        )
    target = archive_to.strip()
    if target.startswith(VAULT_PREFIX):
        name = target[len(VAULT_PREFIX) :]
        if name not in replicas:
            known = ", ".join(sorted(replicas)) or "none"
            raise ConfigError(
                f"archive of {backup_id}: archive_to {target!r} names no replica of this stack (replicas: {known}); "
                "add it under replicas: or fix retention.sources.<source>.archive_to"
            )
        result = _to_vault(vault, manifest, name, replicas[name], say)
    else:
        result = _to_class(vault, manifest, target.upper(), say)
    AuditTrail(vault.store, _signer(signer)).append(
        "retention.archive",
        backup_id,
        {"to": result["to"], "objects": result["objects"], "bytes": result["bytes"], "source": manifest.source},
    )
    return result


def _to_class(vault: Vault, manifest: Manifest, storage_class: str, say: Callable[[str], None]) -> dict:
    store, backup_id = vault.store, manifest.id
    if storage_class not in RESTORE_DELAY and storage_class != "STANDARD":
        raise ConfigError(
            f"archive of {backup_id}: {storage_class!r} is not an archive tier; use one of "
            f"{', '.join(RESTORE_DELAY)} or vault:<replica name>"
        )
    record = _archived_record(store, backup_id)
    if record is not None:
        raise VaultError(
            f"backup {backup_id} was moved to archive vault '{record['vault']}' on {record.get('at')}; its data is "
            "not in this vault, so its storage class cannot change here"
        )
    moved = already = size = 0
    for stream in manifest.streams:
        for index in range(len(stream.chunks)):
            key = chunk_key(backup_id, stream.name, index)
            info = store.stat(key)
            if info is None:
                raise VaultError(
                    f"backup {backup_id}: {key} is missing in {store.describe()} (damaged); run 'genesis-dr validate' "
                    "before archiving it"
                )
            if (info.storage_class or "STANDARD") == storage_class:
                already += 1
                continue
            store.set_storage_class(key, storage_class)
            moved, size = moved + 1, size + info.size
    say(
        f"archive {backup_id}: {moved} objects ({size} bytes) moved to {storage_class}, {already} already there; "
        f"restore delay: {restore_delay(storage_class)}"
    )
    return {
        "backup": backup_id,
        "to": storage_class,
        "objects": moved,
        "bytes": size,
        "already": already,
        "restore_delay": restore_delay(storage_class),
    }


def _check_identity(primary: Store, archive: Store, name: str, copier: ObjectCopier) -> None:
    ours = primary.get("config.json")
    try:
        held = archive.get("config.json")
    except ObjectNotFound:
        held = None
    if held is not None and held != ours:
        try:
            theirs = json.loads(held)
        except ValueError:
            theirs = None
        if isinstance(theirs, dict) and theirs.get("format") == VAULT_FORMAT:
            raise ReplicationError(
                f"archive vault {name} ({archive.describe()}) holds another vault (id {theirs.get('id')}); point the "
                "replica at an empty bucket, prefix or directory"
            )
    copier.sync(VaultObject("config.json", data=ours), deep=True)


def _copy_backup(primary: Store, copier: ObjectCopier, manifest: Manifest) -> None:
    backup_id = manifest.id
    objects = [VaultObject(f"backups/{backup_id}/keys.json", sha256=manifest.keys_sha256)]
    for stream in manifest.streams:
        for index, chunk in enumerate(stream.chunks):
            objects.append(VaultObject(chunk_key(backup_id, stream.name, index), chunk.sha256, chunk.stored))
    for obj in objects:
        copier.sync(obj, deep=False)
    for key in (f"backups/{backup_id}/started.json",):
        try:
            copier.sync(VaultObject(key, data=primary.get(key)), deep=False)
        except ObjectNotFound:
            pass  # v1 backups have none; nothing reads it for a restore
    # The manifest last: the archive vault never shows a backup it cannot restore.
    copier.sync(
        VaultObject(f"backups/{backup_id}/manifest.json", data=primary.get(f"backups/{backup_id}/manifest.json")),
        deep=True,
    )
    hint = f"catalog/{manifest.source}/{backup_id}.json"
    try:
        copier.sync(VaultObject(hint, data=primary.get(hint)), deep=False)
    except ObjectNotFound:
        pass  # listed from its directory, as a v1 backup is


def _copy_pieces(primary: Store, copier: ObjectCopier, source: str, first: int, last: int) -> int:
    copied = 0
    for seq in range(first, last + 1):
        key = f"logs/{source}/{seq:012d}.json"
        try:
            raw = primary.get(key)
        except ObjectNotFound:
            raise VaultError(
                f"log piece {seq} of {source} is missing in {primary.describe()}, and a backup being archived needs "
                "it; the backup is not restorable from any copy of this vault - take a new full backup"
            ) from None
        record = parse_piece(raw, f"log piece {seq} of {source}")
        logkey = f"logkeys/{source}/{record.key_id}.json"
        copier.sync(VaultObject(logkey, data=primary.get(logkey)), deep=False)
        prefix = f"logdata/{source}/{seq:012d}"
        for index, chunk in enumerate(record.stream.chunks):
            copier.sync(VaultObject(chunk_key("", "log", index, prefix), chunk.sha256, chunk.stored), deep=False)
        copier.sync(VaultObject(key, data=raw), deep=True)
        copied += 1
    return copied


def _to_vault(vault: Vault, manifest: Manifest, name: str, archive: Store, say: Callable[[str], None]) -> dict:
    primary, backup_id = vault.store, manifest.id
    counts = Counts()
    src_caps, dst_caps = unwrap(primary).capabilities, unwrap(archive).capabilities
    server_side = src_caps.server_side_copy and dst_caps.server_side_copy and src_caps.provider == dst_caps.provider
    copier = ObjectCopier(primary, archive, name, counts, server_side_from=unwrap(primary) if server_side else None)
    record = _archived_record(primary, backup_id)
    if record is not None and record["vault"] != name:
        raise VaultError(
            f"backup {backup_id} was moved to archive vault '{record['vault']}' on {record.get('at')}, not '{name}'; "
            "its data is no longer here to move again"
        )
    resumed = record.get("at") if record is not None else None
    if record is None:
        _refuse_live_dependents(vault, manifest, name)
        try:
            _check_identity(primary, archive, name, copier)
            chain = _chain(vault, backup_id)
            # What a restore from the archive vault needs: the backups this one builds on and their log.
            for layer in reversed(chain):
                _copy_backup(primary, copier, layer)
            pieces = 0
            for layer in reversed(chain):
                span = (layer.log or {}).get("pieces") or []
                if span:
                    pieces += _copy_pieces(primary, copier, layer.source, int(span[0]), int(span[-1]))
        except PrimaryDamagedError as exc:
            raise VaultError(
                f"archive of {backup_id} to vault {name} stopped: {exc}; nothing was removed from the primary"
            ) from None
        _verify_copy(archive, manifest, name)
        record = {
            "vault": name,
            "location": archive.describe(),
            "at": now_iso(),
            "objects": sum(len(s.chunks) for s in manifest.streams),
            "stored_bytes": manifest.stored_bytes,
            "chain": [layer.id for layer in chain[1:]],
            "log_pieces": pieces,
        }
        # The commit point of the move: from here on the archive vault's copy is the backup's data. Under the
        # source's lease, so no backup starts on this one between the last look for dependents and the record
        # (the copy above ran without it: a long copy must not stop the source's backups).
        with vault.lock(manifest.source, f"archive of {backup_id}"):
            _refuse_live_dependents(vault, manifest, name)
            primary.create(
                f"backups/{backup_id}/{ARCHIVED_RECORD}", json.dumps(record, sort_keys=True, indent=1).encode()
            )
    else:
        _verify_copy(archive, manifest, name)
    # Verified objects include the ones just copied (each is read back); the rest were there already.
    already = counts.objects_checked + counts.objects_verified - counts.objects_copied - counts.objects_repaired
    removed = removed_bytes = 0
    for key in list(primary.list(f"backups/{backup_id}/streams/")):
        info = primary.stat(key)
        primary.destroy(key)
        removed += 1
        removed_bytes += info.size if info else 0
    done = (
        f"copied to archive vault {name} ({counts.objects_copied} objects, {counts.bytes_copied} bytes; {already} "
        "already there)"
        if resumed is None
        else f"in archive vault {name} since {resumed} (an earlier run stopped before removing its data here)"
        if removed
        else f"in archive vault {name} since {resumed} (nothing left to do)"
    )
    say(f"archive {backup_id}: {done}, {removed} data objects removed from the primary; restore it with --vault {name}")
    return {
        "backup": backup_id,
        "to": f"{VAULT_PREFIX}{name}",
        "objects": removed,
        "bytes": removed_bytes,
        "already": already,
        "copied": counts.objects_copied,
        "restore_delay": restore_delay(f"{VAULT_PREFIX}{name}"),
    }


def _refuse_live_dependents(vault: Vault, manifest: Manifest, name: str) -> None:
    """A backup others on the primary build on must stay there: moving its data away would leave them
    restorable from neither copy (the archive vault has the base, the primary the layers)."""
    parents = {m.id: m.parent for m in vault.list_backups(manifest.source)}
    for other, parent in parents.items():
        if other == manifest.id or _archived_record(vault.store, other) is not None:
            continue
        seen: set[str] = set()
        while parent is not None and parent not in seen:
            if parent == manifest.id:
                raise VaultError(
                    f"archive of {manifest.id} to vault {name}: backup {other} on the primary builds on it; archive "
                    f"{other} first (its whole chain is copied), or archive to a storage class instead"
                )
            seen.add(parent)
            parent = parents.get(parent)


def _verify_copy(archive: Store, manifest: Manifest, name: str) -> None:
    """Every object the manifest names is in the archive vault with its recorded size (one listing)."""
    backup_id = manifest.id
    present = set(archive.list(f"backups/{backup_id}/"))
    for stream in manifest.streams:
        for index, chunk in enumerate(stream.chunks):
            key = chunk_key(backup_id, stream.name, index)
            info = archive.stat(key) if key in present else None
            if info is None or info.size != chunk.stored:
                raise VaultError(
                    f"archive vault {name}: {key} is {'missing' if info is None else f'{info.size} bytes, not {chunk.stored}'}"
                    f"; backup {backup_id} stays on the primary - run the archive again"
                )
    for key in (f"backups/{backup_id}/manifest.json", f"backups/{backup_id}/keys.json"):
        if key not in present:
            raise VaultError(f"archive vault {name}: {key} is missing; backup {backup_id} stays on the primary")


def thaw_backup(
    vault: Vault, backup_id: str, *, days: int = 7, replicas: dict[str, Store] | None = None, tier: str = "Standard"
) -> dict:
    """Ask the provider to bring every frozen object of ``backup_id`` (and of the backups it builds on)
    back for ``days``: {"ready": n, "requested": n, "in-progress": n, "backups": [...]}. A restore works
    once nothing is "requested" or "in-progress" (run it again to see). Data moved to an archive vault is
    thawed there when ``replicas`` holds that vault's store."""
    if days < 1:
        raise ConfigError(f"archive thaw {backup_id}: --days must be at least 1, not {days}")
    counts = dict.fromkeys(THAW_STATES, 0)
    chain = _chain(vault, backup_id)
    for manifest in chain:
        store = vault.store
        record = _archived_record(store, manifest.id)
        if record is not None:
            if not replicas or record["vault"] not in replicas:
                raise VaultError(
                    f"backup {manifest.id} was moved to archive vault '{record['vault']}' on {record.get('at')}, which "
                    f"is not a replica of this stack; add it under replicas: and run 'genesis-dr archive thaw "
                    f"{backup_id}' again"
                )
            store = replicas[record["vault"]]
        for stream in manifest.streams:
            for index in range(len(stream.chunks)):
                key = chunk_key(manifest.id, stream.name, index)
                info = store.stat(key)
                if info is None:
                    raise VaultError(f"backup {manifest.id}: {key} is missing in {store.describe()} (damaged)")
                state = store.thaw(key, days=days, tier=tier) if info.frozen else "ready"
                counts[state] = counts.get(state, 0) + 1
    return counts | {"backups": [m.id for m in chain], "at": datetime.now(UTC).isoformat(timespec="seconds")}
