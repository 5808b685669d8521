"""Restore a chain of files backups (a full, then a differential and incrementals) to one of its points.

The last backup's tree index (``core.engines.files.tree``) is the whole tree at
that point; the restore makes exactly that:

1. every directory, symlink, fifo, device node and empty file of the index,
   in index order (parents first), with the index's metadata;
2. the files with content, backup by backup in chain order: each backup's
   content stream (``files.tar`` of the full, ``changes.tar`` of the others) is
   read once, front to back, and each member some index entry names (``in`` =
   that backup, ``at`` = the member) is written at the entry's path with the
   entry's metadata (mode, owner, mtime, xattrs: the member's own header may
   be older, after a chmod or a touch). Content several paths share (a copy)
   is read from the stream once and copied from the first restored file.
   A stream is left as soon as nothing more is needed from it; a backup no
   entry names is not read at all;
3. hard links (``links_to``), then directory attributes, deepest first.

Nothing is held in memory but the index (metadata); file content streams
through ``SafeExtractor`` as in a single restore, with the same safety (no
name escapes the target, nothing is written through a symlink).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from core.engines.files.archive import READ_CHUNK
from core.engines.files.meta import data_map, show_path
from core.engines.files.pax import (
    BLKTYPE,
    CHRTYPE,
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    REGTYPE,
    SYMTYPE,
    ArchiveFormatError,
    Member,
    PaxReader,
)
from core.engines.files.tarsafe import SafeExtractor
from core.engines.files.tree import CHANGES_STREAM, TreeIndex, content_ref, decode_xattrs
from core.errors import IntegrityError

FULL_STREAM = "files.tar"
_TYPES = {"file": REGTYPE, "dir": DIRTYPE, "symlink": SYMTYPE, "fifo": FIFOTYPE, "char": CHRTYPE, "block": BLKTYPE}


def member_of(entry: dict[str, Any], label: str, backup_id: str) -> Member:
    """An archive member carrying an index entry's metadata (what SafeExtractor writes)."""
    try:
        return _member_of(entry)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # The index is authenticated: a bad entry is a bug or a foreign writer, never a tree to guess at.
        raise IntegrityError(
            f"{label}: the tree index of backup {backup_id} has a malformed entry ({type(exc).__name__}: {exc}); "
            "restore another point"
        ) from None


def _member_of(entry: dict[str, Any]) -> Member:
    kind = _TYPES[entry["type"]]
    if kind == REGTYPE and not (isinstance(entry["size"], int) and isinstance(entry["sha256"], str)):
        raise ValueError(f"file {entry['path']!r} without a valid size or sha256")
    major = minor = 0
    if "rdev" in entry:
        major, minor = (int(n) for n in entry["rdev"].split(":"))
    return Member(
        name=entry["path"],
        type=LNKTYPE if "links_to" in entry else kind,
        mode=entry["mode"],
        uid=entry["uid"],
        gid=entry["gid"],
        uname=entry.get("user", ""),
        gname=entry.get("group", ""),
        size=entry.get("size", 0) if kind == REGTYPE else 0,
        mtime_ns=entry["mtime_ns"],
        linkname=entry.get("links_to") or entry.get("target", ""),
        devmajor=major,
        devminor=minor,
        xattrs=decode_xattrs(entry.get("xattrs")),
    )


class _NoData:
    """The data of an empty file."""

    def data(self) -> Iterator[bytes]:
        return iter(())


class _LocalCopy:
    """The data of a file this restore already wrote (content several paths share), read back
    segment by segment (holes stay holes)."""

    def __init__(self, fd: int, segments: list[tuple[int, int]]) -> None:
        self.fd, self.segments = fd, segments

    def data(self) -> Iterator[bytes]:
        for offset, length in self.segments:
            pos, end = offset, offset + length
            while pos < end:
                piece = os.pread(self.fd, min(READ_CHUNK, end - pos), pos)
                if not piece:
                    raise IntegrityError("a restored file shrank while it was copied")
                yield piece
                pos += len(piece)


