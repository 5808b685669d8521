"""Key rotation: re-wrap every committed backup's data key (and every log key) for the stack's
current recipients, without touching one data object (docs/FORMAT.md, "Key rotation").

A backup's data key never changes, so its chunks stay as they are; only ``keys.json``
and the manifest (which holds keys.json's SHA-256 and the recipients' names, under a
MAC keyed from the data key) are rewritten, each by compare-and-swap on the version
read, in this order:

1. ``keys.json`` is replaced by one wrapped for the new recipients that names the
   manifest's ``keys_sha256`` as ``rewrapped_from``. From here the old keys no longer
   open the backup; the new ones do: ``Vault.open_backup`` accepts a keys.json whose
   SHA-256 differs from the manifest's only when it names that SHA-256 and the key it
   unwraps verifies the manifest's MAC ("rotation in progress").
2. The manifest is re-signed with the new ``keys_sha256`` and ``key_ids`` and replaced.

A run stopped anywhere leaves every backup readable (with the old keys before step 1,
with the new ones after it), and the next run finishes what is left: a backup whose
keys.json already names the new recipients skips step 1. The new key check is recorded
first, so backups started after it are written for the new keys.

A backup no key held opens stops the rotation: nothing of it is changed, and the error
says what was done before it. FAILED backups (no data) and CORRUPT ones are left as they
are and counted; backups still in progress are counted so the operator runs it again.
A crypto-shredded backup or log key (``keys.json`` replaced by ``{"shredded_at", "recipients": []}``
by secure deletion) and a backup being deleted (``retention/deleting/<id>.json``) are skipped and
counted as shredded: their keys are gone on purpose, and re-wrapping would need (and re-create) them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from core.crypto.keys import Keyring, recipients_descriptor
from core.errors import DRError, IntegrityError, VaultError
from core.repository.manifest import ABANDONED, COMPLETED, CORRUPT, FAILED, IN_PROGRESS, now_iso, parse_manifest
from core.storage.base import ObjectNotFound


@dataclass
class RotationReport:
    """What one ``genesis-dr key rotate`` did (secret-free)."""

    old_key_id: str | None = None
    new_key_id: str | None = None
    rewrapped: list[str] = field(default_factory=list)  # backups whose keys.json was re-wrapped
    finished: list[str] = field(default_factory=list)  # keys.json re-wrapped earlier; manifest re-signed now
    current: int = 0  # backups already wrapped for the new keys
    log_keys_rewrapped: list[str] = field(default_factory=list)
    log_keys_current: int = 0
    skipped_failed: list[str] = field(default_factory=list)
    skipped_corrupt: list[str] = field(default_factory=list)
    in_progress: list[str] = field(default_factory=list)
    shredded: list[str] = field(default_factory=list)  # backups and log keys shredded or being deleted: not re-wrapped

    def summary(self) -> dict:
        return {
            "old_key_id": self.old_key_id,
            "new_key_id": self.new_key_id,
            "backups_rewrapped": len(self.rewrapped),
            "backups_finished": len(self.finished),
            "backups_current": self.current,
            "log_keys_rewrapped": len(self.log_keys_rewrapped),
            "log_keys_current": self.log_keys_current,
            "skipped_failed": len(self.skipped_failed),
            "skipped_corrupt": self.skipped_corrupt,
            "in_progress": self.in_progress,
            "shredded": len(self.shredded),
        }

    def done_text(self) -> str:
        return (
            f"{len(self.rewrapped) + len(self.finished)} backup(s) and {len(self.log_keys_rewrapped)} log key(s) "
            f"were re-wrapped before it ({self.current} backup(s) and {self.log_keys_current} log key(s) were already "
            "current)" + (f"; {len(self.shredded)} shredded, not re-wrapped" if self.shredded else "")
        )


class _Opener:
    """Opens with the old keys, else the new ones (a backup a stopped run already re-wrapped)."""

    def __init__(self, old: Keyring, new: Keyring) -> None:
        self.old, self.new = old, new

    def unwrap(self, wrap_id: str, recipients: list[dict]) -> bytes:
        try:
            return self.old.unwrap(wrap_id, recipients)
        except DRError as first:
            try:
                return self.new.unwrap(wrap_id, recipients)
            except DRError:
                raise first from None


def _stopped(exc: DRError, what: str, report: RotationReport, stack: str | None) -> DRError:
    """``exc`` retold: which backup stopped the rotation, that it is unchanged, and what was done."""
    message = (
        f"key rotate stopped at {what}, which is unchanged: {exc}; {report.done_text()}; give a key that opens it "
        f"(--old-passphrase-from, the X25519 private key, or KMS access) and run 'genesis-dr key rotate --stack "
        f"{stack or 'default'}' again"
    )
    error = type(exc).__new__(type(exc))
    DRError.__init__(error, message)
    error.__dict__.update({k: v for k, v in exc.__dict__.items() if k != "message"})
    return error


def rotate_vault(
    vault,
    new: Keyring,
    old: Keyring,
    *,
    progress: Callable[[str], None] | None = None,
) -> RotationReport:
    """Re-wrap every committed backup and log key of ``vault`` for ``new``'s recipients, opening each
    with ``old`` (or ``new``, for what an earlier run re-wrapped). Data objects are never touched."""
    if not new.can_write():
        new.wrap("check", b"")  # raises the remedy: nothing to wrap for
    report = RotationReport()
    if new.has_passphrase():
        report.old_key_id, report.new_key_id = vault.rotate_key(new)
    target = new.descriptor(report.new_key_id)
    key_ids = new.key_ids(report.new_key_id)
    opener = _Opener(old, new)
    say = progress or (lambda _: None)
    deleting = vault.deleting_ids()  # one listing: a deletion under way shreds these keys, never re-wrap them
    for backup_id in vault.store.children("backups/"):
        if backup_id in deleting:
            report.shredded.append(backup_id)
            say(f"backup {backup_id}: being deleted by retention; shredded, not re-wrapped")
            continue
        entry = vault.entry(backup_id)
        if entry.state == FAILED:
            report.skipped_failed.append(backup_id)
            continue
        if entry.state == CORRUPT:
            report.skipped_corrupt.append(backup_id)
            continue
        if entry.state in (IN_PROGRESS, ABANDONED):
            if entry.state == IN_PROGRESS:
                report.in_progress.append(backup_id)
            continue
        assert entry.state == COMPLETED
        try:
            outcome = _rewrap_backup(vault, backup_id, opener, new, target, key_ids, report.new_key_id)
        except DRError as exc:
            raise _stopped(exc, f"backup {backup_id}", report, new.stack) from None
        if outcome == "shredded":
            report.shredded.append(backup_id)
            say(f"backup {backup_id}: its key was crypto-shredded; shredded, not re-wrapped")
        elif outcome == "rewrapped":
            report.rewrapped.append(backup_id)
            say(f"backup {backup_id}: re-wrapped")
        elif outcome == "finished":
            report.finished.append(backup_id)
            say(f"backup {backup_id}: re-wrapped by an earlier run; manifest re-signed")
        else:
            report.current += 1
    for source in vault.store.children("logkeys/"):
        for name in vault.store.children(f"logkeys/{source}/"):
            if not name.endswith(".json"):
                continue
            key = f"logkeys/{source}/{name}"
            try:
                changed = _rewrap_log_key(vault.store, key, source, name.removesuffix(".json"), opener, new, target)
            except DRError as exc:
                raise _stopped(exc, f"log key {key}", report, new.stack) from None
            if changed is None:
                report.shredded.append(key)
                say(f"log key {key}: crypto-shredded; shredded, not re-wrapped")
            elif changed:
                report.log_keys_rewrapped.append(key)
                say(f"log key {key}: re-wrapped")
            else:
                report.log_keys_current += 1
    return report


def _sha(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _rewrap_backup(vault, backup_id, opener, new, target, key_ids, passphrase_key_id) -> str:
    store = vault.store
    manifest_key, keys_key = f"backups/{backup_id}/manifest.json", f"backups/{backup_id}/keys.json"
    manifest_raw, manifest_version = store.get_versioned(manifest_key)
    manifest = parse_manifest(manifest_raw, f"backup {backup_id} manifest")
    try:
        keys_raw, keys_version = store.get_versioned(keys_key)
    except ObjectNotFound:
        raise IntegrityError(f"backup {backup_id}: key file is missing (crypto-shredded or lost)") from None
    try:
        doc = json.loads(keys_raw)
        if _shredded(doc):
            return "shredded"
        recipients = doc["recipients"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError(f"backup {backup_id}: key file is not valid (corrupt)") from None
    pending = _sha(keys_raw) != manifest.keys_sha256
    if pending and doc.get("rewrapped_from") != manifest.keys_sha256:
        raise IntegrityError(f"backup {backup_id}: key file does not match its SHA-256 in the manifest (corrupt)")
    keys_current = recipients_descriptor(recipients) == target
    if keys_current and not pending and list(manifest.key_ids) == key_ids:
        return "current"
    data_key = opener.unwrap(backup_id, recipients)
    manifest.verify(data_key)  # the key we hold is this backup's, before anything is rewritten
    outcome = "finished"
    if not keys_current:
        body = {
            "version": 1,
            "recipients": new.wrap(backup_id, data_key, passphrase_key_id),
            "rewrapped_from": manifest.keys_sha256,
            "rewrapped_at": now_iso(),
        }
        new_raw = json.dumps(body, sort_keys=True, indent=1).encode()
        if store.replace(keys_key, new_raw, version=keys_version) is None:
            raise VaultError(
                f"backup {backup_id}: keys.json changed while it was re-wrapped (another rotation?); run "
                "'genesis-dr key rotate' again once the other run is done"
            )
        keys_raw, outcome = new_raw, "rewrapped"
    resigned = manifest.model_copy(update={"keys_sha256": _sha(keys_raw), "key_ids": key_ids})
    resigned.sign(data_key)
    if store.replace(manifest_key, resigned.canonical(), version=manifest_version) is None:
        raise VaultError(
            f"backup {backup_id}: its manifest changed while it was re-signed (another rotation?); run "
            "'genesis-dr key rotate' again once the other run is done"
        )
    return outcome


def _shredded(doc: dict) -> bool:
    """A key file secure deletion replaced (core.retention.shred.shred_keys): no key left to re-wrap."""
    return bool(doc.get("shredded_at")) and not doc.get("recipients")


def _rewrap_log_key(store, key, source, key_id, opener, new, target) -> bool | None:
    """True: re-wrapped; False: already current; None: crypto-shredded (left as it is)."""
    raw, version = store.get_versioned(key)
    try:
        doc = json.loads(raw)
        if _shredded(doc):
            return None
        recipients = doc["recipients"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise IntegrityError(f"log key {key} is not valid (corrupt)") from None
    if recipients_descriptor(recipients) == target:
        return False
    wrap_id = f"logkey/{source}/{key_id}"
    # AES-GCM (and KMS) authenticate the unwrapped key: a log key has no MAC of its own to check.
    data_key = opener.unwrap(wrap_id, recipients)
    body = dict(doc) | {
        "recipients": new.wrap(wrap_id, data_key, target_passphrase_id(target)),
        "rewrapped_at": now_iso(),
    }
    if store.replace(key, json.dumps(body, sort_keys=True, indent=1).encode(), version=version) is None:
        raise VaultError(f"log key {key} changed while it was re-wrapped (another rotation?); run it again")
    return True


def target_passphrase_id(target: list[list[str]]) -> str | None:
    return next((ident or None for kind, ident in target if kind == "passphrase"), None)
