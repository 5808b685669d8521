"""Files engine: a PAX tar of paths below a root, streamed straight into the vault.

Backup walks the configured ``paths`` below ``root`` (include/exclude rules in
``core.engines.pathmatch``) and writes one stream, ``files.tar``, with
``tarfile`` in stream mode: no temporary file, no second read. Each regular
file is hashed (SHA-256) while its bytes go into the tar, so the recorded
checks describe exactly what the archive holds.

What the archive keeps: regular files, directories (empty ones too), symlinks
(as links, never followed), hard links, modes including set-id bits, uid/gid
and user/group names, and mtimes to the nanosecond (PAX ``mtime``). Not kept:
xattrs, ACLs, atimes.

A live tree changes under a backup, so:

- an entry that vanishes between listing and reading is skipped and recorded
  in ``checks["skipped"]`` ("vanished during backup"), as is one whose type
  changed;
- a file that grows is archived up to the size it had when opened; one that
  shrinks is padded with zeros (the tar header already promised the size);
  one modified while read is archived as read. All three are recorded in
  ``checks["changed"]`` (GNU tar's "file changed as we read it") and their
  hashes describe the archived bytes, so a restore still verifies;
- a read error (EIO, permission denied) fails the backup: a backup that
  silently lacks a file is worse than a failed one.

Sockets, fifos and devices are skipped and recorded. Symlinks whose target is
absolute or leaves the root are skipped and recorded too, because a restore
refuses such links (``UnsafeArchiveError``); archiving them would make the
backup unrestorable.

Restore extracts into ``root`` (a restore target overrides it), member by
member through ``core.engines.tarsafe``, which refuses anything escaping the
target before writing it. Over existing data (``--force``) archived paths are
overwritten (replaced, never written through); files that are not in the
backup are left alone - deleting "everything else" below a root is too
dangerous for a restore, and the restore flow takes a rollback backup first.
Owners are restored when running as root.
"""

from __future__ import annotations

import errno
import functools
import grp
import hashlib
import os
import platform
import pwd
import stat
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from core.engines.base import BackupResult, Engine, StreamSink, StreamSource, Writable
from core.engines.pathmatch import PathFilter
from core.engines.tarsafe import SafeExtractor, lexically_inside
from core.errors import ConfigError, EngineError, IntegrityError, SourceUnavailableError
from core.sources import FilesSourceConfig

STREAM_NAME = "files.tar"
# Tar stream buffer and file copy size. Kept modest: tarfile's stream writer
# concatenates into this buffer, so larger values cost copying per header.
_TAR_BUFSIZE = 64 * 1024
_READ_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if a fifo is swapped in after listing, opening it must not hang.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
_GONE = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)


