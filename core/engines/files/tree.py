"""The tree index of a files backup, and what a backup on a base needs from its base's index.

Every files backup since issue 8 writes a stream ``tree.jsonl`` beside its
archive: one JSON line per entry of the tree at the backup's moment (walk
order: parents before children), after a header line. It describes the whole
tree, so a differential or incremental backup, which stores only the content
that changed (``changes.tar``), restores exactly: the restore makes what the
last index lists, and takes each file's content from the backup the index
names (``in``) at the archive member it names (``at``).

Header: ``{"format": "genesis-dr-tree", "version": 1, "entries": N, "base": <base backup id or null>,
"walk_started_ns": <the walk's start, ns since the epoch>}``.

Entry (absent keys: see each):

- ``path``: relative to the root (``.`` is the root), file-system bytes decoded
  with surrogateescape, as ``os`` functions take them (JSON escapes them);
- ``type``: ``file``, ``dir``, ``symlink``, ``fifo``, ``char``, ``block``;
- ``mode`` (permission bits with set-id and sticky bits, an integer), ``uid``,
  ``gid``, ``user``, ``group`` (names, "" when unknown), ``mtime_ns``;
- ``xattrs``: ``{name: base64 value}`` (absent: none);
- symlink: ``target``; char/block: ``rdev`` ``"major:minor"``;
- file: ``size``, ``sha256`` (of the logical content, holes as zeros),
  ``ino`` and ``ctime_ns`` (what the next backup compares), ``in`` (the id of
  the backup whose content stream holds the bytes; absent: this backup) and
  ``at`` (the member name there; absent: ``path``). A file of size 0 needs no
  content;
- ``links_to``: for a second name of an inode (a hard link), the first name in
  this index (the entry repeats that one's fields).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from core.engines.base import BaseBackup, StreamSource, Writable
from core.errors import EngineError, IntegrityError

TREE_STREAM = "tree.jsonl"
# The content stream of a differential or incremental: a PAX tar of the files whose content
# the chain did not hold yet (same member format as files.tar; names are the paths then).
CHANGES_STREAM = "changes.tar"
FORMAT = "genesis-dr-tree"
VERSION = 1
# ensure_ascii keeps names that are not UTF-8 (lone surrogates) as \udcXX escapes: lossless.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
_BATCH = 4096  # entries per write (a few hundred bytes each)
# A file whose change time is this close to (or after) the start of the walk that recorded it
# may have changed again within the same timestamp tick after it was read ("racy git"): the
# next backup hashes it even if its stat fields are the same. File systems stamp times from a
# coarse clock (a few ms; FAT: 2 s), so 2 s covers every local one.
RACY_NS = 2_000_000_000


def encode_xattrs(xattrs: dict[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode("ascii") for k, v in xattrs.items()}


def decode_xattrs(encoded: dict[str, str] | None) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (encoded or {}).items()}


def write_index(out: Writable, base_id: str | None, walk_started_ns: int, entries: list[dict[str, Any]]) -> None:
    """The index stream: the header line, then one line per entry, in writes of about 1 MiB."""
    header = {
        "format": FORMAT,
        "version": VERSION,
        "entries": len(entries),
        "base": base_id,
        "walk_started_ns": walk_started_ns,
    }
    out.write(_ENCODER.encode(header).encode("ascii") + b"\n")
    for start in range(0, len(entries), _BATCH):
        lines = "\n".join(map(_ENCODER.encode, entries[start : start + _BATCH]))
        out.write(lines.encode("ascii") + b"\n")


def _lines(pieces: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for piece in pieces:
        data = rest + bytes(piece)
        *whole, rest = data.split(b"\n")
        yield from whole
    if rest:
        yield rest


@dataclass
class TreeIndex:
    """One backup's index, read back whole (metadata only: a few hundred bytes per entry)."""

    backup_id: str
    base: str | None
    walk_started_ns: int
    entries: list[dict[str, Any]]


def has_index(source: StreamSource) -> bool:
    return TREE_STREAM in source.stream_names()


