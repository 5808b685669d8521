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
import os
import pwd
import shutil
import stat
import tarfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import BinaryIO, NoReturn

from core.engines.files_meta import KEEP_TARGET_XATTRS, entry_path, member_xattrs, read_xattrs, show_path
from core.errors import UnsafeArchiveError

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_SPECIAL = (tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE)
# An xattr the target refuses is a note (and a verification failure), not a crash.
_XATTR_REFUSED = (errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.E2BIG, errno.ERANGE)


def member_mtime_ns(member: tarfile.TarInfo) -> int:
    """Exact mtime in ns: the PAX text when present (tarfile's float loses ns)."""
    text = member.pax_headers.get("mtime")
    if text is not None:
        try:
            return int(Decimal(text).scaleb(9))
        except InvalidOperation:
            pass
    return int(member.mtime) * 1_000_000_000


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
    member: tarfile.TarInfo


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

    @property
    def archived_dirs(self) -> set[str]:
        """Directories the archive held (``""`` is the target itself)."""
        return {"/".join(d.parts) for d in self._dirs}

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> SafeExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entry point -----------------------------------------------------------------

    def extract_all(self, tar: tarfile.TarFile, finish: bool = True) -> int:
        """Extract every member of ``tar`` (opened ``r|``); returns the member count.

        With ``finish=False`` the caller calls ``finish()`` itself (after changing
        the tree further: directory mtimes are set last)."""
        count = 0
        while (member := tar.next()) is not None:
            self.extract_member(tar, member)
            count += 1
            # Stream mode keeps every TarInfo in ``members``; drop them so memory
            # stays flat however many files the archive holds.
            tar.members.clear()
        if finish:
            self.finish()
        return count

    def extract_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
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
        elif not (member.isdir() or member.type in _REGULAR or member.type in _SPECIAL):
            self._refuse(member, f"unsupported member type {member.type!r}")

        parent_fd = self._open_parent(member, parts)
        for i in range(1, len(parts) + 1):
            self.written.add("/".join(parts[:i]))
        # Whatever was at this path before is gone after this member.
        self._files.discard(rel)
        self._links.discard(rel)
        try:
            name = parts[-1]
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
                self._write_file(tar, member, parent_fd, name)
                self._files.add(rel)
        finally:
            os.close(parent_fd)

    def finish(self) -> None:
        """Apply directory attributes, deepest first."""
        for entry in sorted(self._dirs, key=lambda d: len(d.parts), reverse=True):
            self._apply_dir_attrs(entry)

    # -- validation ------------------------------------------------------------------

    def _refuse(self, member: tarfile.TarInfo, why: str) -> NoReturn:
        raise UnsafeArchiveError(
            f"{self.label}: archive member {member.name!r} is unsafe ({why}); archive refused, "
            f"nothing was written outside {self.dest}"
        )

    # -- filesystem, always relative to a directory fd, never following symlinks --------

    def _walk(self, parts: list[str], create: bool, member: tarfile.TarInfo | None = None) -> int:
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

    def _open_parent(self, member: tarfile.TarInfo, parts: list[str]) -> int:
        return self._walk(parts[:-1], create=True, member=member)

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

    def _write_file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, dir_fd: int, name: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        try:
            if member.sparse is not None:
                self._write_sparse(tar, member, fd)
            else:
                data: BinaryIO | None = tar.extractfile(member)
                if data is not None:
                    while chunk := data.read(_CHUNK):
                        _write_all(fd, chunk, None)
            # chown first: it clears set-uid/set-gid bits that chmod then restores,
            # and file capabilities, which the xattrs then restore.
            self._set_owner(member, fd=fd)
            os.fchmod(fd, member.mode & 0o7777)
            self._set_xattrs(member, fd)
            os.utime(fd, ns=self._times(member))
        except BaseException:
            # Never leave a partial file behind (a full disk, a damaged stream).
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
        finally:
            os.close(fd)

    def _write_sparse(self, tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
        """Write only the data segments at their offsets; holes stay holes."""
        # The segments follow the map back to back; tarfile parsed the map and left
        # its reader at their start (offset_data). Read them raw: extractfile would
        # hand out the holes as zeros, and seeking it needs a seekable stream.
        stream = tar.fileobj
        assert stream is not None and member.sparse is not None
        stream.seek(member.offset_data)
        for offset, length in member.sparse:
            pos, remaining = offset, length
            while remaining:
                chunk = stream.read(min(_CHUNK, remaining))
                if not chunk:
                    raise tarfile.ReadError(f"unexpected end of data in sparse member {member.name!r}")
                _write_all(fd, chunk, pos)
                pos += len(chunk)
                remaining -= len(chunk)
        os.ftruncate(fd, member.size)

    def _make_special(self, member: tarfile.TarInfo, dir_fd: int, name: str) -> bool:
        """Create a fifo or device node as tar does; False (and a note) if this process cannot."""
        perm = member.mode & 0o7777
        if member.type == tarfile.FIFOTYPE:
            os.mkfifo(name, 0o600, dir_fd=dir_fd)
        else:
            kind = stat.S_IFCHR if member.type == tarfile.CHRTYPE else stat.S_IFBLK
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

    def _set_xattrs(self, member: tarfile.TarInfo, target: int | str) -> None:
        """Set the member's extended attributes on an fd, or on a path without following it."""
        follow = not isinstance(target, str)
        for key, value in sorted(member_xattrs(member).items()):
            try:
                os.setxattr(target, key, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in _XATTR_REFUSED:
                    raise
                self.notes.append(f"{show_path(member.name)}: extended attribute {key} not restored ({exc.strerror})")

    def _hard_link(self, member: tarfile.TarInfo, dir_fd: int, name: str) -> None:
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
            keep = member_xattrs(entry.member)
            for name in read_xattrs(fd):
                if name not in keep and name not in KEEP_TARGET_XATTRS:
                    with contextlib.suppress(OSError):
                        os.removexattr(fd, name)
            self._set_xattrs(entry.member, fd)
            os.utime(fd, ns=self._times(entry.member))
        finally:
            os.close(fd)

    def _times(self, member: tarfile.TarInfo) -> tuple[int, int]:
        mtime = member_mtime_ns(member)
        return (mtime, mtime)

    def _set_owner(
        self, member: tarfile.TarInfo, fd: int | None = None, name: str | None = None, dir_fd: int | None = None
    ) -> None:
        if not self.set_owner:
            if (member.uid, member.gid) != (os.geteuid(), os.getegid()):
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
