"""Secure deletion: crypto-shred every wrapped copy of a data key, then destroy the objects, with a certificate.

Why this order: a backup's chunks are sealed under its data key, and the key exists only
wrapped in ``keys.json`` (a log's in ``logkeys/<source>/<key id>.json``). Once every copy of
that file (primary and every replica, every stored version) is gone, the chunks are
ciphertext nobody can open, whatever happens to the rest of the deletion. The objects are
then destroyed (``Store.destroy``: every version on S3/GCS; overwritten in place
``passes`` times before the unlink on a local vault).

A deletion is an intent first: ``retention/deleting/<backup id>.json`` (a log range:
``retention/deleting-log/<source>/<first>-<last>.json``) is written on the primary and on
each replica holding the backup before anything is removed, with the object list, reason,
authority and the certificate id. While it exists the backup lists as DELETING (never
COMPLETED, never restored), so a run killed halfway leaves nothing half-deleted that looks
whole; ``resume_deletions`` finishes it from the marker. The marker is removed last, after
the signed certificate (``certificates/<cert id>.json``) and the audit entry
``retention.delete`` are written.

A locked object (S3 Object Lock legal hold or retention, a GCS hold) stops that backup with
ObjectLockedError; whatever was done stays marked, and the next run after the lock is lifted
finishes it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from core.audit.trail import AuditTrail
from core.crypto.signing import SigningKey
from core.errors import BackupNotFoundError, IntegrityError, ObjectLockedError, VaultError
from core.repository.log import LogIndex
from core.repository.manifest import now_iso
from core.repository.streams import chunk_key
from core.repository.vault import DELETING_PREFIX, Vault
from core.retention.certificate import (
    Certificate,
    new_certificate_id,
    read_certificate,
    sign_certificate,
    write_certificate,
)
from core.storage.base import ObjectNotFound, Store
from core.storage.retry import unwrap

LOG_PREFIX = "retention/deleting-log/"
MARKER_VERSION = 1
PRIMARY = "primary"
Say = Callable[[str], None]


# -- crypto-shredding ---------------------------------------------------------------------


def shred_keys(store: Store, key_objects: list[str], *, passes: int = 1) -> None:
    """Make every wrapped copy of each key object's data key unrecoverable in ``store``.

    Each object is destroyed (every stored version; overwritten first on a local vault) and
    replaced by ``{"version": 1, "shredded_at", "shredded_from": <sha256 of what it replaced>,
    "recipients": []}``: no key material, so a reader gets the wrong-key error with the date
    instead of "missing". An absent or already shredded object is left as it is (a resumed
    deletion must not bring back a key file it removed).
    """
    for key in key_objects:
        try:
            raw = store.get(key)
        except ObjectNotFound:
            continue
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("shredded_at"):
            continue
        record = {
            "version": 1,
            "shredded_at": now_iso(),
            "shredded_from": hashlib.sha256(raw).hexdigest(),
            "recipients": [],
        }
        store.destroy(key, passes=passes)
        store.put(key, json.dumps(record, sort_keys=True, indent=1).encode(), overwrite=True)


# -- helpers ------------------------------------------------------------------------------


def _is_local(store: Store) -> bool:
    return unwrap(store).capabilities.provider == "local"


def _method(stores: list[Store], passes: int) -> str:
    local = [s for s in stores if _is_local(s)]
    if not local:
        return "crypto-shred + delete"
    if len(local) == len(stores):
        return f"crypto-shred + overwrite({passes}) + unlink"
    return f"crypto-shred + overwrite({passes}) + unlink (local stores), delete every version (object stores)"


def _prune_local_dirs(store: Store, prefix: str) -> None:
    """Remove the empty directories a local vault keeps after its files went: an empty ``backups/<id>/``
    would otherwise list as an abandoned partial backup."""
    backend = unwrap(store)
    root = getattr(backend, "root", None)
    if not _is_local(store) or root is None:
        return
    top = Path(root).joinpath(*prefix.strip("/").split("/"))
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass  # not empty: something else lives there (never removed here)


def _put_marker(store: Store, key: str, marker: dict) -> None:
    store.create(key, json.dumps(marker, sort_keys=True, indent=1).encode())


def _read_json(store: Store, key: str) -> dict | None:
    try:
        doc = json.loads(store.get(key))
    except ObjectNotFound:
        return None
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _destroy_all(stores: list[Store], keys: list[str], passes: int) -> None:
    for store in stores:
        for key in keys:
            store.destroy(key, passes=passes)


def _certify(
    primary: Store,
    holders: list[Store],
    marker: dict,
    *,
    subject: str,
    signer: SigningKey,
    passes: int,
    say: Say,
) -> Certificate:
    """Sign and store the certificate (once: a resumed run finds it), then the audit entry (once)."""
    cert_id = marker["cert"]
    existing = read_certificate(primary, cert_id)
    if existing is not None:
        cert = Certificate.from_dict(existing)
        written = False
    else:
        cert = Certificate(
            id=cert_id,
            subject=subject,
            source=marker.get("source") or "unknown",
            kind=marker.get("kind") or "unknown",
            objects=marker.get("objects") or [],
            stores=[s.describe() for s in holders],
            method=_method(holders, passes),
            reason=marker.get("reason") or "",
            authority=marker.get("authority") or "",
            deleted_at=now_iso(),
        )
        sign_certificate(cert, signer)
        written = write_certificate(primary, cert)
    for store in holders[1:]:
        write_certificate(store, cert)  # the proof travels with each copy it concerns
    trail = AuditTrail(primary, signer)
    recorded = not written and any(
        e.get("action") == "retention.delete" and (e.get("details") or {}).get("certificate") == cert_id
        for e in trail.entries()
    )
    if not recorded:
        trail.append(
            "retention.delete",
            subject,
            {
                "certificate": cert_id,
                "source": cert.source,
                "objects": len(cert.objects),
                "stores": len(cert.stores),
                "method": cert.method,
                "reason": cert.reason,
                "authority": cert.authority,
            },
        )
    say(f"{subject}: deleted from {len(cert.stores)} store(s), {len(cert.objects)} objects; certificate {cert_id}")
    return cert


def _mark(
    holders: list[tuple[str, Store]],
    marker_key: str,
    subject: str,
    fields: dict,
    objects: list[dict],
    reason: str,
    authority: str,
    say: Say,
) -> dict:
    """Write the deletion's intent on every holder before anything is removed; the marker. The primary comes
    first in ``holders``: a marker on a replica alone never exists."""
    marker = {
        "version": MARKER_VERSION,
        **fields,
        "reason": reason,
        "authority": authority,
        "at": now_iso(),
        "cert": new_certificate_id(),
        "stores": [name for name, _ in holders],
        "objects": objects,
    }
    for _name, store in holders:
        _put_marker(store, marker_key, marker)
    say(f"{subject}: marked for deletion ({reason})")
    return marker


def _say_resuming(say: Say, subject: str, marker: dict) -> None:
    say(f"{subject}: resuming its deletion (marked {marker.get('at')}: {marker.get('reason')})")


def _certify_and_unmark(
    vault: Vault,
    targets: list[Store],
    marker: dict,
    marker_key: str,
    subject: str,
    signer: SigningKey,
    passes: int,
    say: Say,
) -> Certificate:
    """The proof, then the marker (replicas first: a replica marker never outlives the primary's)."""
    cert = _certify(vault.store, targets, marker, subject=subject, signer=signer, passes=passes, say=say)
    for store in reversed(targets):
        store.delete(marker_key)
    return cert


def _holders(
    stores: list[tuple[str, Store]], marker_key: str, names: list[str] | None, present
) -> list[tuple[str, Store]]:
    """The primary, and each replica that holds the thing (or its marker, or was recorded in the marker)."""
    out = []
    for name, store in stores:
        if name == PRIMARY or (names is not None and name in names) or store.exists(marker_key) or present(store):
            out.append((name, store))
    return out


# -- backups ------------------------------------------------------------------------------


def _backup_objects(vault: Vault, backup_id: str) -> tuple[dict, list[dict]]:
    """(facts, objects) of a backup: every object with the SHA-256 and size its manifest stored ("" for the
    objects no record hashes, and for all of a FAILED, CORRUPT or abandoned backup's remains)."""
    store = vault.store
    entry = vault.entry(backup_id)
    listed = list(store.list(f"backups/{backup_id}/"))
    if not listed and not store.exists(f"catalog/{entry.source}/{backup_id}.json"):
        raise BackupNotFoundError(f"backup {backup_id} not found in vault {vault.describe()}; see 'genesis-dr list'")
    manifest = entry.manifest
    start = entry.start
    facts = {
        "source": entry.source or (start.source if start else "unknown"),
        "kind": manifest.kind if manifest else (start.kind if start else "unknown"),
        "type": manifest.type if manifest else (start.type if start else "unknown"),
        "state": entry.state,
    }
    objects: dict[str, dict] = {}
    if manifest is not None:
        for stream in manifest.streams:
            for index, chunk in enumerate(stream.chunks):
                key = chunk_key(backup_id, stream.name, index)
                objects[key] = {"key": key, "sha256": chunk.sha256, "size": chunk.stored}
    for key in listed:
        if key in objects:
            continue
        info = store.stat(key)
        sha = ""
        if key.endswith("/manifest.json"):
            sha = hashlib.sha256(store.get(key)).hexdigest()
        elif key.endswith("/keys.json") and manifest is not None:
            sha = manifest.keys_sha256
        objects[key] = {"key": key, "sha256": sha, "size": info.size if info else 0}
    return facts, sorted(objects.values(), key=lambda o: o["key"])


def _check_not_held(stores: list[tuple[str, Store]], keys: list[str], prefixes: list[str]) -> None:
    """Refuse before anything changes when an object carries a legal hold: a held backup must stay readable,
    so its key is not shredded either. Only stores with object locks are asked (one listing per prefix,
    one question per object present)."""
    wanted = set(keys)
    for name, store in stores:
        if not store.lock_supported():
            continue
        present = sorted({k for prefix in prefixes for k in store.list(prefix)} & wanted)
        for key in present:
            if store.legal_hold(key):
                raise ObjectLockedError(
                    f"{store.describe()}: {key} is under a legal hold ({name}); it is deletable once every hold "
                    "covering it is released ('genesis-dr hold list')"
                )


def delete_backup(
    vault: Vault,
    replicas: list[tuple[str, Store]],
    backup_id: str,
    *,
    reason: str,
    authority: str,
    signer: SigningKey,
    passes: int,
    say: Say = print,
) -> Certificate:
    """Crypto-shred and destroy ``backup_id`` in the primary and every replica holding it; its certificate.

    Resumes a deletion that a marker says was begun (the marker's reason and authority win).
    ObjectLockedError stops it with the marker left (see the module doc).
    """
    marker_key = f"{DELETING_PREFIX}{backup_id}.json"
    stores = [(PRIMARY, vault.store), *replicas]
    marker = vault.deleting_marker(backup_id)
    prefix = f"backups/{backup_id}/"
    if marker is None or not marker.get("cert"):
        facts, objects = _backup_objects(vault, backup_id)  # BackupNotFoundError when there is no such backup
        holders = _holders(stores, marker_key, None, lambda s: bool(s.children(prefix)))
        _check_not_held(holders, [o["key"] for o in objects], [prefix])
        marker = _mark(holders, marker_key, backup_id, {"backup": backup_id, **facts}, objects, reason, authority, say)
    else:
        _say_resuming(say, backup_id, marker)
    holders = _holders(stores, marker_key, marker.get("stores"), lambda s: bool(s.children(prefix)))
    targets = [store for _name, store in holders]

    # 1. Crypto-shred: after this, no copy of the data key exists anywhere.
    for store in targets:
        shred_keys(store, [f"{prefix}keys.json"], passes=passes)
    # 2. The data, then what describes it (the commit point goes late: until then the marker explains).
    keys = [o["key"] for o in marker.get("objects") or []]
    chunks = [k for k in keys if k.startswith(f"{prefix}streams/")]
    for store in targets:
        chunks += [k for k in store.list(f"{prefix}streams/") if k not in chunks]
    _destroy_all(targets, chunks, passes)
    source = marker.get("source") or "unknown"
    tail = [
        f"catalog/{source}/{backup_id}.json",
        f"history/verified/{backup_id}.json",
        f"{prefix}manifest.json",
        f"{prefix}started.json",
        f"{prefix}archived.json",
        f"{prefix}keys.json",
    ]
    _destroy_all(targets, tail, passes)
    for store in targets:
        _destroy_all([store], list(store.list(prefix)), passes)  # anything else left in the directory
        _prune_local_dirs(store, prefix)
    # 3. The proof, then the marker (replicas first: a replica marker never outlives the primary's).
    return _certify_and_unmark(vault, targets, marker, marker_key, backup_id, signer, passes, say)


# -- log ranges ---------------------------------------------------------------------------


def _log_marker_key(source: str, first: int, last: int) -> str:
    return f"{LOG_PREFIX}{source}/{first:012d}-{last:012d}.json"


def _log_objects(store: Store, source: str, seqs: list[int], key_ids: list[str]) -> tuple[str, list[dict]]:
    index = LogIndex(store, source)
    kind = "unknown"
    objects = []
    for seq in seqs:
        record_key = f"logs/{source}/{seq:012d}.json"
        prefix = f"logdata/{source}/{seq:012d}"
        try:
            raw = store.get(record_key)
        except ObjectNotFound:
            continue
        try:
            record = index.record(seq)
        except (IntegrityError, VaultError):
            record = None
        if record is not None:
            kind = record.kind
            for i, chunk in enumerate(record.stream.chunks):
                objects.append({"key": chunk_key("", "log", i, prefix), "sha256": chunk.sha256, "size": chunk.stored})
        known = {o["key"] for o in objects}
        for key in store.list(prefix + "/"):
            if key not in known:
                info = store.stat(key)
                objects.append({"key": key, "sha256": "", "size": info.size if info else 0})
        objects.append({"key": record_key, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)})
    for key_id in key_ids:
        key = f"logkeys/{source}/{key_id}.json"
        info = store.stat(key)
        if info is not None:
            objects.append({"key": key, "sha256": "", "size": info.size})
    return kind, objects


