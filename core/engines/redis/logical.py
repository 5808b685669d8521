"""Logical Redis backups: ``DUMP`` + ``PTTL`` per key, ``RESTORE`` to restore.

Works against any Redis that allows ``DUMP``/``RESTORE`` (managed services
included), where replication sync is usually forbidden.

Consistency caveat: ``SCAN`` is not a point-in-time view. A key written,
renamed or deleted while the backup runs may be captured before or after the
change (or, if renamed, twice or not at all), and a key can be returned twice
when the keyspace is resized during the scan - its duplicate record is
harmless on restore (``REPLACE``) but the recorded count is one higher, which
verification then reports. Use mode ``rdb`` where a consistent snapshot is
needed.

Stream format (one plaintext stream, version 1)::

    magic   b"GDR-REDIS-KEYS\\x00\\x01"
    record  b"K" | db u32 | key_len u32 | key | expire_at_ms i64 (-1: none) | len u64 | DUMP payload
    trailer b"E" | records u64

All integers big-endian. The trailer's count makes a cut-short stream an
error even if the vault's own checks were bypassed.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from core.engines.base import Writable
from core.engines.redis.pipe import RespPipe, command
from core.engines.redis.sync import RespError
from core.errors import EngineError, IntegrityError

MAGIC = b"GDR-REDIS-KEYS\x00\x01"
_RECORD = struct.Struct(">II")
_TTL_LEN = struct.Struct(">qQ")
_TRAILER = struct.Struct(">Q")

# RESTORE batches are cut at whichever limit is reached first.
RESTORE_BATCH_KEYS = 2000
RESTORE_BATCH_BYTES = 8 << 20


@dataclass
class KeyRecord:
    db: int
    key: bytes
    expire_at_ms: int  # absolute Unix time in ms (read from PTTL at dump time), -1 for no expiry
    payload: bytes


def write_header(out: Writable) -> None:
    out.write(MAGIC)


def write_record(out: Writable, db: int, key: bytes, expire_at_ms: int, payload: bytes) -> None:
    out.write(b"K" + _RECORD.pack(db, len(key)) + key + _TTL_LEN.pack(expire_at_ms, len(payload)))
    out.write(payload)


def write_trailer(out: Writable, records: int) -> None:
    out.write(b"E" + _TRAILER.pack(records))


def _read_exact(f: BinaryIO, n: int) -> bytes:
    parts = []
    left = n
    while left:
        data = f.read(left)
        if not data:
            raise IntegrityError("redis logical backup stream is truncated; restore from another backup")
        parts.append(data)
        left -= len(data)
    return b"".join(parts)


def iter_records(f: BinaryIO) -> Iterator[KeyRecord]:
    """Records of a logical backup stream; checks the magic and the trailer."""
    if _read_exact(f, len(MAGIC)) != MAGIC:
        raise IntegrityError("redis logical backup stream has an unknown format; upgrade genesis-dr")
    seen = 0
    while True:
        tag = _read_exact(f, 1)
        if tag == b"E":
            (expected,) = _TRAILER.unpack(_read_exact(f, _TRAILER.size))
            if expected != seen:
                raise IntegrityError(f"redis logical backup stream holds {seen} keys, its trailer says {expected}")
            if f.read(1):
                raise IntegrityError("redis logical backup stream has data after its trailer")
            return
        if tag != b"K":
            raise IntegrityError("redis logical backup stream is corrupt (bad record tag)")
        db, key_len = _RECORD.unpack(_read_exact(f, _RECORD.size))
        key = _read_exact(f, key_len)
        expire_at_ms, payload_len = _TTL_LEN.unpack(_read_exact(f, _TTL_LEN.size))
        seen += 1
        yield KeyRecord(db, key, expire_at_ms, _read_exact(f, payload_len))


_HEAD = struct.Struct(">cII")


def scan_records(read: Callable[[], bytes]) -> Iterator[tuple[int, bytes, int, bytes]]:
    """``iter_records`` as (db, key, expire_at_ms, payload) tuples, parsed from large
    pieces (``read()`` returns the next, ``b""`` at the end): the walker's fast way.
    Checks the magic, the trailer and that nothing follows it, as ``iter_records`` does."""
    buf = b""
    pos = 0
    eof = False

    def more() -> None:
        nonlocal buf, pos, eof
        piece = read()
        if not piece:
            eof = True
            return
        buf = buf[pos:] + piece
        pos = 0

    while len(buf) < len(MAGIC) and not eof:
        more()
    if buf[: len(MAGIC)] != MAGIC:
        raise IntegrityError("redis logical backup stream has an unknown format; upgrade genesis-dr")
    pos = len(MAGIC)
    seen = 0
    head, tail = _HEAD.size, _TTL_LEN.size
    while True:
        size = len(buf)
        tag = buf[pos] if pos < size else None
        if tag == 0x4B:  # b"K"
            if pos + head <= size:
                _, db, key_len = _HEAD.unpack_from(buf, pos)
                at = pos + head + key_len
                if at + tail <= size:
                    expire_at, length = _TTL_LEN.unpack_from(buf, at)
                    end = at + tail + length
                    if end <= size:
                        seen += 1
                        yield db, buf[pos + head : at], expire_at, buf[at + tail : end]
                        pos = end
                        continue
        elif tag == 0x45:  # b"E"
            while len(buf) - pos < 1 + _TRAILER.size and not eof:
                more()
            if len(buf) - pos < 1 + _TRAILER.size:
                break
            (expected,) = _TRAILER.unpack_from(buf, pos + 1)
            if expected != seen:
                raise IntegrityError(f"redis logical backup stream holds {seen} keys, its trailer says {expected}")
            if len(buf) > pos + 1 + _TRAILER.size or read():
                raise IntegrityError("redis logical backup stream has data after its trailer")
            return
        elif tag is not None:
            raise IntegrityError("redis logical backup stream is corrupt (bad record tag)")
        if eof:
            break
        more()
    raise IntegrityError("redis logical backup stream is truncated; restore from another backup")


def restore_records(
    records: Iterator[KeyRecord],
    pipe_for: Callable[[int], RespPipe],
    label: str,
    expired: list[tuple[int, bytes, int]] | None = None,
) -> int:
    """``RESTORE ... REPLACE`` every record, pipelined in batches; returns the count.

    ``pipe_for(db)`` maps a recorded database to a connection on the target
    database. Expiry times are absolute (``RESTORE ... ABSTTL``, Redis 5+): a
    session that would have expired by now is not brought back to life (it is
    skipped and listed in ``expired`` as (db, key, expire_ms)), and the others
    expire when they would have on the source.
    """
    batch: list[bytes] = []
    batch_db = None
    batch_bytes = restored = 0

    def flush() -> None:
        nonlocal batch_bytes
        if not batch:
            return
        for reply in pipe_for(batch_db).execute(b"".join(batch), len(batch)):
            if isinstance(reply, RespError):
                raise EngineError(
                    f"{label}: RESTORE failed ({str(reply)[:120]}); the target may run an older Redis than the source "
                    "(DUMP payloads only load into the same or a newer version)"
                )
        batch.clear()
        batch_bytes = 0

    now_ms = time.time() * 1000
    for rec in records:
        if rec.db != batch_db:
            flush()
            batch_db = rec.db
            pipe_for(rec.db)  # connects (and empties the target database) before the first batch
        if 0 <= rec.expire_at_ms <= now_ms:
            if expired is not None:
                expired.append((rec.db, rec.key, rec.expire_at_ms))
            continue
        if rec.expire_at_ms < 0:
            batch.append(command(b"RESTORE", rec.key, b"0", rec.payload, b"REPLACE"))
        else:
            # An expiry already in the past makes Redis drop the key instead of creating it.
            batch.append(
                command(b"RESTORE", rec.key, b"%d" % max(rec.expire_at_ms, 1), rec.payload, b"REPLACE", b"ABSTTL")
            )
        restored += 1
        batch_bytes += len(rec.payload)
        if len(batch) >= RESTORE_BATCH_KEYS or batch_bytes >= RESTORE_BATCH_BYTES:
            flush()
            now_ms = time.time() * 1000
    flush()
    return restored
