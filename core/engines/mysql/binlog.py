"""MariaDB/MySQL binlog: events, transaction boundaries, and continuous capture over the network.

Capture speaks the replication protocol itself (``COM_BINLOG_DUMP`` on a pymysql
session, as ``mariadb-binlog --read-from-remote-server --raw --stop-never`` does),
so every event arrives with its header: its server position (``log_pos`` is the end
of the event in the server's file), its timestamp and its type. That is what lets a
piece be an exact byte range of a server binlog file, cut only between transactions
(a piece never ends inside an event, nor inside a transaction: each piece replays
on its own), with its time range read from the event headers.

A piece's plaintext is a binlog file ``mariadb-binlog`` reads as it is: the 4-byte
magic, the file's format description event (a copy, when the piece starts past it),
then the server's events from ``start`` to ``end``. ``end`` of the piece that holds a
file's Rotate event is ``(next file, 4)``: the next piece starts there, so pieces stay
contiguous across files.

Unshipped events wait in an unlinked temporary file in the spool directory (nothing
is left behind by a kill); a restarted capture asks the server again from the last
shipped piece's end, so a kill loses nothing and ships nothing twice.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import pymysql

from core.engines.base import LogSink, PieceInfo
from core.engines.mysql import position as mysql_position
from core.errors import EngineError, IntegrityError, LogGapError, SourceUnavailableError

log = logging.getLogger(__name__)

MAGIC = b"\xfebin"
HEADER = struct.Struct("<IBIIIH")  # timestamp, type, server_id, event_size, log_pos, flags
HEADER_LEN = HEADER.size  # 19

# Event types we act on (both flavors share the numbering below 35; 160+ are MariaDB's).
QUERY = 2
STOP = 3
ROTATE = 4
FORMAT_DESCRIPTION = 15
XID = 16
HEARTBEAT = 27
MYSQL_GTID = 33
MYSQL_ANONYMOUS_GTID = 34
XA_PREPARE = 38
MARIA_BINLOG_CHECKPOINT = 161
MARIA_GTID = 162
MARIA_GTID_LIST = 163
ARTIFICIAL = 0x20  # LOG_EVENT_ARTIFICIAL_F: made up by the dump thread, not in the file
MARIA_FL_STANDALONE = 1  # GTID flags2: a single statement with no BEGIN/COMMIT (DDL)

COM_BINLOG_DUMP = 0x12
HEARTBEAT_SECONDS = 1  # idle server: a heartbeat each second, so stop and the RPO are checked
READ_TIMEOUT = 30  # seconds without a heartbeat: the link is dead
PIECE_MAX_BYTES = 64 << 20  # a piece is shipped at this size even inside the RPO
_ER_MASTER_FATAL_READING_BINLOG = 1236


@dataclass
class Event:
    raw: bytes
    timestamp: int
    type: int
    server_id: int
    size: int
    log_pos: int
    flags: int

    @classmethod
    def parse(cls, raw: bytes) -> Event:
        if len(raw) < HEADER_LEN:
            raise EngineError(f"binlog event of {len(raw)} bytes is shorter than its header; the log is damaged")
        ts, typ, sid, size, log_pos, flags = HEADER.unpack_from(raw)
        return cls(raw, ts, typ, sid, size, log_pos, flags)

    @property
    def artificial(self) -> bool:
        return bool(self.flags & ARTIFICIAL) or self.log_pos == 0 or self.type == HEARTBEAT

    def query(self) -> bytes:
        """The statement text of a Query event (with its checksum, if any, still attached)."""
        body = self.raw[HEADER_LEN:]
        db_len = body[8]
        status_len = struct.unpack_from("<H", body, 11)[0]
        return body[13 + status_len + db_len + 1 :]

    def default_database(self) -> str:
        """The default database (``USE``) a Query event ran under."""
        body = self.raw[HEADER_LEN:]
        db_len = body[8]
        status_len = struct.unpack_from("<H", body, 11)[0]
        start = 13 + status_len
        return body[start : start + db_len].decode("utf-8", "replace")

    def rotate_target(self, checksum: bool) -> tuple[str, int]:
        """(next file, position) of a Rotate event; ``checksum``: events end in a CRC32."""
        body = self.raw[HEADER_LEN : len(self.raw) - 4 if checksum else len(self.raw)]
        return body[8:].decode("utf-8", "replace"), int(struct.unpack_from("<Q", body)[0])

    def gtid(self) -> tuple[str, int, int, int] | None:
        """(text, domain, server_id, seq_no) of a MariaDB GTID event; MySQL: (uuid:gno, 0, 0, gno)."""
        body = self.raw[HEADER_LEN:]
        if self.type == MARIA_GTID:
            seq, domain = struct.unpack_from("<QI", body)
            return f"{domain}-{self.server_id}-{seq}", domain, self.server_id, seq
        if self.type == MYSQL_GTID:
            sid = body[1:17].hex()
            gno = struct.unpack_from("<q", body, 17)[0]
            uuid = f"{sid[:8]}-{sid[8:12]}-{sid[12:16]}-{sid[16:20]}-{sid[20:]}"
            return f"{uuid}:{gno}", 0, 0, gno
        return None

    def standalone(self) -> bool:
        return self.type == MARIA_GTID and bool(self.raw[HEADER_LEN + 12] & MARIA_FL_STANDALONE)


_TRX_END = {b"COMMIT", b"ROLLBACK"}


def _statement_is(event: Event, words: set[bytes]) -> bool:
    text = event.query()
    return text in words or text[:-4] in words


class Grouper:
    """Where transactions end, event by event: a piece is cut, and a replay stops, only there.

    MariaDB: a GTID event opens a group, ended by the XID event (InnoDB), a COMMIT or
    ROLLBACK query (non-transactional engines), an XA PREPARE event, or - for a standalone
    GTID (DDL) - the first Query event. MySQL: a GTID event, then either BEGIN ... XID/COMMIT
    or one Query (DDL); without GTIDs, BEGIN ... XID/COMMIT. Any other event outside a group
    (format description, rotate, GTID list, checkpoint) stands alone.
    """

    def __init__(self) -> None:
        self.state: str | None = None  # None, "gtid" (MySQL, before BEGIN), "trx", "standalone"
        self.gtid: str | None = None

    @property
    def inside(self) -> bool:
        return self.state is not None

    def feed(self, event: Event) -> bool:
        """True if a transaction boundary follows ``event``."""
        typ = event.type
        if self.state is None:
            if typ == MARIA_GTID:
                self.gtid = event.gtid()[0]  # type: ignore[index]
                self.state = "standalone" if event.standalone() else "trx"
                return False
            if typ in (MYSQL_GTID, MYSQL_ANONYMOUS_GTID):
                found = event.gtid()
                self.gtid = found[0] if found else None
                self.state = "gtid"
                return False
            if typ == QUERY and _statement_is(event, {b"BEGIN"}):
                self.gtid = None
                self.state = "trx"
                return False
            return True
        if self.state == "gtid" and typ == QUERY:
            if _statement_is(event, {b"BEGIN"}):
                self.state = "trx"
                return False
            self.state = None
            return True
        if self.state == "standalone" and typ == QUERY:
            self.state = None
            return True
        if self.state == "trx" and (typ in (XID, XA_PREPARE) or (typ == QUERY and _statement_is(event, _TRX_END))):
            self.state = None
            return True
        return False


def read_events(stream: BinaryIO, where: str) -> Iterator[Event]:
    """The events of a binlog file (a piece's plaintext), checking the magic and each event's length.

    The vault has authenticated the plaintext already; a piece that still does not parse was
    written wrong, and is refused like a corrupted one (nothing of it is applied past the damage)."""
    magic = _read_exact(stream, 4)
    if magic != MAGIC:
        raise IntegrityError(f"{where}: not a binlog file (bad magic); the piece is damaged")
    while True:
        head = _read_exact(stream, HEADER_LEN)
        if not head:
            return
        if len(head) < HEADER_LEN:
            raise IntegrityError(f"{where}: truncated binlog event header; the piece is damaged")
        size = HEADER.unpack_from(head)[3]
        if size < HEADER_LEN:
            raise IntegrityError(f"{where}: binlog event with impossible size {size}; the piece is damaged")
        rest = _read_exact(stream, size - HEADER_LEN)
        if len(rest) < size - HEADER_LEN:
            raise IntegrityError(f"{where}: truncated binlog event; the piece is damaged")
        yield Event.parse(head + rest)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# -- GTID state --------------------------------------------------------------------------


def gtid_state(text: str) -> dict[str, str]:
    """MariaDB's gtid_binlog_pos ("0-1-5,1-2-9") as {domain: "d-s-n"}; other formats keep one entry."""
    state: dict[str, str] = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        bits = part.split("-")
        if len(bits) == 3 and all(b.isdigit() for b in bits):
            state[bits[0]] = part
        else:
            state[part] = part
    return state


def gtid_text(state: dict[str, str]) -> str:
    return ",".join(state[k] for k in sorted(state, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def position(file: str, pos: int, gtid: dict[str, str]) -> dict[str, Any]:
    return {"binlog_file": file, "binlog_pos": int(pos), "gtid": gtid_text(gtid)}


# -- capture -----------------------------------------------------------------------------


def spool_dir(source: str) -> Path:
    base = os.environ.get("GENESIS_DR_SPOOL_DIR")
    root = Path(base) if base else Path.home() / ".local" / "state" / "genesis-dr" / "spool"
    path = root / source
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


class _PieceReader:
    """The plaintext of a piece: magic, format description copy, then the spooled events."""

    def __init__(self, head: bytes, spool: BinaryIO, length: int) -> None:
        self._head, self._spool, self._left = head, spool, length
        spool.seek(0)

    def read(self, n: int = -1) -> bytes:
        if self._head:
            take = self._head if n < 0 else self._head[:n]
            self._head = self._head[len(take) :]
            return take
        if self._left <= 0:
            return b""
        want = self._left if n < 0 else min(n, self._left)
        data = self._spool.read(want)
        self._left -= len(data)
        return data


@dataclass
class _Pending:
    """Events received since the last shipped piece. ``committed`` bytes (up to the last
    transaction boundary, ``end``) can be shipped; the tail after it is a transaction still
    arriving."""

    start: dict[str, Any]
    spool: BinaryIO
    length: int = 0
    committed: int = 0
    end: dict[str, Any] | None = None
    first_ts: int | None = None  # committed part
    last_ts: int | None = None
    gtid_first: str | None = None
    gtid_last: str | None = None
    tail_first_ts: int | None = None  # the tail
    tail_last_ts: int | None = None
    tail_gtids: list[str] = field(default_factory=list)
    since: float | None = None  # monotonic time the oldest unshipped boundary was reached

    def add(self, event: Event, gtid: str | None) -> None:
        self.spool.write(event.raw)
        self.length += len(event.raw)
        if self.tail_first_ts is None:
            self.tail_first_ts = event.timestamp
        self.tail_last_ts = event.timestamp
        if gtid:
            self.tail_gtids.append(gtid)

    def commit(self, end: dict[str, Any]) -> None:
        self.committed, self.end = self.length, end
        if self.first_ts is None:
            self.first_ts = self.tail_first_ts
        if self.tail_last_ts is not None:
            self.last_ts = self.tail_last_ts
        if self.tail_gtids:
            self.gtid_first = self.gtid_first or self.tail_gtids[0]
            self.gtid_last = self.tail_gtids[-1]
        self.tail_first_ts = self.tail_last_ts = None
        self.tail_gtids = []
        if self.since is None:
            self.since = time.monotonic()


class BinlogCapture:
    """Ships one source's binlog into a ``LogSink`` (see ``MySQLEngine.capture``)."""

    def __init__(self, engine: Any, log_sink: LogSink, stop: Any, until: dict[str, Any] | None) -> None:
        self.engine, self.log, self.stop, self.until = engine, log_sink, stop, until
        self.where = engine._where()
        self.rpo = float(getattr(engine.config, "rpo_seconds", 30))
        self.server_id = random.randint(0x10000000, 0x7FFFFFFF)  # unique among the server's replicas
        self.fde: bytes | None = None  # the current file's format description event
        self.spool_root: Path | None = None
        self.checksum = True

    # where to start ---------------------------------------------------------------------

    def start_position(self) -> dict[str, Any]:
        last = self.log.last_piece()
        if last is not None:
            return dict(last.end)
        full = self.log.newest_full()
        start = mysql_position.log_start(full.position) if full is not None else None
        if start is None:
            raise EngineError(
                f"{self.where}: no full backup with a binlog position to start the capture from; "
                "take a full backup (with log_bin on) first"
            )
        return start

    def _reached(self, pos: dict[str, Any] | None) -> bool:
        return (
            pos is not None and self.until is not None and mysql_position.order(pos) >= mysql_position.order(self.until)
        )

    def run(self) -> None:
        start = self.start_position()
        if self._reached(start):
            return
        conn, start = self._open(start)
        try:
            self._stream(conn, start)
        finally:
            try:
                conn.close()
            except Exception:
                pass  # the link is going away anyway

    def _open(self, start: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        engine = self.engine
        with engine._session(None, "listing the server's binlogs") as (_, cur):
            try:
                cur.execute("SHOW BINARY LOGS")
                files = [row[0] for row in cur.fetchall()]
                if start["binlog_file"] not in files:
                    start = self._after_gap(start, files)
            except pymysql.err.MySQLError as exc:
                raise EngineError(
                    f"{self.where}: cannot list the binlogs ({exc.args[-1]}); "
                    "GRANT BINLOG MONITOR (MariaDB) or REPLICATION CLIENT (MySQL) ON *.* to the capture user"
                ) from None
            cur.execute("SELECT @@GLOBAL.binlog_checksum")
            self.checksum = str(cur.fetchone()[0]).upper() != "NONE"
        conn = engine._connect(None, read_timeout=READ_TIMEOUT)
        try:
            with conn.cursor() as cur:
                # What a replica announces: it understands checksums and GTID events, and
                # wants a heartbeat when idle (so stop and the RPO are looked at each second).
                # (MySQL 8.0.26+ reads the @source_* names; both are plain user variables.)
                cur.execute(
                    "SET @master_binlog_checksum = @@GLOBAL.binlog_checksum, "
                    "@source_binlog_checksum = @@GLOBAL.binlog_checksum"
                )
                cur.execute("SET @mariadb_slave_capability = 4")
                period = HEARTBEAT_SECONDS * 1_000_000_000
                cur.execute("SET @master_heartbeat_period = %s, @source_heartbeat_period = %s", (period, period))
            payload = struct.pack("<IHI", int(start["binlog_pos"]), 0, self.server_id)
            conn._execute_command(COM_BINLOG_DUMP, payload + start["binlog_file"].encode())
        except BaseException:
            conn.close()
            raise
        return conn, start

    def _after_gap(self, start: dict[str, Any], files: list[str]) -> dict[str, Any]:
        """Where the log goes on when the server purged ``start``'s file: at a full taken since
        (its position is on the server), as a new chain - the vault's log keeps the gap, which the
        planner names; else the gap is raised."""
        full = self.log.newest_full()
        begin = mysql_position.log_start(full.position) if full is not None else None
        if (
            begin is not None
            and mysql_position.order(begin) > mysql_position.order(start)
            and begin["binlog_file"] in files
        ):
            self.log.progress(
                f"binlog {mysql_position.text(start)} was purged before it was captured; the log starts again at "
                f"the newest full's {mysql_position.text(begin)} (restores between the two are not possible)"
            )
            return begin
        self._gap(start, files[0] if files else None)
        raise AssertionError("unreachable")  # _gap raises

    def _gap(self, start: dict[str, Any], oldest: str | None) -> None:
        have = f"the oldest binlog there is {oldest}" if oldest else "it no longer has that file"
        raise LogGapError(
            f"{self.where}: binlog {start['binlog_file']} was purged on the server before it was captured "
            f"({have}): source '{self.log.source}' has lost its log from {mysql_position.text(start)} on; "
            "take a new full backup (and keep binlogs on the server until the capture has them)"
        )

    # the stream --------------------------------------------------------------------------

    def _new_pending(self, start: dict[str, Any]) -> _Pending:
        assert self.spool_root is not None
        return _Pending(start=dict(start), spool=tempfile.TemporaryFile(dir=self.spool_root))

    def _stream(self, conn, start: dict[str, Any]) -> None:
        self.spool_root = spool_dir(self.log.source)
        file, pos = start["binlog_file"], int(start["binlog_pos"])
        gtid = gtid_state(start.get("gtid", ""))
        grouper = Grouper()
        pending = self._new_pending(start)
        try:
            while True:
                if self.stop is not None and self.stop.is_set():
                    pending = self._ship(pending)  # what is whole; the tail is asked for again next time
                    return
                event = self._next(conn, pending, position(file, pos, gtid))
                if event is None:
                    continue
                if event.type == HEARTBEAT:
                    pass
                elif event.type == ROTATE and event.artificial:
                    name, _ = event.rotate_target(self.checksum)
                    if name != file:  # the server moved to the next file without a Rotate we saw
                        pending = self._switch(pending, position(name, 4, gtid))
                        file, pos = name, 4
                elif event.type == FORMAT_DESCRIPTION and event.artificial:
                    self.fde = event.raw  # sent when a dump starts past the file's own copy
                elif event.artificial:
                    pass  # a GTID list the dump thread made up
                else:
                    if event.type == FORMAT_DESCRIPTION:
                        self.fde = event.raw
                    found = event.gtid()
                    if found is not None:
                        gtid[str(found[1]) if event.type == MARIA_GTID else "mysql"] = found[0]
                    pending.add(event, found[0] if found else None)
                    boundary = grouper.feed(event)
                    if event.type == ROTATE:
                        name, at = event.rotate_target(self.checksum)
                        nxt = position(name, at or 4, gtid)
                        pending.commit(nxt)
                        pending = self._switch(pending, nxt)
                        file, pos = name, at or 4
                        continue
                    pos = event.log_pos
                    if boundary:
                        pending.commit(position(file, pos, gtid))
                if pending.end is not None and (
                    self._reached(pending.end)
                    or pending.committed >= PIECE_MAX_BYTES
                    or (pending.since is not None and time.monotonic() - pending.since >= self.rpo)
                ):
                    pending = self._ship(pending)
                if self._reached(pending.start):
                    return
        finally:
            pending.spool.close()

    def _next(self, conn, pending: _Pending, here: dict[str, Any]) -> Event | None:
        try:
            packet = conn._read_packet().get_all_data()
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            message = str(exc.args[-1]) if exc.args else str(exc)
            if code == _ER_MASTER_FATAL_READING_BINLOG and ("purged" in message or "first log" in message):
                self._gap(here, None)
            if code == _ER_MASTER_FATAL_READING_BINLOG or code in (1227, 1045, 1142):
                raise EngineError(
                    f"{self.where}: the server refused the binlog stream: {message}; the capture user needs "
                    "REPLICATION SLAVE ON *.*"
                ) from None
            self._ship(pending)  # keep what is whole before reporting the broken link
            raise SourceUnavailableError(
                f"{self.where}: the binlog stream broke ({message}); the capture resumes from the last "
                "shipped piece when restarted",
                transient=True,
            ) from None
        if packet[:1] == b"\xfe" and len(packet) < 9:
            self._ship(pending)
            raise SourceUnavailableError(
                f"{self.where}: the server ended the binlog stream; the capture resumes when restarted",
                transient=True,
            )
        return Event.parse(packet[1:])

    def _switch(self, pending: _Pending, next_start: dict[str, Any]) -> _Pending:
        """A new binlog file begins at ``next_start``: ship what is pending, ending exactly there."""
        if pending.length != pending.committed:
            raise EngineError(
                f"{self.where}: binlog {pending.start['binlog_file']} ended inside a transaction; "
                "the capture stops rather than ship half of it - check the server"
            )
        pending.end = next_start
        nxt = self._ship(pending)
        self.fde = None  # the next file brings its own format description at position 4
        return nxt

    def _ship(self, pending: _Pending) -> _Pending:
        """Ship the committed part of ``pending``; returns the pending state for what follows it."""
        end = pending.end
        if end is None or end == pending.start:
            return pending
        needs_fde = int(pending.start["binlog_pos"]) > 4
        if needs_fde and self.fde is None:
            raise EngineError(
                f"{self.where}: the server sent no format description for {pending.start['binlog_file']}; "
                "cannot ship a readable piece"
            )
        head = MAGIC + (self.fde if needs_fde and self.fde else b"")
        now = int(time.time())
        info = PieceInfo(
            start=dict(pending.start),
            end=dict(end),
            first_time=iso(pending.first_ts if pending.first_ts is not None else now),
            last_time=iso(pending.last_ts if pending.last_ts is not None else now),
            name=pending.start["binlog_file"],
            extra={"gtid_first": pending.gtid_first or "", "gtid_last": pending.gtid_last or ""},
        )
        self.log.ship(info, _PieceReader(head, pending.spool, pending.committed))
        self.log.progress(
            f"shipped binlog {pending.start['binlog_file']}:{pending.start['binlog_pos']} .. "
            f"{end['binlog_file']}:{end['binlog_pos']} ({pending.committed} bytes of events, "
            f"{info.first_time} .. {info.last_time})"
        )
        # What follows the boundary (a transaction still arriving) moves to a fresh spool file.
        nxt = self._new_pending(end)
        tail = pending.length - pending.committed
        if tail:
            pending.spool.seek(pending.committed)
            shutil.copyfileobj(pending.spool, nxt.spool)
            nxt.length = tail
            nxt.tail_first_ts, nxt.tail_last_ts = pending.tail_first_ts, pending.tail_last_ts
            nxt.tail_gtids = pending.tail_gtids
        pending.spool.close()
        return nxt
