"""What the vault holds, as the retention planner sees it: backups, log pieces, sources.

``read_catalog`` is the only part that reads the vault; everything else works on the
``Catalog`` value, which round-trips through JSON so the planner's golden tests
are plain files. Reading never needs a key: manifests and piece records are in the
clear (their MACs are checked by restores, not here: retention must also see and
remove what no key opens any more).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.repository.manifest import COMPLETED
from core.repository.streams import chunk_key
from core.storage.base import ObjectNotFound

if TYPE_CHECKING:
    from core.repository.vault import Vault
    from core.stack import StackConfig

DELETING = "DELETING"
DELETING_PREFIX = "retention/deleting/"


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class BackupItem:
    id: str
    source: str
    kind: str
    type: str
    status: str  # COMPLETED FAILED CORRUPT ABANDONED IN_PROGRESS DELETING
    started_at: datetime
    ended_at: datetime | None
    chain: str | None  # the full this backup builds on (its own id for a full)
    parent: str | None
    log_pieces: tuple[int, int] | None  # manifest.log["pieces"]: the log range a backup on a log base stands for
    stored_bytes: int
    storage_class: str | None
    archived_to: str | None  # "vault:<name>" when its data was moved to an archive vault
    labels: dict = field(default_factory=dict)
    # The backup's consistency position (log_start of a full tells where its replay begins).
    position: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.status == COMPLETED and self.labels.get("purpose") != "rollback"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["started_at"] = _iso(self.started_at)
        data["ended_at"] = _iso(self.ended_at)
        data["log_pieces"] = list(self.log_pieces) if self.log_pieces else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> BackupItem:
        data = dict(data)
        data["started_at"] = _time(data["started_at"])
        data["ended_at"] = _time(data.get("ended_at"))
        pieces = data.get("log_pieces")
        data["log_pieces"] = (int(pieces[0]), int(pieces[1])) if pieces else None
        for name, default in (("chain", None), ("parent", None), ("stored_bytes", 0), ("storage_class", None)):
            data.setdefault(name, default)
        data.setdefault("archived_to", None)
        return cls(**data)


@dataclass(frozen=True)
class PieceItem:
    source: str
    seq: int
    first_time: datetime
    last_time: datetime
    key_id: str
    stored_bytes: int
    partial: bool
    start: dict = field(default_factory=dict)  # positions in the kind's format ({} when unknown)
    end: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self) | {"first_time": _iso(self.first_time), "last_time": _iso(self.last_time)}

    @classmethod
    def from_dict(cls, data: dict) -> PieceItem:
        data = dict(data)
        data["first_time"] = _time(data["first_time"])
        data["last_time"] = _time(data["last_time"])
        data.setdefault("partial", False)
        data.setdefault("stored_bytes", 0)
        return cls(**data)


@dataclass(frozen=True)
class SourceInfo:
    name: str
    kind: str
    data_classes: tuple[str, ...] = ()


@dataclass
class Catalog:
    backups: list[BackupItem]
    pieces: list[PieceItem]
    sources: dict[str, SourceInfo]

    def to_dict(self) -> dict:
        return {
            "sources": {
                name: {"kind": info.kind, "data_classes": list(info.data_classes)}
                for name, info in sorted(self.sources.items())
            },
            "backups": [b.to_dict() for b in self.backups],
            "pieces": [p.to_dict() for p in self.pieces],
        }

    @classmethod
    def from_dict(cls, data: dict) -> Catalog:
        return cls(
            backups=[BackupItem.from_dict(b) for b in data.get("backups", [])],
            pieces=[PieceItem.from_dict(p) for p in data.get("pieces", [])],
            sources={
                name: SourceInfo(name, info["kind"], tuple(info.get("data_classes", ())))
                for name, info in data.get("sources", {}).items()
            },
        )

    def classes_of(self, source: str) -> list[str]:
        info = self.sources.get(source)
        return list(info.data_classes) if info else []


def _backup_item(vault: Vault, entry: Any, deleting: set[str], kinds: dict[str, str]) -> BackupItem:
    manifest, start = entry.manifest, entry.start
    listing = set(vault.store.children(f"backups/{entry.id}/"))
    archived_to = None
    if "archived.json" in listing:
        try:
            record = json.loads(vault.store.get(f"backups/{entry.id}/archived.json"))
            archived_to = f"vault:{record['vault']}"
        except (ObjectNotFound, ValueError, KeyError, TypeError):
            archived_to = "vault:?"  # unreadable: still not on the primary, so never archive it again
    status = DELETING if entry.id in deleting else entry.state
    if manifest is not None:
        storage_class = None
        if manifest.streams and "streams" in listing:
            info = vault.store.stat(chunk_key(entry.id, manifest.streams[0].name, 0))
            storage_class = info.storage_class if info else None
        pieces = (manifest.log or {}).get("pieces")
        return BackupItem(
            id=manifest.id,
            source=manifest.source,
            kind=manifest.kind,
            type=manifest.type,
            status=status,
            started_at=_time(manifest.started_at),
            ended_at=_time(manifest.ended_at),
            chain=manifest.chain,
            parent=manifest.parent,
            log_pieces=(int(pieces[0]), int(pieces[1])) if pieces else None,
            stored_bytes=manifest.stored_bytes,
            storage_class=storage_class,
            archived_to=archived_to,
            labels=dict(manifest.labels),
            position=dict(manifest.position),
        )
    source = entry.source or "?"
    when = _time(start.started_at) if start else None
    if when is None:
        stamp = entry.id[7:22] if entry.id.startswith("backup_") else ""
        try:
            when = datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
        except ValueError:
            when = datetime(1970, 1, 1, tzinfo=UTC)
    return BackupItem(
        id=entry.id,
        source=source,
        kind=(start.kind if start else None) or kinds.get(source, "files"),
        type=(start.type if start else None) or "full",
        status=status,
        started_at=when,
        ended_at=None,
        chain=None,
        parent=None,
        log_pieces=None,
        stored_bytes=0,
        storage_class=None,
        archived_to=archived_to,
        labels={},
        position={},
    )


def read_catalog(vault: Vault, config: StackConfig) -> Catalog:
    """The stack's sources and every backup and log piece in the vault (sources the stack no longer
    lists too: their backups still expire)."""
    kinds = {src.name: src.kind for src in config.sources}
    deleting = {name.removesuffix(".json") for name in vault.store.children(DELETING_PREFIX) if name.endswith(".json")}
    backups = [_backup_item(vault, entry, deleting, kinds) for entry in vault.entries()]
    pieces: list[PieceItem] = []
    piece_kinds: dict[str, str] = {}
    for source in vault.store.children("logs/"):
        for record in vault.log_pieces(source):
            piece_kinds.setdefault(source, record.kind)
            pieces.append(
                PieceItem(
                    source=record.source,
                    seq=record.seq,
                    first_time=_time(record.first_time),
                    last_time=_time(record.last_time),
                    key_id=record.key_id,
                    stored_bytes=record.stream.stored_bytes,
                    partial=record.partial,
                    start=dict(record.start),
                    end=dict(record.end),
                )
            )
    sources = {
        src.name: SourceInfo(src.name, src.kind, tuple(getattr(src, "data_classes", ()) or ()))
        for src in config.sources
    }
    for item in backups:
        if item.source not in sources and item.source != "?":
            sources[item.source] = SourceInfo(item.source, item.kind)
    for source, kind in piece_kinds.items():
        sources.setdefault(source, SourceInfo(source, kind))
    backups.sort(key=lambda b: (b.started_at, b.id))
    pieces.sort(key=lambda p: (p.source, p.seq))
    return Catalog(backups=backups, pieces=pieces, sources=sources)
