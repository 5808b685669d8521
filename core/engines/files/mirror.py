"""Make a target tree equal to a backup: swap a verified staged tree in, or prune in place.

A backup covers the configured ``paths`` below the root, filtered by the
include/exclude patterns; that is all a mirror may replace. Entries outside
the covered paths, and entries the patterns never select (an excluded cache,
a file no include matches), are not the backup's to delete and stay.

- ``swap_tree``: the backup was restored into a staging directory beside the
  target and verified there. For every covered path, each entry of the staged
  tree is renamed into place - exchanged atomically with what was there
  (``renameat2(RENAME_EXCHANGE)``) so the old entry lands in the staging
  directory, which is then removed - and selected entries the backup lacks
  are removed. Without patterns the unit is a whole top-level entry (one
  rename per child of the covered path); with patterns, directories present on
  both sides are merged entry by entry so unselected entries survive.
- ``prune_tree``: the backup was extracted over the target (in place); every
  selected entry the archive did not write is removed.

Neither ever follows a symlink (everything is relative to directory fds with
``O_NOFOLLOW``) or removes a mount point: a mount point the backup lacks is
left where it is and reported in the notes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
from dataclasses import dataclass

from core.engines.files.meta import KEEP_TARGET_XATTRS, read_xattrs, show_path
from core.engines.files.pathmatch import PathFilter

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# The target root itself is the trust anchor and may be a symlink (/srv/current).
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


@dataclass
class Selection:
    """What a backup covers: its paths below the root and its patterns (None: no patterns)."""

    paths: list[str]
    pfilter: PathFilter | None

    def selects(self, rel: str, is_dir: bool, inherited: bool) -> tuple[bool, bool]:
        """(selected, included-for-children) of an entry, as the archiver decides it."""
        if self.pfilter is None:
            return True, True
        if self.pfilter.excluded(rel, is_dir):
            return False, False
        included = inherited or self.pfilter.included(rel, is_dir)
        return (included or is_dir), included

    def inherited(self, parts: list[str]) -> bool:
        """Whether an include pattern matched a directory on the way to ``parts`` (exclusive)."""
        if self.pfilter is None:
            return True
        if not parts:
            return self.pfilter.included("", True)
        return any(self.pfilter.included("/".join(parts[: i + 1]), True) for i in range(len(parts)))


def mount_points() -> list[str]:
    """Mount points of this process's namespace (from /proc/self/mountinfo)."""
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                field = line.split()[4]
                # mountinfo escapes space, tab, newline and backslash as octal.
                out.append(field.encode("latin-1", "surrogateescape").decode("unicode_escape"))
    except OSError:
        return []
    return out


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


@dataclass
class _DirState:
    st: os.stat_result
    xattrs: dict[str, bytes]

    @classmethod
    def of(cls, fd: int) -> _DirState:
        return cls(os.fstat(fd), read_xattrs(fd))

    def apply(self, fd: int, set_owner: bool) -> None:
        if set_owner:
            os.fchown(fd, self.st.st_uid, self.st.st_gid)
        os.fchmod(fd, stat.S_IMODE(self.st.st_mode))
        for name in read_xattrs(fd):
            if name not in self.xattrs and name not in KEEP_TARGET_XATTRS:
                with contextlib.suppress(OSError):
                    os.removexattr(fd, name)
        for name, value in self.xattrs.items():
            os.setxattr(fd, name, value)
        os.utime(fd, ns=(self.st.st_mtime_ns, self.st.st_mtime_ns))


