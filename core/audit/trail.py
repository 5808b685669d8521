"""The audit trail: an append-only chain of signed entries in the vault.

Why a chain and not a log file: the vault lives on storage an attacker (or a careless
operator) may write to. Each entry carries the SHA-256 of the previous entry's canonical
line and an Ed25519 signature by the host that wrote it, so an entry edited, deleted,
reordered or inserted afterwards shows up in ``core.audit.verify``; the head (the last
entry's seq and hash) is replicated with the vault, so even a deleted tail is caught by a
replica that saw it.

Layout (docs/FORMAT.md, "Audit trail")::

    audit/entries/<seq 12 digits>.json   one canonical JSON line (sorted keys, no spaces) + "\\n"
    audit/head.json                      {"seq", "hash", "at"}, replaced by compare-and-swap

Entries are created only-if-absent: two writers racing for the same seq get one winner,
the loser re-reads and takes the next seq, so concurrent runs keep one chain. The head is
moved after the entry exists and only ever forward; a writer killed between the two leaves a
stale head that the next append (and ``verify``) walks past.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from core.audit.pending import PendingQueue, late_body
from core.crypto.signing import SigningKey
from core.errors import AuditTrailError
from core.storage.base import ObjectNotFound, Store

ENTRIES = "audit/entries/"
HEAD = "audit/head.json"
ENTRY_VERSION = 1
GENESIS = "0" * 64
# What writes an entry (the names readers filter on). Other dotted lower-case names are accepted, so a new
# activity never fails a run for its audit entry; these are the documented ones.
AUDIT_ACTIONS = (
    "backup",
    "restore",
    "validation",
    "drill",
    "failover",
    "failback",
    "monitor",
    "hold.create",
    "hold.release",
    "retention.delete",
    "retention.archive",
    "retention.run",
    "erasure.request",
    "erasure.apply",
    "audit.acknowledge",
    "audit.alarm",
    "audit.late-rejected",
    "key.rotate",
)
_ACTION = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)*$")
_MAX_DETAILS = 16_384  # bytes of canonical JSON: an entry records ids, counts and digests, never data
_MAX_RACES = 1000


class _Unwritten(Exception):
    """The store failed before the entry existed (the entry is to be queued); ``why`` is one line."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _why(exc: BaseException) -> str:
    """One line for a store failure: a DRError's own message (never secret); another library's, its type only
    (its message might quote a value it was given)."""
    from core.errors import DRError

    return str(exc).splitlines()[0][:300] if isinstance(exc, DRError) else type(exc).__name__


def entry_key(seq: int) -> str:
    return f"{ENTRIES}{seq:012d}.json"