def delete_log_range(
    vault: Vault,
    replicas: list[tuple[str, Store]],
    source: str,
    seqs: list[int],
    shred_key_ids: list[str],
    *,
    reason: str,
    authority: str,
    signer: SigningKey,
    passes: int,
    say: Say = print,
) -> Certificate:
    """Delete log pieces ``seqs`` of ``source`` (and crypto-shred the session keys ``shred_key_ids``, whose every
    piece goes) from the primary and every replica holding them; their certificate.

    Chunks first, each piece's record last: a record without chunks reads as damaged, and the marker
    (``retention/deleting-log/...``) says why until the range is gone.
    """
    seqs = sorted(seqs)
    if not seqs:
        raise ValueError("delete_log_range: no pieces given")
    first, last = seqs[0], seqs[-1]
    subject = f"log:{source}:{first}-{last}"
    marker_key = _log_marker_key(source, first, last)
    stores = [(PRIMARY, vault.store), *replicas]
    marker = _read_json(vault.store, marker_key)
    present = lambda s: bool(s.children(f"logs/{source}/"))  # noqa: E731
    if not marker or not marker.get("cert"):
        kind, objects = _log_objects(vault.store, source, seqs, shred_key_ids)
        holders = _holders(stores, marker_key, None, present)
        prefixes = [f"logkeys/{source}/", f"logs/{source}/"] + [f"logdata/{source}/{seq:012d}/" for seq in seqs]
        _check_not_held(holders, [o["key"] for o in objects], prefixes)
        fields = {"source": source, "kind": kind, "seqs": seqs, "shred_key_ids": list(shred_key_ids)}
        marker = _mark(holders, marker_key, subject, fields, objects, reason, authority, say)
    else:
        seqs, shred_key_ids = marker.get("seqs") or seqs, marker.get("shred_key_ids") or []
        _say_resuming(say, subject, marker)
    holders = _holders(stores, marker_key, marker.get("stores"), present)
    targets = [store for _name, store in holders]
    key_objects = [f"logkeys/{source}/{k}.json" for k in shred_key_ids]
    for store in targets:
        shred_keys(store, key_objects, passes=passes)
    keys = [o["key"] for o in marker.get("objects") or []]
    for store in targets:
        chunks = [k for k in keys if k.startswith(f"logdata/{source}/")]
        for seq in seqs:
            chunks += [k for k in store.list(f"logdata/{source}/{seq:012d}/") if k not in chunks]
        _destroy_all([store], chunks, passes)
        _destroy_all([store], [f"logs/{source}/{seq:012d}.json" for seq in seqs], passes)
        _destroy_all([store], key_objects, passes)
        for seq in seqs:
            _prune_local_dirs(store, f"logdata/{source}/{seq:012d}")
    return _certify_and_unmark(vault, targets, marker, marker_key, subject, signer, passes, say)


