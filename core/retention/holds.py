"""Legal holds: recorded in the vault, enforced by the storage provider's own locks.

A hold is two kinds of immutable object (docs/FORMAT.md, "Legal holds")::

    holds/<hold id>.json                 the hold: name, reason, scope, contact, creator, time;
                                         signed by the creating host's key; created only-if-absent
    holds/<hold id>.release[.<n>].json   its release: reason, who, when, bound to the hold record's
                                         SHA-256 and signed by an ADMIN key

Nothing is ever rewritten, so the vault keeps the whole history. A release counts only if its
signature verifies and its signer is one of the stack's admin public keys: anyone who can write
to the bucket can drop a file next to the hold, but only an admin can end it (a forged release
is ignored and the hold stays active; a genuine one written later still counts, which is why
a release whose name is taken goes to ``.release.<n>.json``). A hold record that does not
verify was altered after it was written: every reader refuses (HoldError) rather than guess
its scope, so retention deletes nothing until it is restored from a replica.

The record is what retention's planner obeys; the provider's lock is what stops everybody
else, the cloud console included: ``apply_object_holds`` puts an S3 Object Lock legal hold
(GCS: an event-based hold) on every object of every covered backup, of the backups it needs
to be restored (its chain up to the full) and of the covered log pieces, and lifts it from
objects only released holds covered. Both directions are idempotent (each object's current
state is read first), so every retention run re-applies them: a key rotation or a storage
class change writes a new version, which the next run holds again.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from core.audit.trail import AuditTrail, default_actor
from core.crypto.signing import SigningConfig, SigningKey, fingerprint, verify_signature
from core.errors import HoldError, SigningKeyError
from core.repository.manifest import now_iso
from core.repository.vault import Vault
from core.retention.catalog import BackupItem, Catalog, PieceItem
from core.retention.scope import Hold, HoldScope
from core.stack import PRIMARY
from core.storage.base import ObjectNotFound, Store
from core.storage.retry import unwrap

HOLD_FORMAT = "genesis-dr-hold"
RELEASE_FORMAT = "genesis-dr-hold-release"
RECORD_VERSION = 1
PREFIX = "holds/"
_HOLD_ID = re.compile(r"^hold-\d{8}-[0-9a-f]{8}$")
_RELEASE_NAME = re.compile(r"^(hold-\d{8}-[0-9a-f]{8})\.release(?:\.(\d+))?\.json$")
_SHOWN = 5


def canonical(record: dict) -> bytes:
    """The signed bytes: the record without its signature, sorted keys, no spaces."""
    body = {k: v for k, v in record.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _signed(record: dict, key: SigningKey) -> bytes:
    record = record | {"signer": key.public_b64}
    record["sig"] = key.sign(canonical(record))
    return json.dumps(record, sort_keys=True, indent=1).encode()


def _one_line(value: str, what: str) -> str:
    text = (value or "").strip()
    if not text or "\n" in text or len(text) > 500:
        raise HoldError(f"hold {what}: give one non-empty line of at most 500 characters")
    return text


@dataclass(frozen=True)
class _Release:
    """A release record that counts (verified, signed by an admin, bound to the hold's bytes)."""

    released_at: str
    released_by: str
    reason: str


class HoldBook:
    """The holds of one vault (its primary store)."""

    def __init__(self, store: Store, *, trusted: dict[str, str] | None = None) -> None:
        """``trusted``: fingerprint -> public key of the signers whose hold records count (``for_stack``
        derives it from the stack). When non-empty, a hold record signed by any other key is refused like an
        altered one: whoever can write to the bucket could otherwise replace a hold with a narrower one signed
        by a key of their own."""
        self.store = store
        self.trusted = set((trusted or {}).values())
        # Release records that did not count on the last read, one line each (forged, not by an
        # admin, for another hold): 'hold list' shows them so an operator sees the attempt.
        self.ignored: list[str] = []

    @classmethod
    def for_stack(cls, store: Store, signing: SigningConfig) -> HoldBook:
        """The book as the stack's signing settings want it read: strict about hold signers only when the
        stack lists its hosts' keys (``signing.trusted_public_keys``; admins count too then), like 'audit verify'."""
        return cls(store, trusted=signing.trusted() if signing.trusted_public_keys else None)

    # -- reading ----------------------------------------------------------------------------

    def _read(self, name: str) -> tuple[dict, bytes] | None:
        try:
            raw = self.store.get(PREFIX + name)
        except ObjectNotFound:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            record = None
        return (record if isinstance(record, dict) else {}), raw

    def _hold_record(self, hold_id: str) -> tuple[dict, bytes] | None:
        found = self._read(f"{hold_id}.json")
        if found is None:
            return None
        record, raw = found
        signer = record.get("signer")
        if (
            record.get("format") != HOLD_FORMAT
            or record.get("id") != hold_id
            or not isinstance(signer, str)
            or not isinstance(record.get("sig"), str)
            or not verify_signature(signer, canonical(record), record["sig"])
        ):
            raise HoldError(
                f"hold {hold_id}: its record {PREFIX}{hold_id}.json does not verify (altered or damaged); restore it "
                "from a replica of the vault - retention deletes nothing while a hold cannot be read"
            )
        if self.trusted and signer not in self.trusted:
            raise HoldError(
                f"hold {hold_id}: its record {PREFIX}{hold_id}.json is signed by {fingerprint(signer)}, a key the stack "
                "does not trust (signing.trusted_public_keys); restore it from a replica, or list that host's key - "
                "retention deletes nothing while a hold cannot be trusted"
            )
        return record, raw

    def _release(self, hold_id: str, names: list[str], hold_raw: bytes, admins: list[str]) -> _Release | None:
        """The earliest release of ``hold_id`` that counts; the others are noted in ``ignored``."""
        valid: list[_Release] = []
        for name in names:
            found = self._read(name)
            if found is None:
                continue
            record, _ = found
            why = self._release_problem(record, hold_id, hold_raw, admins)
            if why is not None:
                self.ignored.append(f"{PREFIX}{name}: ignored ({why}); hold {hold_id} stays active")
                continue
            valid.append(_Release(record["released_at"], record["released_by"], record["reason"]))
        return min(valid, key=lambda r: r.released_at) if valid else None

    @staticmethod
    def _release_problem(record: dict, hold_id: str, hold_raw: bytes, admins: list[str]) -> str | None:
        signer = record.get("signer")
        if record.get("format") != RELEASE_FORMAT or record.get("hold") != hold_id:
            return "not a release of this hold"
        if not all(isinstance(record.get(f), str) for f in ("released_at", "released_by", "reason", "sig", "signer")):
            return "incomplete record"
        if record.get("hold_sha256") != hashlib.sha256(hold_raw).hexdigest():
            return "it releases another version of the hold record"
        if not verify_signature(signer, canonical(record), record["sig"]):
            return "its signature does not verify"
        if signer not in admins:
            return f"its signer {fingerprint(signer)} is not an admin key of this stack"
        return None

    def list(self, admins: list[str]) -> list[Hold]:
        """Every hold, released ones included (``Hold.active`` False), oldest first. ``admins``: the stack's
        ``signing.admin_public_keys``; a release signed by any other key is ignored."""
        self.ignored = []
        names = self.store.children(PREFIX)
        releases: dict[str, list[str]] = {}
        for name in names:
            match = _RELEASE_NAME.match(name)
            if match:
                releases.setdefault(match.group(1), []).append(name)
        holds = []
        for name in names:
            hold_id = name.removesuffix(".json")
            if not name.endswith(".json") or not _HOLD_ID.match(hold_id):
                continue
            found = self._hold_record(hold_id)
            if found is None:
                continue
            holds.append(self._hold(found[0], self._release(hold_id, releases.get(hold_id, []), found[1], admins)))
        return sorted(holds, key=lambda h: (h.created_at, h.id))

    def active(self, admins: list[str]) -> list[Hold]:
        return [h for h in self.list(admins) if h.active]

    def get(self, hold_id: str, admins: list[str]) -> Hold:
        found = self._hold_record(hold_id) if _HOLD_ID.match(hold_id or "") else None
        if found is None:
            raise HoldError(f"no hold {hold_id}; see 'genesis-dr hold list'")
        self.ignored = []
        names = [n for n in self.store.children(PREFIX) if (m := _RELEASE_NAME.match(n)) and m.group(1) == hold_id]
        return self._hold(found[0], self._release(hold_id, names, found[1], admins))

    @staticmethod
    def _hold(record: dict, release: _Release | None) -> Hold:
        try:
            scope = HoldScope.model_validate(record["scope"])
            return Hold(
                id=record["id"],
                name=record["name"],
                reason=record["reason"],
                scope=scope,
                contact=record["contact"],
                creator=record["creator"],
                created_at=record["created_at"],
                released_at=release.released_at if release else None,
                released_by=release.released_by if release else None,
                release_reason=release.reason if release else None,
            )
        except (KeyError, TypeError, ValueError):
            raise HoldError(
                f"hold {record.get('id')}: its record is signed but incomplete (written by another version?); "
                "upgrade genesis-dr"
            ) from None

    # -- writing ----------------------------------------------------------------------------

    def create(
        self,
        *,
        name: str,
        reason: str,
        scope: HoldScope,
        contact: str,
        creator: str,
        catalog: Catalog,
        signer: SigningKey,
    ) -> Hold:
        """Record a hold over what ``scope`` matches in ``catalog`` (HoldError if nothing), signed by
        ``signer`` (the host key), with a hold.create audit entry. The provider's locks follow with
        ``apply_object_holds`` (the hold flow and every retention run call it)."""
        name, reason = _one_line(name, "name"), _one_line(reason, "reason")
        contact, creator = _one_line(contact, "contact"), _one_line(creator, "creator")
        created_at = now_iso()
        hold_id = f"hold-{datetime.now(UTC):%Y%m%d}-{secrets.token_hex(4)}"
        probe = Hold(
            id=hold_id,
            name=name,
            reason=reason,
            scope=scope,
            contact=contact,
            creator=creator,
            created_at=created_at,
        )
        backups, pieces = covered_items(catalog, [probe])
        if not backups and not pieces:
            scope_text = json.dumps(scope.model_dump(exclude_defaults=True), sort_keys=True)
            sources = sorted({b.source for b in catalog.backups})
            raise HoldError(
                f"hold scope {scope_text} matches nothing in the vault ({len(catalog.backups)} backups of sources "
                f"{', '.join(sources) or 'none'}); check the ids/globs, sources, classes and time range "
                "('genesis-dr list' shows the backups)"
            )
        record = {
            "format": HOLD_FORMAT,
            "version": RECORD_VERSION,
            "id": hold_id,
            "name": name,
            "reason": reason,
            "scope": scope.model_dump(mode="json"),
            "contact": contact,
            "creator": creator,
            "created_at": created_at,
            "matched": {"backups": len(backups), "log_pieces": len(pieces)},
        }
        if self.store.create(f"{PREFIX}{hold_id}.json", _signed(record, signer)) is None:
            raise HoldError(f"hold {hold_id}: an object of that name exists already (id collision); create it again")
        AuditTrail(self.store, signer).append(
            "hold.create",
            hold_id,
            {
                "name": name,
                "scope": scope.model_dump(mode="json", exclude_defaults=True),
                "backups": len(backups),
                "log_pieces": len(pieces),
            },
        )
        return probe

    def release(self, hold_id: str, *, reason: str, admin_key: SigningKey, admins: list[str]) -> Hold:
        """End a hold: a release record signed by ``admin_key`` (which must be one of ``admins``) and a
        hold.release audit entry. HoldError for an unknown or already released hold."""
        if admin_key.public_b64 not in admins:
            raise SigningKeyError(
                f"hold release {hold_id}: the key given (fingerprint {admin_key.fingerprint}) is not listed in "
                "signing.admin_public_keys; sign with an admin key (signing.admin_key_from)"
            )
        reason = _one_line(reason, "release reason")
        hold = self.get(hold_id, admins)
        if not hold.active:
            raise HoldError(
                f"hold {hold_id} ('{hold.name}') was already released on {hold.released_at} by {hold.released_by}; "
                "see 'genesis-dr hold list --all'"
            )
        _, hold_raw = self._hold_record(hold_id)
        released_at = now_iso()
        released_by = f"{default_actor()} (admin key {admin_key.fingerprint})"
        record = {
            "format": RELEASE_FORMAT,
            "version": RECORD_VERSION,
            "hold": hold_id,
            "hold_sha256": hashlib.sha256(hold_raw).hexdigest(),
            "reason": reason,
            "released_by": released_by,
            "released_at": released_at,
        }
        body = _signed(record, admin_key)
        # The plain name may be taken by a record that does not count (forged): the next free one then.
        taken = set(self.store.children(PREFIX))
        for n in range(0, 1000):
            name = f"{hold_id}.release.json" if n == 0 else f"{hold_id}.release.{n}.json"
            if name not in taken and self.store.create(PREFIX + name, body) is not None:
                break
        else:
            raise HoldError(f"hold {hold_id}: too many release records; remove the forged ones under {PREFIX}")
        AuditTrail(self.store, admin_key).append(
            "hold.release", hold_id, {"name": hold.name, "admin": admin_key.fingerprint}
        )
        return Hold(
            **{f: getattr(hold, f) for f in ("id", "name", "reason", "scope", "contact", "creator", "created_at")},
            released_at=released_at,
            released_by=released_by,
            release_reason=reason,
        )


# -- what the holds cover ---------------------------------------------------------------------


def _classes(catalog: Catalog, source: str) -> list[str]:
    info = catalog.sources.get(source)
    return list(info.data_classes) if info is not None else []


def covered_items(catalog: Catalog, holds: Iterable[Hold]) -> tuple[list[BackupItem], list[PieceItem]]:
    """The backups and log pieces ``holds`` cover (active or not: callers choose the holds), with what
    each covered backup needs to be restored: its chain's parents up to the full and the log pieces
    each of them records."""
    holds = list(holds)
    by_id = {b.id: b for b in catalog.backups}
    chosen: dict[str, BackupItem] = {}
    for item in catalog.backups:
        if any(h.covers_backup(item, _classes(catalog, item.source)) for h in holds):
            node: BackupItem | None = item
            while node is not None and node.id not in chosen:
                chosen[node.id] = node
                node = by_id.get(node.parent) if node.parent else None
    ranges: dict[str, list[tuple[int, int]]] = {}
    for item in chosen.values():
        if item.log_pieces:
            ranges.setdefault(item.source, []).append(tuple(item.log_pieces))
    pieces = [
        p
        for p in catalog.pieces
        if any(first <= p.seq <= last for first, last in ranges.get(p.source, []))
        or any(h.covers_piece(p, _classes(catalog, p.source)) for h in holds)
    ]
    return sorted(chosen.values(), key=lambda b: b.id), pieces


def _objects_on(store: Store, catalog: Catalog, holds: Iterable[Hold]) -> set[str]:
    backups, pieces = covered_items(catalog, holds)
    keys: set[str] = set()
    for item in backups:
        keys.update(store.list(f"backups/{item.id}/"))
        hint = f"catalog/{item.source}/{item.id}.json"
        if store.exists(hint):
            keys.add(hint)
    listed: dict[str, set[str]] = {}
    for piece in pieces:
        if piece.source not in listed:
            listed[piece.source] = set(store.list(f"logs/{piece.source}/")) | set(
                store.list(f"logkeys/{piece.source}/")
            )
        record = f"logs/{piece.source}/{piece.seq:012d}.json"
        if record in listed[piece.source]:
            keys.add(record)
            keys.update(store.list(f"logdata/{piece.source}/{piece.seq:012d}/"))
        # The capture session's key: shredding it would make the held piece unreadable.
        logkey = f"logkeys/{piece.source}/{piece.key_id}.json"
        if logkey in listed[piece.source]:
            keys.add(logkey)
    return keys


def covered_objects(vault: Vault, catalog: Catalog, holds: list[Hold]) -> set[str]:
    """Keys of every object under an ACTIVE hold in ``vault``: each covered backup's directory and catalog
    hint (and those of the backups it builds on), each covered log piece's record, chunks and session key."""
    return _objects_on(vault.store, catalog, [h for h in holds if h.active])


def apply_object_holds(vault: Vault, stores: list[tuple[str, Store]], holds: list[Hold], catalog: Catalog) -> dict:
    """Make the provider's locks match the holds, on the primary (always) and each of ``stores``.

    Pass ``holds`` as ``HoldBook.list(admins)`` (released ones included): objects a released hold
    covered and no active hold covers get their lock lifted. Stores without locks
    (``lock_supported()`` False: local vaults, S3 buckets without Object Lock) are reported, not
    an error. Returns, per store name, {"location", "lock_supported", "held", "set_on", "set_off"}.
    """
    targets = [(PRIMARY, vault.store)] + [
        (name, store) for name, store in stores if name != PRIMARY and store is not vault.store
    ]
    active = [h for h in holds if h.active]
    released = [h for h in holds if not h.active]
    counts: dict[str, dict] = {}
    for name, store in targets:
        entry = {"location": store.describe(), "lock_supported": False, "held": 0, "set_on": 0, "set_off": 0}
        counts[name] = entry
        if not store.lock_supported():
            continue
        entry["lock_supported"] = True
        keep = _objects_on(store, catalog, active) if active else set()
        lift = (_objects_on(store, catalog, released) - keep) if released else set()
        entry["held"] = len(keep)
        # One or two requests per object: as many in flight as the store serves well (8 on S3).
        with ThreadPoolExecutor(max_workers=unwrap(store).capabilities.io_threads) as pool:
            entry["set_on"] = sum(pool.map(partial(_set_hold, store, on=True), sorted(keep)))
            entry["set_off"] = sum(pool.map(partial(_set_hold, store, on=False), sorted(lift)))
    return counts


def _set_hold(store: Store, key: str, *, on: bool) -> bool:
    """Put the object's hold in state ``on``; True if that changed it (its current state is read first, so a
    rerun changes nothing)."""
    if store.legal_hold(key) == on:
        return False
    store.set_legal_hold(key, on)
    return True


def describe_cover(catalog: Catalog, hold: Hold) -> str:
    """One line: what a hold covers now, for 'hold list' and the hold flow's log."""
    backups, pieces = covered_items(catalog, [hold])
    shown = ", ".join(b.id for b in backups[:_SHOWN]) + (
        f" and {len(backups) - _SHOWN} more" if len(backups) > _SHOWN else ""
    )
    text = f"{len(backups)} backups ({shown or 'none'})"
    return text + (f", {len(pieces)} log pieces of {', '.join(sorted({p.source for p in pieces}))}" if pieces else "")
