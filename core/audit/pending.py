"""Audit entries that could not be written yet, kept on this host until the vault takes them.

Why a local queue: a restore from a read-only vault, or a failover while the primary's region is down, must
not lose the record of what it did (the trail lives in the very vault that cannot be written), nor fail the
recovery because of it. The entry is signed when it happens and saved here, one file per entry::

    <state dir>/audit-pending/loc-<sha256(store location)[:16]>/<at stamp>-<8 hex>.json   (0600)
    <state dir>/audit-pending/loc-<...>/LOCATION                                        the store's description

The next append to that store's trail by the same signing key (any action, any run on this host) first
appends these, oldest first, each with its original ``at`` and ``"late": true``, ``"queued_at"`` and
``"queued_because"``, then its own entry. ``audit verify`` reports how many are still pending here.

A pending file is signed (over its own fields) by the key that will sign its entry: a file edited on this
host is not appended as if it were genuine; it is renamed ``*.rejected`` and an ``audit.late-rejected``
entry records that it was (so nothing disappears silently either way).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from pathlib import Path

from core.crypto.signing import SigningKey, verify_signature
from core.storage.base import Store

PENDING_DIR = "audit-pending"
LOCATION_FILE = "LOCATION"
PENDING_VERSION = 1
_NAME = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}\.json$")
_CLAIM = ".claimed-"
# A claim older than this was left by a run killed mid-drain: the next drain takes the file over.
STALE_CLAIM_SECONDS = 3600


def _canonical(record: dict) -> bytes:
    body = {k: v for k, v in record.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _stamp(at: str) -> str:
    """``2026-12-06T06:45:31.123456Z`` -> ``20261206T064531123456Z`` (sorts as the time does)."""
    return re.sub(r"[-:.]", "", at)


def location_dir(store: Store, root: str | None = None) -> Path:
    """This host's queue directory for ``store`` (by the digest of its description: it must be found while the
    store cannot even be read)."""
    if root is None:
        from core.targets import state_dir  # the host's state directory, shared with restore-target marks

        root = state_dir()
    digest = hashlib.sha256(store.describe().encode()).hexdigest()[:16]
    return Path(root) / PENDING_DIR / f"loc-{digest}"


class PendingQueue:
    """The queue of one vault store on this host (``root``: the state directory, default ``state_dir()``)."""

    def __init__(self, store: Store, root: str | None = None) -> None:
        self.store = store
        self.dir = location_dir(store, root)

    def files(self) -> list[Path]:
        """Pending entries, oldest first (claimed and rejected ones are not)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return [self.dir / n for n in sorted(names) if _NAME.match(n)]

    def count(self) -> int:
        return len(self.files())

    def rejected(self) -> list[Path]:
        try:
            return sorted(p for p in self.dir.iterdir() if p.name.endswith(".rejected"))
        except FileNotFoundError:
            return []

    def save(self, body: dict, signer: SigningKey, error: str) -> Path:
        """Queue an entry ``body`` (the trail's fields without seq/prev/sig, with ``at``), signed by ``signer``."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        location = self.dir / LOCATION_FILE
        if not location.exists():
            location.write_text(self.store.describe() + "\n")
        record = body | {
            "pending_version": PENDING_VERSION,
            "queued_at": body["at"],
            "queued_because": error[:300],
            "location": self.store.describe(),
        }
        record["sig"] = signer.sign(_canonical(record))
        path = self.dir / f"{_stamp(body['at'])}-{secrets.token_hex(4)}.json"
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, json.dumps(record, sort_keys=True).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)  # never a half-written pending file
        return path

    def claim(self, signer: SigningKey) -> list[tuple[Path, dict | None]]:
        """Take this signer's pending files (renamed, so two runs on this host never append one twice), oldest
        first, with their records; a record that is unreadable or whose signature does not verify comes back as
        None (the caller rejects it). Files of another signer stay for a run with that key."""
        self._take_over_stale_claims()
        out: list[tuple[Path, dict | None]] = []
        for path in self.files():
            try:
                record = json.loads(path.read_bytes())
            except (OSError, ValueError):
                record = None
            if isinstance(record, dict) and record.get("signer") != signer.public_b64:
                continue
            # The claim time is in the name (a rename keeps the file's mtime, which is when it was queued).
            claimed = path.with_name(f"{path.name}{_CLAIM}{int(time.time())}-{os.getpid()}-{secrets.token_hex(2)}")
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another run claimed it first
            out.append((claimed, record if _genuine(record) else None))
        return out

    def _take_over_stale_claims(self) -> None:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if _CLAIM not in name:
                continue
            original, _, claim = name.partition(_CLAIM)
            try:
                claimed_at = int(claim.split("-")[0])
            except ValueError:
                claimed_at = 0
            if time.time() - claimed_at <= STALE_CLAIM_SECONDS:
                continue
            try:
                os.rename(self.dir / name, self.dir / original)
            except OSError:
                continue  # gone or taken over by another run meanwhile

    @staticmethod
    def unclaim(claimed: Path) -> None:
        """Put a claimed file back (its append failed: it stays pending)."""
        os.rename(claimed, claimed.with_name(claimed.name.split(_CLAIM)[0]))

    @staticmethod
    def done(claimed: Path) -> None:
        claimed.unlink()

    @staticmethod
    def reject(claimed: Path) -> Path:
        rejected = claimed.with_name(claimed.name.split(_CLAIM)[0] + ".rejected")
        os.rename(claimed, rejected)
        return rejected


def _genuine(record: object) -> bool:
    if not isinstance(record, dict):
        return False
    needed = ("action", "subject", "outcome", "actor", "details", "signer", "at", "queued_at", "sig")
    if any(k not in record for k in needed) or not isinstance(record.get("sig"), str):
        return False
    return verify_signature(str(record["signer"]), _canonical(record), record["sig"])


def late_body(record: dict) -> dict:
    """The trail fields of a pending record (its own bookkeeping dropped), marked late."""
    keep = ("version", "action", "subject", "outcome", "actor", "details", "signer", "at", "queued_at")
    return {k: record[k] for k in keep if k in record} | {
        "late": True,
        "queued_because": record.get("queued_because", ""),
    }
