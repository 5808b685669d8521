"""Streaming walker over Redis RDB data.

Used twice: on a full snapshot as it passes from the replication socket to the
vault (to count keys and digest values consistently with exactly the bytes
stored), and on single ``DUMP`` payloads (the same object encoding) to digest
a live server's keys for verification.

The digest is over *logical* values, never over encodings: a hash stored as a
listpack on one server and as a hashtable on another digests the same, so a
restore into a different Redis version can still be verified. Unordered types
(set, zset, hash) use a sum of per-element SHA-256 values, so element order
does not matter and nothing needs sorting in memory.

Memory: the reader holds one receive chunk; a string value larger than
``_STREAM_THRESHOLD`` is hashed piece by piece. Packed blobs (listpacks,
ziplists, intsets) and LZF-compressed strings are decoded whole; they are
bounded by the size of one value (Redis held them in memory too).

Understood: RDB versions up to 12 and every object type Redis 2.x-7.2 writes
except zipmap (type 9, Redis < 2.6) and module v1 values; anything else raises
``EngineError`` naming the type rather than guessing.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from operator import methodcaller

from core.engines.redis.rdb_encodings import (
    as_bytes,
    intset_items,
    listpack_items,
    lzf_decompress,
    ziplist_items,
)
from core.errors import EngineError

MAX_RDB_VERSION = 12
_STREAM_THRESHOLD = 1 << 16
_MOD = 1 << 256
_DIGEST = methodcaller("digest")

# Opcodes (rdb.h).
_OP_SLOT_INFO = 244
_OP_FUNCTION2 = 245
_OP_FUNCTION_PRE_GA = 246
_OP_MODULE_AUX = 247
_OP_IDLE = 248
_OP_FREQ = 249
_OP_AUX = 250
_OP_RESIZEDB = 251
_OP_EXPIRETIME_MS = 252
_OP_EXPIRETIME = 253
_OP_SELECTDB = 254
_OP_EOF = 255

_MODULE_CHARSET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _corrupt(what: str) -> EngineError:
    return EngineError(f"redis RDB data is corrupt ({what}); take a new backup or check the source server")


class ByteReader:
    """Exact reads over a chunked byte source.

    ``fill()`` returns the next chunk (``b""`` at the end). Every byte the
    walker consumes is handed to ``on_consumed`` in chunk-sized pieces (the
    tee into the vault), so the sink receives exactly the parsed bytes.
    """

    def __init__(self, fill: Callable[[], bytes], on_consumed: Callable[[bytes], object] | None = None) -> None:
        self._fill = fill
        self._on_consumed = on_consumed
        self._buf = bytearray()
        self._pos = 0
        self.consumed = 0

    def _need(self, n: int) -> None:
        self.flush()
        while len(self._buf) < n:
            chunk = self._fill()
            if not chunk:
                raise _corrupt("data ends early")
            self._buf += chunk

    def flush(self) -> None:
        """Hand consumed bytes to ``on_consumed`` and drop them."""
        if self._pos:
            if self._on_consumed is not None:
                self._on_consumed(bytes(self._buf[: self._pos]))
            del self._buf[: self._pos]
            self._pos = 0

    def read(self, n: int) -> bytes:
        if len(self._buf) - self._pos < n:
            self._need(n)
        start = self._pos
        self._pos += n
        self.consumed += n
        return bytes(self._buf[start : self._pos])

    def byte(self) -> int:
        if self._pos >= len(self._buf):
            self._need(1)
        b = self._buf[self._pos]
        self._pos += 1
        self.consumed += 1
        return b

    def pieces(self, n: int) -> Iterator[bytes]:
        """``n`` bytes as a sequence of pieces, without buffering them all."""
        while n > 0:
            if self._pos >= len(self._buf):
                self._need(1)
            take = min(n, len(self._buf) - self._pos)
            start = self._pos
            self._pos += take
            self.consumed += take
            n -= take
            yield bytes(self._buf[start : self._pos])

    def set_tee(self, on_consumed: Callable[[bytes], object] | None) -> None:
        """Hand bytes consumed from now on to ``on_consumed`` (after a ``flush``)."""
        self.flush()
        self._on_consumed = on_consumed

    def stop_tee(self) -> None:
        """Stop handing bytes to ``on_consumed`` (after a final ``flush``)."""
        self.flush()
        self._on_consumed = None

    def buffered(self) -> int:
        """Bytes received but not consumed yet."""
        return len(self._buf) - self._pos

    def remaining(self) -> bytes:
        """The bytes received but not consumed yet (after a final ``flush``)."""
        self.flush()
        return bytes(self._buf)


# --- digest primitives ------------------------------------------------------


def lp(data: bytes) -> bytes:
    """Length-prefixed bytes, so concatenations cannot collide."""
    return len(data).to_bytes(8, "big") + data


class UnorderedDigest:
    """Order-independent digest: the sum of SHA-256 values modulo 2**256."""

    def __init__(self) -> None:
        self.total = 0
        self.count = 0

    def add(self, data: bytes) -> None:
        # Reduced once in ``digest``: a million additions grow the sum by only 20 bits.
        self.total += int.from_bytes(hashlib.sha256(data).digest(), "big")
        self.count += 1

    def add_many(self, entries: list[bytes]) -> None:
        """``add`` each entry; the loop runs in C (map over built-ins), not in Python bytecode."""
        hashes = map(_DIGEST, map(hashlib.sha256, entries))
        self.total += sum(map(int.from_bytes, hashes, repeat("big")))
        self.count += len(entries)

    def digest(self) -> bytes:
        return (self.total % _MOD).to_bytes(32, "big")


def _score(value: float) -> bytes:
    return struct.pack(">d", value)


# --- primitive readers ------------------------------------------------------


def read_length(r: ByteReader) -> tuple[int, bool]:
    """An RDB length; the flag is True for a special string encoding."""
    b = r.byte()
    kind = b >> 6
    if kind == 0:
        return b & 0x3F, False
    if kind == 1:
        return ((b & 0x3F) << 8) | r.byte(), False
    if kind == 3:
        return b & 0x3F, True
    if b == 0x80:
        return int.from_bytes(r.read(4), "big"), False
    if b == 0x81:
        return int.from_bytes(r.read(8), "big"), False
    raise _corrupt(f"unknown length encoding 0x{b:02x}")


def read_len(r: ByteReader) -> int:
    value, encoded = read_length(r)
    if encoded:
        raise _corrupt("encoded value where a length was expected")
    return value


def _read_encoded(r: ByteReader, enc: int) -> bytes:
    if enc == 0:
        return str(int.from_bytes(r.read(1), "little", signed=True)).encode()
    if enc == 1:
        return str(int.from_bytes(r.read(2), "little", signed=True)).encode()
    if enc == 2:
        return str(int.from_bytes(r.read(4), "little", signed=True)).encode()
    if enc == 3:
        clen = read_len(r)
        ulen = read_len(r)
        return lzf_decompress(r.read(clen), ulen)
    raise _corrupt(f"unknown string encoding {enc}")


def read_string(r: ByteReader) -> bytes:
    """A whole RDB string (for keys, members and packed blobs)."""
    n, encoded = read_length(r)
    return _read_encoded(r, n) if encoded else r.read(n)


def feed_string(r: ByteReader, h) -> None:
    """Hash a length-prefixed RDB string into ``h`` without holding it whole."""
    n, encoded = read_length(r)
    if encoded:
        h.update(lp(_read_encoded(r, n)))
        return
    h.update(n.to_bytes(8, "big"))
    if n <= _STREAM_THRESHOLD:
        h.update(r.read(n))
    else:
        for piece in r.pieces(n):
            h.update(piece)


def _read_text_double(r: ByteReader) -> float:
    n = r.byte()
    if n == 253:
        return float("nan")
    if n == 254:
        return float("inf")
    if n == 255:
        return float("-inf")
    return float(r.read(n))


def _module_name(module_id: int) -> str:
    module_id >>= 10
    chars = []
    for _ in range(9):
        chars.append(chr(_MODULE_CHARSET[module_id & 63]))
        module_id >>= 6
    return "".join(reversed(chars))


def _walk_module_values(r: ByteReader, h) -> None:
    """Module v2 serialisation: typed opcodes until the EOF opcode."""
    while True:
        op = read_len(r)
        if op == 0:
            return
        if op in (1, 2):
            h.update(lp(str(read_len(r)).encode()))
        elif op == 3:
            h.update(r.read(4))
        elif op == 4:
            h.update(r.read(8))
        elif op == 5:
            feed_string(r, h)
        else:
            raise _corrupt(f"unknown module opcode {op}")


# --- objects ----------------------------------------------------------------


def read_object(r: ByteReader, rtype: int, pending: bool = True) -> tuple[str, bytes]:
    """Read one value of RDB type ``rtype``: (logical type name, value digest).

    ``pending``: a stream's digest covers its consumer groups' pending entries
    (ids, delivery counts, owning consumers); False gives the digests recorded
    by ``redis-checks/1``, which had only their counts.
    """
    if rtype == 0:
        h = hashlib.sha256(b"string")
        feed_string(r, h)
        return "string", h.digest()
    if rtype in (1, 10, 14, 18):
        return "list", _read_list(r, rtype)
    if rtype in (2, 11, 20):
        return "set", _read_set(r, rtype)
    if rtype in (3, 5, 12, 17):
        return "zset", _read_zset(r, rtype)
    if rtype in (4, 13, 16):
        return "hash", _read_hash(r, rtype)
    if rtype in (15, 19, 21):
        return "stream", _read_stream(r, rtype, pending)
    if rtype == 7:
        module_id = read_len(r)
        name = _module_name(module_id)
        h = hashlib.sha256(b"module" + lp(name.encode()))
        _walk_module_values(r, h)
        return f"module:{name}", h.digest()
    raise EngineError(
        f"redis RDB object type {rtype} is not understood by this version of genesis-dr "
        "(zipmap, module v1 or a newer Redis); use mode 'logical' for this source or upgrade genesis-dr"
    )


def _read_list(r: ByteReader, rtype: int) -> bytes:
    h = hashlib.sha256(b"list")
    if rtype == 1:
        for _ in range(read_len(r)):
            feed_string(r, h)
    elif rtype == 10:
        for item in ziplist_items(read_string(r)):
            h.update(lp(as_bytes(item)))
    elif rtype == 14:
        for _ in range(read_len(r)):
            for item in ziplist_items(read_string(r)):
                h.update(lp(as_bytes(item)))
    else:  # quicklist v2: nodes are PLAIN (one big element) or PACKED (listpack)
        for _ in range(read_len(r)):
            container = read_len(r)
            if container == 1:
                feed_string(r, h)
            elif container == 2:
                for item in listpack_items(read_string(r)):
                    h.update(lp(as_bytes(item)))
            else:
                raise _corrupt(f"unknown quicklist container {container}")
    return h.digest()


def _read_set(r: ByteReader, rtype: int) -> bytes:
    d = UnorderedDigest()
    if rtype == 2:
        for _ in range(read_len(r)):
            d.add(read_string(r))
    else:
        blob = read_string(r)
        items = intset_items(blob) if rtype == 11 else listpack_items(blob)
        for item in items:
            d.add(as_bytes(item))
    return d.digest()


def _read_zset(r: ByteReader, rtype: int) -> bytes:
    d = UnorderedDigest()
    if rtype in (3, 5):
        for _ in range(read_len(r)):
            member = read_string(r)
            score = struct.unpack("<d", r.read(8))[0] if rtype == 5 else _read_text_double(r)
            d.add(lp(member) + _score(score))
    else:
        blob = read_string(r)
        items = ziplist_items(blob) if rtype == 12 else listpack_items(blob)
        if len(items) % 2:
            raise _corrupt("sorted set blob with an odd number of entries")
        for k in range(0, len(items), 2):
            d.add(lp(as_bytes(items[k])) + _score(float(as_bytes(items[k + 1]))))
    return d.digest()


def _read_hash(r: ByteReader, rtype: int) -> bytes:
    d = UnorderedDigest()
    if rtype == 4:
        for _ in range(read_len(r)):
            key = read_string(r)
            d.add(lp(key) + lp(read_string(r)))
    else:
        blob = read_string(r)
        items = ziplist_items(blob) if rtype == 13 else listpack_items(blob)
        if len(items) % 2:
            raise _corrupt("hash blob with an odd number of entries")
        for k in range(0, len(items), 2):
            d.add(lp(as_bytes(items[k])) + lp(as_bytes(items[k + 1])))
    return d.digest()


def _stream_id(r: ByteReader) -> bytes:
    return read_len(r).to_bytes(8, "big") + read_len(r).to_bytes(8, "big")


def _read_stream(r: ByteReader, rtype: int, pending: bool = True) -> bytes:
    """Entries in order, then length, last id and consumer groups: name, last
    delivered id, pending entries (id and delivery count) and consumers with
    the ids they hold. Fields only some RDB versions carry (first id, entries
    added, group read counters) and times (delivery, seen, active) are left
    out, so a stream digests the same on Redis 6 and 7 and after a restore."""
    h = hashlib.sha256(b"stream")
    for _ in range(read_len(r)):
        node_key = read_string(r)
        if len(node_key) != 16:
            raise _corrupt("stream node key is not a stream id")
        _hash_stream_listpack(h, node_key, listpack_items(read_string(r)))
    h.update(read_len(r).to_bytes(8, "big"))  # length
    h.update(_stream_id(r))  # last id
    if rtype >= 19:
        _stream_id(r)  # first id
        _stream_id(r)  # max deleted id
        read_len(r)  # entries added
    groups = read_len(r)
    h.update(groups.to_bytes(8, "big"))
    for _ in range(groups):
        h.update(lp(read_string(r)))
        h.update(_stream_id(r))  # last delivered id
        if rtype >= 19:
            read_len(r)  # entries read
        pel = read_len(r)
        h.update(pel.to_bytes(8, "big"))
        for _ in range(pel):
            entry_id = r.read(16)
            r.read(8)  # delivery time
            count = read_len(r)
            if pending:
                h.update(entry_id + count.to_bytes(8, "big"))
        consumers = read_len(r)
        h.update(consumers.to_bytes(8, "big"))
        for _ in range(consumers):
            h.update(lp(read_string(r)))
            r.read(8)  # seen time
            if rtype >= 21:
                r.read(8)  # active time
            cpel = read_len(r)
            h.update(cpel.to_bytes(8, "big"))
            ids = r.read(16 * cpel)
            if pending:
                h.update(ids)
    return h.digest()


def _hash_stream_listpack(h, node_key: bytes, e: list[int | bytes]) -> None:
    """Decode one stream listpack: a master entry, then delta-encoded entries.

    The node's bytes are gathered and hashed with one ``update`` (the same
    digest as one ``update`` per field, at a fraction of the calls)."""
    master_ms = int.from_bytes(node_key[:8], "big")
    master_seq = int.from_bytes(node_key[8:], "big")
    out: list[bytes] = []
    add = out.append
    try:
        n_master = e[2]
        master_fields = [lp(as_bytes(f)) for f in e[3 : 3 + n_master]]
        master_count = len(master_fields).to_bytes(8, "big")
        i = 3 + n_master + 1  # skip the master terminator
        while i < len(e):
            flags, ms_diff, seq_diff = e[i], e[i + 1], e[i + 2]
            i += 3
            if flags & 2:  # same fields as the master entry
                fields = master_fields
                count = master_count
                values = e[i : i + n_master]
                i += n_master
            else:
                nf = e[i]
                fields = [lp(as_bytes(f)) for f in e[i + 1 : i + 1 + 2 * nf : 2]]
                count = len(fields).to_bytes(8, "big")
                values = e[i + 2 : i + 2 + 2 * nf : 2]
                i += 1 + 2 * nf
            i += 1  # lp-count
            if flags & 1:  # deleted
                continue
            add((master_ms + ms_diff).to_bytes(8, "big") + (master_seq + seq_diff).to_bytes(8, "big") + count)
            for f, v in zip(fields, values, strict=True):
                add(f)
                add(lp(as_bytes(v)))
    except (IndexError, TypeError, ValueError) as exc:
        raise _corrupt(f"stream listpack: {exc}") from None
    h.update(b"".join(out))


# --- whole files and DUMP payloads -----------------------------------------


@dataclass
class RdbInfo:
    """What the walker learned about a whole RDB file."""

    version: int = 0
    aux: dict[str, str] = field(default_factory=dict)
    keys: int = 0
    databases: set[int] = field(default_factory=set)


KeyCallback = Callable[[int, bytes, str, "int | None", bytes], None]


def walk_rdb(
    r: ByteReader,
    on_key: KeyCallback,
    pending: bool = True,
    on_function: Callable[[bytes], None] | None = None,
) -> RdbInfo:
    """Walk a whole RDB file, calling ``on_key(db, key, type, expire_ms, digest)``
    and ``on_function(code)`` for each function library (Redis 7+).

    ``expire_ms`` is the absolute expiry (Unix ms) or None. Reading stops right
    after the trailing checksum, so the caller can check what follows.
    """
    magic = r.read(9)
    if magic[:5] != b"REDIS" or not magic[5:].isdigit():
        raise _corrupt("missing REDIS signature")
    info = RdbInfo(version=int(magic[5:]))
    if info.version > MAX_RDB_VERSION:
        raise EngineError(
            f"redis RDB version {info.version} is newer than this genesis-dr understands "
            f"(<= {MAX_RDB_VERSION}); use mode 'logical' for this source or upgrade genesis-dr"
        )
    db = 0
    expire: int | None = None
    while True:
        op = r.byte()
        if op == _OP_EOF:
            if info.version >= 5:
                r.read(8)  # CRC64; the loading server verifies it
            return info
        if op == _OP_SELECTDB:
            db = read_len(r)
        elif op == _OP_EXPIRETIME_MS:
            expire = int.from_bytes(r.read(8), "little", signed=True)
        elif op == _OP_EXPIRETIME:
            expire = int.from_bytes(r.read(4), "little", signed=True) * 1000
        elif op == _OP_RESIZEDB:
            read_len(r)
            read_len(r)
        elif op == _OP_AUX:
            name = read_string(r).decode("utf-8", "replace")
            info.aux[name] = read_string(r).decode("utf-8", "replace")
        elif op == _OP_FREQ:
            r.byte()
        elif op == _OP_IDLE:
            read_len(r)
        elif op == _OP_FUNCTION2:
            code = read_string(r)
            if on_function is not None:
                on_function(code)
        elif op == _OP_FUNCTION_PRE_GA:
            read_string(r)  # name
            read_string(r)  # engine
            if read_len(r):
                read_string(r)  # description
            read_string(r)  # code
        elif op == _OP_MODULE_AUX:
            read_len(r)  # module id
            read_len(r)  # when-opcode
            read_len(r)  # when
            _walk_module_values(r, hashlib.sha256())
        elif op == _OP_SLOT_INFO:
            read_len(r)
            read_len(r)
            read_len(r)
        else:
            key = read_string(r)
            type_name, digest = read_object(r, op, pending)
            on_key(db, key, type_name, expire, digest)
            info.keys += 1
            info.databases.add(db)
            expire = None


def dump_digest(payload: bytes, pending: bool = True) -> tuple[str, bytes]:
    """(logical type, value digest) of a ``DUMP`` payload.

    A payload is one RDB object followed by a 2-byte RDB version and a CRC64.
    """
    if len(payload) < 11:
        raise _corrupt("DUMP payload too short")
    body = payload[:-10]
    chunks = iter((body,))
    r = ByteReader(lambda: next(chunks, b""))
    type_name, digest = read_object(r, r.byte(), pending)
    if r.consumed != len(body):
        raise _corrupt("DUMP payload has trailing bytes")
    return type_name, digest
