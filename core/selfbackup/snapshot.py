"""Self-backup snapshots: the Prefect state genesis-dr needs to be rebuilt, sealed into the vault.

One object per snapshot, ``self/<id>.json`` (id ``self_YYYYMMDD_HHMMSSmmm_xxxxxxxx``, UTC), created only if
absent and never rewritten. It is one object, not a directory of chunks, so that it is whole or absent on
every store, and so a replica copies it like the other signed records (``*.json`` below a prefix). Canonical
JSON (sorted keys, no spaces)::

    {"format": "genesis-dr-self", "version": 1, "id": ..., "stack": ..., "created_at": ..., "host": ...,
     "counts": {"blocks": 7, "deployments": 23, ...}, "audit_head": {"seq", "hash", "at"} | null,
     "key_ids": [...], "recipients": [...],
     "state": {"codec": "zstd", "plain_bytes": N, "stored_bytes": M, "sha256": "<of the sealed blob>",
               "blob": "<base64 of a chunk-format blob, label #state>"},
     "mac": "<HMAC-SHA256 of the record without mac>"}

The state (block documents WITH their secrets, deployments, automations, variables, work pools, concurrency
limits) is sealed like any backup: its own random data key wrapped for the stack's recipients (passphrase,
X25519, KMS; ``keys.json``'s records, associated data bound to the snapshot id), AES-256-GCM over the
zstd-compressed JSON with the chunk format's associated data (``|<id>|#state|0|1``). ``state.sha256`` is
checkable without keys; the MAC (key = HKDF-SHA256(data key, ``genesis-dr/v1/self-mac``)) binds the clear
fields (counts, audit head, stack) to the sealed state. Nothing in the clear is secret: counts, ids, the
audit head (already in the clear at ``audit/head.json``).

The catalog, ``list``, retention and validation never look under ``self/``; replication copies it like the
compliance records (only if absent), so a replica can bootstrap genesis-dr after the primary is lost. The
self-backup keeps its own last ``DEFAULT_KEEP`` snapshots and destroys older ones (``Store.destroy``: every
stored version, overwritten first on a local vault), as retention deletes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from core.audit.trail import HEAD, entry_hash, entry_key
from core.crypto.envelope import Opener, Sealer
from core.crypto.keys import Keyring
from core.crypto.mac import mac_matches, record_mac
from core.errors import FormatError, IntegrityError, VaultError
from core.storage.base import ObjectNotFound, Store

PREFIX = "self/"
FORMAT = "genesis-dr-self"
VERSION = 1
# The sealed state's own format (tasks/self_backup.py gathers it, cli/bootstrap.py restores it).
STATE_FORMAT = "genesis-dr-self-state"
STATE_VERSION = 1
DEFAULT_KEEP = 14
_LABEL = "state"
_MAC_INFO = b"genesis-dr/v1/self-mac"
_ID = re.compile(r"^self_\d{8}_\d{9}_[0-9a-f]{8}$")


@dataclass(frozen=True)
class Snapshot:
    """What the clear part of a snapshot record says (no key needed)."""

    id: str
    stack: str
    created_at: str
    host: str
    counts: dict
    audit_head: dict | None
    key_ids: list
    size: int  # bytes of the stored record
    sha256: str  # of the stored record

    @property
    def key(self) -> str:
        return record_key(self.id)


def new_snapshot_id(now: datetime | None = None) -> str:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    # Milliseconds, as validation ids have: "the newest" is the greatest id even for two runs in one second.
    return f"self_{now:%Y%m%d_%H%M%S}{now.microsecond // 1000:03d}_{secrets.token_hex(4)}"


def record_key(snapshot_id: str) -> str:
    return f"{PREFIX}{snapshot_id}.json"


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _now_iso(now: datetime | None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_snapshot(
    store: Store,
    keyring: Keyring,
    *,
    stack: str,
    state: dict,
    counts: dict,
    audit_head: dict | None,
    passphrase_key_id: str | None = None,
    codec: str = "zstd",
    now: datetime | None = None,
) -> Snapshot:
    """Seal ``state`` for the keyring's recipients and create ``self/<id>.json`` (only if absent)."""
    snapshot_id = new_snapshot_id(now)
    data_key, recipients = keyring.new_data_key(snapshot_id, passphrase_key_id)
    plain = json.dumps(state, sort_keys=True, separators=(",", ":")).encode()
    blob = Sealer(data_key, snapshot_id, codec=codec).seal_blob(_LABEL, plain)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "id": snapshot_id,
        "stack": stack,
        "created_at": _now_iso(now),
        "host": socket.gethostname(),
        "counts": counts,
        "audit_head": audit_head,
        "key_ids": keyring.key_ids(passphrase_key_id),
        "recipients": recipients,
        "state": {
            "codec": codec,
            "plain_bytes": len(plain),
            "stored_bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "blob": base64.b64encode(blob).decode("ascii"),
        },
    }
    record["mac"] = record_mac(data_key, _MAC_INFO, _canonical(record))
    data = _canonical(record) + b"\n"
    store.put(record_key(snapshot_id), data)
    return _summary(record, data)


