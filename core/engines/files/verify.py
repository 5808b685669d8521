"""Files backups checked on their plaintext: a listing of the tar, streamed from the vault.

``files.tar`` / ``changes.tar`` are read member by member with the reader the
restore uses (``pax.PaxReader``: every header's checksum, PAX records, sparse
maps), every member's data is read to its end, and the archive must end with
its two zero blocks (readers accept an archive that stops after a member, so
only this check tells a cut-short tar whose cut fell between members). The
members are then matched with the tree index (``tree.jsonl``): every file
whose content this backup stores is a member of that size, and no regular
member is missing from the index.
"""

from __future__ import annotations

from core.engines.files.chain import FULL_STREAM
from core.engines.files.pax import BLOCK, ArchiveFormatError, PaxReader
from core.engines.files.tree import CHANGES_STREAM, TREE_STREAM, content_ref, read_index
from core.errors import DRError
from core.validation.results import CheckResult
from core.validation.tools import ToolFailed, guarded

CHECK = "tar listing"


class _Counted:
    """The stream's pieces, counting the bytes handed out (where the reader stands = handed - unread)."""

    def __init__(self, pieces) -> None:
        self._pieces, self.handed, self.done = iter(pieces), 0, False

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        try:
            piece = next(self._pieces)
        except StopIteration:
            self.done = True
            raise
        self.handed += len(piece)
        return piece


class _ListingReader(PaxReader):
    def unread(self) -> memoryview:
        """What the reader has taken from the stream but not consumed (after the end marker: the rest)."""
        return self._view


def verify_backup(reader) -> list[CheckResult]:
    names = reader.stream_names()
    members: dict[str, int] = {}
    results = []
    for name in (FULL_STREAM, CHANGES_STREAM):
        if name in names:
            results.append(guarded(CHECK, name, lambda n=name: _listing(reader, n, members)))
    if TREE_STREAM in names and all(r.passed for r in results):
        results.append(guarded("tree index", TREE_STREAM, lambda: _index(reader, members)))
    return results


def _listing(reader, name: str, members: dict[str, int]) -> str:
    pieces = _Counted(reader.iter_stream(name))
    tar = _ListingReader(pieces)
    count = data = 0
    try:
        while (member := tar.next()) is not None:
            count += 1
            for piece in tar.data():
                data += len(piece)
            if member.isreg() and not member.islnk():
                members[member.name] = member.size
        rest = len(tar.unread())
        zeros = not any(tar.unread())
        for piece in pieces:  # the end marker's second block and the padding to the record
            rest += len(piece)
            zeros = zeros and not any(piece)
    except ArchiveFormatError as exc:
        raise ToolFailed(f"not a valid tar after {count} members: {exc}") from None
    # An end marker read leaves at least its second zero block unread; an archive that simply stops leaves nothing.
    if rest < BLOCK:
        raise ToolFailed(f"no end-of-archive blocks after member {count}: the archive is cut short")
    if not zeros:
        raise ToolFailed(f"data after the end-of-archive blocks (after member {count})")
    return f"{count} members, {data} bytes of data, every header valid, end-of-archive blocks present"


def _index(reader, members: dict[str, int]) -> str:
    backup_id = reader.manifest.id
    try:
        index = read_index(reader, backup_id, "tree index")
    except DRError as exc:
        raise ToolFailed(str(exc).split(": ", 1)[-1].split(";")[0]) from None
    stored = 0
    for entry in index.entries:
        if entry.get("type") != "file" or not entry.get("size") or entry.get("links_to"):
            continue
        owner, at = content_ref(entry, backup_id)
        if owner != backup_id:
            continue  # stored by an earlier backup of the chain
        if at not in members:
            raise ToolFailed(f"{entry['path']} is in the index but not in the archive")
        if members[at] != entry["size"]:
            raise ToolFailed(f"{entry['path']} is {members[at]} bytes in the archive, {entry['size']} in the index")
        stored += 1
    return f"{len(index.entries)} entries, the {stored} files stored here match the archive"
