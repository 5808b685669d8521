"""The PAX tar format of ``files.tar``, written and read without ``tarfile``.

Why not ``tarfile``: per member it copies the TarInfo, builds the header
through several dictionaries and re-buffers every byte of data (its stream
buffer is re-sliced on each write); with 20,000 small files per GB that was a
third of a backup's Python time and most of a restore's. This module writes
the same archive shape - POSIX ustar headers, a PAX ``x`` header before any
member that needs one (long or non-ASCII names, nanosecond mtimes, large
ids/sizes, ``SCHILY.xattr.*``, GNU sparse 1.0) - straight into large buffered
writes, and reads it back in place from the stream's chunks.

The reader accepts what ``tarfile`` and GNU tar write in the formats that
matter: ustar (with ``prefix``), PAX ``x`` and ``g`` headers (``hdrcharset``
included), GNU long names (``L``/``K``), base-256 numbers, and GNU PAX sparse
1.0. It checks each header's checksum. It does not judge names or types:
safety is ``core.engines.files.tarsafe``'s job, member by member.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

BLOCK = 512
RECORD = 20 * BLOCK  # archives end on a 10 KiB record, as tar and tarfile write them
# Stream writes are gathered up to this size (the vault's chunks are larger).
WRITE_SIZE = 1 << 20
_DIRECT = 64 << 10  # pieces at least this large skip the gathering buffer
# A PAX or GNU long-name header larger than this is refused: the reader holds it in memory.
MAX_META = 16 << 20

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE = b"0", b"\0", b"1", b"2"
CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"3", b"4", b"5", b"6", b"7"
REGULAR = (REGTYPE, AREGTYPE, CONTTYPE)
_PAX, _GLOBAL, _LONGNAME, _LONGLINK = b"x", b"g", b"L", b"K"
_MAGIC = b"ustar\x0000"
_ZERO_BLOCK = bytes(BLOCK)
_PAD = bytes(RECORD)
_XATTR = "SCHILY.xattr."


class ArchiveFormatError(Exception):
    """The stream is not a tar archive we can read (bad header, truncated, unknown encoding)."""


# -- writing ------------------------------------------------------------------------------


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _fits(value: int, width: int) -> bool:
    return 0 <= value < 8 ** (width - 1)


def _field(raw: bytes, width: int) -> bytes:
    return raw[:width].ljust(width, b"\0")


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def pax_records(records: list[tuple[str, bytes]]) -> bytes:
    """The body of a PAX ``x`` header, as tarfile writes it (``hdrcharset=BINARY`` first when a
    value is not UTF-8, so readers keep its bytes)."""
    out = []
    if not all(_is_utf8(value) for _, value in records):
        out.append(b"21 hdrcharset=BINARY\n")
    for keyword, value in records:
        body = keyword.encode("utf-8", "surrogateescape") + b"=" + value + b"\n"
        length = len(body) + 1  # the space
        size = length + len(str(length))
        if len(str(size)) != len(str(length)):
            size = length + len(str(size))
        out.append(b"%d " % size + body)
    return b"".join(out)


@dataclass
class Header:
    """What a member's header says. ``name`` and ``linkname`` are file-system bytes; a directory's
    name gets its trailing ``/`` here. ``pax`` holds extra records (mtime, xattrs, sparse)."""

    name: bytes
    type: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0  # whole seconds; nanoseconds travel as the PAX "mtime" record
    linkname: bytes = b""
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax: list[tuple[str, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        """The header blocks: a PAX ``x`` header if needed, then the ustar block."""
        records = list(self.pax)
        name, link = self.name, self.linkname
        uname, gname = self.uname.encode("utf-8", "surrogateescape"), self.gname.encode("utf-8", "surrogateescape")
        if len(name) > 100 or not name.isascii():
            records.append(("path", name))
        if len(link) > 100 or not link.isascii():
            records.append(("linkpath", link))
        if len(uname) > 32 or not uname.isascii():
            records.append(("uname", uname))
        if len(gname) > 32 or not gname.isascii():
            records.append(("gname", gname))
        numbers = []
        for key, value, width in (("uid", self.uid, 8), ("gid", self.gid, 8), ("size", self.size, 12)):
            if _fits(value, width):
                numbers.append(value)
            else:
                records.append((key, b"%d" % value))
                numbers.append(0)
        mtime = self.mtime
        if not _fits(mtime, 12):
            if not any(k == "mtime" for k, _ in records):
                records.append(("mtime", b"%d" % mtime))
            mtime = 0
        out = b""
        if records:
            body = pax_records(records)
            out = _ustar(b"././@PaxHeader", _PAX, 0o644, 0, 0, len(body), 0, b"", b"", b"", 0, 0) + _padded(body)
        uid, gid, size = numbers
        return out + _ustar(
            name, self.type, self.mode, uid, gid, size, mtime, link, uname, gname, self.devmajor, self.devminor
        )


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def _ustar(name, kind, mode, uid, gid, size, mtime, link, uname, gname, major, minor) -> bytes:
    device = kind in (CHRTYPE, BLKTYPE)
    block = b"".join(
        (
            _field(name, 100),
            _octal(mode & 0o7777, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",
            kind,
            _field(link, 100),
            _MAGIC,
            _field(uname, 32),
            _field(gname, 32),
            _octal(major, 8) if device else bytes(8),
            _octal(minor, 8) if device else bytes(8),
            bytes(167),
        )
    )
    checksum = b"%06o\0" % sum(block)
    return block[:148] + checksum + block[155:]


class PaxWriter:
    """Writes members into ``out`` in writes of about ``WRITE_SIZE`` bytes (never more).

    Call ``member(header)`` then feed exactly ``header.size`` bytes of data with
    ``data`` (any bytes-like objects), then the next member; ``close`` ends the
    archive. Nothing is written at the end if the caller fails before ``close``:
    an archive without its end marker is never mistaken for a complete one.
    """

    def __init__(self, out) -> None:
        self._out = out
        self._buf = bytearray()
        self._offset = 0
        self._due = 0  # data bytes the current member still owes

    def member(self, header: Header) -> None:
        if self._due:
            raise ValueError(f"previous member is {self._due} bytes short")
        self._put(header.encode())
        self._due = header.size
        if not self._due:
            return
        self._pad_after = -header.size % BLOCK

    def data(self, piece) -> None:
        n = len(piece)
        if n > self._due:
            raise ValueError("more data than the member's size")
        self._due -= n
        self._put(piece)
        if not self._due and self._pad_after:
            self._put(_ZERO_BLOCK[: self._pad_after])
            self._pad_after = 0

    def _put(self, piece) -> None:
        n = len(piece)
        self._offset += n
        buf = self._buf
        if n >= _DIRECT and n <= WRITE_SIZE:
            # File data goes out as it is (the vault copies it into its chunk once).
            if buf:
                self._out.write(buf)
                self._buf = bytearray()
            self._out.write(piece)
            return
        if len(buf) + n < WRITE_SIZE:
            buf += piece
            return
        if buf:
            take = WRITE_SIZE - len(buf)
            buf += piece[:take]
            self._out.write(buf)
            self._buf = buf = bytearray()
            piece = memoryview(piece)[take:]
        view = memoryview(piece)
        while len(view) >= WRITE_SIZE:
            self._out.write(view[:WRITE_SIZE])
            view = view[WRITE_SIZE:]
        buf += view

    def close(self) -> None:
        if self._due:
            raise ValueError(f"last member is {self._due} bytes short")
        self._put(bytes(2 * BLOCK))
        self._put(_PAD[: -self._offset % RECORD])
        if self._buf:
            self._out.write(self._buf)
            self._buf = bytearray()

    _pad_after = 0


# -- reading ------------------------------------------------------------------------------


@dataclass(slots=True)
class Member:
    """One archive member as read. ``name``/``linkname`` are str (file-system bytes decoded with
    surrogateescape, as ``os`` functions take them); ``size`` is the file's real size (for a sparse
    member, not the stored bytes); ``xattrs`` the ``SCHILY.xattr.*`` records as bytes."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    size: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    sparse: list[tuple[int, int]] | None = None
    stored: int = 0  # bytes of data that follow the header (map and segments, for a sparse member)

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE

    def isreg(self) -> bool:
        return self.type in REGULAR


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _cstr(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _number(raw: bytes) -> int:
    if raw[0] in (0o200, 0o377):  # GNU base-256
        n = int.from_bytes(raw[1:], "big")
        return n - 256 ** (len(raw) - 1) if raw[0] == 0o377 else n
    text = _cstr(raw).strip(b" \0")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ArchiveFormatError(f"bad number field {raw!r} in a header") from None


def _pax_time_ns(text: bytes) -> int:
    sign = -1 if text.startswith(b"-") else 1
    whole, _, frac = text.lstrip(b"-").partition(b".")
    try:
        return sign * (int(whole or b"0") * 1_000_000_000 + int((frac[:9] or b"0").ljust(9, b"0")))
    except ValueError:
        raise ArchiveFormatError(f"bad PAX mtime {text!r}") from None


def parse_pax(body: bytes) -> dict[str, bytes]:
    """Records of a PAX header body: keyword -> raw value bytes."""
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        space = body.find(b" ", pos)
        if space < 0:
            raise ArchiveFormatError("bad PAX record (no length)")
        try:
            length = int(body[pos:space])
        except ValueError:
            raise ArchiveFormatError("bad PAX record length") from None
        end = pos + length
        if length <= 0 or end > len(body) or body[end - 1 : end] != b"\n":
            raise ArchiveFormatError("bad PAX record (length does not fit)")
        keyword, eq, value = body[space + 1 : end - 1].partition(b"=")
        if not eq:
            raise ArchiveFormatError("bad PAX record (no '=')")
        out[_decode(keyword)] = value
        pos = end
    return out


class PaxReader:
    """Reads members from an iterator of byte pieces (the stream's chunks), in place.

    ``next()`` gives the next member (None at the end marker); ``data()`` then
    yields its stored bytes as memoryviews into the pieces (no copies). Data a
    caller leaves unread is skipped by the next ``next()``.
    """

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self._pieces = pieces
        self._view = memoryview(b"")
        self._due = 0  # unread data of the current member
        self._pad = 0  # padding after it
        self._global: dict[str, bytes] = {}
        self.ended = False

    # -- bytes in ---------------------------------------------------------------------

    def _more(self) -> bool:
        for piece in self._pieces:
            if piece:
                self._view = memoryview(piece)
                return True
        return False

    def _take(self, n: int) -> bytes:
        """Exactly ``n`` bytes (a copy), or ArchiveFormatError if the stream ends first."""
        view = self._view
        if len(view) >= n:
            self._view = view[n:]
            return bytes(view[:n])
        parts, need = [bytes(view)], n - len(view)
        while need:
            if not self._more():
                raise ArchiveFormatError("the archive ends in the middle of a member (truncated)")
            view = self._view
            part = view[:need]
            parts.append(bytes(part))
            need -= len(part)
            self._view = view[len(part) :]
        return b"".join(parts)

    def _skip(self, n: int) -> None:
        while n:
            if not self._view and not self._more():
                raise ArchiveFormatError("the archive ends in the middle of a member (truncated)")
            step = min(n, len(self._view))
            self._view = self._view[step:]
            n -= step

    def data(self) -> Iterator[memoryview]:
        """The current member's stored bytes, in pieces."""
        while self._due:
            if not self._view and not self._more():
                raise ArchiveFormatError("the archive ends in the middle of a member (truncated)")
            view = self._view
            take = min(self._due, len(view))
            self._view = view[take:]
            self._due -= take
            yield view[:take]

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes of the current member's data (a copy; for small reads such as a sparse map)."""
        n = min(n, self._due)
        self._due -= n
        return self._take(n)

    # -- headers ----------------------------------------------------------------------

    def _block(self) -> bytes | None:
        """The next header block; None at the end-of-archive marker."""
        if not self._view and not self._more():
            # tarfile and GNU tar accept an archive that simply stops after a member.
            return None
        block = self._take(BLOCK)
        if block == _ZERO_BLOCK:
            return None
        checksum = _number(block[148:156])
        unsigned = sum(block[:148]) + 256 + sum(block[156:])
        # Some old tars summed signed chars; tarfile accepts both, and so do we.
        if checksum != unsigned and checksum != unsigned - 256 * sum(b > 127 for b in block[:148] + block[156:]):
            raise ArchiveFormatError("bad header checksum")
        return block

    def next(self) -> Member | None:
        if self.ended:
            return None
        self._skip(self._due + self._pad)
        self._due = self._pad = 0
        pax: dict[str, bytes] = {}
        longname = longlink = None
        while True:
            block = self._block()
            if block is None:
                if pax or longname is not None or longlink is not None:
                    raise ArchiveFormatError("the archive ends after an extended header (truncated)")
                self.ended = True
                return None
            kind = block[156:157]
            size = _number(block[124:136])
            if kind in (_PAX, _GLOBAL, _LONGNAME, _LONGLINK):
                if not 0 <= size <= MAX_META:
                    raise ArchiveFormatError(f"extended header of {size} bytes is too large")
                body = self._take(size)
                self._skip(-size % BLOCK)
                if kind == _PAX:
                    pax.update(parse_pax(body))
                elif kind == _GLOBAL:
                    self._global.update(parse_pax(body))
                elif kind == _LONGNAME:
                    longname = _cstr(body)
                else:
                    longlink = _cstr(body)
                continue
            return self._member(block, kind, size, {**self._global, **pax}, longname, longlink)

    def _member(self, block, kind, size, pax, longname, longlink) -> Member:
        name = _cstr(block[0:100])
        if block[257:265] == _MAGIC and block[345] != 0:
            name = _cstr(block[345:500]) + b"/" + name
        if longname is not None:
            name = longname
        link = longlink if longlink is not None else _cstr(block[157:257])
        if kind == AREGTYPE and name.endswith(b"/"):
            kind = DIRTYPE
        mtime_ns = _number(block[136:148]) * 1_000_000_000
        member = Member(
            name=_decode(name),
            type=kind,
            mode=_number(block[100:108]),
            uid=_number(block[108:116]),
            gid=_number(block[116:124]),
            uname=_decode(_cstr(block[265:297])),
            gname=_decode(_cstr(block[297:329])),
            size=size,
            mtime_ns=mtime_ns,
            linkname=_decode(link),
            devmajor=_number(block[329:337]) if block[329] else 0,
            devminor=_number(block[337:345]) if block[337] else 0,
        )
        if pax:
            self._apply_pax(member, pax)
        if member.isdir():
            member.name = member.name.rstrip("/") or "."
        # Only regular members carry data (tarfile and GNU tar ignore the size of the others).
        member.stored = member.size if member.isreg() else 0
        self._due, self._pad = member.stored, -member.stored % BLOCK
        if "GNU.sparse.major" in pax or "GNU.sparse.map" in pax or "GNU.sparse.offset" in pax:
            self._sparse(member, pax)
        return member

    def _apply_pax(self, member: Member, pax: dict[str, bytes]) -> None:
        for key, value in pax.items():
            if key == "path":
                member.name = _decode(value)
            elif key == "linkpath":
                member.linkname = _decode(value)
            elif key == "uname":
                member.uname = _decode(value)
            elif key == "gname":
                member.gname = _decode(value)
            elif key in ("size", "uid", "gid"):
                try:
                    setattr(member, key, int(value))
                except ValueError:
                    raise ArchiveFormatError(f"bad PAX {key} {value!r}") from None
            elif key == "mtime":
                member.mtime_ns = _pax_time_ns(value)
            elif key.startswith(_XATTR):
                member.xattrs[key[len(_XATTR) :]] = value

    def _sparse(self, member: Member, pax: dict[str, bytes]) -> None:
        """GNU PAX sparse 1.0: the data starts with the map (see core.engines.files.meta)."""
        if pax.get("GNU.sparse.major") != b"1" or pax.get("GNU.sparse.minor") != b"0":
            raise ArchiveFormatError("sparse member in a GNU sparse format other than 1.0")
        if "GNU.sparse.name" in pax:
            member.name = _decode(pax["GNU.sparse.name"])
        text = b""
        numbers: list[int] = []
        count = None
        read = 0
        while count is None or len(numbers) < 2 * count:
            if b"\n" not in text:
                if self._due < BLOCK:
                    raise ArchiveFormatError(f"sparse map of {member.name!r} is truncated")
                text += self.read(BLOCK)
                read += BLOCK
                continue
            line, text = text.split(b"\n", 1)
            try:
                value = int(line)
            except ValueError:
                raise ArchiveFormatError(f"bad sparse map of {member.name!r}") from None
            if count is None:
                count = value
            else:
                numbers.append(value)
        member.sparse = list(zip(numbers[::2], numbers[1::2], strict=True))
        member.stored -= read
        try:
            member.size = int(pax["GNU.sparse.realsize"])
        except (KeyError, ValueError):
            raise ArchiveFormatError(f"sparse member {member.name!r} has no valid real size") from None
        if (
            any(off < 0 or length < 0 for off, length in member.sparse)
            or sum(length for _, length in member.sparse) > member.stored
        ):
            raise ArchiveFormatError(f"sparse map of {member.name!r} does not fit its data")
