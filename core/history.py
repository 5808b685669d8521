"""The vault's own history of validations and drills: it survives the Prefect database.

Records are JSON documents under ``history/<kind>/<id>.json`` (kind: ``validations``,
``drills``, ``skips``: an incremental backup skipped because the source's previous backup was
still running - source, type, time and the run that held the source), written once and never replaced, plus blobs beside them (a drill's chart,
``history/drills/<id>.png``). ``history/verified/<backup_id>.json`` says when every object
of a backup was last read back and authenticated, so a large vault is not re-read within
the configured interval. Nothing here is secret: results name backups, sources and checks,
never data values or keys. See docs/FORMAT.md "History".
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

from core.errors import IntegrityError
from core.storage.base import ObjectNotFound, Store

KINDS = ("validations", "drills", "skips")
PREFIX = "history/"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown history kind {kind!r}; known: {', '.join(KINDS)}")


class History:
    """History records of one vault's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def put(self, kind: str, record_id: str, doc: dict[str, Any]) -> str:
        """Write one record (immutable); returns its key."""
        _check_kind(kind)
        key = f"{PREFIX}{kind}/{record_id}.json"
        self.store.put(key, json.dumps(doc, sort_keys=True, indent=1, default=str).encode())
        return key

    def put_blob(self, kind: str, name: str, data: bytes) -> str:
        """A file beside the records (e.g. ``<id>.png``); replaced if it exists."""
        _check_kind(kind)
        key = f"{PREFIX}{kind}/{name}"
        self.store.put(key, data, overwrite=True)
        return key

    def get(self, kind: str, record_id: str) -> dict[str, Any]:
        _check_kind(kind)
        key = f"{PREFIX}{kind}/{record_id}.json"
        try:
            raw = self.store.get(key)
        except ObjectNotFound:
            raise IntegrityError(f"history record {key} is missing in {self.store.describe()}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise IntegrityError(f"history record {key} is not valid JSON (corrupt); remove it") from None

    def ids(self, kind: str) -> list[str]:
        """Record ids, oldest first (ids sort by time)."""
        _check_kind(kind)
        prefix = f"{PREFIX}{kind}/"
        return sorted(k[len(prefix) : -5] for k in self.store.list(prefix) if k.endswith(".json"))

    def records(self, kind: str, last: int | None = None) -> list[dict[str, Any]]:
        """The newest ``last`` records (all when None), oldest first; an unreadable one is an error."""
        ids = self.ids(kind)
        if last is not None:
            ids = ids[-last:] if last > 0 else []
        return [self.get(kind, i) for i in ids]

    def record_skip(self, source: str, backup_type: str, at: datetime, held_by: dict[str, Any], **extra: Any) -> str:
        """Record a backup that did not run because ``held_by`` (the run holding the source) was still going;
        returns the record's id (``skip_<UTC to the ms>_<source>_<random>``, sorting by time)."""
        at = at.astimezone(UTC)
        record_id = f"skip_{at.strftime('%Y%m%d_%H%M%S%f')[:-3]}_{source}_{secrets.token_hex(3)}"
        doc = {"id": record_id, "source": source, "type": backup_type, "at": at.isoformat(), "held_by": held_by}
        self.put("skips", record_id, doc | extra)
        return record_id

    # -- objects verified recently ---------------------------------------------------
    def verified(self, backup_id: str) -> dict[str, Any] | None:
        """When every object of ``backup_id`` was last read back and authenticated, or None."""
        try:
            return json.loads(self.store.get(f"{PREFIX}verified/{backup_id}.json"))
        except (ObjectNotFound, ValueError):
            return None

    def mark_verified(self, backup_id: str, doc: dict[str, Any]) -> None:
        """Record a full read-back of ``backup_id`` (``verified_at``, objects, bytes, manifest_sha256, decrypted)."""
        self.store.put(
            f"{PREFIX}verified/{backup_id}.json", json.dumps(doc, sort_keys=True, indent=1).encode(), overwrite=True
        )
