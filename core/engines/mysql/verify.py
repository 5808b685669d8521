"""MariaDB/MySQL backups checked on their plaintext: a parse of every dump, streamed from the vault.

There is no offline tool that reads a dump without a server, so ``SqlScanner``
reads it the way the ``mariadb`` client splits it into statements: quotes
('...', "...", `...` with backslash escapes in the first two), comments (``--``,
``#``, ``/* */``; ``/*!`` version comments are statements) and ``DELIMITER``
lines (routines and triggers use ``;;``). At the end nothing may be open: no
string, no comment, no statement without its delimiter. The dump tool's last
line, ``-- Dump completed``, proves the tool finished: ``dump.sql``,
``schema.sql`` and ``post.sql`` must end with it, and in the per-table layout
the data streams cut out of one dump process hold it in the last stream written.

Per-table layout: ``layout.json`` parses, every stream it names is in the
backup, every ``data-*`` stream is named in it, and every table the sealed
checks recorded has its data there.

The scanner holds at most one unfinished token head between pieces (a string
or comment is scanned in place, however long), so a dump of any size costs a
few pieces of memory.
"""

from __future__ import annotations

import json
import re

from core.engines.mysql import grants as mysql_grants
from core.engines.mysql import split as mysql_split
from core.engines.mysql.engine import STREAM
from core.validation.results import CheckResult
from core.validation.tools import ToolFailed, guarded

TRAILER = b"-- Dump completed"
CHECK = "SQL parse"