class FilesEngine(Engine):
    """Backs up and restores a directory tree as one PAX tar stream."""

    kind = "files"
    config: FilesSourceConfig

    @property
    def label(self) -> str:
        return f"files '{self.config.name}'"

    @property
    def root(self) -> str:
        return os.path.abspath(self.config.root)

    def describe(self) -> str:
        return f"files {self.root}"

    def ping(self) -> None:
        """Raise SourceUnavailableError if the root is missing or unreadable."""
        root = self.root
        if not os.path.isdir(root):
            raise SourceUnavailableError(
                f"{self.label}: root {root} does not exist or is not a directory; "
                "create it or fix 'root' in the stack file"
            )
        try:
            with os.scandir(root) as entries:
                next(entries, None)
        except PermissionError:
            raise SourceUnavailableError(
                f"{self.label}: root {root} is not readable; run as a user who can read it or fix its permissions"
            ) from None

    def ping_target(self) -> None:
        """A restore may create the root; only an existing root must be a readable directory."""
        if os.path.lexists(self.root):
            self.ping()
            return
        parent = os.path.dirname(os.path.abspath(self.root))
        while not os.path.isdir(parent):
            if os.path.lexists(parent):
                raise SourceUnavailableError(
                    f"{self.label}: {parent} is not a directory, so root {self.root} cannot be created; fix 'root'"
                )
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SourceUnavailableError(
                f"{self.label}: cannot create root {self.root} ({parent} is not writable); fix its permissions"
            )

    def rollback_config(self):
        """A rollback point keeps the whole target root, whatever the source's paths and patterns."""
        return self.config.model_copy(update={"paths": ["."], "include": [], "exclude": []})

    def backup(self, sink: StreamSink) -> BackupResult:
        """Stream a tar of the configured paths into ``sink`` as ``files.tar``."""
        paths = self._paths()
        pfilter = PathFilter(self.config.include, self.config.exclude)
        self.ping()
        started = datetime.now(UTC)
        archiver = _Archiver(self.root, pfilter, self.label)
        root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # Resolve every configured path before the stream opens, so a typo
            # fails the run without leaving a half-written stream behind.
            for path in paths:
                archiver.check_path(root_fd, path)
            with sink.open_stream(STREAM_NAME) as out:
                archiver.run(out, root_fd, paths)
        finally:
            os.close(root_fd)
        return BackupResult(
            position={"snapshot_time": started.isoformat()},
            checks=archiver.checks(),
            tool_versions={"tar": f"python-tarfile {platform.python_version()} (pax)"},
        )

    def has_data(self) -> bool:
        """True if the target root exists and holds anything (or is not a directory)."""
        root = self.root
        if not os.path.lexists(root):
            return False
        if not os.path.isdir(root):
            return True
        try:
            with os.scandir(root) as entries:
                return next(entries, None) is not None
        except PermissionError:
            raise SourceUnavailableError(
                f"{self.label}: target root {root} is not readable; run as a user who can read it or fix its permissions"
            ) from None

    def restore(self, source: StreamSource, result: BackupResult) -> None:
        """Extract ``files.tar`` into the target root, refusing unsafe members."""
        root = self.root
        if os.path.lexists(root) and not os.path.isdir(root):
            raise EngineError(
                f"{self.label}: target root {root} exists and is not a directory; remove it or choose another root"
            )
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: cannot create target root {root}: {exc.strerror}; fix permissions or choose another root"
            ) from None
        with source.open_stream(STREAM_NAME) as stream:
            try:
                tar = tarfile.open(fileobj=stream, mode="r|")
                with tar, SafeExtractor(root, self.label, set_owner=os.geteuid() == 0) as extractor:
                    extractor.extract_all(tar)
            except tarfile.TarError as exc:
                raise IntegrityError(
                    f"{self.label}: stream {STREAM_NAME} is not a readable tar archive ({exc}); "
                    "the backup is damaged, restore another one"
                ) from None
            # Read to the end so the vault verifies the whole stream, not just
            # the part up to the tar end-of-archive marker.
            while stream.read(_READ_CHUNK):
                pass

    def collect_checks(self, reference: dict[str, Any]) -> dict[str, Any]:
        """Hash and stat the paths the reference lists, below the target root."""
        root = self.root
        out: dict[str, Any] = {}
        counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
        for section in ("files", "dirs", "symlinks"):
            if section not in reference:
                continue
            found: dict[str, Any] = {}
            for rel in reference[section]:
                entry = _inspect(os.path.join(root, rel) if rel != "." else root)
                if entry is None:
                    continue
                kind, value = entry
                if kind == section:
                    counts[section] += 1
                    if kind == "files":
                        counts["bytes"] += value["size"]
                found[rel] = value if kind == section else {"type": _KIND_NAMES[kind]}
            out[section] = found
        if "counts" in reference:
            out["counts"] = counts
        # Facts about the backup run, not about the data: carried over as recorded.
        for key in ("skipped", "changed"):
            if key in reference:
                out[key] = reference[key]
        return out

    def _paths(self) -> list[str]:
        """Configured paths, normalised, without ones another path already covers."""
        if not self.config.paths:
            raise ConfigError(f"{self.label}: 'paths' is empty; list at least one path below root (e.g. '.')")
        normal: list[str] = []
        for raw in self.config.paths:
            if raw.startswith("/"):
                raise ConfigError(f"{self.label}: path {raw!r} is absolute; list paths relative to root {self.root}")
            parts = [p for p in raw.split("/") if p not in ("", ".")]
            if ".." in parts:
                raise ConfigError(f"{self.label}: path {raw!r} leaves root {self.root}; remove the '..'")
            if "/".join(parts) not in normal:
                normal.append("/".join(parts))
        return [p for p in normal if not any(_covers(q, p) for q in normal if q != p)]


_KIND_NAMES = {"files": "file", "dirs": "directory", "symlinks": "symlink", "special": "special file"}


