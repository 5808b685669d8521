"""What we read from, and change in, a mysqldump/mariadb-dump stream as it passes.

The dump is never buffered: a ``LineScanner`` looks only at the starts of
lines, keeping at most ``MAX_LINE_HEAD`` bytes of an unfinished line between
pieces, so a 2 GB ``INSERT`` line costs no more memory than a short one. Every
pattern here matches only at a line start, and in a dump every data row starts
with ``INSERT`` or ``(`` (newlines inside values are escaped as ``\\n``), so
table contents can never be mistaken for the statements we look for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

# Longest line prefix any pattern needs to see (a DEFINER clause with an
# 80-character user and a 255-character host fits with room to spare).
MAX_LINE_HEAD = 4096


class LineScanner:
    """Finds ``body`` (a bytes regex) at line starts in a stream fed piece by piece.

    ``starts`` lists the bytes a match can begin with; the compiled pattern is
    ``\\n(?=[starts])(?:body)`` run over the text with a newline in front, which
    lets the regex engine jump from newline to newline (several hundred MB/s)
    instead of trying ``^`` at every byte. With ``replace`` the matches are
    substituted (return ``None`` to keep one) and ``feed`` returns the edited
    bytes; without it every match goes to ``on_match`` and the bytes come back
    unchanged. A match object's ``group(0)`` starts with the newline.
    """

    def __init__(
        self,
        body: bytes,
        starts: bytes,
        *,
        replace: Callable[[re.Match[bytes]], bytes | None] | None = None,
        on_match: Callable[[re.Match[bytes]], None] | None = None,
    ) -> None:
        first = b"".join(re.escape(bytes([c])) for c in starts)
        self._pattern = re.compile(rb"\n(?=[" + first + rb"])(?:" + body + rb")")
        self._replace, self._on_match = replace, on_match
        self._pending = b""  # start of an unfinished line, kept only while short
        self._in_long_line = False  # the current line's head was already scanned

    def _substitute(self, m: re.Match[bytes]) -> bytes:
        new = self._replace(m)  # type: ignore[misc]
        return m.group(0) if new is None else b"\n" + new

    def _apply(self, text: bytes) -> bytes:
        """Scan ``text``, which begins at a line start."""
        if not text:
            return text
        framed = b"\n" + text
        if self._replace is not None:
            if self._pattern.search(framed) is None:
                return text  # the usual case (table data): no further copies
            return self._pattern.sub(self._substitute, framed)[1:]
        if self._on_match is not None:
            for match in self._pattern.finditer(framed):
                self._on_match(match)
        return text

    def feed(self, data: bytes) -> bytes:
        """Scan (and edit) the next piece; returns what may be passed on now."""
        out: list[bytes] = []
        if self._in_long_line:
            nl = data.find(b"\n")
            if nl < 0:
                return data
            out.append(data[: nl + 1])
            data = data[nl + 1 :]
            self._in_long_line = False
        if self._pending:
            data = self._pending + data
            self._pending = b""
        cut = data.rfind(b"\n") + 1
        out.append(self._apply(data[:cut]))
        tail = data[cut:]
        if len(tail) < MAX_LINE_HEAD:
            self._pending = tail
        else:
            # Long line: its head is all a pattern can match; scan it now, stream the rest.
            out.append(self._apply(tail))
            self._in_long_line = True
        return b"".join(out)

    def finish(self) -> bytes:
        """Scan (and edit) whatever is held back; call once at end of stream."""
        tail, self._pending = self._pending, b""
        return self._apply(tail)


def _unquote(name: bytes | None) -> str | None:
    return None if name is None else name.replace(b"``", b"`").decode("utf-8", "replace")


def quote_name(name: str) -> str:
    """A MySQL identifier in backticks."""
    return "`" + name.replace("`", "``") + "`"


# --- reading a dump while it is taken ---------------------------------------

_BACKUP_STARTS = b"-C)"
_BACKUP_BODY = (
    rb"-- CHANGE (?:MASTER|REPLICATION SOURCE) TO (?:MASTER|SOURCE)_LOG_FILE='(?P<file>[^']+)', "
    rb"(?:MASTER|SOURCE)_LOG_POS=(?P<pos>\d+)"
    rb"|-- SET GLOBAL gtid_slave_pos='(?P<gtid>[^']*)'"
    rb"|CREATE TABLE `(?P<table>(?:[^`]|``)+)` \("
    rb"|\) ENGINE=[^\n]*?\bAUTO_INCREMENT=(?P<autoinc>\d+)"
    rb"|(?P<marker>-- (?:Table structure for table|Dumping data for table|Temporary table structure for view"
    rb"|Dumping events for database|Dumping routines for database|Final view structure for view) )"
)


@dataclass
class DumpFacts:
    """What the dump itself says: its binlog coordinates and each table's AUTO_INCREMENT."""

    binlog_file: str | None = None
    binlog_pos: int | None = None
    gtid: str | None = None
    auto_increment: dict[str, int] = field(default_factory=dict)
    snapshot_started: bool = False


