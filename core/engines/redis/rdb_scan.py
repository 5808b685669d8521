"""The fast RDB walker behind ``redis-checks/3``.

``rdb.walk_rdb`` reads byte by byte through method calls and hashes every
element; on a million small keys that is about 11 us a key. This walker works
on a window of the stream held as ``bytes`` and parses the common encodings
(strings, quicklists, listpacks, intsets, hashtable sets/hashes/zsets)
inline, with one SHA-256 per key (see ``value_part``). An entry that does not
fit the window (a big value) or that uses a rare encoding (streams, modules,
ziplists of Redis < 7) is read by the streaming ``ByteReader`` path, which
digests exactly the same way: both paths feed the same ``Bag``/``Seq``
builders, so the digest depends only on the logical value.

The value parts of ``redis-checks/3`` (the key's entry is then
``lp(key) + lp(type) + part``, summed per database as before):

* string: ``u64 len + bytes`` up to 64 KiB, else ``u64 len + SHA-256(bytes)``;
* list: ``u64 count + SHA-256(u64 length of each element) + SHA-256(elements concatenated)``;
* set, hash, zset (rows: member / (field, value) / (member, f64 score)):
  up to 1024 rows and 1 MiB, ``b"S"`` + the list form over the rows sorted
  (fields flattened in order); larger, ``b"U" + u64 count + sum of
  SHA-256(lp(each field)) mod 2**256``. Both limits are logical, so a value
  digests the same whatever its encoding;
* stream and module values: ``b"D"`` + the ``redis-checks/2`` digest.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from itertools import chain

from core.engines.redis.checks import key_entry
from core.engines.redis.rdb import (
    _OP_AUX,
    _OP_EOF,
    _OP_EXPIRETIME,
    _OP_EXPIRETIME_MS,
    _OP_FREQ,
    _OP_FUNCTION2,
    _OP_FUNCTION_PRE_GA,
    _OP_IDLE,
    _OP_MODULE_AUX,
    _OP_RESIZEDB,
    _OP_SELECTDB,
    _OP_SLOT_INFO,
    MAX_RDB_VERSION,
    ByteReader,
    RdbInfo,
    _corrupt,
    _read_text_double,
    _walk_module_values,
    lp,
    read_len,
    read_length,
    read_object,
    read_string,
)
from core.engines.redis.rdb_encodings import (
    as_bytes,
    intset_items,
    listpack_items,
    lzf_decompress,
    lzf_decompress_c,
    ziplist_items,
)
from core.errors import EngineError

ALGORITHM = "redis-checks/3"
# Strings up to this size are part of the key's entry as they are; larger ones by their SHA-256.
INLINE_STRING = 1 << 16
# Unordered values up to these limits digest as their sorted rows (cheap), larger ones as a sum of row hashes.
SORTED_ROWS = 1024
SORTED_BYTES = 1 << 20
# Entries that do not fit in this much buffered data go the streaming way.
WINDOW = 1 << 20
_MOD = 1 << 256
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_LE_F64 = struct.Struct("<d")
_INTS = [b"%d" % n for n in range(128)]
_INTSET_FORMATS = {2: "h", 4: "i", 8: "q"}
# Encodings that one logical value always serializes to the same bytes (strings, quicklists,
# listpacks, intsets, ziplists); the others (hashtables, skiplists) follow the order of a
# hash table, which differs between two servers holding the same data.
RAW_TYPES = frozenset((0, 10, 11, 12, 13, 14, 16, 17, 18, 20))
_OPS = [bytes([n]) for n in range(256)]
# Streams serialize canonically too (radix-tree order), but only the streaming path reads them.
RAW_STREAMS = frozenset((15, 19, 21))


# Precompiled formats for the usual small counts (struct's own cache is keyed by the format string,
# which would be built on every call).
_LENS = [struct.Struct(f">{n}Q").pack for n in range(65)]
_DOUBLES = [struct.Struct(f">{n}d").pack for n in range(65)]


def _lengths(items: list[bytes]) -> bytes:
    n = len(items)
    return (_LENS[n] if n < 65 else struct.Struct(f">{n}Q").pack)(*map(len, items))


def _lp(data: bytes) -> bytes:
    return _U64.pack(len(data)) + data


def _raw(items: list[bytes]) -> bytes:
    return _U64.pack(len(items)) + _lengths(items) + b"".join(items)


def _small(rows: int, size: int) -> bool:
    return rows <= SORTED_ROWS and size <= SORTED_BYTES


def seq_part(items: list[bytes]) -> bytes:
    """A whole list's part."""
    data = b"".join(items)
    if _small(len(items), len(data)):
        return b"S" + _U64.pack(len(items)) + _lengths(items) + data
    return b"H" + _U64.pack(len(items)) + hashlib.sha256(_lengths(items)).digest() + hashlib.sha256(data).digest()


