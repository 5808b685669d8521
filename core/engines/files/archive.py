"""The backup side of the files engine: walk a tree, write a PAX tar, record checks.

Every entry is opened or read relative to its parent directory's fd with
``O_NOFOLLOW``, so nothing the tree does while we walk it (a directory swapped
for a symlink) makes us read outside the root. Symlinks are archived as they
are - their target is only a string, absolute, dangling or pointing anywhere;
safety belongs to extraction, which never writes through a link.
"""

from __future__ import annotations

import errno
import functools
import grp
import hashlib
import os
import pwd
import stat
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from core.engines.base import Writable
from core.engines.files.meta import (
    MAX_SPARSE_STORED,
    data_map,
    entry_path,
    read_xattrs,
    show_path,
    sparse_map_block,
    xattr_digests,
    xattr_records,
)
from core.engines.files.pathmatch import PathFilter
from core.engines.files.pax import BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, LNKTYPE, REGTYPE, SYMTYPE, Header, PaxWriter
from core.engines.files.tree import BaseTree, decode_xattrs, encode_xattrs
from core.errors import ConfigError, EngineError, SourceUnavailableError

# File read size: one read for most files, and never more than the archive writer's
# write size (the vault gets pieces, never whole files).
READ_CHUNK = 1 << 20
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if a fifo is swapped in after listing, opening it must not hang.
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_ZEROS = memoryview(bytes(READ_CHUNK))
# Files at least this large are hashed on the hasher's thread (smaller ones cost less
# to hash here than to hand over).
HASH_APART = 64 << 10
SKIP_FIELD = "skip_unarchivable"


