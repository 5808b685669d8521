"""A vault in a local directory (or a mounted filesystem).

Writes go to a temp file in the same directory, are fsynced, then linked (new
objects) or renamed (replacements) into place, and the directory is fsynced: the
store never shows a half-written object. An object's version is its inode,
size and modification time (a replacement is always a new inode); compare-and-swap
and overwrites hold an flock on ``<root>/.tmp-cas`` so a replace cannot interleave
with another writer on this host (or on a filesystem whose locks are shared).

``destroy`` overwrites the file in place (same inode, so every hard link sees the
new bytes) with random bytes ``passes`` times, fsyncing each pass, then unlinks it
and fsyncs the directory. On copy-on-write filesystems (btrfs, ZFS), SSDs and
snapshots the old blocks may survive an overwrite: crypto-shredding the backup's
data key is what makes the data unreadable; the overwrite only adds to it. There
are no legal holds or storage classes here (``lock_supported()`` is False).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import VaultError
from core.storage.base import Capabilities, ObjectInfo, ObjectNotFound, Store, checked_key

__all__ = ["LocalStore", "ObjectNotFound"]  # ObjectNotFound lives in base; kept importable from here


MAX_PASSES = 35  # Gutmann's count: more passes add nothing on any medium
OVERWRITE_BLOCK = 1 << 20


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version(st: os.stat_result) -> str:
    return f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"


class LocalStore(Store):
    capabilities = Capabilities(provider="local", io_threads=2)

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().absolute()

    @contextmanager
    def _cas(self, key: str) -> Iterator[None]:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / ".tmp-cas", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._os_error(exc, "locking", key) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def describe(self) -> str:
        return f"local:{self.root}"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*checked_key(self.describe(), key).split("/"))

    def _os_error(self, exc: OSError, action: str, key: str) -> VaultError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return VaultError(
                f"vault {self.describe()} is full while {action} {key}; free space or point the stack at a larger "
                "vault - nothing already stored was changed"
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return VaultError(
                f"vault {self.describe()} is not writable ({exc.strerror}) while {action} {key}; fix the directory's "
                "permissions or mount"
            )
        return VaultError(f"vault {self.describe()}: {exc.strerror} while {action} {key}")

    def _write(self, key: str, data: bytes) -> tuple[Path, str]:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as exc:
            raise self._os_error(exc, "writing", key) from None
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            os.unlink(tmp)
            raise self._os_error(exc, "writing", key) from None
        return path, tmp

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        if overwrite:
            with self._cas(key):
                self._put(key, data, overwrite=True)
        else:
            self._put(key, data, overwrite=False)

    def _put(self, key: str, data: bytes, *, overwrite: bool) -> None:
        path, tmp = self._write(key, data)
        try:
            if overwrite:
                os.replace(tmp, path)
            else:
                # link() fails if the name exists: immutable objects are never replaced.
                os.link(tmp, path)
                os.unlink(tmp)
            _fsync_dir(path.parent)
        except FileExistsError:
            os.unlink(tmp)
            raise VaultError(
                f"vault {self.describe()}: object {key} already exists; stored objects are immutable"
            ) from None
        except OSError as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise self._os_error(exc, "writing", key) from None

    def create(self, key: str, data: bytes) -> str | None:
        try:
            self._put(key, data, overwrite=False)
        except VaultError:
            if self.exists(key):
                return None
            raise
        info = self.stat(key)
        return info.version if info else None

    def replace(self, key: str, data: bytes, *, version: str) -> str | None:
        with self._cas(key):
            info = self.stat(key)
            if info is None or info.version != version:
                return None
            self._put(key, data, overwrite=True)
            new = self.stat(key)
            return new.version if new else None

    def get_versioned(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                return fh.read(), _version(st)
        except FileNotFoundError:
            raise ObjectNotFound(f"vault {self.describe()}: object {key} is missing") from None
        except OSError as exc:
            raise self._os_error(exc, "reading", key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = os.stat(self._path(key))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._os_error(exc, "reading", key) from None
        if not stat.S_ISREG(st.st_mode):
            return None
        return ObjectInfo(key, st.st_size, _version(st))

    def delete_if(self, key: str, version: str) -> bool:
        with self._cas(key):
            info = self.stat(key)
            if info is None or info.version != version:
                return False
            self.delete(key)
            return True

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"vault {self.describe()}: object {key} is missing") from None
        except OSError as exc:
            raise self._os_error(exc, "reading", key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def copy_from(self, source: Store, key: str, dest_key: str | None = None) -> bool:
        return False  # bytes between two directories go through the caller's bounded stream

    def list(self, prefix: str = "") -> Iterator[str]:
        # Walk only the directory the prefix names (listing one backup must not read every chunk).
        folder = prefix.rpartition("/")[0]
        start = self._path(folder) if folder else self.root
        if not start.is_dir():
            return iter(())
        keys = []
        for dirpath, _dirs, files in os.walk(start):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def children(self, prefix: str) -> list[str]:
        folder = prefix.rstrip("/")
        path = self._path(folder) if folder else self.root
        try:
            return sorted(e.name for e in os.scandir(path) if not e.name.startswith(".tmp-"))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise self._os_error(exc, "listing", prefix) from None

    def destroy(self, key: str, *, passes: int = 1) -> None:
        if not 1 <= passes <= MAX_PASSES:
            raise VaultError(f"vault {self.describe()}: destroying {key}: passes must be 1..{MAX_PASSES}, not {passes}")
        path = self._path(key)
        try:
            # No O_TRUNC and no new file: the same blocks of the same inode are overwritten.
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._os_error(exc, "destroying", key) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise VaultError(f"vault {self.describe()}: {key} is not a regular file; refused to destroy it")
            size = os.fstat(fd).st_size
            for _ in range(passes):
                os.lseek(fd, 0, os.SEEK_SET)
                left = size
                while left:
                    block = memoryview(os.urandom(min(left, OVERWRITE_BLOCK)))
                    while block:
                        written = os.write(fd, block)
                        block = block[written:]
                        left -= written
                os.fsync(fd)
        except OSError as exc:
            raise self._os_error(exc, "destroying", key) from None
        finally:
            os.close(fd)
        try:
            path.unlink()
            _fsync_dir(path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._os_error(exc, "destroying", key) from None

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._os_error(exc, "deleting", key) from None