class Seq:
    """A list fed in any number of pieces (the streaming path): held while it may
    still be small, then hashed as it comes, as ``seq_part`` defines."""

    __slots__ = ("items", "count", "size", "lens", "data")

    def __init__(self) -> None:
        self.items: list[bytes] | None = []
        self.count = self.size = 0
        self.lens = hashlib.sha256()
        self.data = hashlib.sha256()

    def add(self, items: list[bytes]) -> None:
        self.count += len(items)
        if self.items is not None:
            self.size += sum(map(len, items))
            self.items.extend(items)
            if _small(self.count, self.size):
                return
            items, self.items = self.items, None
        self.lens.update(_lengths(items))
        self.data.update(b"".join(items))

    def part(self) -> bytes:
        if self.items is not None:
            return seq_part(self.items)
        return b"H" + _U64.pack(self.count) + self.lens.digest() + self.data.digest()


def _set_sorted(members: list[bytes]) -> bytes:
    members.sort()
    return b"S" + _raw(members)


def _hash_sorted(fields: list[bytes], values: list[bytes]) -> bytes:
    return b"S" + _raw(list(chain.from_iterable(sorted(zip(fields, values, strict=True)))))


def _zset_sorted(members: list[bytes], scores: list[float]) -> bytes:
    ordered_members, ordered_scores = (
        zip(*sorted(zip(members, scores, strict=True)), strict=True) if members else ((), ())
    )
    n = len(members)
    return (
        b"S" + _raw(list(ordered_members)) + (_DOUBLES[n] if n < 65 else struct.Struct(f">{n}d").pack)(*ordered_scores)
    )


class Bag:
    """The rows of one set, hash or sorted set, fed in any number of pieces (the streaming path).

    Holds the rows while the value may still be small (see ``_small``), then
    switches to the sum of row hashes, which the large form is defined by.
    """

    __slots__ = ("kind", "rows", "size", "count", "total")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.rows: list[tuple] | None = []
        self.size = 0
        self.count = 0
        self.total = 0

    def add(self, rows: list[tuple]) -> None:
        self.count += len(rows)
        if self.rows is None:
            self._sum(rows)
            return
        self.size += sum(_row_size(row) for row in rows)
        self.rows.extend(rows)
        if not _small(self.count, self.size):
            self._sum(self.rows)
            self.rows = None

    def _sum(self, rows: list[tuple]) -> None:
        sha = hashlib.sha256
        self.total += sum(int.from_bytes(sha(_row_bytes(row)).digest(), "big") for row in rows)

    def part(self) -> bytes:
        if self.rows is None:
            return b"U" + _U64.pack(self.count) + (self.total % _MOD).to_bytes(32, "big")
        columns = list(zip(*self.rows, strict=True)) if self.rows else [(), ()]
        if self.kind == "set":
            return _set_sorted(list(columns[0]))
        if self.kind == "hash":
            return _hash_sorted(list(columns[0]), list(columns[1]))
        return _zset_sorted(list(columns[0]), list(columns[1]))


def _row_size(row: tuple) -> int:
    # A score counts as its 8 bytes.
    return sum(len(x) if isinstance(x, bytes) else 8 for x in row)


def _row_bytes(row: tuple) -> bytes:
    return b"".join(_lp(x) if isinstance(x, bytes) else _F64.pack(x) for x in row)


def set_part(members: list[bytes]) -> bytes:
    """(Sorts ``members`` in place.)"""
    if len(members) <= SORTED_ROWS:
        # Joined anyway for the small form: its length is the size test, no separate sum.
        members.sort()
        data = b"".join(members)
        if len(data) <= SORTED_BYTES:
            return b"S" + _U64.pack(len(members)) + _lengths(members) + data
    bag = Bag("set")
    bag.add([(m,) for m in members])
    return bag.part()


