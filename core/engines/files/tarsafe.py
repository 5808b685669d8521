"""Extract a tar stream into one directory without ever touching anything outside it.

A stream (``r|``) cannot be inspected before extraction, so safety is enforced
member by member, before the member writes anything:

- names must be relative with no ``..`` component; member types we never
  write are refused;
- a symlink is created exactly as archived - its target is only a string
  (absolute, dangling or pointing anywhere) and is never resolved. What makes
  links safe is that nothing is ever written *through* one:
- every path is opened component by component from a directory descriptor
  with ``O_NOFOLLOW`` (``openat``), so no symlink - from the archive or already
  in the target - is ever followed while writing. A member that would be
  written through a symlink this archive created is refused; a pre-existing
  symlink or file where the archive has a directory is replaced;
- a hard link must point to a file, fifo or device extracted earlier from the
  same archive, and is made with ``linkat`` without following;
- files are created fresh (``O_EXCL`` after unlinking what was there), so an
  existing hard link to a file elsewhere is never written through; attributes
  of links, fifos and devices are set without following (``*at`` calls with
  ``AT_SYMLINK_NOFOLLOW``, or ``/proc/self/fd/<dir>/<name>`` for xattrs).

When a member is refused the extraction stops with ``UnsafeArchiveError``:
members before it have been written (inside the directory only); nothing after
it is. Fifos and device nodes are created as tar does (devices only as root).

Holes of sparse members are kept (data segments written at their offsets, the
file truncated to its size). Extended attributes (``SCHILY.xattr.*``, POSIX
ACLs included) are set after the mode, because a chown clears file
capabilities. Directory modes, owners, xattrs and mtimes are applied after all
members, deepest first, so writing the contents neither fails on read-only
directories nor bumps their mtimes. Whatever cannot be restored exactly (an
xattr the target file system refuses, a device node without root) becomes a
line in ``notes``; a file being written when an error strikes is removed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import hashlib
import os
import pwd
import shutil
import stat
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn

from core.engines.files.meta import KEEP_TARGET_XATTRS, entry_path, read_xattrs, show_path
from core.engines.files.pax import BLKTYPE, CHRTYPE, FIFOTYPE, REGULAR, ArchiveFormatError, Member, PaxReader
from core.errors import UnsafeArchiveError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_SPECIAL = (FIFOTYPE, CHRTYPE, BLKTYPE)
# An xattr the target refuses is a note (and a verification failure), not a crash.
_XATTR_REFUSED = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.E2BIG, errno.ERANGE)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Regular files of one directory are written by a few threads at once: creating and
# filling a file is kernel work (inode, directory entry, page cache) that one thread
# would do one file at a time, while this thread parses the next members. A small
# file's data (views of the stream's chunks) is held until written, up to this many
# bytes in all, and goes to a writer in a batch (one hand-over per batch, not per
# file). A larger file is written here, each piece hashed on another thread while it
# is written, so hashing and writing overlap without holding more of the stream.
WRITERS = 2
WRITE_AHEAD_BYTES = 4 << 20
BATCH_FILES, BATCH_BYTES = 32, 1 << 20


@dataclass
class _Job:
    """A batch of small files handed to a writer; the future gives (written, notes, error)."""

    future: Future
    items: list[tuple[str, Member]]


@dataclass(frozen=True, slots=True)
class Written:
    """A regular file as this extraction left it: the SHA-256 of the bytes written, and the
    identity and change time that prove nothing touched it since (``FilesEngine.collect_checks``
    uses the digest only while they match)."""

    sha256: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    def matches(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (
            self.dev,
            self.ino,
            self.size,
            self.mtime_ns,
            self.ctime_ns,
        )


def split_member_name(name: str) -> list[str] | None:
    """Components of a safe relative member name, or None if it is unsafe.

    ``.`` and empty components are dropped (``./a//b`` is ``a/b``); an empty
    list is the extraction directory itself.
    """
    if not name or name.startswith("/") or "\0" in name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return parts


@dataclass
class _DirAttrs:
    parts: list[str]
    member: Member


class SafeExtractor:
    """Extracts the members of one tar stream below ``dest``.

    Args:
        dest: Existing target directory (the trust anchor; it may itself be a symlink).
        label: Names the source in error messages, e.g. "files 'app-files'".
        set_owner: Restore uid/gid (by name first, like tar); only root can.
    """

    def __init__(self, dest: str, label: str, set_owner: bool) -> None:
        self.dest = os.path.abspath(dest)
        self.real_dest = os.path.realpath(self.dest)
        self.label = label
        self.set_owner = set_owner
        self._root_fd = os.open(self.dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._dirs: list[_DirAttrs] = []
        # Members a hard link may point to (files, fifos, devices), and symlinks made.
        self._files: set[str] = set()
        self._links: set[str] = set()
        # Every path the archive wrote (members and their ancestors), for a mirror.
        self.written: set[str] = {""}
        self.notes: list[str] = []
        self.current = ""  # the member being extracted, for error messages
        self.owners_not_set = 0  # entries whose archived owner this process could not give them
        # Regular files hashed while they were written: the restore's verification uses
        # these instead of reading the files again, as long as they are unchanged since.
        self.digests: dict[str, Written] = {}
        # The parent directory of the last member, kept open: most members share it.
        self._parent_key: tuple[str, ...] | None = None
        self._parent_fd = -1
        # Files being written by the pool: all in the parent directory above, distinct names.
        self._pool: ThreadPoolExecutor | None = None
        self._hash_pool: ThreadPoolExecutor | None = None
        self._jobs: deque[_Job] = deque()
        self._batch: list[tuple[str, str, Member, list]] = []
        self._batch_bytes = 0
        self._pending: set[str] = set()  # names in the batch or in a job
        self._pending_bytes = 0
        self._count_lock = threading.Lock()

    @property
    def archived_dirs(self) -> set[str]:
        """Directories the archive held (``""`` is the target itself)."""
        return {"/".join(d.parts) for d in self._dirs}

    def close(self) -> None:
        # Nothing may write into the target once the caller moves on (to clean it up).
        self._drain(quiet=True)
        for pool in (self._pool, self._hash_pool):
            if pool is not None:
                pool.shutdown()
        self._pool = self._hash_pool = None
        self._drop_parent()
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> SafeExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entry point -----------------------------------------------------------------

    def extract_all(self, reader: PaxReader, finish: bool = True) -> int:
        """Extract every member ``reader`` yields; returns the member count.

        With ``finish=False`` the caller calls ``finish()`` itself (after changing
        the tree further: directory mtimes are set last)."""
        count = 0
        while (member := reader.next()) is not None:
            self.extract_member(reader, member)
            count += 1
        self._drain()
        if finish:
            self.finish()
        return count

    def extract_member(self, reader: PaxReader, member: Member) -> None:
        """Validate one member, then write it (refusing before any write)."""
        parts = split_member_name(member.name)
        self.current = member.name
        if parts is None:
            self._refuse(member, "absolute path or '..' component escapes the target")
        if not parts:
            if not member.isdir():
                self._refuse(member, "names the target directory itself but is not a directory")
            self._dirs.append(_DirAttrs(parts, member))
            return
        rel = "/".join(parts)
        if member.issym():
            if not member.linkname or "\0" in member.linkname:
                self._refuse(member, f"symlink to empty target {member.linkname!r}")
        elif member.islnk():
            link_parts = split_member_name(member.linkname)
            if not link_parts or "/".join(link_parts) not in self._files:
                self._refuse(member, f"hard link to {member.linkname!r}, which is not a file earlier in this archive")
        elif not (member.isdir() or member.type in REGULAR or member.type in _SPECIAL):
            self._refuse(member, f"unsupported member type {member.type!r}")

        key = tuple(parts[:-1])
        dense = member.type in REGULAR and member.sparse is None
        if (self._jobs or self._batch) and (not dense or key != self._parent_key or rel in self._pending):
            self._drain()
        kept = "/".join(self._parent_key) if self._parent_key is not None else None
        if kept is not None and (rel == kept or kept.startswith(rel + "/")):
            self._drop_parent()  # this member replaces the kept directory (or one above it)
        parent_fd = self._open_parent(member, parts)
        self.current = member.name
        for i in range(1, len(parts) + 1):
            self.written.add("/".join(parts[:i]))
        # Whatever was at this path before is gone after this member.
        self._files.discard(rel)
        self._links.discard(rel)
        self.digests.pop(rel, None)
        name = parts[-1]
        if dense:
            self._files.add(rel)
            if member.size > WRITE_AHEAD_BYTES:
                self._write_large(parent_fd, name, rel, member, reader)
            else:
                self._submit(parent_fd, name, rel, member, list(reader.data()))
            return
        if member.isdir():
            self._make_dir(parent_fd, name)
            self._dirs.append(_DirAttrs(parts, member))
        elif member.issym():
            self._remove_existing(parent_fd, name)
            os.symlink(member.linkname, name, dir_fd=parent_fd)
            self._links.add(rel)
            self._set_owner(member, name=name, dir_fd=parent_fd)
            self._set_xattrs(member, entry_path(parent_fd, name))
            os.utime(name, ns=self._times(member), dir_fd=parent_fd, follow_symlinks=False)
        elif member.islnk():
            self._remove_existing(parent_fd, name)
            self._hard_link(member, parent_fd, name)
            self._files.add(rel)
        elif member.type in _SPECIAL:
            self._remove_existing(parent_fd, name)
            if self._make_special(member, parent_fd, name):
                self._files.add(rel)
        else:
            self._remove_existing(parent_fd, name)
            self._write_sparse_file(reader, member, parent_fd, name)
            self._files.add(rel)

    # -- regular files, written by the pool ----------------------------------------------

    def _submit(self, dir_fd: int, name: str, rel: str, member: Member, pieces: list) -> None:
        """A small file: into the current batch, which a writer takes whole."""
        while self._pending_bytes + member.size > WRITE_AHEAD_BYTES and (self._jobs or self._batch):
            if self._batch:
                self._flush_batch()
            else:
                self._collect()
        self._batch.append((name, rel, member, pieces))
        self._batch_bytes += member.size
        self._pending.add(rel)
        self._pending_bytes += member.size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._flush_batch()

    def _flush_batch(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        assert self._parent_key is not None
        # The kept parent descriptor is shared: it is closed only after the jobs are drained.
        future = self._writers().submit(self._write_batch, self._parent_fd, batch)
        self._jobs.append(_Job(future, [(rel, member) for _, rel, member, _ in batch]))

    def _write_batch(self, dir_fd: int, batch: list) -> tuple[list[Written], list[str], BaseException | None]:
        """Write the files of a batch in order; stops at the first failure (returned, not raised,
        so the files written before it are still recorded)."""
        done: list[Written] = []
        notes: list[str] = []
        for name, _, member, pieces in batch:
            try:
                done.append(self._write_file(dir_fd, name, member, pieces, notes))
            except BaseException as exc:
                return done, notes, exc
        return done, notes, None

    def _write_large(self, dir_fd: int, name: str, rel: str, member: Member, reader: PaxReader) -> None:
        """A large file, written here; each piece is hashed on the hasher's thread meanwhile."""
        if self._hash_pool is None:
            self._hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-hash")
        self._store_written(rel, self._write_file(dir_fd, name, member, reader.data(), self.notes, self._hash_pool))

    def _writers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="restore-write")
        return self._pool

    def _collect(self) -> None:
        """Wait for the oldest file job; its error (a full disk) is raised here, naming its member."""
        job = self._jobs.popleft()
        for rel, member in job.items:
            self._pending.discard(rel)
            self._pending_bytes -= member.size
        done, notes, error = job.future.result()
        for (rel, _), written in zip(job.items, done, strict=False):
            self._store_written(rel, written)
        self.notes.extend(notes)
        if error is not None:
            self.current = job.items[len(done)][1].name
            raise error

    def _drain(self, quiet: bool = False) -> None:
        """Wait for every file job; the first error is raised after all have ended."""
        if self._batch:
            self._flush_batch()
        error: BaseException | None = None
        current = self.current
        while self._jobs:
            try:
                self._collect()
            except BaseException as exc:
                if error is None:
                    error, current = exc, self.current
        self.current = current  # the member of the first error, for its message
        if error is not None and not quiet:
            raise error

    def drain(self) -> None:
        """Wait until every file handed to the writers is on disk (errors raised here)."""
        self._drain()

    def open_written(self, rel: str) -> int:
        """A read-only fd of regular file ``rel`` this extraction wrote (nothing followed on the way)."""
        parts = split_member_name(rel)
        if not parts:
            raise ValueError(f"not a file name: {rel!r}")
        self._drain()
        dir_fd = self._walk(parts[:-1], create=False)
        try:
            return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def _store_written(self, rel: str, written: Written) -> None:
        self.digests[rel] = written

    def finish(self) -> None:
        """Apply directory attributes, deepest first."""
        self._drain()
        self._drop_parent()
        for entry in sorted(self._dirs, key=lambda d: len(d.parts), reverse=True):
            self._apply_dir_attrs(entry)

    # -- validation ------------------------------------------------------------------

    def _refuse(self, member: Member, why: str) -> NoReturn:
        raise UnsafeArchiveError(
            f"{self.label}: archive member {member.name!r} is unsafe ({why}); archive refused, "
            f"nothing was written outside {self.dest}"
        )

    # -- filesystem, always relative to a directory fd, never following symlinks --------

    def _walk(self, parts: list[str], create: bool, member: Member | None = None) -> int:
        """Open directory ``parts`` below dest without following any symlink.

        With ``create``, missing directories are made and a pre-existing file or
        symlink in the way is replaced (the archive wins) - unless that symlink
        came from this archive, which is the classic escape and is refused.
        """
        fd = os.dup(self._root_fd)
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if not create or exc.errno not in _GONE:
                        raise
                    if exc.errno != errno.ENOENT:
                        rel = "/".join(parts[: i + 1])
                        if rel in self._links and member is not None:
                            self._refuse(member, f"would be written through the symlink {rel!r} of this archive")
                        os.unlink(part, dir_fd=fd)
                    os.mkdir(part, 0o700, dir_fd=fd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_parent(self, member: Member, parts: list[str]) -> int:
        """The member's parent directory, created if missing; kept open for the next member."""
        key = tuple(parts[:-1])
        if key != self._parent_key:
            fd = self._walk(parts[:-1], create=True, member=member)
            self._drop_parent()
            self._parent_key, self._parent_fd = key, fd
        return self._parent_fd

    def _drop_parent(self) -> None:
        if self._parent_fd >= 0:
            os.close(self._parent_fd)
        self._parent_key, self._parent_fd = None, -1

    def _existing(self, dir_fd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _remove_existing(self, dir_fd: int, name: str) -> None:
        st = self._existing(dir_fd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            os.unlink(name, dir_fd=dir_fd)

    def _make_dir(self, dir_fd: int, name: str) -> None:
        st = self._existing(dir_fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return
        if st is not None:
            os.unlink(name, dir_fd=dir_fd)
        # Owner-only until finish() applies the archived mode: nobody else can
        # slip files in meanwhile, and read-only directories stay writable for us.
        os.mkdir(name, 0o700, dir_fd=dir_fd)

    def _create(self, dir_fd: int, name: str) -> int:
        """A new file ``name`` (``O_EXCL``: never an existing one, never through a link);
        whatever was there (a file, a link, a directory tree) is removed first."""
        try:
            return os.open(name, _CREATE, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            self._remove_existing(dir_fd, name)
            return os.open(name, _CREATE, 0o600, dir_fd=dir_fd)

    def _write_file(
        self, dir_fd: int, name: str, member: Member, pieces, notes: list[str], hasher: ThreadPoolExecutor | None = None
    ) -> Written:
        """Write a dense regular file from ``pieces`` (straight from the stream's chunks: one
        write for most files), hashed on the way so verification need not read it again
        (on ``hasher``'s thread, piece by piece, while the piece is written)."""
        fd = self._create(dir_fd, name)
        try:
            digest = hashlib.sha256()
            for piece in pieces:
                if hasher is None:
                    digest.update(piece)
                    _write_all(fd, piece, None)
                    continue
                hashed = hasher.submit(digest.update, piece)
                try:
                    _write_all(fd, piece, None)
                finally:
                    hashed.result()
            self._finish_file(fd, member, notes)
            st = os.fstat(fd)
            return Written(digest.hexdigest(), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except BaseException:
            # Never leave a partial file behind (a full disk, a damaged stream).
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)

    def _finish_file(self, fd: int, member: Member, notes: list[str]) -> None:
        # chown first: it clears set-uid/set-gid bits that chmod then restores,
        # and file capabilities, which the xattrs then restore.
        self._set_owner(member, fd=fd)
        os.fchmod(fd, member.mode & 0o7777)
        self._set_xattrs(member, fd, notes)
        os.utime(fd, ns=self._times(member))

    def _write_sparse_file(self, reader: PaxReader, member: Member, dir_fd: int, name: str) -> None:
        fd = os.open(name, _CREATE, 0o600, dir_fd=dir_fd)
        try:
            self._write_sparse(reader, member, fd)
            self._finish_file(fd, member, self.notes)
        except BaseException:
            # Never leave a partial file behind (a full disk, a damaged stream).
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)

    def _write_sparse(self, reader: PaxReader, member: Member, fd: int) -> None:
        """Write only the data segments at their offsets; holes stay holes."""
        # The segments follow the map back to back (the reader parsed the map).
        assert member.sparse is not None
        segments = iter(member.sparse)
        pos, remaining = 0, 0
        for piece in reader.data():
            view = memoryview(piece)
            while view:
                while not remaining:
                    try:
                        pos, remaining = next(segments)
                    except StopIteration:
                        raise ArchiveFormatError(f"sparse member {member.name!r} has data beyond its map") from None
                take = view[:remaining]
                _write_all(fd, take, pos)
                pos += len(take)
                remaining -= len(take)
                view = view[len(take) :]
        if remaining or any(length for _, length in segments):
            raise ArchiveFormatError(f"unexpected end of data in sparse member {member.name!r}")
        os.ftruncate(fd, member.size)

    def _make_special(self, member: Member, dir_fd: int, name: str) -> bool:
        """Create a fifo or device node as tar does; False (and a note) if this process cannot."""
        perm = member.mode & 0o7777
        if member.type == FIFOTYPE:
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
        else:
            kind = stat.S_IFCHR if member.type == CHRTYPE else stat.S_IFBLK
            try:
                os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=dir_fd)
            except PermissionError:
                self.notes.append(f"{show_path(member.name)}: device node not restored (creating one needs root)")
                return False
        self._set_owner(member, name=name, dir_fd=dir_fd)
        try:
            os.chmod(name, perm, dir_fd=dir_fd, follow_symlinks=False)
        except NotImplementedError:  # old libc: we just made it, and it is not a link
            os.chmod(name, perm, dir_fd=dir_fd)
        self._set_xattrs(member, entry_path(dir_fd, name))
        os.utime(name, ns=self._times(member), dir_fd=dir_fd, follow_symlinks=False)
        return True

    def _set_xattrs(self, member: Member, target: int | str, notes: list[str] | None = None) -> None:
        """Set the member's extended attributes on an fd, or on a path without following it."""
        follow = not isinstance(target, str)
        for key, value in sorted(member.xattrs.items()):
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in _XATTR_REFUSED:
                    raise
                (self.notes if notes is None else notes).append(
                    f"{show_path(member.name)}: extended attribute {key} not restored ({exc.strerror})"
                )

    def _hard_link(self, member: Member, dir_fd: int, name: str) -> None:
        src = split_member_name(member.linkname) or []
        try:
            src_fd = self._walk(src[:-1], create=False)
        except OSError as exc:
            self._refuse(member, f"hard link source {member.linkname!r} is no longer reachable: {exc.strerror}")
        try:
            os.link(src[-1], name, src_dir_fd=src_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        finally:
            os.close(src_fd)

    def _apply_dir_attrs(self, entry: _DirAttrs) -> None:
        try:
            fd = self._walk(entry.parts, create=False)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            # A later member replaced this directory; its attributes no longer apply.
            return
        self.current = entry.member.name
        try:
            self._set_owner(entry.member, fd=fd)
            os.fchmod(fd, entry.member.mode & 0o7777)
            # An existing directory (restore in place) may carry attributes the backup
            # lacks, e.g. a default ACL new files would inherit: a mirror drops them.
            keep = entry.member.xattrs
            for name in read_xattrs(fd):
                if name not in keep and name not in KEEP_TARGET_XATTRS:
                    with contextlib.suppress(OSError):
                        os.removexattr(fd, name)
            self._set_xattrs(entry.member, fd)
            os.utime(fd, ns=self._times(entry.member))
        finally:
            os.close(fd)

    def _times(self, member: Member) -> tuple[int, int]:
        return (member.mtime_ns, member.mtime_ns)

    def _set_owner(
        self, member: Member, fd: int | None = None, name: str | None = None, dir_fd: int | None = None
    ) -> None:
        if not self.set_owner:
            if (member.uid, member.gid) != (os.geteuid(), os.getegid()):
                with self._count_lock:  # file jobs count from the pool's threads
                    self.owners_not_set += 1
            return
        uid, gid = _lookup_uid(member.uname, member.uid), _lookup_gid(member.gname, member.gid)
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def _write_all(fd: int, data: bytes, offset: int | None) -> None:
    """Write all of ``data`` (at ``offset`` if given), looping over short writes."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


@functools.lru_cache(maxsize=1024)
def _lookup_uid(name: str, fallback: int) -> int:
    # Names first, like tar: the same account may have another uid on the new host.
    try:
        return pwd.getpwnam(name).pw_uid if name else fallback
    except KeyError:
        return fallback


@functools.lru_cache(maxsize=1024)
def _lookup_gid(name: str, fallback: int) -> int:
    try:
        return grp.getgrnam(name).gr_gid if name else fallback
    except KeyError:
        return fallback
