"""Extract a tar stream into one directory without ever touching anything outside it.

A stream (``r|``) cannot be inspected before extraction, so safety is enforced
member by member, before the member writes anything:

- names must be relative with no ``..`` component; device and fifo members,
  and member types we never write, are refused;
- a symlink's target must be relative and stay inside the directory (both
  lexically and as resolved on disk at that moment); a hard link must point to
  a regular file extracted earlier from the same archive;
- every path is opened component by component from a directory descriptor
  with ``O_NOFOLLOW`` (``openat``), so no symlink - from the archive or already
  in the target - is ever followed while writing. A member that would be
  written through a symlink this archive created is refused; a pre-existing
  symlink or file where the archive has a directory is replaced;
- files are created fresh (``O_EXCL`` after unlinking what was there), so an
  existing hard link to a file elsewhere is never written through.

When a member is refused the extraction stops with ``UnsafeArchiveError``:
members before it have been written (inside the directory only); nothing after
it is. At the end every symlink the archive created is re-checked, because a
later member can change how an earlier link resolves.

Directory modes, owners and mtimes are applied after all members, deepest
first, so writing the contents neither fails on read-only directories nor
bumps their mtimes.
"""

from __future__ import annotations

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

from core.errors import UnsafeArchiveError

_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


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


def lexically_inside(parent: list[str], target: str) -> bool:
    """True if a symlink in ``parent`` pointing at relative ``target`` stays inside."""
    depth = list(parent)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not depth:
                return False
            depth.pop()
        else:
            depth.append(part)
    return True


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
        self._files: set[str] = set()
        self._links: dict[str, str] = {}

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    def __enter__(self) -> SafeExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- entry point -----------------------------------------------------------------

    def extract_all(self, tar: tarfile.TarFile) -> int:
        """Extract every member of ``tar`` (opened ``r|``); returns the member count."""
        count = 0
        while (member := tar.next()) is not None:
            self.extract_member(tar, member)
            count += 1
            # Stream mode keeps every TarInfo in ``members``; drop them so memory
            # stays flat however many files the archive holds.
            tar.members.clear()
        self.finish()
        return count

    def extract_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        """Validate one member, then write it (refusing before any write)."""
        parts = split_member_name(member.name)
        if parts is None:
            self._refuse(member, "absolute path or '..' component escapes the target")
        if member.ischr() or member.isblk() or member.isfifo():
            self._refuse(member, "device or special file")
        if not parts:
            if not member.isdir():
                self._refuse(member, "names the target directory itself but is not a directory")
            self._dirs.append(_DirAttrs(parts, member))
            return
        rel = "/".join(parts)
        if member.issym():
            self._check_symlink(member, parts)
        elif member.islnk():
            link_parts = split_member_name(member.linkname)
            if not link_parts or "/".join(link_parts) not in self._files:
                self._refuse(member, f"hard link to {member.linkname!r}, which is not a file earlier in this archive")
        elif not (member.isdir() or member.type in _REGULAR):
            self._refuse(member, f"unsupported member type {member.type!r}")

        parent_fd = self._open_parent(member, parts)
        # Whatever was at this path before is gone after this member.
        self._files.discard(rel)
        self._links.pop(rel, None)
        try:
            name = parts[-1]
            if member.isdir():
                self._make_dir(parent_fd, name)
                self._dirs.append(_DirAttrs(parts, member))
            elif member.issym():
                self._remove_existing(parent_fd, name)
                os.symlink(member.linkname, name, dir_fd=parent_fd)
                self._links[rel] = member.linkname
                self._set_owner(member, name=name, dir_fd=parent_fd)
                os.utime(name, ns=self._times(member), dir_fd=parent_fd, follow_symlinks=False)
            elif member.islnk():
                self._remove_existing(parent_fd, name)
                self._hard_link(member, parent_fd, name)
                self._files.add(rel)
            else:
                self._remove_existing(parent_fd, name)
                self._write_file(tar, member, parent_fd, name)
                self._files.add(rel)
        finally:
            os.close(parent_fd)

    def finish(self) -> None:
        """Re-check symlinks, then apply directory attributes, deepest first."""
        for rel, target in self._links.items():
            parts = rel.split("/")
            if self._resolves_inside(parts[:-1], target):
                continue
            try:
                parent_fd = self._walk(parts[:-1], create=False)
            except OSError as exc:
                if exc.errno in _GONE:
                    continue  # a later member removed it: nothing left to follow
                raise
            try:
                if os.readlink(parts[-1], dir_fd=parent_fd) != target:
                    continue
                # Do not leave a link the application could follow out of the target.
                os.unlink(parts[-1], dir_fd=parent_fd)
            except OSError as exc:
                if exc.errno not in (*_GONE, errno.EINVAL):
                    raise
                continue
            finally:
                os.close(parent_fd)
            raise UnsafeArchiveError(
                f"{self.label}: archive member {rel!r} is a symlink that resolves outside {self.dest} once the "
                "whole archive is extracted; archive refused (the link was removed, nothing outside the target "
                "was written)"
            )
        for entry in sorted(self._dirs, key=lambda d: len(d.parts), reverse=True):
            self._apply_dir_attrs(entry)

    # -- validation ------------------------------------------------------------------

    def _refuse(self, member: tarfile.TarInfo, why: str) -> NoReturn:
        raise UnsafeArchiveError(
            f"{self.label}: archive member {member.name!r} is unsafe ({why}); archive refused, "
            f"nothing was written outside {self.dest}"
        )

    def _check_symlink(self, member: tarfile.TarInfo, parts: list[str]) -> None:
        target = member.linkname
        if not target or target.startswith("/") or "\0" in target:
            self._refuse(member, f"symlink to absolute or empty target {target!r}")
        if not lexically_inside(parts[:-1], target) or not self._resolves_inside(parts[:-1], target):
            self._refuse(member, f"symlink target {target!r} points outside the target directory")

    def _resolves_inside(self, parent: list[str], target: str) -> bool:
        resolved = os.path.realpath(os.path.join(self.dest, *parent, target))
        return resolved == self.real_dest or resolved.startswith(self.real_dest.rstrip("/") + "/")

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
            data: BinaryIO | None = tar.extractfile(member)
            if data is not None:
                while chunk := data.read(_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            # chown first: it clears set-uid/set-gid bits that chmod then restores.
            self._set_owner(member, fd=fd)
            os.fchmod(fd, member.mode & 0o7777)
            os.utime(fd, ns=self._times(member))
        finally:
            os.close(fd)

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
        try:
            self._set_owner(entry.member, fd=fd)
            os.fchmod(fd, entry.member.mode & 0o7777)
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
            return
        uid, gid = _lookup_uid(member.uname, member.uid), _lookup_gid(member.gname, member.gid)
        if fd is not None:
            os.fchown(fd, uid, gid)
        else:
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


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