def hash_part(items: list[bytes]) -> bytes:
    """A hash's part from its flat field/value sequence."""
    if len(items) % 2:
        raise _corrupt("hash blob with an odd number of entries")
    fields, values = items[0::2], items[1::2]
    if len(fields) <= SORTED_ROWS:
        # ``_hash_sorted``, with the joined rows' length as the size test (no separate sum).
        rows = list(chain.from_iterable(sorted(zip(fields, values, strict=True))))
        data = b"".join(rows)
        if len(data) <= SORTED_BYTES:
            return b"S" + _U64.pack(len(rows)) + _lengths(rows) + data
    bag = Bag("hash")
    bag.add(list(zip(fields, values, strict=True)))
    return bag.part()


def zset_part(members: list[bytes], scores: list[float]) -> bytes:
    if _small(len(members), sum(map(len, members)) + 8 * len(members)):
        return _zset_sorted(members, scores)
    bag = Bag("zset")
    bag.add(list(zip(members, scores, strict=True)))
    return bag.part()


def packed_zset_part(items: list[bytes]) -> bytes:
    """A sorted set's part from its flat member/score sequence (scores as decimal strings)."""
    if len(items) % 2:
        raise _corrupt("sorted set blob with an odd number of entries")
    members = items[0::2]
    n = len(members)
    if n < 65:
        # The usual small sorted set: members are distinct, so sorting them alone and looking
        # their scores up orders the rows as ``_zset_sorted`` does, without tuples.
        by_member = dict(zip(members, items[1::2], strict=True))
        if len(by_member) == n:
            ordered = sorted(members)
            data = b"".join(ordered)
            if len(data) + 8 * n <= SORTED_BYTES:
                try:
                    scores = _DOUBLES[n](*map(float, map(by_member.__getitem__, ordered)))
                except ValueError:
                    raise _corrupt("sorted set score is not a number") from None
                return b"S" + _U64.pack(n) + _LENS[n](*map(len, ordered)) + data + scores
    try:
        scores = list(map(float, items[1::2]))
    except ValueError:
        raise _corrupt("sorted set score is not a number") from None
    return zset_part(members, scores)


def string_part(value: bytes) -> bytes:
    if len(value) <= INLINE_STRING:
        return _U64.pack(len(value)) + value
    return _U64.pack(len(value)) + hashlib.sha256(value).digest()


# --- packed blobs, decoded to the client-visible strings ----------------------------------


def lp_strings(blob: bytes) -> list[bytes]:
    """A listpack's entries as bytes (integers as their decimal strings)."""
    out: list[bytes] = []
    app = out.append
    ints = _INTS
    i = 6
    try:
        while True:
            b = blob[i]
            if b < 0x80:
                app(ints[b])
                i += 2
            elif b < 0xC0:  # a string of up to 63 bytes: b - 0x80 of them, after b
                j = i + b - 0x7F
                app(blob[i + 1 : j])
                i = j + 1
            elif b == 0xFF:
                break
            else:
                return [as_bytes(x) for x in listpack_items(blob)]
    except IndexError:
        raise _corrupt("listpack without terminator") from None
    if i != len(blob) - 1:
        raise _corrupt("listpack entry runs past the end")
    return out


def _blob_strings(blob: bytes, rtype: int) -> list[bytes]:
    if rtype == 11:
        # One struct call for all the integers (``intset_items`` checks the header the same way).
        width = int.from_bytes(blob[0:4], "little") if len(blob) >= 8 else 0
        count = int.from_bytes(blob[4:8], "little")
        if width in _INTSET_FORMATS and len(blob) == 8 + width * count:
            return list(map(b"%d".__mod__, struct.unpack_from(f"<{count}{_INTSET_FORMATS[width]}", blob, 8)))
        return [b"%d" % v for v in intset_items(blob)]
    if rtype in (10, 12, 13, 14):
        return [as_bytes(x) for x in ziplist_items(blob)]
    return lp_strings(blob)


# --- the window parser -------------------------------------------------------------------


class _Short(Exception):
    """The entry runs past the window."""


class _Slow(Exception):
    """An encoding left to the streaming path."""