class DumpInspector:
    """Collects ``DumpFacts`` from a dump stream and says when its snapshot has begun.

    mysqldump prints the binlog coordinates and any table section only after
    ``START TRANSACTION WITH CONSISTENT SNAPSHOT``; the first such line (or the
    end of the stream) tells us its snapshot exists, so a global read lock held
    around its start can be released. ``on_snapshot`` is called once, then.
    """

    def __init__(self, on_snapshot: Callable[[], None]) -> None:
        self.facts = DumpFacts()
        self._on_snapshot = on_snapshot
        self._table: str | None = None
        self._scanner = LineScanner(_BACKUP_BODY, _BACKUP_STARTS, on_match=self._match)

    def _snapshot(self) -> None:
        if not self.facts.snapshot_started:
            self.facts.snapshot_started = True
            self._on_snapshot()

    def _match(self, m: re.Match[bytes]) -> None:
        facts = self.facts
        table, self._table = self._table, None  # an AUTO_INCREMENT counts only right after its CREATE TABLE
        if m.group("file") is not None:
            facts.binlog_file, facts.binlog_pos = m.group("file").decode(), int(m.group("pos"))
            self._snapshot()
        elif m.group("gtid") is not None:
            facts.gtid = m.group("gtid").decode()
        elif m.group("table") is not None:
            self._table = _unquote(m.group("table"))
            self._snapshot()
        elif m.group("autoinc") is not None:
            if table is not None:
                facts.auto_increment.setdefault(table, int(m.group("autoinc")))
        else:
            self._snapshot()

    def feed(self, data: bytes) -> None:
        self._scanner.feed(data)

    def finish(self) -> None:
        self._scanner.finish()
        self._snapshot()


class InspectingReader:
    """File-like ``read(n)`` over a dump pipe that shows every piece to a ``DumpInspector``."""

    def __init__(self, raw, inspector: DumpInspector) -> None:
        self._raw, self._inspector = raw, inspector
        self._done = False

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n) if n and n > 0 else self._raw.read()
        if data:
            self._inspector.feed(data)
        elif not self._done:
            self._done = True
            self._inspector.finish()
        return data


# --- editing a dump while it is restored -------------------------------------

# DEFINER clauses as mysqldump and mariadb-dump write them, always at a line start:
#   CREATE DEFINER=`u`@`h` PROCEDURE|FUNCTION|PACKAGE ...      (routines)
#   /*!50003 CREATE*/ /*!50017 DEFINER=`u`@`h`*/ /*!50003 TRIGGER ...
#   /*!50106 CREATE*/ /*!50117 DEFINER=`u`@`h`*/ /*!50106 EVENT ...
#   /*!50013 DEFINER=`u`@`h` SQL SECURITY DEFINER */             (views)
_DEFINER = (
    rb"(?P<lead>CREATE |/\*!\d{5} CREATE\*/ /\*!\d{5} |/\*!50013 )DEFINER=`(?P<user>(?:[^`]|``)*)`(?:@`(?P<host>(?:[^`]|``)*)`)?"
    # The object the clause belongs to, further along the same line (not for views); a
    # trigger keeps its CREATE statement as written, so its name may be unquoted.
    rb"(?:(?=[^\n]*?\b(?i:(?P<kind>PROCEDURE|FUNCTION|PACKAGE BODY|PACKAGE|TRIGGER|EVENT))\s+(?:`(?P<name>(?:[^`]|``)+)`|(?P<bare>[^\s(`;]+)))|)"
)
# A view's name is on the line after its DEFINER clause.
_VIEW = rb"/\*!50001 VIEW `(?P<view>(?:[^`]|``)+)`"
# Emitted around routines whose database collation differs from the database's
# current one; it names the *source* database, which must become the target.
_ALTER_DB = rb"ALTER DATABASE `(?P<db>(?:[^`]|``)+)` "


class DumpRewriter:
    """Edits a dump for its restore target, piece by piece.

    * ``ALTER DATABASE `source``` becomes the target database, so restoring
      under another name never touches the source database on the same server.
    * A DEFINER naming an account that does not exist on the target becomes
      ``CURRENT_USER`` (the restoring account): otherwise the views, routines,
      triggers and events would be created but fail on first use with "the user
      specified as a definer does not exist". Definers that exist are kept, so
      ``SQL SECURITY DEFINER`` keeps its meaning. ``rewritten`` lists what changed.
    """

    def __init__(self, source_db: str, target_db: str, accounts: set[tuple[str, str]]) -> None:
        self._source_db, self._target = source_db, quote_name(target_db).encode()
        self._accounts = accounts
        self.rewritten: set[str] = set()
        # (kind, name, original definer) of every object whose definer was replaced.
        self.objects: list[tuple[str, str, str]] = []
        self._pending_view: str | None = None  # definer of a view whose name is on the next line
        self._scanner = LineScanner(_DEFINER + rb"|" + _ALTER_DB + rb"|" + _VIEW, b"C/A", replace=self._replace)

    def _replace(self, m: re.Match[bytes]) -> bytes | None:
        if m.group("view") is not None:
            if self._pending_view is not None:
                self.objects.append(("view", str(_unquote(m.group("view"))), self._pending_view))
                self._pending_view = None
            return None
        if m.group("db") is not None:
            if _unquote(m.group("db")) == self._source_db:
                return b"ALTER DATABASE " + self._target + b" "
            return None
        user, host = _unquote(m.group("user")), _unquote(m.group("host"))
        if (user, host or "") in self._accounts:
            return None
        account = f"{user}@{host}" if host is not None else str(user)
        self.rewritten.add(account)
        if m.group("kind") is not None:
            name = _unquote(m.group("name")) or m.group("bare").decode("utf-8", "replace")
            self.objects.append((m.group("kind").decode().lower(), name, account))
        elif m.group("lead").startswith(b"/*!50013"):
            self._pending_view = account
        else:
            self.objects.append(("object", "?", account))
        return m.group("lead") + b"DEFINER=CURRENT_USER"

    def feed(self, data: bytes) -> bytes:
        return self._scanner.feed(data)

    def finish(self) -> bytes:
        return self._scanner.finish()
