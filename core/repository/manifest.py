"""The manifest: the commit point of a backup (format v1, see docs/FORMAT.md).

Built from typed models and serialised with sorted keys; never assembled by
hand. The MAC (HMAC-SHA256 under a key derived from the backup's data key)
covers every field, so a reader holding the key detects any edit.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from core.crypto.mac import mac_matches, record_mac
from core.errors import FormatError, IntegrityError

MAC_INFO = b"genesis-dr/v1/manifest-mac"  # HKDF info of this record's MAC key

MANIFEST_FORMAT = "genesis-dr-manifest"
MANIFEST_VERSION = 2
READABLE_MANIFEST_VERSIONS = (1, 2)
COMPLETED = "COMPLETED"
FAILED = "FAILED"
# States of a catalog entry that has no readable manifest (never stored in a manifest).
CORRUPT = "CORRUPT"  # manifest.json present but unreadable, or naming another backup
IN_PROGRESS = "IN_PROGRESS"  # no manifest yet, and the run's lease is live
ABANDONED = "ABANDONED"  # no manifest, and the run's lease is gone: recorded FAILED by the next backup
START_RECORD_VERSION = 1

_ID_RE = re.compile(r"^backup_\d{8}_\d{6}_[0-9a-f]{8}$")


def valid_backup_id(backup_id: str) -> bool:
    return bool(_ID_RE.match(backup_id))


class ChunkRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str  # of the stored object (checkable without keys)
    stored: int
    plain: int


class StreamRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    chunks: list[ChunkRecord]
    plain_bytes: int
    stored_bytes: int
    plain_sha256: str  # of the whole plaintext stream (checked after restore)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["genesis-dr-manifest"] = MANIFEST_FORMAT
    version: int = MANIFEST_VERSION
    id: str
    source: str
    kind: str
    type: str
    status: str
    parent: str | None = None
    # v2: the full this backup builds on (its own id for a full), and for a backup on a base
    # whose changes are the source's log: {"from": position, "to": position, "pieces": [first, last]}.
    chain: str | None = None
    log: dict[str, Any] | None = None
    labels: dict[str, str] = {}
    target: str  # secret-free description of what was backed up
    started_at: str
    ended_at: str
    compression: str
    chunk_size: int
    keys_sha256: str
    streams: list[StreamRecord] = []
    position: dict[str, Any] = {}
    tool_versions: dict[str, str] = {}
    skipped: list[str] = []  # entries the backup left out where the stack allows it (in the clear, for `list`)
    key_ids: list[str] = []  # "passphrase:<key id>", "x25519:<fingerprint>": which keys wrap the data key
    sealed_checks: str | None = None  # base64 envelope: checks name tables/keys/files, so they are encrypted
    error: str | None = None
    mac: str | None = None

    @property
    def plain_bytes(self) -> int:
        return sum(s.plain_bytes for s in self.streams)

    @property
    def stored_bytes(self) -> int:
        return sum(s.stored_bytes for s in self.streams)

    def canonical(self, *, with_mac: bool = True) -> bytes:
        data = self.model_dump(mode="json")
        # Fields added within v1 are left out while empty, so manifests written before them keep their MAC.
        for added in ("skipped", "key_ids", "chain", "log"):
            if not data.get(added):
                data.pop(added, None)
        if not with_mac:
            data.pop("mac", None)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def sign(self, data_key: bytes) -> None:
        self.mac = record_mac(data_key, MAC_INFO, self.canonical(with_mac=False))

    def verify(self, data_key: bytes) -> None:
        if not mac_matches(data_key, MAC_INFO, self.canonical(with_mac=False), self.mac):
            raise IntegrityError(
                f"backup {self.id}: manifest fails its MAC check (edited or corrupt); restore from another backup or replica"
            )

    def position_text(self) -> str:
        """The consistency position in one short phrase, for listings (the kind formats it)."""
        from core.engines import position_text  # the registry imports engines lazily

        return position_text(self.kind, self.position)

    def summary(self) -> dict[str, Any]:
        """Small, secret-free record for listings, flow results and artifacts."""
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "type": self.type,
            "status": self.status,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "plain_bytes": self.plain_bytes,
            "stored_bytes": self.stored_bytes,
            "position": self.position,
            "position_text": self.position_text(),
            "labels": self.labels,
            "parent": self.parent,
            "chain": self.chain,
            "log": self.log,
            "skipped": self.skipped,
            "key_ids": self.key_ids,
            "error": self.error,
        }

    def key_text(self) -> str:
        """The keys that open this backup, short (p: passphrase key id, x: X25519 fingerprint); '-' if unrecorded."""
        short = {"passphrase": "p", "x25519": "x"}
        parts = [k.partition(":") for k in self.key_ids]
        return ",".join(f"{short.get(kind, kind)}:{key_id}" for kind, _, key_id in parts) or "-"


class StartRecord(BaseModel):
    """``backups/<id>/started.json``: written first, so a partial backup says whose it is.

    Advisory only (a reader never trusts it for data): it lets the next backup of
    the same source tell an abandoned partial from a run still in progress.
    """

    model_config = ConfigDict(extra="ignore")

    version: int = START_RECORD_VERSION
    id: str
    source: str
    kind: str
    type: str
    target: str
    started_at: str
    compression: str
    chunk_size: int
    host: str
    pid: int
    pid_start: int | None = None  # /proc/<pid>/stat field 22: tells a reused pid from the writer
    lease: str | None = None  # name of the lock (locks/<lease>.lock) the run held
    lease_token: str | None = None

    def canonical(self) -> bytes:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def parse_start_record(raw: bytes) -> StartRecord | None:
    """The start record, or None if it is unreadable (then the partial's owner is unknown)."""
    try:
        return StartRecord.model_validate(json.loads(raw))
    except (UnicodeDecodeError, ValueError, ValidationError):
        return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Parse and version-check a stored manifest."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IntegrityError(
            f"{where}: manifest is not valid JSON (corrupt); restore from another backup or replica"
        ) from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise FormatError(f"{where}: not a genesis-dr manifest; is this the right vault?")
    if data.get("version") not in READABLE_MANIFEST_VERSIONS:
        raise FormatError(
            f"{where}: manifest version {data.get('version')!r} is not supported (this genesis-dr reads version "
            f"{MANIFEST_VERSION}); upgrade genesis-dr"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise IntegrityError(
            f"{where}: manifest field {field!r} is invalid ({first['msg']}); the manifest is corrupt"
        ) from None