def _length(buf: bytes, pos: int) -> tuple[int, int, bool]:
    b = buf[pos]
    kind = b >> 6
    if kind == 0:
        return b, pos + 1, False
    if kind == 1:
        return ((b & 0x3F) << 8) | buf[pos + 1], pos + 2, False
    if kind == 3:
        return b & 0x3F, pos + 1, True
    if b == 0x80 or b == 0x81:
        end = pos + (5 if b == 0x80 else 9)
        if end > len(buf):
            raise _Short
        return int.from_bytes(buf[pos + 1 : end], "big"), end, False
    raise _corrupt(f"unknown length encoding 0x{b:02x}")


def _string(buf: bytes, pos: int) -> tuple[bytes, int]:
    """An RDB string at ``pos`` and the position after it.

    The usual forms are read here without further calls: short lengths, the
    integer encodings and LZF (Redis compresses every string over 20 bytes, so
    most packed blobs and many values are compressed) with short lengths.
    """
    b = buf[pos]
    if b < 0x40:
        end = pos + 1 + b
        if end > len(buf):
            raise _Short
        return buf[pos + 1 : end], end
    if b < 0x80:
        pos += 2
        end = pos + (((b & 0x3F) << 8) | buf[pos - 1])
        if end > len(buf):
            raise _Short
        return buf[pos:end], end
    if b == 0xC3:
        # Compressed and uncompressed lengths, each in one or two bytes for all but huge values.
        c = buf[pos + 1]
        if c < 0x40:
            clen, pos = c, pos + 2
        elif c < 0x80:
            clen, pos = ((c & 0x3F) << 8) | buf[pos + 2], pos + 3
        else:
            clen, pos, _ = _length(buf, pos + 1)
        u = buf[pos]
        if u < 0x40:
            ulen, pos = u, pos + 1
        elif u < 0x80:
            ulen, pos = ((u & 0x3F) << 8) | buf[pos + 1], pos + 2
        else:
            ulen, pos, _ = _length(buf, pos)
        end = pos + clen
        if end > len(buf):
            raise _Short
        if lzf_decompress_c is not None:
            try:
                out = lzf_decompress_c(buf[pos:end], ulen)
            except ValueError:
                out = None
            if out is not None and len(out) == ulen:
                return out, end
        return lzf_decompress(buf[pos:end], ulen), end  # no C extension, or says what is wrong
    if 0xC0 <= b <= 0xC2:  # an integer of 1, 2 or 4 bytes, as its decimal string
        end = pos + 1 + (1 << (b - 0xC0))
        if end > len(buf):
            raise _Short
        return b"%d" % int.from_bytes(buf[pos + 1 : end], "little", signed=True), end
    n, pos, encoded = _length(buf, pos)
    if encoded:
        raise _corrupt(f"unknown string encoding {n}")
    end = pos + n
    if end > len(buf):
        raise _Short
    return buf[pos:end], end


def _count(buf: bytes, pos: int) -> tuple[int, int]:
    n, pos, encoded = _length(buf, pos)
    if encoded:
        raise _corrupt("encoded value where a length was expected")
    return n, pos


def _skip_string(buf: bytes, pos: int) -> int:
    """The end of the RDB string at ``pos``, without decoding it."""
    n, pos, encoded = _length(buf, pos)
    if encoded:
        if n == 3:
            clen, pos, _ = _length(buf, pos)
            _, pos, _ = _length(buf, pos)
            n = clen
        else:
            n = (1, 2, 4)[n] if n < 3 else _bad_encoding(n)
    end = pos + n
    if end > len(buf):
        raise _Short
    return end


def _bad_encoding(n: int) -> int:
    raise _corrupt(f"unknown string encoding {n}")


def _skip_value(buf: bytes, pos: int, rtype: int) -> int:
    """The end of a value whose encoding is a function of its logical value (see ``RAW_TYPES``)."""
    if rtype == 18:
        nodes, pos = _count(buf, pos)
        for _ in range(nodes):
            _, pos = _count(buf, pos)
            pos = _skip_string(buf, pos)
        return pos
    if rtype == 14:
        nodes, pos = _count(buf, pos)
        for _ in range(nodes):
            pos = _skip_string(buf, pos)
        return pos
    return _skip_string(buf, pos)