def _summary(record: dict, data: bytes) -> Snapshot:
    return Snapshot(
        id=record["id"],
        stack=str(record.get("stack")),
        created_at=str(record.get("created_at")),
        host=str(record.get("host")),
        counts=dict(record.get("counts") or {}),
        audit_head=record.get("audit_head"),
        key_ids=list(record.get("key_ids") or []),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def snapshot_ids(store: Store) -> list[str]:
    """The snapshot ids under ``self/``, oldest first (names that are not snapshots are skipped)."""
    out = []
    for key in store.list(PREFIX):
        name = key[len(PREFIX) :]
        if name.endswith(".json") and _ID.match(name[:-5]):
            out.append(name[:-5])
    return sorted(out)


def latest_snapshot_id(store: Store) -> str | None:
    ids = snapshot_ids(store)
    return ids[-1] if ids else None


def read_record(store: Store, snapshot_id: str) -> tuple[dict, Snapshot]:
    """The record of ``snapshot_id`` (format checked, the sealed blob's SHA-256 verified; no key needed)."""
    key = record_key(snapshot_id)
    where = f"self-backup {snapshot_id} ({store.describe()}/{key})"
    if not _ID.match(snapshot_id):
        raise VaultError(f"{snapshot_id!r} is not a self-backup id (self_YYYYMMDD_HHMMSSmmm_xxxxxxxx)")
    try:
        data = store.get(key)
    except ObjectNotFound:
        raise ObjectNotFound(
            f"no self-backup {snapshot_id} in {store.describe()}; omit --snapshot to take the newest"
        ) from None
    try:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("not an object")
    except ValueError:
        raise IntegrityError(f"{where}: not JSON; take another snapshot (--snapshot ID) or a replica's copy") from None
    if record.get("format") != FORMAT:
        raise FormatError(f"{where}: not a genesis-dr self-backup (format {record.get('format')!r})")
    if record.get("version") != VERSION:
        raise FormatError(
            f"{where}: self-backup version {record.get('version')} is not supported by this genesis-dr "
            f"(knows {VERSION}); upgrade genesis-dr"
        )
    if record.get("id") != snapshot_id:
        raise IntegrityError(
            f"{where}: the record names {record.get('id')!r} (swapped or renamed); use a replica's copy"
        )
    try:
        blob = base64.b64decode(record["state"]["blob"], validate=True)
        expected = record["state"]["sha256"]
    except (KeyError, TypeError, ValueError):
        raise IntegrityError(
            f"{where}: the sealed state is malformed; use another snapshot or a replica's copy"
        ) from None
    if hashlib.sha256(blob).hexdigest() != expected:
        raise IntegrityError(f"{where}: the sealed state's SHA-256 does not match (corrupt); use another snapshot")
    return record, _summary(record, data)


def open_snapshot(store: Store, keyring: Keyring, snapshot_id: str) -> tuple[Snapshot, dict]:
    """The snapshot and its state, decrypted and verified (WrongKeyError, exit 6, when no key opens it)."""
    record, summary = read_record(store, snapshot_id)
    where = f"self-backup {snapshot_id}"
    data_key = keyring.unwrap(snapshot_id, record.get("recipients") or [])
    unsigned = {k: v for k, v in record.items() if k != "mac"}
    if not mac_matches(data_key, _MAC_INFO, _canonical(unsigned), record.get("mac")):
        raise IntegrityError(f"{where}: the record's MAC does not verify (altered); use another snapshot")
    blob = base64.b64decode(record["state"]["blob"])
    plain = Opener(data_key, snapshot_id).open_blob(_LABEL, blob, where)
    try:
        state = json.loads(plain)
    except ValueError:
        raise IntegrityError(f"{where}: the sealed state is not JSON") from None
    return summary, state


def prune_snapshots(store: Store, keep: int = DEFAULT_KEEP, *, passes: int = 3) -> list[str]:
    """Destroy every snapshot but the newest ``keep`` (every stored version; overwritten first locally).

    Returns the ids destroyed, oldest first. A store without ``destroy`` gets a plain delete.
    """
    ids = snapshot_ids(store)
    doomed = ids[: max(0, len(ids) - max(1, keep))]
    for snapshot_id in doomed:
        try:
            store.destroy(record_key(snapshot_id), passes=passes)
        except VaultError as exc:
            if "not supported" not in str(exc):
                raise
            store.delete(record_key(snapshot_id))
    return doomed


def read_audit_head(store: Store) -> dict | None:
    """The vault's audit head ``{seq, hash, at}`` (None without a trail)."""
    try:
        head = json.loads(store.get(HEAD))
    except (ObjectNotFound, ValueError):
        return None
    return head if isinstance(head, dict) and isinstance(head.get("seq"), int) else None


def trail_continues(store: Store, head: dict | None) -> tuple[bool, str]:
    """Whether the vault's audit trail still holds the entry ``head`` (the snapshot's) unchanged; one line."""
    if not head:
        return True, "the snapshot recorded no audit trail"
    seq = head.get("seq")
    try:
        entry = json.loads(store.get(entry_key(int(seq))))
    except (ObjectNotFound, ValueError, TypeError):
        return (
            False,
            f"audit entry {seq} recorded by the snapshot is missing from the vault: run 'genesis-dr audit verify'",
        )
    if entry_hash(entry) != head.get("hash"):
        return False, f"audit entry {seq} differs from the one the snapshot recorded: run 'genesis-dr audit verify'"
    now = read_audit_head(store)
    return True, f"audit trail continues from the snapshot's entry {seq} (head now {now['seq'] if now else seq})"