def mode_text(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def special_check(st: os.stat_result) -> dict[str, Any]:
    """The check value of a fifo or device node."""
    mode = st.st_mode
    kind = "fifo" if stat.S_ISFIFO(mode) else "char" if stat.S_ISCHR(mode) else "block"
    value: dict[str, Any] = {"type": kind, "mode": mode_text(st), "mtime_ns": st.st_mtime_ns}
    if kind != "fifo":
        value["rdev"] = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return value


def is_special(mode: int) -> bool:
    """A fifo or a device node: archived as tar does (sockets cannot be)."""
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


@functools.lru_cache(maxsize=1024)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.lru_cache(maxsize=1024)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def index_entry(key: str, st: os.stat_result, kind: str, xattrs: dict[str, bytes] | None) -> dict[str, Any]:
    """The tree index entry of an entry (see ``core.engines.files.tree``), without its kind's extras."""
    entry: dict[str, Any] = {
        "path": key,
        "type": kind,
        "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "user": _user(st.st_uid),
        "group": _group(st.st_gid),
        "mtime_ns": st.st_mtime_ns,
    }
    if xattrs:
        entry["xattrs"] = encode_xattrs(xattrs)
    return entry


def _pax_time(ns: int) -> str:
    """Exact decimal seconds for a PAX header (``1700000000.123456789``)."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


def _header(rel: str, st: os.stat_result, kind: bytes, xattrs: dict[str, bytes] | None = None) -> Header:
    name = os.fsencode(rel) if rel else b"."
    if kind == DIRTYPE:
        name += b"/"
    header = Header(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        uname=_user(st.st_uid),
        gname=_group(st.st_gid),
        mtime=st.st_mtime_ns // 1_000_000_000,
    )
    if st.st_mtime_ns % 1_000_000_000:
        header.pax.append(("mtime", _pax_time(st.st_mtime_ns).encode()))
    if xattrs:
        header.pax.extend(xattr_records(xattrs))
    return header


class _Hasher:
    """Hashes large files on a thread of its own, in order, while the walk reads the next
    bytes: the walk's thread then only reads and copies. At most ``AHEAD`` updates (of up
    to ``READ_CHUNK`` bytes each) wait, so memory stays flat."""

    AHEAD = 2

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="files-hash")
        self._jobs: deque[Future] = deque()

    def submit(self, fn, *args) -> None:
        while len(self._jobs) >= self.AHEAD:
            self._jobs.popleft().result()
        self._jobs.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        while self._jobs:
            self._jobs.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _set_digest(entry: dict[str, Any], digest: Any) -> None:
    entry["sha256"] = digest.hexdigest()


class _Copy:
    """Copies a file's archived bytes into the archive, hashing the file's content on the way.

    The data ``segments`` are read with ``pread``; the digest covers the whole
    logical content, holes as zeros, so it matches a plain read of the
    restored file. The header already promised the size, so a file that
    shrank is padded with zeros rather than breaking the archive. With a
    ``hasher``, the digest is fed on its thread (in order).
    """

    def __init__(self, fd: int, rel: str, label: str, hasher: _Hasher | None = None) -> None:
        self.fd, self.rel, self.label = fd, rel, label
        self.digest = hashlib.sha256()
        self.shrank = False
        self._update = self.digest.update if hasher is None else lambda data: hasher.submit(self.digest.update, data)

    def _hash_zeros(self, n: int) -> None:
        while n:
            step = min(n, len(_ZEROS))
            self._update(_ZEROS[:step])
            n -= step

    def run(self, tar: PaxWriter, size: int, segments: list[tuple[int, int]]) -> None:
        hashed_to = 0  # logical offset the digest covers
        for offset, length in segments:
            self._hash_zeros(offset - hashed_to)
            pos, end = offset, offset + length
            while pos < end:
                want = min(READ_CHUNK, end - pos)
                data = b"" if self.shrank else self._read(want, pos)
                if len(data) < want:
                    self.shrank = True
                    data += bytes(want - len(data))
                self._update(data)
                tar.data(data)
                pos += want
            hashed_to = end
        self._hash_zeros(size - hashed_to)

    def _read(self, want: int, pos: int) -> bytes:
        try:
            return os.pread(self.fd, want, pos)
        except OSError as exc:
            raise EngineError(
                f"{self.label}: cannot read {show_path(self.rel)}: {exc.strerror}; fix the file or exclude it"
            ) from None


@dataclass
class _Frame:
    """One directory being walked: its fd, path and remaining child names."""

    fd: int
    rel: str
    included: bool
    names: list[str]
    index: int = 0


@dataclass
class Archiver:
    """Walks the tree and writes the tar; collects the checks as it goes.

    Anything that cannot be archived (a socket, an unreadable file or
    directory) fails the backup with the path and the remedy, unless
    ``skip_unarchivable``: then it is recorded in ``skipped``, which the
    backup reports.

    Every entry also goes into ``index`` (the tree index, ``core.engines.files.tree``).
    With a ``base`` (a differential or incremental backup) the archive holds only
    regular files whose content the chain does not hold yet; everything else is
    in the index only. A file the base has with the same inode, size, mtime and
    change time is not even opened; a changed one whose size some content of the
    base has is hashed first, and referenced instead of stored if the chain holds
    that content (a rename, a copy, a touch).
    """

    root: str
    pfilter: PathFilter
    label: str
    skip_unarchivable: bool = False
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirs: dict[str, dict[str, Any]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    specials: dict[str, dict[str, Any]] = field(default_factory=dict)
    xattrs: dict[str, dict[str, str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    changed: dict[str, str] = field(default_factory=dict)
    total_bytes: int = 0
    # Directories seen but not yet written: with include patterns a directory
    # is archived only once something below it is (or it matches itself).
    pending: list[tuple[str, os.stat_result, dict[str, bytes]]] = field(default_factory=list)
    inodes: dict[tuple[int, int], str] = field(default_factory=dict)
    sparse_names: int = 0
    tar: PaxWriter | None = None
    hasher: _Hasher | None = None
    base: BaseTree | None = None
    index: list[dict[str, Any]] = field(default_factory=list)
    _index_of: dict[str, dict[str, Any]] = field(default_factory=dict)
    stored_files: int = 0  # regular files whose content this archive holds

    def checks(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "specials": self.specials,
            "xattrs": self.xattrs,
            "counts": {
                "files": len(self.files),
                "dirs": len(self.dirs),
                "symlinks": len(self.symlinks),
                "bytes": self.total_bytes,
            },
            "skipped": self.skipped,
            "changed": self.changed,
        }

    def index_entries(self) -> list[dict[str, Any]]:
        """The tree index, complete once ``run`` returned (every digest is known then)."""
        for entry in self.index:
            if entry["type"] == "file":
                entry["sha256"] = self.files[entry["path"]]["sha256"]
        return self.index

    def _indexed(self, entry: dict[str, Any]) -> None:
        self.index.append(entry)
        self._index_of[entry["path"]] = entry

    def skipped_lines(self) -> list[str]:
        """One line per entry left out, for the manifest (in the clear)."""
        return [f"{show_path(rel)}: {why}" for rel, why in sorted(self.skipped.items())]

    def check_path(self, root_fd: int, path: str) -> None:
        """Fail early (SourceUnavailableError / ConfigError) if ``path`` cannot be archived."""
        parent_fd = self._open_parent(root_fd, path)
        try:
            if path:
                os.stat(path.rsplit("/", 1)[-1], dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            raise SourceUnavailableError(
                f"{self.label}: path {path!r} does not exist below {self.root}; create it or remove it from 'paths'"
            ) from None
        finally:
            os.close(parent_fd)

    def run(self, out: Writable, root_fd: int, paths: list[str]) -> None:
        """Write the whole archive into ``out``."""
        self.tar = PaxWriter(out)
        self.hasher = _Hasher()
        try:
            for path in paths:
                self._archive_path(root_fd, path)
            self.hasher.wait()  # every file's digest is in the checks
        finally:
            self.hasher.close()
        # Only a run that got here ends the archive: a failed one never looks complete.
        self.tar.close()

    # -- what cannot be archived -------------------------------------------------------

    def _cannot(self, rel: str, why: str, remedy: str) -> None:
        """Record ``rel`` as skipped if the stack allows it, else fail the backup."""
        if self.skip_unarchivable:
            self.skipped[rel] = why
            return
        raise EngineError(
            f"{self.label}: {show_path(rel)} {why}; {remedy}, or set {SKIP_FIELD}: true on the source "
            "to leave such entries out (each is then listed as skipped)"
        )

    def _unreadable(self, rel: str, exc: OSError) -> None:
        self._cannot(rel, f"cannot be read ({exc.strerror})", "fix its permissions or exclude it")

    def _open_failed(self, rel: str, exc: OSError, gone: tuple[int, ...] = _GONE) -> None:
        """An entry listed a moment ago that is gone or is no longer what it was is skipped
        and listed; any other error makes it unreadable."""
        if exc.errno in gone:
            self.skipped[rel] = "vanished or replaced during backup"
        else:
            self._unreadable(rel, exc)

    # -- walking ---------------------------------------------------------------------

    def _open_parent(self, root_fd: int, path: str) -> int:
        """fd of the directory holding ``path``; refuses symlinks on the way."""
        fd = os.dup(root_fd)
        parts = path.split("/")[:-1] if path else []
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                where = "/".join(parts[: i + 1])
                if exc.errno == errno.ENOENT:
                    raise SourceUnavailableError(
                        f"{self.label}: path {path!r} does not exist below {self.root} ({where!r} is missing); "
                        "create it or remove it from 'paths'"
                    ) from None
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ConfigError(
                        f"{self.label}: path {path!r} goes through {where!r}, which is not a plain directory "
                        "below root; list the real directory instead"
                    ) from None
                raise EngineError(
                    f"{self.label}: cannot read {where} (on the way to path {path!r}): {exc.strerror}; "
                    "fix its permissions or remove the path from 'paths'"
                ) from None
            os.close(fd)
            fd = nfd
        return fd

    def _archive_path(self, root_fd: int, path: str) -> None:
        try:
            if not path:
                frame = self._enter(os.dup(root_fd), "", self.pfilter.included("", True))
                if frame is not None:
                    self._walk(frame)
                return
            parts = path.split("/")
            # Ancestors of a configured path are held back like any directory
            # (written only if something below is) and subject to exclude.
            included = False
            fd = os.dup(root_fd)
            try:
                for i, part in enumerate(parts[:-1]):
                    rel = "/".join(parts[: i + 1])
                    try:
                        nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        if exc.errno not in _GONE:
                            self._unreadable(rel, exc)
                            return
                        self.skipped[path] = f"vanished during backup ({rel!r} is gone)"
                        return
                    os.close(fd)
                    fd = nfd
                    if self.pfilter.excluded(rel, True):
                        return
                    included = included or self.pfilter.included(rel, True)
                    self.pending.append((rel, os.fstat(fd), read_xattrs(fd)))
                try:
                    st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    self.skipped[path] = "vanished during backup"
                    return
                frame = self._entry(fd, parts[-1], path, st, included)
            finally:
                os.close(fd)
            if frame is not None:
                self._walk(frame)
        finally:
            self.pending.clear()

    def _walk(self, top: _Frame) -> None:
        """Depth-first, with an explicit stack: deep trees must not hit the recursion limit."""
        stack = [top]
        try:
            while stack:
                frame = stack[-1]
                if frame.index >= len(frame.names):
                    stack.pop()
                    os.close(frame.fd)
                    if self.pending and self.pending[-1][0] == frame.rel:
                        self.pending.pop()
                    continue
                name = frame.names[frame.index]
                frame.index += 1
                rel = f"{frame.rel}/{name}" if frame.rel else name
                try:
                    st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
                except FileNotFoundError:
                    self.skipped[rel] = "vanished during backup"
                    continue
                child = self._entry(frame.fd, name, rel, st, frame.included)
                if child is not None:
                    stack.append(child)
        finally:
            for frame in stack:
                os.close(frame.fd)

    def _entry(self, parent_fd: int, name: str, rel: str, st: os.stat_result, inherited: bool) -> _Frame | None:
        """Archive one entry of ``parent_fd``; a directory comes back as a frame to walk."""
        mode = st.st_mode
        is_dir = stat.S_ISDIR(mode)
        if self.pfilter.excluded(rel, is_dir):
            return None
        included = inherited or self.pfilter.included(rel, is_dir)
        if is_dir:
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
            except OSError as exc:
                self._open_failed(rel, exc)
                return None
            return self._enter(fd, rel, included)
        if not included:
            return None
        if stat.S_ISREG(mode):
            self._add_file(parent_fd, name, rel, st)
        elif stat.S_ISLNK(mode):
            self._add_symlink(parent_fd, name, rel, st)
        elif is_special(mode):
            self._add_special(parent_fd, name, rel, st)
        else:
            what = "a socket" if stat.S_ISSOCK(mode) else "a special file"
            self._cannot(rel, f"is {what}, which cannot be archived", f"exclude it (exclude: [{show_path(rel)!r}])")
        return None

    def _enter(self, fd: int, rel: str, included: bool) -> _Frame | None:
        """Start walking directory ``fd`` (taking ownership of it); None if it cannot be read."""
        try:
            st = os.fstat(fd)
            names = sorted(os.listdir(fd))
            xattrs = read_xattrs(fd)
        except OSError as exc:
            os.close(fd)
            if not rel:
                raise EngineError(
                    f"{self.label}: cannot read root {self.root}: {exc.strerror}; fix its permissions"
                ) from None
            self._unreadable(rel, exc)
            return None
        self.pending.append((rel, st, xattrs))
        if included:
            self._flush_pending()
        return _Frame(fd, rel, included, names)

    # -- writing -----------------------------------------------------------------------

    def _flush_pending(self) -> None:
        for rel, st, xattrs in self.pending:
            key = rel or "."
            if key in self.dirs:
                continue
            self._add_meta(_header(rel, st, DIRTYPE, xattrs))
            self.dirs[key] = {"mode": mode_text(st), "mtime_ns": st.st_mtime_ns}
            self._indexed(index_entry(key, st, "dir", xattrs))
            self._note_xattrs(key, xattrs)

    def _note_xattrs(self, key: str, xattrs: dict[str, bytes]) -> None:
        if xattrs:
            self.xattrs[key] = xattr_digests(xattrs)

    def _add(self, header: Header) -> None:
        assert self.tar is not None
        self.tar.member(header)

    def _add_meta(self, header: Header) -> None:
        """A member without content: on a base it lives in the tree index only."""
        if self.base is None:
            self._add(header)

    def _hard_link(self, rel: str, st: os.stat_result, section: dict[str, dict[str, Any]]) -> bool:
        """Archive ``rel`` as a hard link if its inode was archived before; True if it was."""
        key = (st.st_dev, st.st_ino)
        if st.st_nlink < 2:
            return False
        first = self.inodes.get(key)
        if first is None:
            self.inodes[key] = rel
            return False
        if self.hasher is not None:
            self.hasher.wait()  # the first name's digest, copied below
        header = _header(rel, st, LNKTYPE)
        header.linkname = os.fsencode(first)
        self._add_meta(header)
        section[rel] = {**section[first], "links_to": first}
        if first in self.xattrs:
            self.xattrs[rel] = self.xattrs[first]
        entry = {**self._index_of[first], "path": rel, "links_to": first}
        if entry["type"] == "file" and "at" not in entry:
            entry["at"] = first  # the member that holds the bytes has the first name
        self._indexed(entry)
        return True

    def _add_file(self, parent_fd: int, name: str, rel: str, lst: os.stat_result) -> None:
        if self.base is not None:
            same = self.base.unchanged(rel, lst)
            if same is not None:
                # Untouched since the base: neither opened nor read (its fields are the base's).
                self._flush_pending()
                if self._hard_link(rel, lst, self.files):
                    self.total_bytes += lst.st_size
                    return
                self._reuse(rel, same)
                return
        try:
            fd = os.open(name, FILE_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            self._open_failed(rel, exc)
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.skipped[rel] = "replaced during backup"
                return
            self._flush_pending()
            if self._hard_link(rel, st, self.files):
                self.total_bytes += st.st_size
                return
            xattrs = read_xattrs(fd)
            entry = index_entry(rel, st, "file", xattrs)
            entry.update(size=st.st_size, sha256="", ino=st.st_ino, ctime_ns=st.st_ctime_ns)
            if self.base is not None:
                digest = self._chain_content(fd, st, rel)
                if digest is not None:
                    if st.st_size:
                        entry["in"], entry["at"] = self.base.known[digest]
                        if entry["at"] == rel:
                            del entry["at"]
                    self._file_done(rel, st, xattrs, entry, digest)
                    return
            self._store(fd, st, rel, xattrs, entry)
        finally:
            os.close(fd)

    def _reuse(self, rel: str, same: dict[str, Any]) -> None:
        """A file unchanged since the base: its entry, with the content where the chain has it."""
        entry = {k: v for k, v in same.items() if k != "links_to"}
        if entry.get("at") == rel:
            del entry["at"]
        if not entry["size"]:
            entry.pop("in", None)
            entry.pop("at", None)
        xattrs = decode_xattrs(entry.get("xattrs"))
        self._indexed(entry)
        self.files[rel] = {
            "sha256": entry["sha256"],
            "size": entry["size"],
            "mode": f"{entry['mode']:04o}",
            "mtime_ns": entry["mtime_ns"],
        }
        self._note_xattrs(rel, xattrs)
        self.total_bytes += entry["size"]

    def _chain_content(self, fd: int, st: os.stat_result, rel: str) -> str | None:
        """The digest of a changed file whose content the chain already holds, else None (store it).

        Only a size some content of the base has can match, so only those files are read twice
        (hashed here, then archived if the content is new)."""
        assert self.base is not None
        if not st.st_size:
            return hashlib.sha256().hexdigest()
        if st.st_size not in self.base.sizes:
            return None
        digest = hashlib.sha256()
        pos = 0
        while pos < st.st_size:
            try:
                data = os.pread(fd, min(READ_CHUNK, st.st_size - pos), pos)
            except OSError as exc:
                raise EngineError(
                    f"{self.label}: cannot read {show_path(rel)}: {exc.strerror}; fix the file or exclude it"
                ) from None
            if not data:
                return None  # shrank meanwhile: archive it as read
            digest.update(data)
            pos += len(data)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return None  # written meanwhile: archive it as read
        found = digest.hexdigest()
        return found if found in self.base.known else None

    def _file_done(
        self, rel: str, st: os.stat_result, xattrs: dict[str, bytes], entry: dict[str, Any], digest: str
    ) -> None:
        self._indexed(entry)
        self.files[rel] = {"sha256": digest, "size": st.st_size, "mode": mode_text(st), "mtime_ns": st.st_mtime_ns}
        self._note_xattrs(rel, xattrs)
        self.total_bytes += st.st_size

    def _store(self, fd: int, st: os.stat_result, rel: str, xattrs: dict[str, bytes], index: dict[str, Any]) -> None:
        """Archive the file's content (its member holds its bytes)."""
        header = _header(rel, st, REGTYPE, xattrs)
        segments = data_map(fd, st.st_size) if st.st_blocks * 512 < st.st_size else None
        prefix = b""
        if segments is not None:
            prefix = sparse_map_block(segments)
            stored = len(prefix) + sum(length for _, length in segments)
            if stored > MAX_SPARSE_STORED:
                segments, prefix = None, b""
        if segments is None:
            header.size = st.st_size
            segments = [(0, st.st_size)]
        else:
            self._make_sparse(header, rel, st.st_size, stored)
        self._add(header)
        self.stored_files += 1
        assert self.tar is not None
        if prefix:
            self.tar.data(prefix)
        apart = st.st_size >= HASH_APART
        copy = _Copy(fd, rel, self.label, self.hasher if apart else None)
        copy.run(self.tar, st.st_size, segments)
        self._note_changes(fd, st, copy, rel)
        entry: dict[str, Any] = {
            "sha256": "",
            "size": st.st_size,
            "mode": mode_text(st),
            "mtime_ns": st.st_mtime_ns,
        }
        if apart:
            assert self.hasher is not None
            self.hasher.submit(_set_digest, entry, copy.digest)
        else:
            _set_digest(entry, copy.digest)
        self.files[rel] = entry
        self._indexed(index)
        self._note_xattrs(rel, xattrs)
        self.total_bytes += st.st_size

    def _make_sparse(self, header: Header, rel: str, size: int, stored: int) -> None:
        """Turn ``header`` into a GNU PAX sparse 1.0 member (see core.engines.files.meta)."""
        # The header name is only what a reader without sparse support extracts
        # (GNU tar does the same); GNU.sparse.name is the real one. Short on purpose:
        # a long one would become a PAX "path" record, which tarfile applies last.
        self.sparse_names += 1
        header.name = b"GNUSparseFile.0/%d" % self.sparse_names
        header.size = stored
        header.pax += [
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", os.fsencode(rel)),
            ("GNU.sparse.realsize", b"%d" % size),
        ]

    def _note_changes(self, fd: int, before: os.stat_result, reader: _Copy, rel: str) -> None:
        after = os.fstat(fd)
        if reader.shrank:
            self.changed[rel] = "shrank while read; archived padded with zeros to its original size"
        elif after.st_size > before.st_size:
            self.changed[rel] = "grew while read; archived up to its size when opened"
        elif after.st_mtime_ns != before.st_mtime_ns:
            self.changed[rel] = "modified while read; archived as read"

    def _add_symlink(self, parent_fd: int, name: str, rel: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(name, dir_fd=parent_fd)
            xattrs = read_xattrs(entry_path(parent_fd, name))
        except OSError as exc:
            self._open_failed(rel, exc, gone=(errno.ENOENT, errno.EINVAL))
            return
        self._flush_pending()
        header = _header(rel, st, SYMTYPE, xattrs)
        header.linkname = os.fsencode(target)
        self._add_meta(header)
        self.symlinks[rel] = target
        self._indexed({**index_entry(rel, st, "symlink", xattrs), "target": target})
        self._note_xattrs(rel, xattrs)

    def _add_special(self, parent_fd: int, name: str, rel: str, st: os.stat_result) -> None:
        """A fifo or device node, as tar archives it (type, mode, device numbers)."""
        try:
            xattrs = read_xattrs(entry_path(parent_fd, name))
        except OSError as exc:
            self._open_failed(rel, exc)
            return
        self._flush_pending()
        if self._hard_link(rel, st, self.specials):
            return
        mode = st.st_mode
        kind = FIFOTYPE if stat.S_ISFIFO(mode) else CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE
        header = _header(rel, st, kind, xattrs)
        if kind != FIFOTYPE:
            header.devmajor, header.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        self._add_meta(header)
        check = special_check(st)
        self.specials[rel] = check
        entry = index_entry(rel, st, check["type"], xattrs)
        if "rdev" in check:
            entry["rdev"] = check["rdev"]
        self._indexed(entry)
        self._note_xattrs(rel, xattrs)
