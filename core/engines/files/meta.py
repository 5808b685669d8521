"""What a file carries besides its bytes: extended attributes (ACLs included) and holes.

Both travel in PAX headers, the way GNU tar writes them, so ``tar`` can read
our archives too:

- every extended attribute as ``SCHILY.xattr.<name>`` (POSIX ACLs are the
  ``system.posix_acl_access`` / ``system.posix_acl_default`` attributes, file
  capabilities ``security.capability``, SELinux labels ``security.selinux``).
  Values are the attribute's bytes, in a header marked ``hdrcharset=BINARY``
  when one is not UTF-8 (as tarfile and GNU tar write and read them, lossless);
- a sparse file in GNU's PAX sparse format 1.0: headers ``GNU.sparse.major=1``,
  ``GNU.sparse.minor=0``, ``GNU.sparse.name`` (the real name) and
  ``GNU.sparse.realsize``; the member's data starts with the map (decimal
  ``count\\n`` then ``offset\\nlength\\n`` per data segment, padded to 512
  bytes) followed by the data segments only (``core.engines.files.pax``
  writes and reads it; tarfile and GNU tar read it too).

Every function here works on a directory fd plus a name, or on an fd, and
never follows a symlink.
"""

from __future__ import annotations

import errno
import hashlib
import os

from core.engines.files.pax import BLOCK

XATTR_PREFIX = "SCHILY.xattr."
# Attributes the target's own system sets (an SELinux label on every new file):
# never removed for being absent from a backup.
KEEP_TARGET_XATTRS = frozenset({"security.selinux"})
_NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODATA)
# Kept for other readers of our archives: tarfile puts a member size of 8 GiB or more into a PAX "size" record, and then
# mis-computes where the next header starts for a sparse member (it uses the real
# size). Sparse members are written only below that; a larger one goes dense
# (same bytes, holes written as zeros).
MAX_SPARSE_STORED = 0o77777777777


def show_path(rel: str) -> str:
    """``rel`` for messages and the manifest: undecodable bytes as ``\\xNN``, never a lone surrogate."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace") if rel else "."


def entry_path(parent_fd: int, name: str) -> str:
    """A path that names ``name`` in ``parent_fd`` without resolving anything above it.

    For the xattr calls that have no ``*at`` form (symlinks, fifos, devices);
    always used with ``follow_symlinks=False``.
    """
    return f"/proc/self/fd/{parent_fd}/{name}"


def read_xattrs(target: int | str) -> dict[str, bytes]:
    """Extended attributes of an open fd, or of a path (not following a final symlink)."""
    follow = not isinstance(target, str)
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno not in _NO_XATTRS:  # removed meanwhile: nothing to keep
                raise
    return out


def xattr_records(xattrs: dict[str, bytes]) -> list[tuple[str, bytes]]:
    """PAX records for ``xattrs``: the values' bytes as they are (see the module doc)."""
    return [(XATTR_PREFIX + k, v) for k, v in xattrs.items()]


def xattr_digests(xattrs: dict[str, bytes]) -> dict[str, str]:
    """What the checks record per attribute: the SHA-256 of its value."""
    return {k: hashlib.sha256(v).hexdigest() for k, v in xattrs.items()}


def data_map(fd: int, size: int) -> list[tuple[int, int]] | None:
    """(offset, length) of the data segments of a file with holes; None if it has none.

    Uses SEEK_DATA/SEEK_HOLE; a file system without them reports one data
    segment, i.e. no holes.
    """
    segments: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # only a hole up to the end
                    break
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            segments.append((start, end - start))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    if segments == [(0, size)]:
        return None
    # GNU tar ends the map at the real size, so a trailing hole is explicit.
    if not segments or segments[-1][0] + segments[-1][1] < size:
        segments.append((size, 0))
    return segments


def sparse_map_block(segments: list[tuple[int, int]]) -> bytes:
    """The map that starts a sparse 1.0 member's data, padded to a tar block."""
    text = f"{len(segments)}\n" + "".join(f"{off}\n{length}\n" for off, length in segments)
    raw = text.encode("ascii")
    return raw + bytes(-len(raw) % BLOCK)
