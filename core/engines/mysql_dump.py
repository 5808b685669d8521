"""What we read from, and change in, a mysqldump/mariadb-dump stream as it passes.

The dump is never buffered: a ``LineScanner`` looks only at the starts of
lines, keeping at most ``MAX_LINE_HEAD`` bytes of an unfinished line between
pieces, so a 2 GB ``INSERT`` line costs no more memory than a short one. Every
pattern here is anchored at a line start, and in a dump every data row starts
with ``INSERT`` or ``(`` (newlines inside values are escaped as ``\\n``), so
table contents can never be mistaken for the statements we look for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

# Longest line prefix any pattern needs to see (a DEFINER clause with an
# 80-character user and a 255-character host fits with room to spare).
MAX_LINE_HEAD = 4096


class LineScanner:
    """Runs ``pattern`` (bytes, ``re.M``, anchored with ``^``) over a stream piece by piece.

    With ``replace`` the matches are substituted (``re.sub`` semantics) and
    ``feed`` returns the edited bytes; without it every match is passed to
    ``on_match`` and the bytes come back unchanged.
    """

    def __init__(
        self,
        pattern: re.Pattern[bytes],
        *,
        replace: Callable[[re.Match[bytes]], bytes] | None = None,
        on_match: Callable[[re.Match[bytes]], None] | None = None,
    ) -> None:
        self._pattern, self._replace, self._on_match = pattern, replace, on_match
        self._pending = b""  # start of an unfinished line, kept only while short
        self._in_long_line = False  # the current line's head was already scanned

    def _apply(self, text: bytes) -> bytes:
        if not text:
            return text
        if self._replace is not None:
            return self._pattern.sub(self._replace, text)
        if self._on_match is not None:
            for match in self._pattern.finditer(text):
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

_BACKUP_PATTERN = re.compile(
    rb"^(?:"
    rb"-- CHANGE (?:MASTER|REPLICATION SOURCE) TO (?:MASTER|SOURCE)_LOG_FILE='(?P<file>[^']+)', "
    rb"(?:MASTER|SOURCE)_LOG_POS=(?P<pos>\d+)"
    rb"|-- SET GLOBAL gtid_slave_pos='(?P<gtid>[^']*)'"
    rb"|CREATE TABLE `(?P<table>(?:[^`]|``)+)` \("
    rb"|\) ENGINE=[^\n]*?\bAUTO_INCREMENT=(?P<autoinc>\d+)"
    rb"|(?P<marker>-- (?:Table structure for table|Dumping data for table|Temporary table structure for view"
    rb"|Dumping events for database|Dumping routines for database|Final view structure for view) )"
    rb")",
    re.M,
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
        self._scanner = LineScanner(_BACKUP_PATTERN, on_match=self._match)

    def _snapshot(self) -> None:
        if not self.facts.snapshot_started:
            self.facts.snapshot_started = True
            self._on_snapshot()

    def _match(self, m: re.Match[bytes]) -> None:
        facts = self.facts
        if m.group("file") is not None:
            facts.binlog_file, facts.binlog_pos = m.group("file").decode(), int(m.group("pos"))
            self._snapshot()
        elif m.group("gtid") is not None:
            facts.gtid = m.group("gtid").decode()
        elif m.group("table") is not None:
            self._table = _unquote(m.group("table"))
            self._snapshot()
        elif m.group("autoinc") is not None:
            # Only the first CREATE TABLE of a table counts (a view's stand-in has no AUTO_INCREMENT).
            if self._table is not None and self._table not in facts.auto_increment:
                facts.auto_increment[self._table] = int(m.group("autoinc"))
            self._table = None
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
_DEFINER = rb"(?P<lead>CREATE |/\*!\d{5} CREATE\*/ /\*!\d{5} |/\*!50013 )DEFINER=`(?P<user>(?:[^`]|``)*)`(?:@`(?P<host>(?:[^`]|``)*)`)?"
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
        pattern = re.compile(rb"^(?:" + _DEFINER + rb"|" + _ALTER_DB + rb")", re.M)
        self._scanner = LineScanner(pattern, replace=self._replace)

    def _replace(self, m: re.Match[bytes]) -> bytes:
        if m.group("db") is not None:
            if _unquote(m.group("db")) == self._source_db:
                return b"ALTER DATABASE " + self._target + b" "
            return m.group(0)
        user, host = _unquote(m.group("user")), _unquote(m.group("host"))
        if (user, host or "") in self._accounts:
            return m.group(0)
        self.rewritten.add(f"{user}@{host}" if host is not None else str(user))
        return m.group("lead") + b"DEFINER=CURRENT_USER"

    def feed(self, data: bytes) -> bytes:
        return self._scanner.feed(data)

    def finish(self) -> bytes:
        return self._scanner.finish()