def _object(buf: bytes, pos: int, rtype: int) -> tuple[str, bytes, int]:
    """(type name, value part, new position) of one value in the window."""
    # The packed encodings of small values first: nearly every value that ``run`` hands here.
    if rtype == 16:
        blob, pos = _string(buf, pos)
        return "hash", hash_part(lp_strings(blob)), pos
    if rtype == 17:
        blob, pos = _string(buf, pos)
        return "zset", packed_zset_part(lp_strings(blob)), pos
    if rtype == 18:
        if buf[pos] == 1 and buf[pos + 1] == 2:  # the usual small list: one node, packed
            blob, pos = _string(buf, pos + 2)
            return "list", seq_part(lp_strings(blob)), pos
        nodes, pos = _count(buf, pos)
        seq = Seq()
        for _ in range(nodes):
            container, pos = _count(buf, pos)
            if container not in (1, 2):
                raise _corrupt(f"unknown quicklist container {container}")
            blob, pos = _string(buf, pos)
            seq.add([blob] if container == 1 else lp_strings(blob))
        return "list", seq.part(), pos
    if rtype in (11, 20):
        blob, pos = _string(buf, pos)
        return "set", set_part(_blob_strings(blob, rtype)), pos
    if rtype == 0:
        value, pos = _string(buf, pos)
        return "string", string_part(value), pos
    if rtype == 2:
        n, pos = _count(buf, pos)
        members = []
        for _ in range(n):
            m, pos = _string(buf, pos)
            members.append(m)
        return "set", set_part(members), pos
    if rtype == 4:
        n, pos = _count(buf, pos)
        items = []
        for _ in range(2 * n):
            x, pos = _string(buf, pos)
            items.append(x)
        return "hash", hash_part(items), pos
    if rtype == 5:
        n, pos = _count(buf, pos)
        members, scores = [], []
        for _ in range(n):
            m, pos = _string(buf, pos)
            end = pos + 8
            if end > len(buf):
                raise _Short
            members.append(m)
            scores.append(_LE_F64.unpack_from(buf, pos)[0])
            pos = end
        return "zset", zset_part(members, scores), pos
    raise _Slow


# --- the streaming path (big values, rare encodings) -------------------------------------


def _string_stream(r: ByteReader) -> bytes:
    """A string value's part, hashing a big one piece by piece."""
    n, encoded = read_length(r)
    if encoded or n <= INLINE_STRING:
        if encoded:
            from core.engines.redis.rdb import _read_encoded

            return string_part(_read_encoded(r, n))
        return string_part(r.read(n))
    h = hashlib.sha256()
    for piece in r.pieces(n):
        h.update(piece)
    return _U64.pack(n) + h.digest()


def read_object3(r: ByteReader, rtype: int) -> tuple[str, bytes]:
    """(type name, ``redis-checks/3`` value part) of one value, streaming."""
    if rtype == 0:
        return "string", _string_stream(r)
    if rtype in (1, 10, 14, 18):
        seq = Seq()
        if rtype == 1:
            for _ in range(read_len(r)):
                seq.add([read_string(r)])
        elif rtype == 10:
            seq.add(_blob_strings(read_string(r), 10))
        else:
            for _ in range(read_len(r)):
                container = 2 if rtype == 14 else read_len(r)
                if container == 1:
                    seq.add([read_string(r)])
                elif container == 2:
                    seq.add(_blob_strings(read_string(r), 14 if rtype == 14 else 18))
                else:
                    raise _corrupt(f"unknown quicklist container {container}")
        return "list", seq.part()
    if rtype in (2, 11, 20):
        bag = Bag("set")
        if rtype == 2:
            for _ in range(read_len(r)):
                bag.add([(read_string(r),)])
        else:
            return "set", set_part(_blob_strings(read_string(r), rtype))
        return "set", bag.part()
    if rtype in (3, 5, 12, 17):
        if rtype in (12, 17):
            return "zset", packed_zset_part(_blob_strings(read_string(r), rtype))
        bag = Bag("zset")
        for _ in range(read_len(r)):
            member = read_string(r)
            score = _LE_F64.unpack(r.read(8))[0] if rtype == 5 else _read_text_double(r)
            bag.add([(member, score)])
        return "zset", bag.part()
    if rtype in (4, 13, 16):
        if rtype in (13, 16):
            return "hash", hash_part(_blob_strings(read_string(r), rtype))
        bag = Bag("hash")
        for _ in range(read_len(r)):
            field = read_string(r)
            bag.add([(field, read_string(r))])
        return "hash", bag.part()
    type_name, digest = read_object(r, rtype)  # streams and modules: the redis-checks/2 digest
    return type_name, b"D" + digest


