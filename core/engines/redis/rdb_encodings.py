"""Decoders for the compact blobs Redis embeds in RDB data.

LZF-compressed strings, listpacks (Redis >= 7), ziplists (Redis < 7, still
loadable) and intsets. Each blob is small (a quicklist node, a small hash) or
bounded by the size of one value, so decoding works on whole ``bytes``.

Integers inside listpacks/ziplists/intsets are returned as Python ``int``;
callers turn them into their decimal string when they need the logical value,
which is exactly the string Redis would return to a client.
"""

from __future__ import annotations

from core.errors import EngineError

try:  # python-lzf: liblzf in C, about 50x faster than the loop below (the pinned dependency)
    import lzf as _lzf
except ImportError:  # pragma: no cover - an install without the C extension still works, slower
    _lzf = None


def _corrupt(what: str) -> EngineError:
    return EngineError(f"redis RDB data is corrupt ({what}); take a new backup or check the source server")


# The C decompressor itself (None without it), for hot loops that check its answer themselves
# and fall back to ``lzf_decompress`` for the error: saves a call per compressed string.
lzf_decompress_c = _lzf.decompress if _lzf is not None else None


def lzf_decompress(data: bytes, expected_len: int) -> bytes:
    """Decompress an LZF blob (liblzf format, as used by Redis)."""
    if _lzf is not None and expected_len > 0:
        try:
            out = _lzf.decompress(data, expected_len)
        except ValueError:
            out = None
        if out is None or len(out) != expected_len:
            raise _corrupt(f"LZF blob does not decompress to {expected_len} bytes")
        return out
    return lzf_decompress_py(data, expected_len)


def lzf_decompress_py(data: bytes, expected_len: int) -> bytes:
    """The same in Python (kept for installs without the C extension, and to test against it)."""
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        ctrl = data[i]
        i += 1
        if ctrl < 32:
            # Literal run of ctrl+1 bytes.
            end = i + ctrl + 1
            if end > n:
                raise _corrupt("LZF literal runs past the end")
            out += data[i:end]
            i = end
            continue
        length = ctrl >> 5
        if length == 7:
            if i >= n:
                raise _corrupt("LZF length byte missing")
            length += data[i]
            i += 1
        if i >= n:
            raise _corrupt("LZF offset byte missing")
        ref = len(out) - ((ctrl & 0x1F) << 8) - data[i] - 1
        i += 1
        length += 2
        if ref < 0:
            raise _corrupt("LZF back-reference before the start")
        period = len(out) - ref
        if length <= period:
            out += out[ref : ref + length]
        else:
            # Overlapping copy: the referenced run repeats itself.
            pattern = bytes(out[ref:])
            out += (pattern * (length // period + 1))[:length]
    if len(out) != expected_len:
        raise _corrupt(f"LZF produced {len(out)} bytes, expected {expected_len}")
    return bytes(out)


def listpack_items(blob: bytes) -> list[int | bytes]:
    """All entries of a listpack, in order."""
    if len(blob) < 7:
        raise _corrupt("listpack too short")
    items: list[int | bytes] = []
    i = 6  # u32 total bytes, u16 element count
    n = len(blob)
    while True:
        if i >= n:
            raise _corrupt("listpack without terminator")
        b = blob[i]
        if b == 0xFF:
            break
        if b < 0x80:  # 7-bit unsigned int
            items.append(b)
            size = 1
        elif b < 0xC0:  # 6-bit string length
            ln = b & 0x3F
            items.append(blob[i + 1 : i + 1 + ln])
            size = 1 + ln
        elif b < 0xE0:  # 13-bit signed int
            v = ((b & 0x1F) << 8) | blob[i + 1]
            items.append(v - (1 << 13) if v >= 1 << 12 else v)
            size = 2
        elif b < 0xF0:  # 12-bit string length
            ln = ((b & 0x0F) << 8) | blob[i + 1]
            items.append(blob[i + 2 : i + 2 + ln])
            size = 2 + ln
        elif b == 0xF0:  # 32-bit string length
            ln = int.from_bytes(blob[i + 1 : i + 5], "little")
            items.append(blob[i + 5 : i + 5 + ln])
            size = 5 + ln
        elif 0xF1 <= b <= 0xF4:
            width = {0xF1: 2, 0xF2: 3, 0xF3: 4, 0xF4: 8}[b]
            items.append(int.from_bytes(blob[i + 1 : i + 1 + width], "little", signed=True))
            size = 1 + width
        else:
            raise _corrupt(f"unknown listpack encoding 0x{b:02x}")
        i += size + _backlen_size(size)
        if i > n:
            raise _corrupt("listpack entry runs past the end")
    return items


def _backlen_size(entry_len: int) -> int:
    if entry_len <= 127:
        return 1
    if entry_len < 16383:
        return 2
    if entry_len < 2097151:
        return 3
    if entry_len < 268435455:
        return 4
    return 5


def ziplist_items(blob: bytes) -> list[int | bytes]:
    """All entries of a ziplist (written by Redis < 7), in order."""
    if len(blob) < 11:
        raise _corrupt("ziplist too short")
    items: list[int | bytes] = []
    i = 10  # u32 bytes, u32 tail offset, u16 count
    n = len(blob)
    while True:
        if i >= n:
            raise _corrupt("ziplist without terminator")
        if blob[i] == 0xFF:
            break
        i += 5 if blob[i] == 0xFE else 1  # previous entry length
        b = blob[i]
        kind = b >> 6
        if kind == 0:
            ln = b & 0x3F
            items.append(blob[i + 1 : i + 1 + ln])
            i += 1 + ln
        elif kind == 1:
            ln = ((b & 0x3F) << 8) | blob[i + 1]
            items.append(blob[i + 2 : i + 2 + ln])
            i += 2 + ln
        elif kind == 2:
            ln = int.from_bytes(blob[i + 1 : i + 5], "big")
            items.append(blob[i + 5 : i + 5 + ln])
            i += 5 + ln
        elif b == 0xFE:
            items.append(int.from_bytes(blob[i + 1 : i + 2], "little", signed=True))
            i += 2
        elif b in _ZIP_INT_WIDTH:
            width = _ZIP_INT_WIDTH[b]
            items.append(int.from_bytes(blob[i + 1 : i + 1 + width], "little", signed=True))
            i += 1 + width
        elif 0xF1 <= b <= 0xFD:
            items.append((b & 0x0F) - 1)
            i += 1
        else:
            raise _corrupt(f"unknown ziplist encoding 0x{b:02x}")
        if i > n:
            raise _corrupt("ziplist entry runs past the end")
    return items


_ZIP_INT_WIDTH = {0xC0: 2, 0xD0: 4, 0xE0: 8, 0xF0: 3}


def intset_items(blob: bytes) -> list[int]:
    """The integers of an intset, in order."""
    if len(blob) < 8:
        raise _corrupt("intset too short")
    width = int.from_bytes(blob[0:4], "little")
    count = int.from_bytes(blob[4:8], "little")
    if width not in (2, 4, 8) or len(blob) != 8 + width * count:
        raise _corrupt("intset header does not match its size")
    return [int.from_bytes(blob[8 + k * width : 8 + (k + 1) * width], "little", signed=True) for k in range(count)]


def as_bytes(item: int | bytes) -> bytes:
    """The logical (client-visible) string of a packed entry."""
    return str(item).encode() if isinstance(item, int) else bytes(item)