# -- resuming -----------------------------------------------------------------------------


def resume_deletions(
    vault: Vault,
    replicas: list[tuple[str, Store]],
    *,
    signer: SigningKey,
    passes: int,
    say: Say = print,
    locked: list[str] | None = None,
) -> list[Certificate]:
    """Finish every deletion a killed run left marked; their certificates. A deletion stopped by an object
    lock stays marked and is named in ``locked`` (when given) instead of failing the others."""
    done: list[Certificate] = []

    def finish(
        shown: str, named: str, delete: Callable[..., Certificate], *args: object, marker: dict, unknown: str
    ) -> None:
        try:
            done.append(
                delete(
                    vault,
                    replicas,
                    *args,
                    reason=marker.get("reason") or "resumed deletion",
                    authority=marker.get("authority") or unknown,
                    signer=signer,
                    passes=passes,
                    say=say,
                )
            )
        except ObjectLockedError as exc:
            say(f"{shown}: still locked, left marked: {exc}")
            if locked is not None:
                locked.append(named)

    for backup_id in sorted(vault.deleting_ids()):
        marker = vault.deleting_marker(backup_id) or {}
        finish(backup_id, backup_id, delete_backup, backup_id, marker=marker, unknown="unknown (marker damaged)")
    for key in sorted(vault.store.list(LOG_PREFIX)):
        marker = _read_json(vault.store, key) or {}
        source, seqs = marker.get("source"), marker.get("seqs")
        if not source or not seqs:
            raise IntegrityError(
                f"deletion marker {key} is damaged (no source or pieces); check it, then remove it by hand if its "
                "range is gone"
            )
        shred_key_ids = marker.get("shred_key_ids") or []
        named = f"log:{source}:{seqs[0]}-{seqs[-1]}"
        args = (source, seqs, shred_key_ids)
        finish(f"log:{source}", named, delete_log_range, *args, marker=marker, unknown="unknown")
    return done