def encoded_part(op: int, raw: bytes) -> bytes:
    """The encoded-digest part of a ``RAW_TYPES`` value: its type and bytes (their SHA-256 past 64 KiB)."""
    if len(raw) <= INLINE_STRING:
        return _OPS[op] + _U64.pack(len(raw)) + raw
    return _OPS[op] + _U64.pack(len(raw)) + hashlib.sha256(raw).digest()


def _encoded_stream(r: ByteReader, op: int) -> bytes:
    """``encoded_part`` of a value read through the streaming reader (too big for the window)."""
    h = hashlib.sha256()
    kept = bytearray()
    size = 0

    def tee(data: bytes) -> None:
        nonlocal size
        h.update(data)
        size += len(data)
        if size <= INLINE_STRING:
            kept.extend(data)

    r.flush()
    r.set_tee(tee)
    try:
        if op in RAW_STREAMS:
            _skip_stream(r, op)
        elif op in (14, 18):
            for _ in range(read_len(r)):
                if op == 18:
                    read_len(r)
                _skip_stream_string(r)
        else:
            _skip_stream_string(r)
        r.flush()
    finally:
        r.set_tee(None)
    if size <= INLINE_STRING:
        return _OPS[op] + _U64.pack(size) + bytes(kept)
    return _OPS[op] + _U64.pack(size) + h.digest()


def _skip_stream(r: ByteReader, rtype: int) -> None:
    """Past one stream value (the layout ``rdb._read_stream`` reads), decoding nothing."""
    for _ in range(read_len(r)):
        _skip_stream_string(r)  # node key
        _skip_stream_string(r)  # node listpack
    read_len(r)  # length
    read_len(r), read_len(r)  # last id
    if rtype >= 19:
        for _ in range(5):  # first id, max deleted id, entries added
            read_len(r)
    for _ in range(read_len(r)):  # groups
        _skip_stream_string(r)
        read_len(r), read_len(r)  # last delivered id
        if rtype >= 19:
            read_len(r)  # entries read
        for _ in range(read_len(r)):  # pending entries
            r.read(24)
            read_len(r)
        for _ in range(read_len(r)):  # consumers
            _skip_stream_string(r)
            r.read(16 if rtype >= 21 else 8)
            r.read(16 * read_len(r))


def _skip_stream_string(r: ByteReader) -> None:
    n, encoded = read_length(r)
    if encoded:
        if n == 3:
            n = read_len(r)
            read_len(r)
        elif n < 3:
            n = (1, 2, 4)[n]
        else:
            raise _corrupt(f"unknown string encoding {n}")
    for _ in r.pieces(n):
        pass


# --- whole files and DUMP payloads -------------------------------------------------------