# Anything up to the next character that may change the state: a run of plain text, or whole
# strings (unrolled loops: the regex engine runs them in C). Possessive: no backtracking state.
_RUN = re.compile(
    rb"(?:[^'\"`;/#\n\-]++"
    rb"|'[^'\\]*+(?:\\.[^'\\]*+)*+'"
    rb"|\"[^\"\\]*+(?:\\.[^\"\\]*+)*+\""
    rb"|`[^`]*+`"
    rb"|/(?!\*)"
    rb"|-(?!-))++",
    re.S,
)
# The inside of an open string, up to and including its closing quote.
_CLOSE = {
    b"'"[0]: re.compile(rb"[^'\\]*+(?:\\.[^'\\]*+)*+'", re.S),
    b'"'[0]: re.compile(rb'[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S),
}
_OPEN_BODY = {q: re.compile(rb"[^" + bytes([q]) + rb"\\]*+(?:\\.[^" + bytes([q]) + rb"\\]*+)*+", re.S) for q in _CLOSE}
_NAMES = {b"'"[0]: "string", b'"'[0]: "double-quoted string", b"`"[0]: "quoted name", 0: "comment"}


class SqlScanner:
    """Feeds pieces of a SQL script; ``finish()`` says what is left open, or counts statements."""

    def __init__(self) -> None:
        self.delimiter = b";"
        self.statements = 0
        self._mode: int | None = None  # an open quote's byte, 0 for a /* comment, 1 for a line comment
        self._opened_at = 0  # offset where the open string, comment or statement began
        self._pending = False  # statement text since the last delimiter
        self._carry = b""
        self._offset = 0  # stream offset of the current buffer's start
        self._line_start = True
        self.trailer = False  # the last thing read was the dump tool's completion line

    def feed(self, data: bytes, final: bool = False) -> None:
        buf = self._carry + data if self._carry else data
        self._carry = b""
        pos, end = 0, len(buf)
        while pos < end:
            mode = self._mode
            if mode is not None:
                pos = self._in_mode(buf, pos, final)
                if pos < 0:
                    return
                continue
            if self._line_start and not self._pending and buf[pos : pos + 1] in (b"D", b"d"):
                if end - pos < 10 and not final:
                    self._keep(buf, pos)
                    return
                if buf[pos : pos + 10].upper() == b"DELIMITER ":
                    nl = buf.find(b"\n", pos)
                    if nl < 0 and not final:
                        self._keep(buf, pos)
                        return
                    line = buf[pos : nl if nl >= 0 else end].split()
                    if len(line) < 2:
                        raise ToolFailed(f"DELIMITER without a delimiter at byte {self._offset + pos}")
                    self.delimiter = line[1]
                    pos = nl + 1 if nl >= 0 else end
                    continue
            self._line_start = False
            m = _RUN.match(buf, pos)
            stop = m.end() if m else pos
            if stop == end and not final and stop > pos and buf[stop - 1] in b"/-":
                stop -= 1  # it may open a comment with the next piece's first byte
            if stop > pos:
                if not self._pending and buf[pos:stop].strip():
                    self._pending, self._opened_at, self.trailer = True, self._offset + pos, False
                pos = stop
                if pos >= end:
                    break
            c = buf[pos]
            if c in (0x27, 0x22, 0x60):  # ' " `: a string that does not close in this piece
                if not self._pending:
                    self._pending, self.trailer = True, False
                self._mode, self._opened_at = c, self._offset + pos
                pos += 1
            elif c == 0x0A:
                self._line_start = True
                pos += 1
            elif c == 0x3B:  # ;
                pos = self._delimiter(buf, pos, final)
                if pos < 0:
                    return
            elif c in (0x2F, 0x2D):  # / or - not followed by * or - in this piece, or the start of a comment
                if pos + 1 >= end and not final:
                    self._keep(buf, pos)
                    return
                nxt = buf[pos + 1 : pos + 2]
                if c == 0x2F and nxt == b"*":
                    if not self._pending:  # /*!40101 SET ... */; is a statement
                        self._pending, self.trailer = True, False
                    self._mode, self._opened_at = 0, self._offset + pos
                    pos += 2
                elif c == 0x2D and nxt == b"-":
                    if pos + 2 >= end and not final:
                        self._keep(buf, pos)
                        return
                    if buf[pos + 2 : pos + 3] in (b" ", b"\t", b"\n", b"\r", b""):
                        head = buf[pos : pos + len(TRAILER)]
                        if len(head) < len(TRAILER) and not final and buf.find(b"\n", pos) < 0:
                            self._keep(buf, pos)
                            return
                        if not self._pending:
                            self.trailer = head == TRAILER
                        self._mode = 1
                        pos += 2
                    else:  # "--5": text
                        if not self._pending:
                            self._pending, self._opened_at, self.trailer = True, self._offset + pos, False
                        pos += 2
                else:
                    self._pending, self.trailer = True, False
                    pos += 1
            elif c == 0x23:  # #: a comment to the end of the line
                self._mode = 1
                pos += 1
            else:  # unreachable: _RUN stops only at the bytes above
                pos += 1
        self._offset += len(buf) - len(self._carry)

    def _keep(self, buf: bytes, pos: int) -> None:
        """Hold ``buf[pos:]`` (a few bytes: a token head) for the next piece."""
        self._offset += pos
        self._carry = buf[pos:]

    def _delimiter(self, buf: bytes, pos: int, final: bool) -> int:
        delim = self.delimiter
        if buf.startswith(delim, pos):
            self.statements += 1
            self._pending = False
            return pos + len(delim)
        if len(buf) - pos < len(delim) and not final and delim.startswith(buf[pos:]):
            self._keep(buf, pos)
            return -1
        if not self._pending:  # a single ; inside a ;; block (a routine body)
            self._pending, self._opened_at, self.trailer = True, self._offset + pos, False
        return pos + 1

    def _in_mode(self, buf: bytes, pos: int, final: bool) -> int:
        """Scan inside an open string or comment; the new position, or -1 (rest held or consumed)."""
        mode, end = self._mode, len(buf)
        if mode == 1:
            nl = buf.find(b"\n", pos)
            if nl < 0:
                self._offset += end
                return -1
            self._mode, self._line_start = None, True
            return nl + 1
        if mode == 0:
            close = buf.find(b"*/", pos)
            if close < 0:
                keep = end - 1 if buf.endswith(b"*") and not final else end
                self._keep(buf, keep)
                return -1
            self._mode = None
            return close + 2
        if mode == 0x60:
            close = buf.find(b"`", pos)
            if close < 0:
                self._offset += end
                return -1
            self._mode = None
            return close + 1
        m = _CLOSE[mode].match(buf, pos)
        if m:
            self._mode = None
            return m.end()
        stop = _OPEN_BODY[mode].match(buf, pos).end()  # stops at a backslash that ends the piece
        self._keep(buf, stop)
        return -1

    def finish(self) -> None:
        if self._carry:
            carry, self._carry = self._carry, b""
            self.feed(carry, final=True)
        if self._mode not in (None, 1):
            raise ToolFailed(f"the {_NAMES[self._mode]} opened at byte {self._opened_at} never closes (truncated?)")
        if self._pending:
            raise ToolFailed(
                f"the statement at byte {self._opened_at} has no closing {self.delimiter.decode(errors='replace')} "
                "(truncated?)"
            )


def scan(pieces) -> SqlScanner:
    scanner = SqlScanner()
    for piece in pieces:
        scanner.feed(piece)
    scanner.finish()
    return scanner


def verify_backup(reader) -> list[CheckResult]:
    names = reader.stream_names()
    results = []
    if mysql_split.LAYOUT_STREAM in names:
        results.append(guarded("per-table layout", mysql_split.LAYOUT_STREAM, lambda: _layout(reader)))
    trailers: list[str] = []
    for name in names:
        if not name.endswith(".sql"):
            continue
        whole = name in (STREAM, mysql_split.SCHEMA_STREAM, mysql_split.POST_STREAM)
        results.append(guarded(CHECK, name, lambda n=name, w=whole: _dump(reader, n, w, trailers)))
    data = [n for n in names if n.startswith("data-") and n.endswith(".sql")]
    if data and not trailers and all(r.passed for r in results):
        results.append(
            CheckResult(
                name=CHECK,
                passed=False,
                detail=f"none of the {len(data)} data streams ends with the dump tool's '-- Dump completed' line",
                remedy="a dump process did not finish; restore from another backup",
            )
        )
    if mysql_grants.STREAM in names:
        results.append(guarded("grants.json parse", mysql_grants.STREAM, lambda: _grants(reader)))
    return results


def _dump(reader, name: str, whole: bool, trailers: list[str]) -> str:
    scanner = scan(reader.iter_stream(name))
    if scanner.trailer:
        trailers.append(name)
    elif whole:
        raise ToolFailed("no '-- Dump completed' line at its end: the dump tool did not finish")
    tail = ", ends with the dump's completion line" if scanner.trailer else ""
    return f"{scanner.statements} statements, every quote and comment closed{tail}"


def _layout(reader) -> str:
    data = b"".join(reader.iter_stream(mysql_split.LAYOUT_STREAM))  # stream -> table names: small
    try:
        layout = mysql_split.decode_layout(data, "layout.json")
    except Exception as exc:  # noqa: BLE001 - IntegrityError/EngineError: the finding
        raise ToolFailed(str(exc).split(": ", 1)[-1]) from None
    names = set(reader.stream_names())
    absent = sorted(set(layout) - names)
    if absent:
        raise ToolFailed(f"names stream {absent[0]}, which the backup does not hold")
    unlisted = sorted(n for n in names if n.startswith("data-") and n.endswith(".sql") and n not in layout)
    if unlisted:
        raise ToolFailed(f"does not name stream {unlisted[0]}")
    for needed in (mysql_split.SCHEMA_STREAM, mysql_split.POST_STREAM):
        if needed not in names:
            raise ToolFailed(f"the backup has no {needed}")
    tables = set(layout.values())
    recorded = set(((reader.result.checks or {}).get("tables") or {}).keys())
    missing = sorted(recorded - tables)
    if missing:
        raise ToolFailed(f"table {missing[0]} has no data stream ({len(missing)} of {len(recorded)} tables missing)")
    return f"{len(layout)} data streams, every one of the {len(tables)} tables present"


def _grants(reader) -> str:
    data = b"".join(reader.iter_stream(mysql_grants.STREAM))  # privileges on one database: small
    try:
        doc = json.loads(data)
        grants = doc["grants"]
        if not isinstance(grants, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ToolFailed("not valid JSON with a grants list") from None
    return f"parses ({len(grants)} grants)"
