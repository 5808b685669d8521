"""Deletion outside the policy: an admin names backups and a reason; the admin signing key authorises it.

The retention policy deletes on its own authority; anything else (data backed up by mistake,
a backup that must go before the policy would let it) needs an admin, made real with a key
(the issue's roles), not a flag. The same safety rules as the planner's still hold, because
an admin's mistake is as permanent as anyone's. Refused, before anything is changed, for
every backup named:

* an active legal hold covering it (HoldError) or an object-lock legal hold on one of its
  objects (ObjectLockedError);
* another backup that is kept and needs it (the full of its chain, a parent layer): the
  dependant is named, and the operator deletes it first or names both;
* the newest valid backup of its source (the newest restorable point is never given up);
* a compliance minimum of its source's data classes (SOX, HIPAA, PCI DSS);
* an audit trail with an unacknowledged alarm, or one that fails verification now.

Each deletion is H6's secure deletion (crypto-shred, destroy in the primary and every replica,
a certificate signed by the host key with authority ``admin <fingerprint>: <reason>``, an audit
entry ``retention.delete`` naming the same authority), followed by the admin's own signed
authorisation, ``retention/authorisations/<certificate id>.json``: the certificate says what was
deleted, the authorisation proves which admin asked for it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from core.audit.verify import raise_alarm, unacknowledged_alarm, verify_trail
from core.crypto.signing import SigningKey, verify_signature
from core.errors import (
    BackupNotFoundError,
    ConfigError,
    HoldError,
    ObjectLockedError,
    RetentionRefusedError,
    SigningKeyError,
)
from core.repository.manifest import now_iso, valid_backup_id
from core.repository.vault import DELETING
from core.retention.catalog import BackupItem, Catalog, read_catalog
from core.retention.certificate import Certificate
from core.retention.holds import HoldBook
from core.retention.shred import PRIMARY, Say, delete_backup
from core.storage.base import ObjectNotFound, Store

AUTHORISATIONS = "retention/authorisations/"
AUTHORISATION_VERSION = 1
ACTION = "delete outside the policy"


def _point(item: BackupItem) -> datetime:
    return item.ended_at or item.started_at


def _bases(item: BackupItem, by_id: dict[str, BackupItem]) -> list[str]:
    """The backups ``item`` cannot be restored without: its chain's full and every parent layer."""
    out: list[str] = []
    if item.chain and item.chain != item.id:
        out.append(item.chain)
    node, seen = item, {item.id}
    while node.parent and node.parent not in seen:
        if node.parent not in out:
            out.append(node.parent)
        seen.add(node.parent)
        node = by_id.get(node.parent)
        if node is None:
            break
    return out


def _check_admin(config, admin_key: SigningKey) -> None:
    if not config.signing.is_admin(admin_key.public_b64):
        raise SigningKeyError(
            f"{ACTION}: the key given (fingerprint {admin_key.fingerprint}) is not listed in "
            f"signing.admin_public_keys; sign with an admin key, or add its public key {admin_key.public_b64} there "
            "and re-apply the stack"
        )


def _check_audit(vault, config, replicas: list[tuple[str, Store]], signer: SigningKey | None) -> None:
    """Nothing is deleted while the trail is in doubt: a deletion's only record is that trail."""
    admins = config.signing.admin_public_keys
    alarm = unacknowledged_alarm(vault.store, admins)
    if alarm is None:
        report = verify_trail(vault.store, config.signing.trusted(), replicas=replicas, admins=admins)
        if report.ok:
            return
        if signer is not None:
            raise_alarm(vault.store, report, signer)
        why = f"the audit trail failed verification just now ({report.problems[0].text if report.problems else '?'})"
    else:
        why = f"the audit trail has an unacknowledged alarm raised {alarm.get('at', 'earlier')}"
    raise RetentionRefusedError(
        f"{ACTION} refused: {why}; investigate with 'genesis-dr audit verify', then acknowledge with "
        "'genesis-dr audit acknowledge \"REASON\"' (admin key)"
    )


def _check_backup(config, catalog: Catalog, item: BackupItem, named: set[str], holds: list, now: datetime) -> None:
    bid, source = item.id, item.source
    if item.status == DELETING:
        raise RetentionRefusedError(
            f"backup {bid} is already being deleted; the next 'genesis-dr retention run' finishes it"
        )
    if item.status == "IN_PROGRESS":
        raise RetentionRefusedError(f"backup {bid} of {source} is still being written; delete it once it has ended")
    info = catalog.sources.get(source)
    classes = list(info.data_classes) if info else []
    for hold in holds:
        if hold.covers_backup(item, classes):
            raise HoldError(
                f"backup {bid} is under legal hold {hold.id} ({hold.name!r}); it can be deleted once an admin "
                f'releases it: genesis-dr hold release {hold.id} "REASON"'
            )
    by_id = {b.id: b for b in catalog.backups if b.source == source}
    for other in sorted(by_id.values(), key=lambda b: (_point(b), b.id)):
        if other.id in named or other.status == DELETING or other.status in ("FAILED", "CORRUPT", "ABANDONED"):
            continue
        if bid in _bases(other, by_id):
            role = "full" if other.chain == bid else "parent"
            raise RetentionRefusedError(
                f"backup {bid} is the {role} of {other.type} backup {other.id} of {source}, which is kept and "
                f"cannot be restored without it; delete {other.id} first, or name both"
            )
    valid = sorted((b for b in by_id.values() if b.valid), key=lambda b: (_point(b), b.id))
    if valid and valid[-1].id == bid:
        raise RetentionRefusedError(
            f"backup {bid} is the newest valid backup of {source} and is never deleted; take a newer backup of "
            f"{source} first ('genesis-dr backup --source {source}')"
        )
    if item.valid:
        policy = config.retention.policy_for(source, item.kind, classes)
        if policy.min_retention is not None and _point(item) + policy.min_retention > now:
            until = (_point(item) + policy.min_retention).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise RetentionRefusedError(
                f"backup {bid} of {source} is kept until {until} by its compliance minimum ({policy.min_reason}); "
                f"it cannot be deleted before (remove the data class from source {source} only if it never held "
                "such data)"
            )