@dataclass
class ChainRestore:
    """One chain restore into ``extractor``'s directory (see the module doc)."""

    label: str
    extractor: SafeExtractor
    index: TreeIndex
    readers: list[Any]  # the full's reader, then the layers', in chain order
    progress: Callable[[str], None] | None = None
    entries_made: int = 0
    streams_read: list[str] = field(default_factory=list)

    def run(self) -> None:
        final = self.index.backup_id
        ids = [r.manifest.id for r in self.readers]
        wanted: dict[str, dict[str, list[dict[str, Any]]]] = {}
        links: list[dict[str, Any]] = []
        for entry in self.index.entries:
            member_of(entry, self.label, final)  # every entry is valid before anything is written
        for entry in self.index.entries:
            if "links_to" in entry:
                links.append(entry)
            elif entry["type"] == "file" and entry["size"]:
                owner, at = content_ref(entry, final)
                wanted.setdefault(owner, {}).setdefault(at, []).append(entry)
            else:
                self._make(entry, _NoData(), None)
        missing = sorted(set(wanted) - set(ids))
        if missing:
            raise IntegrityError(
                f"{self.label}: the tree index of backup {final} takes content from backup {missing[0]}, "
                f"which is not in the chain being restored ({', '.join(ids)}); restore with a plan that includes it"
            )
        for reader in self.readers:
            needed = wanted.pop(reader.manifest.id, None)
            if needed:
                self._read_content(reader, needed)
        for entry in links:
            self._make(entry, _NoData(), None)
        self.extractor.drain()

    def _make(self, entry: dict[str, Any], data: Any, stored: Member | None) -> None:
        member = member_of(entry, self.label, self.index.backup_id)
        if stored is not None:
            if stored.size != member.size:
                raise IntegrityError(
                    f"{self.label}: {show_path(entry['path'])} is {member.size} bytes in the tree index but its "
                    f"stored content is {stored.size}; the backup is damaged"
                )
            member.sparse, member.stored = stored.sparse, stored.stored
        elif isinstance(data, _LocalCopy):
            dense = data.segments == [(0, member.size)]
            member.sparse = None if dense else data.segments
        self.extractor.extract_member(data, member)
        self.entries_made += 1

    def _read_content(self, reader: Any, needed: dict[str, list[dict[str, Any]]]) -> None:
        backup_id = reader.manifest.id
        name = CHANGES_STREAM if CHANGES_STREAM in reader.stream_names() else FULL_STREAM
        if self.progress is not None:
            self.progress(f"reading {sum(map(len, needed.values()))} files' content from {name} of backup {backup_id}")
        self.streams_read.append(f"{backup_id}/{name}")
        copies: list[tuple[str, list[dict[str, Any]]]] = []

        def pieces() -> Iterator[bytes]:
            yield from reader.iter_stream(name)

        with closing(pieces()) as stream:
            tar = PaxReader(stream)
            try:
                while needed and (member := tar.next()) is not None:
                    if not member.isreg():
                        continue
                    entries = needed.pop(member.name, None)
                    if entries is None:
                        continue
                    self._make(entries[0], tar, member)
                    if len(entries) > 1:
                        copies.append((entries[0]["path"], entries[1:]))
            except ArchiveFormatError as exc:
                raise IntegrityError(
                    f"{self.label}: stream {name} of backup {backup_id} is not a readable tar archive ({exc}); "
                    "the backup is damaged, restore another point"
                ) from None
        if needed:
            at = sorted(needed)[0]
            raise IntegrityError(
                f"{self.label}: stream {name} of backup {backup_id} lacks {show_path(at)}, which the tree index "
                f"of backup {self.index.backup_id} takes from it ({len(needed)} members missing); "
                "the chain is damaged, restore another point"
            )
        for source, entries in copies:
            fd = self.extractor.open_written(source)
            try:
                size = os.fstat(fd).st_size
                segments = data_map(fd, size) or [(0, size)]
                for entry in entries:
                    self._make(entry, _LocalCopy(fd, segments), None)
                self.extractor.drain()  # the writers read fd: keep it open until they are done
            finally:
                os.close(fd)
