"""Bucket backups checked on their plaintext: the object index against the data streams.

``index.jsonl`` must parse (``index.read_index``: header, every line, the
header's counts); the objects whose bytes this backup stores must tile each
``data-*`` stream exactly (offsets in order, no gap, no overlap, nothing after
the last), and each object's bytes, cut out of the stream as it is read, must
have the SHA-256 the index records. Objects stored by an earlier backup
(``in``) are that backup's to check.
"""

from __future__ import annotations

import hashlib

from core.engines.bucket.index import DATA_PREFIX, INDEX_STREAM, read_index
from core.errors import DRError
from core.validation.results import CheckResult
from core.validation.tools import ToolFailed, guarded


def verify_backup(reader) -> list[CheckResult]:
    names = reader.stream_names()
    if INDEX_STREAM not in names:
        return [
            CheckResult(
                name="object index",
                passed=False,
                detail=f"the backup has no {INDEX_STREAM}",
                remedy="the backup is incomplete; restore from another backup",
            )
        ]
    holder: dict = {}
    results = [guarded("object index", INDEX_STREAM, lambda: _index(reader, holder))]
    if "layout" not in holder:
        return results
    layout: dict[str, list[tuple[int, int, str, str]]] = holder["layout"]
    for name in names:
        if name.startswith(DATA_PREFIX):
            results.append(guarded("object data", name, lambda n=name: _data(reader, n, layout.pop(n, []))))
    if layout:
        stream = sorted(layout)[0]
        results.append(
            CheckResult(
                name="object index",
                passed=False,
                detail=f"{INDEX_STREAM}: objects are stored in {stream}, which the backup does not hold",
                remedy="the backup is incomplete; restore from another backup",
            )
        )
    return results


def _index(reader, holder: dict) -> str:
    backup_id = reader.manifest.id
    try:
        index = read_index(reader, backup_id, "object index")
    except DRError as exc:
        raise ToolFailed(str(exc).split(": ", 1)[-1].split(";")[0]) from None
    layout: dict[str, list[tuple[int, int, str, str]]] = {}
    here = 0
    for entry in index.entries:
        if not entry.get("size") or entry.get("in", backup_id) != backup_id:
            continue
        layout.setdefault(entry["stream"], []).append((entry["offset"], entry["size"], entry["sha256"], entry["key"]))
        here += 1
    for spans in layout.values():
        spans.sort()
    holder["layout"] = layout
    return f"{len(index.entries)} objects, {here} stored in this backup, {len(index.deleted)} deletions"


def _data(reader, name: str, spans: list[tuple[int, int, str, str]]) -> str:
    """Cut each object out of the stream as it passes and hash it; the spans must tile the stream."""
    pos = 0  # stream offset of the next byte
    current = 0  # index of the span being hashed
    fresh = True  # no byte of the current span hashed yet
    digest = hashlib.sha256()
    for piece in reader.iter_stream(name):
        view = memoryview(piece)
        while view:
            if current >= len(spans):
                raise ToolFailed(f"bytes from offset {pos} on belong to no object of the index")
            offset, size, sha, key = spans[current]
            if fresh and pos != offset:
                where = f"a gap before {key!r}" if pos < offset else f"{key!r} overlaps the object before it"
                raise ToolFailed(f"the index does not tile the stream at byte {pos}: {where}")
            take = min(len(view), offset + size - pos)
            digest.update(view[:take])
            view, pos, fresh = view[take:], pos + take, False
            if pos == offset + size:
                if digest.hexdigest() != sha:
                    raise ToolFailed(
                        f"object {key!r} (bytes {offset}..{pos}) does not have the SHA-256 the index records"
                    )
                digest, current, fresh = hashlib.sha256(), current + 1, True
    if current < len(spans):
        offset, size, _, key = spans[current]
        raise ToolFailed(f"the stream ends at byte {pos}, before object {key!r} ({offset}..{offset + size}) ends")
    return f"{len(spans)} objects, {pos} bytes, each object's SHA-256 matches the index"