def _check_locks(stores: list[tuple[str, Store]], backup_id: str) -> None:
    for name, store in stores:
        if not store.lock_supported():
            continue
        for key in store.list(f"backups/{backup_id}/"):
            if store.legal_hold(key):
                raise ObjectLockedError(
                    f"{store.describe()}: {key} is under an object-lock legal hold ({name}); backup {backup_id} is "
                    "deletable once every hold covering it is released ('genesis-dr hold list')"
                )


def _canonical(record: dict) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != "sig"}, sort_keys=True, separators=(",", ":")).encode()


def authorisation(cert: Certificate, admin_key: SigningKey) -> dict:
    """The admin's signed authorisation of one certified deletion."""
    record = {
        "version": AUTHORISATION_VERSION,
        "certificate": cert.id,
        "subject": cert.subject,
        "source": cert.source,
        "reason": cert.reason,
        "authority": cert.authority,
        "admin": admin_key.public_b64,
        "at": now_iso(),
    }
    record["sig"] = admin_key.sign(_canonical(record))
    return record


def verify_authorisation(record: dict, admins: list[str]) -> bool:
    """True when ``record`` is signed by a key in ``admins`` (``signing.admin_public_keys``)."""
    admin = record.get("admin")
    return (
        isinstance(admin, str)
        and admin in admins
        and verify_signature(admin, _canonical(record), str(record.get("sig") or ""))
    )


def read_authorisation(store: Store, cert_id: str) -> dict | None:
    try:
        return json.loads(store.get(f"{AUTHORISATIONS}{cert_id}.json"))
    except ObjectNotFound:
        return None


def delete_outside_policy(
    config,
    backup_ids: list[str],
    reason: str,
    *,
    admin_key: SigningKey,
    dry_run: bool = False,
    say: Say = print,
) -> list[Certificate]:
    """Delete ``backup_ids`` on the admin's authority (see the module doc); their certificates.

    Every refusal is checked for every backup before the first is touched. ``dry_run``: the checks
    only (the trail is verified but no alarm raised); nothing is written, [] is returned.
    """
    reason = " ".join(reason.split())
    if not reason:
        raise ConfigError(f"{ACTION}: give the reason (why these backups must go now); it is signed and certified")
    ids = list(dict.fromkeys(backup_ids))
    if not ids:
        raise ConfigError(f"{ACTION}: name at least one backup id (see 'genesis-dr list')")
    _check_admin(config, admin_key)
    for bid in ids:
        if not valid_backup_id(bid):
            raise BackupNotFoundError(
                f"{bid!r} is not a backup id (expected backup_YYYYMMDD_HHMMSS_xxxxxxxx); see 'genesis-dr list'"
            )
    vault = config.vault.open()
    replicas = [(replica.name, replica.vault.store()) for replica in config.replicas]
    signer = None if dry_run else config.signing.host_key()
    _check_audit(vault, config, replicas, signer)
    catalog = read_catalog(vault, config)
    items = {b.id: b for b in catalog.backups}
    holds = HoldBook.for_stack(vault.store, config.signing).active(config.signing.admin_public_keys)
    now = datetime.now(UTC)
    named = set(ids)
    for bid in ids:
        item = items.get(bid)
        if item is None:
            raise BackupNotFoundError(f"backup {bid} not found in vault {vault.describe()}; see 'genesis-dr list'")
        _check_backup(config, catalog, item, named, holds, now)
        _check_locks([(PRIMARY, vault.store), *replicas], bid)
    if dry_run:
        for bid in ids:
            item = items[bid]
            say(f"would delete {bid} ({item.source}, {item.type}, {item.stored_bytes} bytes)")
        say(f"dry run: nothing was changed; {len(ids)} backup(s) may be deleted on the admin's authority")
        return []
    authority = f"admin {admin_key.fingerprint}: {reason}"
    certs = []
    for bid in ids:
        cert = delete_backup(
            vault,
            replicas,
            bid,
            reason=reason,
            authority=authority,
            signer=signer,
            passes=config.retention.overwrite_passes,
            say=say,
        )
        record = json.dumps(authorisation(cert, admin_key), sort_keys=True, indent=1).encode()
        for _name, store in [(PRIMARY, vault.store), *replicas]:
            store.create(f"{AUTHORISATIONS}{cert.id}.json", record)  # beside the certificate; never rewritten
        certs.append(cert)
    return certs


__all__ = [
    "AUTHORISATIONS",
    "authorisation",
    "delete_outside_policy",
    "read_authorisation",
    "verify_authorisation",
]