def canonical(entry: dict, *, with_sig: bool = True) -> bytes:
    """The entry's canonical line: what is signed (without ``sig``) and hashed (with it)."""
    body = entry if with_sig else {k: v for k, v in entry.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(entry: dict) -> str:
    """SHA-256 hex of the entry's canonical line including its signature (what the next entry's ``prev`` is)."""
    return hashlib.sha256(canonical(entry)).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def default_actor() -> str:
    """user@host of this process (a container without a passwd entry gives its uid)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _small_details(details: dict) -> dict:
    """The details as plain JSON (values that are not JSON become strings), cut to a bounded size: an oversized
    detail set keeps its keys and says so, rather than failing the run that records it."""
    plain = json.loads(json.dumps(details or {}, default=str, sort_keys=True))
    if len(json.dumps(plain, separators=(",", ":"))) <= _MAX_DETAILS:
        return plain
    return {"truncated": True, "keys": sorted(plain)[:100]}


class AuditTrail:
    """The trail of one vault store; ``signer`` signs what this process appends (None: read only)."""

    def __init__(self, store: Store, signer: SigningKey | None = None, *, pending_root: str | None = None) -> None:
        self.store = store
        self.signer = signer
        self._pending_root = pending_root  # the state directory holding the queue (default: state_dir())
        self._queue: PendingQueue | None = None

    # -- reading -------------------------------------------------------------------

    def head(self) -> dict | None:
        """The recorded head, None if the trail has none (yet), or it cannot be parsed."""
        try:
            return json.loads(self.store.get(HEAD))
        except ObjectNotFound:
            return None
        except ValueError:
            return None

    def entry(self, seq: int) -> dict | None:
        try:
            raw = self.store.get(entry_key(seq))
        except ObjectNotFound:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise AuditTrailError(
                f"audit trail of {self.store.describe()}: {entry_key(seq)} is not valid JSON; run 'genesis-dr audit "
                "verify'"
            ) from None

    def entries(self) -> list[dict]:
        """Every entry in seq order (entries that cannot be parsed are left out: ``verify`` names them)."""

        def read(key: str) -> dict | None:
            try:
                entry = json.loads(self.store.get(key))
            except (ObjectNotFound, ValueError):
                return None
            return entry if isinstance(entry, dict) else None

        keys = list(self.store.list(ENTRIES))
        with ThreadPoolExecutor(max(1, self.store.capabilities.io_threads), thread_name_prefix="audit-read") as pool:
            out = [entry for entry in pool.map(read, keys) if entry is not None]
        return sorted(out, key=lambda e: e.get("seq", 0) if isinstance(e.get("seq"), int) else 0)

    def _last(self) -> tuple[int, str]:
        """(seq, hash) of the newest entry: from the head, walking past a stale one; a trail without a head is
        listed once."""
        head = self.head()
        if head is not None and isinstance(head.get("seq"), int) and head["seq"] > 0:
            seq = head["seq"]
            entry = self.entry(seq)
            if entry is None:  # a head past the entries (tail deleted?): continue after what exists
                seq = self._listed_last()
                entry = self.entry(seq) if seq else None
        else:
            seq = self._listed_last()
            entry = self.entry(seq) if seq else None
        while True:
            following = self.entry(seq + 1)
            if following is None:
                return seq, entry_hash(entry) if entry is not None else GENESIS
            seq, entry = seq + 1, following

    def _listed_last(self) -> int:
        seqs = [int(m.group(1)) for k in self.store.list(ENTRIES) if (m := re.fullmatch(r".*/(\d{12})\.json", k))]
        return max(seqs, default=0)

    # -- appending -----------------------------------------------------------------

    def append(
        self, action: str, subject: str, details: dict, *, actor: str | None = None, outcome: str = "success"
    ) -> dict:
        """Append one signed entry (created only-if-absent at the next seq) and move the head to it.

        ``details`` are small and secret-free (ids, counts, digests). Returns the entry as stored.

        Entries this host queued earlier for this store (``core.audit.pending``) with the same key are appended
        first, marked late. When the store cannot be written (unreachable, read-only) the entry is queued on this
        host and AuditTrailError names the file: the caller decides whether its run fails (``must_record``).
        """
        if self.signer is None:
            raise AuditTrailError(f"audit trail of {self.store.describe()} was opened read-only; no signing key given")
        if not _ACTION.match(action):
            raise ValueError(f"audit action {action!r} is not a dotted lower-case name (see AUDIT_ACTIONS)")
        body = {
            "version": ENTRY_VERSION,
            "action": action,
            "subject": str(subject),
            "outcome": str(outcome),
            "actor": actor or default_actor(),
            "details": _small_details(details),
            "signer": self.signer.public_b64,
            "at": now_iso(),
        }
        try:
            self._drain()
            return self._write(body, keep_at=False)
        except _Unwritten as unwritten:
            why = unwritten.why
        try:
            path = self.queue.save(body, self.signer, why)
            pending = self.queue.count()
        except OSError as exc:
            raise AuditTrailError(
                f"audit trail of {self.store.describe()}: the entry {action} {subject} ({outcome}) was not written "
                f"({why}) and could not be queued on this host either ({exc.strerror or type(exc).__name__} in "
                f"{self.queue.dir}); make the vault store and the state directory (GENESIS_DR_STATE_DIR) writable"
            ) from None
        raise AuditTrailError(
            f"audit trail of {self.store.describe()}: the entry {action} {subject} ({outcome}) was not written "
            f"({why}); it is queued on this host as {path} ({pending} pending) and the next audited run that can "
            "write to the vault appends it, marked late; make the vault store writable"
        )

    @property
    def queue(self) -> PendingQueue:
        if self._queue is None:
            self._queue = PendingQueue(self.store, self._pending_root)
        return self._queue

    def _drain(self) -> None:
        """Append this signer's pending entries for this store, oldest first (see ``core.audit.pending``)."""
        for claimed, record in self.queue.claim(self.signer):
            if record is None:
                rejected = self.queue.reject(claimed)
                self._write(
                    {
                        "version": ENTRY_VERSION,
                        "action": "audit.late-rejected",
                        "subject": "audit trail",
                        "outcome": "failure",
                        "actor": default_actor(),
                        "details": {"file": str(rejected), "why": "unreadable, or its signature does not verify"},
                        "signer": self.signer.public_b64,
                        "at": now_iso(),
                    },
                    keep_at=False,
                )
                continue
            try:
                entry = self._create(
                    late_body(record) | {"version": record.get("version", ENTRY_VERSION)}, keep_at=True
                )
            except Exception as exc:  # noqa: BLE001 - not in the trail: it stays queued, and so does the caller's entry
                self.queue.unclaim(claimed)
                raise _Unwritten(_why(exc)) from None
            self.queue.done(claimed)  # in the trail now, whatever happens to the head
            self._move_head(entry)

    def _write(self, body: dict, *, keep_at: bool) -> dict:
        """Create ``body`` as the next entry (``at`` renewed per attempt unless ``keep_at``: a late entry keeps
        the time it happened). _Unwritten when the store failed before the entry existed."""
        try:
            entry = self._create(body, keep_at=keep_at)
        except Exception as exc:  # noqa: BLE001 - any failure before the entry exists: it is queued, the caller told why
            raise _Unwritten(_why(exc)) from None
        self._move_head(entry)  # the entry is in the trail: a head left behind is walked past by the next append
        return entry

    def _create(self, body: dict, *, keep_at: bool) -> dict:
        seq, prev = self._last()
        for _ in range(_MAX_RACES):
            seq += 1
            entry = body | {"seq": seq, "prev": prev}
            if not keep_at:
                entry["at"] = now_iso()
            entry["sig"] = self.signer.sign(canonical(entry, with_sig=False))
            if self.store.create(entry_key(seq), canonical(entry) + b"\n") is not None:
                return entry
            # Another writer took this seq: chain after its entry.
            taken = self.entry(seq)
            if taken is None:
                raise AuditTrailError(
                    f"audit trail of {self.store.describe()}: {entry_key(seq)} exists but cannot be read back; check "
                    "the store"
                )
            prev = entry_hash(taken)
        raise AuditTrailError(
            f"audit trail of {self.store.describe()}: {_MAX_RACES} writers raced for the next entry; try again"
        )

    def _move_head(self, entry: dict) -> None:
        """Move audit/head.json to ``entry`` unless it is already at or past it (CAS; the head never goes back)."""
        data = json.dumps({"seq": entry["seq"], "hash": entry_hash(entry), "at": entry["at"]}, sort_keys=True).encode()
        for _ in range(_MAX_RACES):
            try:
                raw, version = self.store.get_versioned(HEAD)
            except ObjectNotFound:
                if self.store.create(HEAD, data) is not None:
                    return
                continue
            try:
                current = json.loads(raw).get("seq")
            except (ValueError, AttributeError):
                current = None
            if isinstance(current, int) and current >= entry["seq"]:
                return
            if self.store.replace(HEAD, data, version=version) is not None:
                return
        raise AuditTrailError(f"audit trail of {self.store.describe()}: the head kept changing; run the append again")