def read_index(source: StreamSource, backup_id: str, label: str) -> TreeIndex:
    """The index of backup ``backup_id``; IntegrityError (naming it) if it is not one we read."""
    if not has_index(source):
        raise EngineError(
            f"{label}: backup {backup_id} has no tree index (it was taken before incremental backups existed); "
            "take a full backup first, then differential and incremental backups on it"
        )
    lines = _lines(source.iter_stream(TREE_STREAM))
    try:
        header = json.loads(next(lines))
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise IntegrityError(
                f"{label}: tree index of backup {backup_id} is format {header.get('format')!r} version "
                f"{header.get('version')!r}, which this genesis-dr cannot read; restore with a newer genesis-dr"
            )
        entries = [json.loads(line) for line in lines]
    except (StopIteration, ValueError, AttributeError):
        raise IntegrityError(f"{label}: tree index of backup {backup_id} is not valid; the backup is damaged") from None
    if len(entries) != header.get("entries"):
        raise IntegrityError(
            f"{label}: tree index of backup {backup_id} lists {len(entries)} entries, its header "
            f"{header.get('entries')}; the backup is damaged"
        )
    return TreeIndex(backup_id, header.get("base"), int(header.get("walk_started_ns") or 0), entries)


def content_ref(entry: dict[str, Any], owner: str) -> tuple[str, str]:
    """(backup id, member name) where a file entry's bytes are stored; ``owner`` is the id of the
    backup whose index holds the entry (what an absent ``in`` means)."""
    return entry.get("in") or owner, entry.get("at", entry["path"])


@dataclass
class BaseTree:
    """The base's index as a backup on it uses it: what is unchanged, and what content the chain holds.

    ``known`` maps a content digest to where the chain stores it; only content a file of
    the base's tree has is known (content deleted before the base was taken is stored again).
    """

    id: str
    trusted_before: int = 0  # stat fields of entries changed at or after this (ns) are not trusted
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    known: dict[str, tuple[str, str]] = field(default_factory=dict)
    sizes: set[int] = field(default_factory=set)

    @classmethod
    def of(cls, base: BaseBackup, label: str) -> BaseTree:
        if not has_index(base.reader):
            return cls._of_checks(base, label)
        index = read_index(base.reader, base.id, label)
        tree = cls(base.id, index.walk_started_ns - RACY_NS)
        return tree._add(index.entries)

    @classmethod
    def _of_checks(cls, base: BaseBackup, label: str) -> BaseTree:
        """A full taken before tree indexes: its sealed checks list every regular file (digest,
        size, mtime) and ``files.tar`` holds each under its path (a hard link's bytes under its
        first name). Without inode and change time nothing is trusted unchanged: every file is
        hashed once, and referenced if the full has its content."""
        checks = base.result.checks or getattr(getattr(base.reader, "result", None), "checks", None) or {}
        files = checks.get("files")
        if base.type != "full" or not isinstance(files, dict):
            read_index(base.reader, base.id, label)  # raises the one-line error naming the backup
        entries = [
            {
                "path": rel,
                "type": "file",
                "size": value["size"],
                "sha256": value["sha256"],
                "mtime_ns": value["mtime_ns"],
                "at": value.get("links_to", rel),
            }
            for rel, value in files.items()
        ]
        return cls(base.id, 0)._add(entries)

    def _add(self, entries: list[dict[str, Any]]) -> BaseTree:
        for entry in entries:
            if entry.get("type") != "file":
                continue
            where = content_ref(entry, self.id)
            entry["in"], entry["at"] = where
            self.files[entry["path"]] = entry
            if entry["size"]:
                self.known.setdefault(entry["sha256"], where)
                self.sizes.add(entry["size"])
        return self

    def unchanged(self, rel: str, st: os.stat_result) -> dict[str, Any] | None:
        """The base's entry for ``rel`` if it is the same regular file, untouched since (same inode,
        size, mtime and change time: a write, chmod, chown, xattr change or rename moves the change
        time, recorded well before the walk that recorded it started); None if the content must be
        looked at."""
        entry = self.files.get(rel)
        if entry is None or "ino" not in entry or not stat.S_ISREG(st.st_mode):
            return None
        if max(entry.get("ctime_ns", 0), entry["mtime_ns"]) >= self.trusted_before:
            return None  # racy: recorded within a timestamp tick of its read
        same = (entry.get("ino"), entry["size"], entry["mtime_ns"], entry.get("ctime_ns")) == (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )
        return entry if same else None
