"""A vault in a local directory (or a mounted filesystem).

Writes go to a temp file in the same directory, are fsynced, then renamed into
place, and the directory is fsynced: the store never shows a half-written object.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.errors import VaultError
from core.storage.base import Store


class ObjectNotFound(VaultError):
    """An object the vault expected is missing."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser().absolute()

    def describe(self) -> str:
        return f"local:{self.root}"

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise VaultError(f"vault {self.describe()}: invalid object name {key!r}")
        return self.root.joinpath(*parts)

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

    def create(self, key: str, data: bytes) -> bool:
        try:
            self.put(key, data)
            return True
        except VaultError:
            if self.exists(key):
                return False
            raise

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(f"vault {self.describe()}: object {key} is missing") from None
        except OSError as exc:
            raise self._os_error(exc, "reading", key) from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

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

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._os_error(exc, "deleting", key) from None

    def rename(self, key: str, new_key: str) -> bool:
        src, dst = self._path(key), self._path(new_key)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise self._os_error(exc, "renaming", key) from None