def _covers(outer: str, inner: str) -> bool:
    return outer == "" or inner.startswith(outer + "/")


def _inspect(path: str) -> tuple[str, dict[str, Any] | str] | None:
    """(section, check value) for what is at ``path`` now; None if nothing is."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return "dirs", {"mode": _mode(st), "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        return "symlinks", os.readlink(path)
    if not stat.S_ISREG(st.st_mode):
        return "special", {}
    digest = hashlib.sha256()
    fd = os.open(path, _FILE_FLAGS)
    try:
        while chunk := os.read(fd, _READ_CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return "files", {"sha256": digest.hexdigest(), "size": st.st_size, "mode": _mode(st), "mtime_ns": st.st_mtime_ns}


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


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


def _pax_time(ns: int) -> str:
    """Exact decimal seconds for a PAX header (``1700000000.123456789``)."""
    sign = "-" if ns < 0 else ""
    sec, frac = divmod(abs(ns), 1_000_000_000)
    return f"{sign}{sec}.{frac:09d}"


def _tarinfo(rel: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(rel or ".")
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname, info.gname = _user(st.st_uid), _group(st.st_gid)
    info.mtime = st.st_mtime_ns // 1_000_000_000
    if st.st_mtime_ns % 1_000_000_000:
        # tarfile would write a float (microsecond-ish precision); give it the exact text.
        info.pax_headers = {"mtime": _pax_time(st.st_mtime_ns)}
    return info


class _HashingReader:
    """File-like view of exactly ``size`` bytes of ``fd`` that hashes what it hands out.

    tarfile's copy demands full reads up to the size in the header, so a file
    that shrank is padded with zeros rather than breaking the archive.
    """

    def __init__(self, fd: int, size: int, rel: str, label: str) -> None:
        self.fd, self.remaining, self.rel, self.label = fd, size, rel, label
        self.digest = hashlib.sha256()
        self.shrank = False

    def read(self, n: int) -> bytes:
        n = min(n, self.remaining)
        pieces, got = [], 0
        while got < n and not self.shrank:
            try:
                piece = os.read(self.fd, n - got)
            except OSError as exc:
                raise EngineError(
                    f"{self.label}: cannot read {self.rel}: {exc.strerror}; fix the file or exclude it"
                ) from None
            if not piece:
                self.shrank = True
                break
            pieces.append(piece)
            got += len(piece)
        if got < n:
            pieces.append(bytes(n - got))
        data = b"".join(pieces)
        self.remaining -= len(data)
        self.digest.update(data)
        return data


@dataclass
class _Frame:
    """One directory being walked: its fd, path and remaining child names."""

    fd: int
    rel: str
    included: bool
    names: list[str]
    index: int = 0


@dataclass
class _Archiver:
    """Walks the tree and writes the tar; collects the checks as it goes."""

    root: str
    pfilter: PathFilter
    label: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirs: dict[str, dict[str, Any]] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    changed: dict[str, str] = field(default_factory=dict)
    total_bytes: int = 0
    # Directories seen but not yet written: with include patterns a directory
    # is archived only once something below it is (or it matches itself).
    pending: list[tuple[str, os.stat_result]] = field(default_factory=list)
    inodes: dict[tuple[int, int], str] = field(default_factory=dict)
    tar: tarfile.TarFile | None = None

    def checks(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "counts": {
                "files": len(self.files),
                "dirs": len(self.dirs),
                "symlinks": len(self.symlinks),
                "bytes": self.total_bytes,
            },
            "skipped": self.skipped,
            "changed": self.changed,
        }

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
        # On an exception TarFile.__exit__ skips the end-of-archive blocks, so a
        # failed run never looks like a complete archive.
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_TAR_BUFSIZE) as tar:
            tar.copybufsize = _TAR_BUFSIZE
            self.tar = tar
            for path in paths:
                self._archive_path(root_fd, path)

    # -- walking ---------------------------------------------------------------------

    def _open_parent(self, root_fd: int, path: str) -> int:
        """fd of the directory holding ``path``; refuses symlinks on the way."""
        fd = os.dup(root_fd)
        parts = path.split("/")[:-1] if path else []
        for i, part in enumerate(parts):
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
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
                raise
            os.close(fd)
            fd = nfd
        return fd

    def _archive_path(self, root_fd: int, path: str) -> None:
        try:
            if not path:
                frame = self._enter(os.dup(root_fd), "", self.pfilter.included("", True))
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
                        nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        if exc.errno not in _GONE:
                            raise self._read_error(rel, exc) from None
                        self.skipped[path] = f"vanished during backup ({rel!r} is gone)"
                        return
                    os.close(fd)
                    fd = nfd
                    if self.pfilter.excluded(rel, True):
                        return
                    included = included or self.pfilter.included(rel, True)
                    self.pending.append((rel, os.fstat(fd)))
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
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            except OSError as exc:
                if exc.errno in _GONE:
                    self.skipped[rel] = "vanished or replaced during backup"
                    return None
                raise self._read_error(rel, exc) from None
            return self._enter(fd, rel, included)
        if not included:
            return None
        if stat.S_ISREG(mode):
            self._add_file(parent_fd, name, rel)
        elif stat.S_ISLNK(mode):
            self._add_symlink(parent_fd, name, rel, st)
        else:
            self.skipped[rel] = _special_kind(mode) + " (not archived)"
        return None

    def _enter(self, fd: int, rel: str, included: bool) -> _Frame:
        """Start walking directory ``fd`` (taking ownership of it)."""
        try:
            st = os.fstat(fd)
            names = sorted(os.listdir(fd))
        except OSError as exc:
            os.close(fd)
            raise self._read_error(rel or ".", exc) from None
        self.pending.append((rel, st))
        if included:
            self._flush_pending()
        return _Frame(fd, rel, included, names)

    # -- writing -----------------------------------------------------------------------

    def _flush_pending(self) -> None:
        for rel, st in self.pending:
            key = rel or "."
            if key in self.dirs:
                continue
            self._add(_tarinfo(rel, st, tarfile.DIRTYPE))
            self.dirs[key] = {"mode": _mode(st), "mtime_ns": st.st_mtime_ns}

    def _add(self, info: tarfile.TarInfo, data: Any = None) -> None:
        assert self.tar is not None
        self.tar.addfile(info, data)
        # tarfile keeps every TarInfo it wrote; drop them so memory stays flat.
        self.tar.members.clear()

    def _add_file(self, parent_fd: int, name: str, rel: str) -> None:
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in _GONE:
                self.skipped[rel] = "vanished or replaced during backup"
                return
            raise self._read_error(rel, exc) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.skipped[rel] = "replaced during backup"
                return
            self._flush_pending()
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self.inodes:
                info = _tarinfo(rel, st, tarfile.LNKTYPE)
                info.linkname = self.inodes[key]
                self._add(info)
                self.files[rel] = dict(self.files[info.linkname])
                self.total_bytes += self.files[rel]["size"]
                return
            info = _tarinfo(rel, st, tarfile.REGTYPE)
            info.size = st.st_size
            reader = _HashingReader(fd, st.st_size, rel, self.label)
            self._add(info, reader)
            self._note_changes(fd, st, reader, rel)
            self.files[rel] = {
                "sha256": reader.digest.hexdigest(),
                "size": st.st_size,
                "mode": _mode(st),
                "mtime_ns": st.st_mtime_ns,
            }
            self.total_bytes += st.st_size
            if st.st_nlink > 1:
                self.inodes[key] = rel
        finally:
            os.close(fd)

    def _note_changes(self, fd: int, before: os.stat_result, reader: _HashingReader, rel: str) -> None:
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
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL):
                self.skipped[rel] = "vanished or replaced during backup"
                return
            raise self._read_error(rel, exc) from None
        parent = rel.split("/")[:-1]
        real_root = os.path.realpath(self.root)
        resolved = os.path.realpath(os.path.join(self.root, *parent, target))
        if (
            target.startswith("/")
            or not lexically_inside(parent, target)
            or not (resolved == real_root or resolved.startswith(real_root.rstrip("/") + "/"))
        ):
            self.skipped[rel] = f"symlink to {target!r} outside the root (a restore would refuse it)"
            return
        self._flush_pending()
        info = _tarinfo(rel, st, tarfile.SYMTYPE)
        info.linkname = target
        self._add(info)
        self.symlinks[rel] = target

    def _read_error(self, rel: str, exc: OSError) -> EngineError:
        return EngineError(f"{self.label}: cannot read {rel}: {exc.strerror}; fix its permissions or exclude it")


def _special_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"
