"""The object index of a bucket backup (``index.jsonl``), and which keys a source covers.

Every bucket backup writes its index: a header line, then one JSON line per object the
bucket held under the prefix at the backup's listing (key order), then one line per key
deleted since the base. It describes the whole bucket at that moment, so a backup on a
base (which stores only objects new or changed since it) restores exactly: the restore
writes what the last index lists, taking each object's bytes from the backup it names.

Header: ``{"format": "genesis-dr-bucket-index", "version": 1, "provider", "bucket",
"prefix", "base": <base backup id or null>, "listed_at": <ISO UTC>, "objects": N, "deleted": D}``.

Object line (keys sorted): ``key`` (relative to the prefix), ``size``, ``sha256``,
``etag`` (S3 ETag / GCS etag), ``generation`` and ``metageneration`` (GCS),
``version_id`` (S3, versioned buckets), ``last_modified`` (ISO UTC), ``meta``
(``content_type``, ``content_encoding``, ``cache_control``, ``content_disposition``,
``content_language``, ``metadata``: user metadata; empty ones absent), ``stream`` and
``offset`` (the data stream holding the bytes and where they start; absent for an empty
object), ``in`` (the backup whose data stream that is; absent: this backup).

Deleted line: ``{"key": ..., "deleted": true}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from core.engines.base import StreamSource, Writable
from core.engines.files.pathmatch import PathFilter
from core.errors import EngineError, IntegrityError

INDEX_STREAM = "index.jsonl"
DATA_PREFIX = "data-"
FORMAT = "genesis-dr-bucket-index"
VERSION = 1
_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
_BATCH = 4096


def data_stream(n: int) -> str:
    return f"{DATA_PREFIX}{n:04d}"


def write_index(out: Writable, header: dict[str, Any], entries: list[dict[str, Any]], deleted: list[str]) -> None:
    head = {"format": FORMAT, "version": VERSION, **header, "objects": len(entries), "deleted": len(deleted)}
    out.write(_ENCODER.encode(head).encode("ascii") + b"\n")
    lines = [*entries, *({"key": k, "deleted": True} for k in deleted)]
    for start in range(0, len(lines), _BATCH):
        out.write(("\n".join(map(_ENCODER.encode, lines[start : start + _BATCH])) + "\n").encode("ascii"))


def _lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for piece in pieces:
        *whole, rest = (rest + bytes(piece)).split(b"\n")
        yield from whole
    if rest:
        yield rest


@dataclass
class BucketIndex:
    backup_id: str
    header: dict[str, Any]
    entries: list[dict[str, Any]]  # objects, key order
    deleted: list[str]

    def by_key(self) -> dict[str, dict[str, Any]]:
        """Objects by key, each with ``in`` filled in (the backup holding its bytes)."""
        out = {}
        for entry in self.entries:
            entry = dict(entry)
            if entry.get("size"):
                entry.setdefault("in", self.backup_id)
            out[entry["key"]] = entry
        return out


def read_index(source: StreamSource, backup_id: str, label: str) -> BucketIndex:
    """The index of backup ``backup_id``; IntegrityError naming it if it is not one we read."""
    if INDEX_STREAM not in source.stream_names():
        raise EngineError(f"{label}: backup {backup_id} has no object index; it is not a bucket backup")
    lines = _lines(source.iter_stream(INDEX_STREAM))
    try:
        header = json.loads(next(lines))
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise IntegrityError(
                f"{label}: object index of backup {backup_id} is format {header.get('format')!r} version "
                f"{header.get('version')!r}, which this genesis-dr cannot read; restore with a newer genesis-dr"
            )
        entries, deleted = [], []
        for line in lines:
            item = json.loads(line)
            if item.get("deleted") is True:
                deleted.append(item["key"])
                continue
            if not (isinstance(item.get("key"), str) and isinstance(item.get("size"), int)):
                raise ValueError("entry without key or size")
            if item["size"] and not (isinstance(item.get("stream"), str) and isinstance(item.get("offset"), int)):
                raise ValueError("entry without its stream and offset")
            if not isinstance(item.get("sha256"), str):
                raise ValueError("entry without sha256")
            entries.append(item)
    except (StopIteration, ValueError, AttributeError, KeyError, TypeError):
        raise IntegrityError(
            f"{label}: object index of backup {backup_id} is not valid; the backup is damaged"
        ) from None
    if len(entries) != header.get("objects") or len(deleted) != header.get("deleted"):
        raise IntegrityError(
            f"{label}: object index of backup {backup_id} lists {len(entries)} objects and {len(deleted)} deletions, "
            f"its header {header.get('objects')} and {header.get('deleted')}; the backup is damaged"
        )
    return BucketIndex(backup_id, header, entries, deleted)


class Selection:
    """Which keys (relative to the prefix) a source covers: its include/exclude globs, as the files engine reads
    them, with ``/`` as the separator (a pattern matching a 'folder' covers everything below it)."""

    def __init__(self, include: list[str], exclude: list[str]) -> None:
        self.include, self.exclude = list(include), list(exclude)
        self._filter = PathFilter(include, exclude) if include or exclude else None

    def covers(self, rel: str) -> bool:
        if self._filter is None:
            return True
        parts = rel.split("/")
        folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
        if any(self._filter.excluded(f, True) for f in folders) or self._filter.excluded(rel, False):
            return False
        if not self._filter.has_include:
            return True
        return any(self._filter.included(f, True) for f in folders) or self._filter.included(rel, False)

    def to_dict(self) -> dict[str, list[str]]:
        return {"include": self.include, "exclude": self.exclude}