class Mirror:
    """One mirror operation on one target root; collects notes."""

    def __init__(self, target_root: str, selection: Selection, set_owner: bool) -> None:
        self.target_root = target_root
        self.selection = selection
        self.set_owner = set_owner
        self.notes: list[str] = []

    # -- swapping a staged tree in -------------------------------------------------------

    def swap_tree(self, staged_root: str, archived_dirs: set[str]) -> None:
        """Move the staged tree's covered entries into the target (see the module doc).

        ``archived_dirs``: directories the archive held (``""`` for the root),
        whose attributes the target's directories take.
        """
        os.makedirs(self.target_root, exist_ok=True)
        sroot = os.open(staged_root, _DIR_FLAGS)
        troot = os.open(self.target_root, _ROOT_FLAGS)
        try:
            for path in self.selection.paths:
                parts = path.split("/") if path else []
                # The root and every ancestor of the path: their attributes are the archive's.
                chain = ["/".join(parts[:i]) for i in range(len(parts))] or [""]
                saved = self._dir_states(sroot, chain, archived_dirs)
                sfd, tfd = self._open_pair(sroot, troot, parts[:-1])
                try:
                    names = {parts[-1]} if parts else None
                    inherited = self.selection.inherited(parts[:-1])
                    self._merge(sfd, tfd, "/".join(parts[:-1]), names, inherited)
                finally:
                    os.close(sfd)
                    os.close(tfd)
                for rel, state in sorted(saved.items(), key=lambda kv: -len(kv[0])):
                    fd = self._open_dir(troot, rel.split("/") if rel else [])
                    try:
                        state.apply(fd, self.set_owner)
                    finally:
                        os.close(fd)
        finally:
            os.close(sroot)
            os.close(troot)

    def _dir_states(self, root_fd: int, chain: list[str], archived: set[str]) -> dict[str, _DirState]:
        """Attributes of the archived directories on ``chain``, before renames bump their mtimes."""
        out = {}
        for rel in chain:
            if rel not in archived:
                continue
            try:
                fd = self._open_dir(root_fd, rel.split("/") if rel else [])
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                out[rel] = _DirState.of(fd)
            finally:
                os.close(fd)
        return out

    def _open_dir(self, root_fd: int, parts: list[str]) -> int:
        fd = os.dup(root_fd)
        try:
            for part in parts:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_pair(self, sroot: int, troot: int, parts: list[str]) -> tuple[int, int]:
        """fds of the staged and target directories ``parts``; missing target ones are made."""
        sfd = self._open_dir(sroot, parts)
        tfd = os.dup(troot)
        try:
            for part in parts:
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=tfd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        raise
                    if exc.errno != errno.ENOENT:  # a file or symlink where the backup has a directory
                        os.unlink(part, dir_fd=tfd)
                    os.mkdir(part, 0o700, dir_fd=tfd)
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=tfd)
                os.close(tfd)
                tfd = nfd
        except BaseException:
            os.close(sfd)
            os.close(tfd)
            raise
        return sfd, tfd

    def _merge(self, sfd: int, tfd: int, rel: str, names: set[str] | None, inherited: bool) -> None:
        staged = set(os.listdir(sfd))
        target = set(os.listdir(tfd))
        if names is not None:
            staged &= names
            target &= names
        deep = self.selection.pfilter is not None
        dev = os.fstat(tfd).st_dev
        for name in sorted(staged | target):
            crel = _join(rel, name)
            if name not in staged:
                self._prune_entry(tfd, name, crel, inherited, dev)
                continue
            if name not in target:
                os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=tfd)
                continue
            s_st = os.stat(name, dir_fd=sfd, follow_symlinks=False)
            t_st = os.stat(name, dir_fd=tfd, follow_symlinks=False)
            if t_st.st_dev != dev:
                self.notes.append(f"{show_path(crel)}: a mount point in the target; left as it was, not restored")
                continue
            if deep and stat.S_ISDIR(s_st.st_mode) and stat.S_ISDIR(t_st.st_mode):
                _, included = self.selection.selects(crel, True, inherited)
                csfd = os.open(name, _DIR_FLAGS, dir_fd=sfd)
                ctfd = os.open(name, _DIR_FLAGS, dir_fd=tfd)
                try:
                    state = _DirState.of(csfd)
                    self._merge(csfd, ctfd, crel, None, included)
                    state.apply(ctfd, self.set_owner)
                finally:
                    os.close(csfd)
                    os.close(ctfd)
                continue
            _exchange(sfd, tfd, name)

    # -- pruning in place ---------------------------------------------------------------

    def prune_tree(self, written: set[str]) -> None:
        """Remove selected entries below the covered paths that the archive did not write."""
        troot = os.open(self.target_root, _ROOT_FLAGS)
        try:
            dev = os.fstat(troot).st_dev
            for path in self.selection.paths:
                parts = path.split("/") if path else []
                try:
                    fd = self._open_dir(troot, parts[:-1])
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        continue
                    raise
                inherited = self.selection.inherited(parts[:-1])
                try:
                    if parts:
                        self._prune_listed(fd, parts[-1], path, written, inherited, dev)
                    else:
                        for name in sorted(os.listdir(fd)):
                            self._prune_listed(fd, name, name, written, inherited, dev)
                finally:
                    os.close(fd)
        finally:
            os.close(troot)

    def _prune_listed(self, dfd: int, name: str, rel: str, written: set[str], inherited: bool, dev: int) -> None:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if rel not in written:
            self._prune_entry(dfd, name, rel, inherited, dev)
            return
        if not stat.S_ISDIR(st.st_mode):
            return
        _, included = self.selection.selects(rel, True, inherited)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            for child in sorted(os.listdir(fd)):
                self._prune_listed(fd, child, _join(rel, child), written, included, dev)
        finally:
            os.close(fd)

    # -- removing what the backup lacks ----------------------------------------------------

    def _prune_entry(self, dfd: int, name: str, rel: str, inherited: bool, dev: int) -> None:
        """Remove entry ``name`` of ``dfd`` if the backup would have selected it."""
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and st.st_dev != dev:
            self.notes.append(f"{show_path(rel)}: a mount point the backup does not hold; left in place")
            return
        selected, included = self.selection.selects(rel, is_dir, inherited)
        if not selected:
            return
        if not is_dir:
            os.unlink(name, dir_fd=dfd)
            return
        if self.selection.pfilter is None:
            self._rmtree(dfd, name, rel, dev)
            return
        # With patterns a directory may hold entries the backup never selected: keep those.
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            children = sorted(os.listdir(fd))
            for child in children:
                self._prune_entry(fd, child, _join(rel, child), included, dev)
            left = os.listdir(fd)
        finally:
            os.close(fd)
        # The archiver takes a directory that matches itself or holds something taken.
        if not left and (included or children):
            os.rmdir(name, dir_fd=dfd)

    def _rmtree(self, dfd: int, name: str, rel: str, dev: int) -> None:
        """Remove a directory tree, but never a mount point inside it."""
        fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
        try:
            for child in os.listdir(fd):
                st = os.stat(child, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    if st.st_dev != dev:
                        self.notes.append(
                            f"{show_path(_join(rel, child))}: a mount point the backup does not hold; left in place"
                        )
                        continue
                    self._rmtree(fd, child, _join(rel, child), dev)
                else:
                    os.unlink(child, dir_fd=fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):  # not empty: it held a mount point, noted above
            os.rmdir(name, dir_fd=dfd)


def _exchange(sfd: int, tfd: int, name: str) -> None:
    """Swap entry ``name`` of the staged and target directories; the old one ends up staged."""
    raw = os.fsencode(name)
    if _renameat2 is not None and _renameat2(sfd, raw, tfd, raw, _RENAME_EXCHANGE) == 0:
        return
    err = ctypes.get_errno() if _renameat2 is not None else errno.ENOSYS
    if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        raise OSError(err, os.strerror(err), name)
    # No exchange on this file system: move the old entry aside first (a short gap).
    aside = f".gdr-old-{name}"[:255]
    os.rename(name, aside, src_dir_fd=tfd, dst_dir_fd=sfd)
    os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=tfd)


def remove_tree(path: str) -> None:
    """Remove a staging directory (a missing one is fine)."""
    if os.path.lexists(path):
        shutil.rmtree(path)