class RdbScanner:
    """Walks a whole RDB into ``checks`` (a ``KeyspaceChecks`` of ``redis-checks/3``).

    Keys are hashed in batches (``KeyspaceChecks.add_persistent`` without a TTL,
    ``add_volatile`` with one, not yet expired), a key at a time only off the
    window path (``checks.add``); ``on_volatile(db, key, expire_ms)``, if
    given, hears of every key with a TTL; function libraries go through
    ``checks.add_function``.
    """

    def __init__(
        self, checks, on_volatile: Callable[[int, bytes, int], None] | None = None, encoded: bool = False
    ) -> None:
        self.checks = checks
        self.on_volatile = on_volatile
        # Encoded digests: a value of a ``RAW_TYPES`` encoding counts as its bytes
        # (``encoded_part``), not decoded; only the restore's shortcut compares these.
        self.encoded = encoded
        self.info = RdbInfo()
        self.consumed = 0  # bytes of the RDB, up to and including its checksum
        self.rest = b""  # what followed the checksum in the last piece read
        self._batches: dict[int, list[bytes]] = {}
        # Keys with a TTL, not expired at ``checks.now_ms``, per database, and the earliest expiry among them.
        self._volatile: dict[int, list[bytes]] = {}
        self._first_expiry: int | None = None

    def _key(self, state: list, key: bytes, type_name: str, part: bytes) -> None:
        """A key the window parser does not batch (it has a TTL, or the streaming path read it)."""
        db, expire = state
        self.info.keys += 1
        self.info.databases.add(db)
        state[1] = None
        if expire is None:
            self._batches.setdefault(db, []).append(key_entry(key, type_name, part))
            return
        self.checks.add(db, key, type_name, expire, part)
        if self.on_volatile is not None:
            self.on_volatile(db, key, expire)

    def _flush(self) -> None:
        for db, entries in self._batches.items():
            if entries:
                self.info.databases.add(db)
                self.checks.add_persistent(db, entries)
                entries.clear()
        for db, entries in self._volatile.items():
            if entries:
                self.info.databases.add(db)
                self.checks.add_volatile(db, entries, self._first_expiry)
                entries.clear()

    def run(self, fill: Callable[[], bytes]) -> RdbInfo:
        """``fill()`` returns the next piece (``b""`` at the end). Stops after the trailing checksum;
        ``rest`` then holds what followed it."""
        buf = b""
        pos = 0
        eof = False
        base = 0  # stream offset of buf[0]

        def refill(want: int) -> None:
            nonlocal buf, pos, eof, base
            self._flush()
            pieces = [buf[pos:]]
            have = len(pieces[0])
            while have < want and not eof:
                piece = fill()
                if not piece:
                    eof = True
                    break
                pieces.append(piece)
                have += len(piece)
            base += pos
            buf, pos = b"".join(pieces), 0

        refill(9)
        magic = buf[:9]
        if len(magic) < 9 or magic[:5] != b"REDIS" or not magic[5:].isdigit():
            raise _corrupt("missing REDIS signature")
        info = self.info
        info.version = int(magic[5:])
        if info.version > MAX_RDB_VERSION:
            raise EngineError(
                f"redis RDB version {info.version} is newer than this genesis-dr understands "
                f"(<= {MAX_RDB_VERSION}); use mode 'logical' for this source or upgrade genesis-dr"
            )
        pos = 9
        state: list = [0, None]  # db, pending expire
        window: list = [b"", 0]  # what the streaming path reads first: (buffer, offset)

        def slow_fill() -> bytes:
            nonlocal eof
            data, at = window
            if at < len(data):
                window[1] = at + (1 << 16)
                return data[at : at + (1 << 16)]
            if eof:
                return b""
            piece = fill()
            eof = not piece
            return piece

        batch = self._batches.setdefault(0, [])
        volatile = self._volatile.setdefault(0, [])
        now_ms = self.checks.now_ms
        on_volatile = self.on_volatile
        first_expiry = self._first_expiry
        typed = {name: lp(name.encode()) for name in ("string", "list", "set", "zset", "hash", "raw")}
        raw_types = RAW_TYPES if self.encoded else None
        ops = _OPS
        pack = _U64.pack
        keys = 0
        while True:
            if len(buf) - pos < WINDOW and not eof:
                refill(2 * WINDOW)
            size = len(buf)
            start = pos
            try:
                op = buf[pos]
                if op < 0xF4:  # a key and its value
                    b = buf[pos + 1]
                    if b < 0x40:  # the usual short key, read inline
                        pos += 2 + b
                        if pos > size:
                            raise _Short
                        key = buf[start + 2 : pos]
                    else:
                        key, pos = _string(buf, pos + 1)
                    if raw_types is not None and op in raw_types:
                        # Encoded digests: find the value's end without decoding it (one string
                        # for most encodings, a one-node quicklist for most lists).
                        at = pos + 2 if op == 18 and buf[pos] == 1 else pos
                        b = buf[at]
                        if op == 18 and at == pos or op == 14:
                            end = _skip_value(buf, pos, op)
                        elif b < 0x40:
                            end = at + 1 + b
                        elif b < 0x80:
                            end = at + 2 + (((b & 0x3F) << 8) | buf[at + 1])
                        else:
                            end = _skip_string(buf, at)
                        if end > size:
                            raise _Short
                        n = end - pos
                        type_name = "raw"
                        part = (
                            ops[op] + pack(n) + buf[pos:end] if n <= INLINE_STRING else encoded_part(op, buf[pos:end])
                        )
                        pos = end
                    elif op == 0:  # a string value: half of most datasets, so inline too
                        b = buf[pos]
                        if b < 0x40:
                            end = pos + 1 + b
                            if end > size:
                                raise _Short
                            value = buf[pos + 1 : end]
                            pos = end
                        else:
                            value, pos = _string(buf, pos)
                        n = len(value)
                        type_name = "string"
                        part = pack(n) + value if n <= INLINE_STRING else string_part(value)
                    else:
                        type_name, part, pos = _object(buf, pos, op)
                    expire = state[1]
                    if expire is None:
                        batch.append(pack(len(key)) + key + typed[type_name] + part)
                        keys += 1
                    elif expire > now_ms:  # a fifth of the keys in a typical cache: batched too
                        state[1] = None
                        volatile.append(pack(len(key)) + key + typed[type_name] + part)
                        keys += 1
                        if first_expiry is None or expire < first_expiry:
                            first_expiry = self._first_expiry = expire
                        if on_volatile is not None:
                            on_volatile(state[0], key, expire)
                    else:  # already expired: not in the checks, but the restore notes name it
                        self._key(state, key, type_name, part)
                    continue
                if op == _OP_EXPIRETIME_MS:
                    if pos + 9 > size:
                        raise _Short
                    state[1] = int.from_bytes(buf[pos + 1 : pos + 9], "little", signed=True)
                    pos += 9
                    continue
                raise _Slow
            except (_Short, IndexError):
                if eof:
                    raise _corrupt("data ends early") from None
                if len(buf) - start < WINDOW:
                    pos = start
                    refill(2 * WINDOW)
                    continue
            except _Slow:
                pass
            # The streaming path, from the entry's start; it may read past the window.
            window[0], window[1] = buf, start
            reader = ByteReader(slow_fill)
            done = self._slow_entry(reader, state)
            base += start + reader.consumed
            buf, pos = reader.remaining() + buf[window[1] :], 0
            batch = self._batches.setdefault(state[0], [])
            volatile = self._volatile.setdefault(state[0], [])
            if done:
                self._flush()
                info.keys += keys
                self.consumed = base
                self.rest = buf
                return info

    def _slow_entry(self, r: ByteReader, state: list) -> bool:
        """One opcode through the streaming reader; True at the end of the file."""
        info = self.info
        op = r.byte()
        if op == _OP_EOF:
            if info.version >= 5:
                r.read(8)  # CRC64; the loading server verifies it
            return True
        if op == _OP_SELECTDB:
            state[0] = read_len(r)
        elif op == _OP_EXPIRETIME_MS:
            state[1] = int.from_bytes(r.read(8), "little", signed=True)
        elif op == _OP_EXPIRETIME:
            state[1] = int.from_bytes(r.read(4), "little", signed=True) * 1000
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
            self.checks.add_function(read_string(r))
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
            if self.encoded and (op in RAW_TYPES or op in RAW_STREAMS):
                type_name, part = "raw", _encoded_stream(r, op)
            else:
                type_name, part = read_object3(r, op)
            self._key(state, key, type_name, part)
        return False


def dump_encoded_part(payload: bytes) -> tuple[str, bytes]:
    """(type, encoded-digest part) of a ``DUMP`` payload: the object's bytes as they are, for ``RAW_TYPES``."""
    if len(payload) >= 11 and (payload[0] in RAW_TYPES or payload[0] in RAW_STREAMS):
        return "raw", encoded_part(payload[0], payload[1:-10])
    return dump_part(payload)


def dump_part(payload: bytes) -> tuple[str, bytes]:
    """(logical type, ``redis-checks/3`` value part) of a ``DUMP`` payload
    (one RDB object, then a 2-byte RDB version and a CRC64)."""
    if len(payload) < 11:
        raise _corrupt("DUMP payload too short")
    body = payload[:-10]
    try:
        type_name, part, end = _object(body, 1, body[0])
    except (_Short, IndexError):
        raise _corrupt("DUMP payload ends early") from None
    except _Slow:
        chunks = iter((body,))
        r = ByteReader(lambda: next(chunks, b""))
        type_name, part = read_object3(r, r.byte())
        end = r.consumed
    if end != len(body):
        raise _corrupt("DUMP payload has trailing bytes")
    return type_name, part
