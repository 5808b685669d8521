"""PostgreSQL backups checked by their own tools, on the plaintext streamed from the vault.

Logical: each ``*.pgdump`` archive goes through ``pg_restore --list`` (the TOC
reads) and then through ``pg_restore --file=/dev/null``, which reads every data
block the way a restore does (``--list`` alone stops after the TOC, so a damaged
table would pass it). Nothing touches a server.

Physical: ``pg_verifybackup`` needs the backup as a directory, and unpacking a
cluster only to check it would cost its whole size on disk, so the same checks
run on the tar as it streams: every file's size and CRC-32C (the manifest's
default; other algorithms are checked by size) against the ``backup_manifest``
pg_basebackup appends to the tar, the manifest's own SHA-256, no file missing or
unlisted, and the WAL segments of the manifest's WAL range present in ``pg_wal/``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import google_crc32c

from core.engines.files.pax import ArchiveFormatError, PaxReader
from core.engines.postgres.engine import SCHEMA_STREAM, find_tool
from core.engines.postgres.physical import BASE_STREAM
from core.engines.postgres.roles import GLOBALS_STREAM
from core.validation.results import CheckResult
from core.validation.tools import ToolFailed, find, guarded, pipe_stream

MANIFEST = "backup_manifest"
# What pg_verifybackup skips too: files pg_basebackup adds or rewrites, and the WAL (checked by range).
_UNLISTED = ("backup_manifest", "postgresql.auto.conf", "standby.signal", "recovery.signal")


def verify_backup(reader) -> list[CheckResult]:
    names = reader.stream_names()
    results = []
    for name in names:
        if name.endswith(".pgdump"):
            results.append(guarded("pg_restore", name, lambda n=name: _pg_restore(reader, n)))
        elif name == BASE_STREAM:
            results.append(guarded("backup_manifest (pg_verifybackup checks)", name, lambda: _base_tar(reader)))
        elif name == GLOBALS_STREAM:
            results.append(guarded("globals.json parse", name, lambda: _globals(reader)))
    if any(n.endswith(".pgdump") for n in names) and SCHEMA_STREAM not in names:
        results.append(
            CheckResult(
                name="pg_restore",
                passed=False,
                detail=f"the backup has data archives but no {SCHEMA_STREAM}",
                remedy="the backup is incomplete; restore from another backup",
            )
        )
    return results


def _pg_restore(reader, name: str) -> str:
    pg_restore = find("pg_restore", lambda: find_tool("pg_restore"))
    _, _, listing = pipe_stream([pg_restore, "--list"], reader.iter_stream(name), keep_output=True)
    entries = sum(1 for line in listing.decode("utf-8", "replace").splitlines() if line and not line.startswith(";"))
    pipe_stream([pg_restore, "--file=/dev/null"], reader.iter_stream(name))
    return f"{entries} TOC entries, every data block read by pg_restore"


def _globals(reader) -> str:
    from core.engines.postgres import roles

    data = b"".join(reader.iter_stream(GLOBALS_STREAM))  # role metadata: small
    try:
        doc = roles.decode_globals(data)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the finding
        raise ToolFailed(f"not valid: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return f"parses ({len(doc.get('roles', {}) or {})} roles)"


def _segment_name(timeline: int, lsn: int, seg_size: int) -> str:
    per_xlogid = 0x100000000 // seg_size
    seg = lsn // seg_size
    return f"{timeline:08X}{seg // per_xlogid:08X}{seg % per_xlogid:08X}"


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def _base_tar(reader) -> str:
    seen: dict[str, tuple[int, str]] = {}  # path -> (size, crc32c hex) of every regular file in the tar
    manifest_bytes = b""
    tar = PaxReader(iter(reader.iter_stream(BASE_STREAM)))
    try:
        while (member := tar.next()) is not None:
            if not member.isreg():
                continue
            if member.name == MANIFEST:
                manifest_bytes = b"".join(bytes(p) for p in tar.data())
                continue
            crc, size = google_crc32c.Checksum(), 0
            for piece in tar.data():
                crc.update(bytes(piece))  # the C extension takes bytes, not a view
                size += len(piece)
            # PostgreSQL prints the CRC as its in-memory (little-endian) bytes in hex.
            seen[member.name] = (size, crc.digest()[::-1].hex())
    except ArchiveFormatError as exc:
        raise ToolFailed(f"not a valid tar: {exc}") from None
    if not manifest_bytes:
        raise ToolFailed(f"the tar holds no {MANIFEST} (pg_basebackup writes one); it is incomplete")
    manifest = _parse_manifest(manifest_bytes)
    wal = {name.rsplit("/", 1)[1]: size for name, (size, _) in seen.items() if name.startswith("pg_wal/")}
    listed = 0
    for entry in manifest.get("Files", []):
        path = entry.get("Path")
        listed += 1
        if path not in seen:
            raise ToolFailed(f"{path} is in the backup manifest but not in the tar")
        size, crc = seen.pop(path)
        if size != entry.get("Size"):
            raise ToolFailed(f"{path} is {size} bytes, the backup manifest says {entry.get('Size')}")
        if entry.get("Checksum-Algorithm") == "CRC32C" and crc != str(entry.get("Checksum", "")).lower():
            raise ToolFailed(f"{path}: CRC-32C {crc} does not match the backup manifest's {entry.get('Checksum')}")
    extra = sorted(p for p in seen if not p.startswith("pg_wal/") and p not in _UNLISTED)
    if extra:
        raise ToolFailed(f"{extra[0]} is in the tar but not in the backup manifest")
    segments = _check_wal(manifest, wal, reader.manifest.position or {})
    return f"{listed} files match the backup manifest (size and checksum), {segments} WAL segments of its range present"


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise ToolFailed(f"{MANIFEST} is not valid JSON") from None
    # The manifest's own SHA-256 covers everything up to the line that holds it (as pg_verifybackup reads it).
    cut = data.rstrip(b"\n").rfind(b"\n")
    if cut < 0 or hashlib.sha256(data[: cut + 1]).hexdigest() != str(doc.get("Manifest-Checksum", "")).lower():
        raise ToolFailed(f"{MANIFEST} does not match its own Manifest-Checksum")
    if doc.get("PostgreSQL-Backup-Manifest-Version") not in (1, 2):
        raise ToolFailed(f"{MANIFEST} version {doc.get('PostgreSQL-Backup-Manifest-Version')!r} is unknown")
    return doc


def _check_wal(manifest: dict[str, Any], wal: dict[str, int], position: dict[str, Any]) -> int:
    """Every segment of the manifest's WAL ranges is in ``pg_wal/`` (``-X fetch`` put it there)."""
    seg_size = int(position.get("wal_segment_size") or (max(wal.values()) if wal else 16 << 20))
    count = 0
    for span in manifest.get("WAL-Ranges", []):
        timeline, start, end = int(span["Timeline"]), _lsn(span["Start-LSN"]), _lsn(span["End-LSN"])
        for seg in range(start // seg_size, (max(end, start + 1) - 1) // seg_size + 1):
            name = _segment_name(timeline, seg * seg_size, seg_size)
            if wal.get(name) != seg_size:
                state = "missing" if name not in wal else f"{wal[name]} bytes, not {seg_size}"
                raise ToolFailed(f"WAL segment {name} of the backup's range is {state}")
            count += 1
    return count
