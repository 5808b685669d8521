"""Redis point-in-time recovery through the replication stream.

Capture plays a replica that never applies anything: it keeps a replication link
to the source open (``PSYNC`` from where the vault's log ends, or from the newest
full's snapshot) and ships the bytes the primary sends its replicas (the write
commands, as RESP arrays) as log pieces. Each piece holds *records*: the bytes of
whole commands with the time they were received (ms). A record never ends inside a
command or a ``MULTI``/``EXEC`` block, so a restore stopping at a record boundary
never applies half a transaction.

Restore loads the full (the engine's own restore), then sends the recorded commands
to the target, record by record, up to the stop time (inclusive); ``PING`` and
``REPLCONF`` are the link's own traffic and are not replayed. ``SELECT`` is, so every
command lands in its database.

Piece plaintext (all integers big-endian)::

    "GDR-REDIS-LOG\\0\\0\\1"  (16 bytes)
    u32 n | n bytes of JSON {"replid", "offset" (the piece's start), "db" (selected at the start)}
    per record: "R" | u64 received_at_ms | u32 n | n bytes (whole commands)
    "E" | u64 records | u64 bytes of commands

The records are the time map: the offset of a record is the start plus the bytes of
the records before it, its time is when its last byte arrived. A piece is spooled
on local disk in this format while it fills (``$GENESIS_DR_SPOOL_DIR/<source>/``),
so a capture killed before it shipped a piece ships it on its next start.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from core.engines.base import LogSink, PieceInfo, RecoveryPoint, StopPoint
from core.engines.redis.sync import (
    IO_TIMEOUT,
    RECV_SIZE,
    ReplicaSync,
    RespError,
    connection_reason,
    readable,
    transient_os_error,
)
from core.errors import ConfigError, DRError, EngineError, IntegrityError, LogGapError, SourceUnavailableError

if TYPE_CHECKING:
    from core.engines.redis.engine import RedisEngine

MAGIC = b"GDR-REDIS-LOG\0\0\1"
_RECORD = struct.Struct(">cQI")
_TRAILER = struct.Struct(">cQQ")
# A piece is cut at this size even when the RPO has not come round (bounds the spool and a restore's reads).
PIECE_BYTES = 64 << 20
# How often a piece holding only the link's own traffic is shipped (at least the RPO).
IDLE_SHIP_S = 60.0
# Replicas acknowledge their offset every second; a primary drops a replica silent for repl-timeout.
ACK_INTERVAL = 1.0
# Commands replayed per round trip to the target.
REPLAY_BATCH = 1 << 20
# Reconnect attempts after the link drops, before the capture fails (the flow retries it).
RECONNECTS = 5
# The link's own traffic: not the dataset's, never replayed.
_LINK_COMMANDS = {b"PING", b"REPLCONF"}


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the stream's commands ----------------------------------------------------------------


class Framer:
    """Finds where whole commands (and whole ``MULTI``/``EXEC`` blocks) end in the stream.

    ``feed`` returns the bytes up to the last such boundary; the rest waits for more.
    It tracks the selected database and notices ``REPLCONF GETACK`` (the primary wants
    an acknowledgement now).
    """

    def __init__(self, db: int = 0) -> None:
        self.buf = bytearray()
        self._pos = 0  # where the next unparsed command starts
        self._safe = 0  # end of the last command outside a transaction
        self._in_multi = False
        self._db_at_pos = db
        self.db = db  # selected at the end of what ``feed`` returned
        self.getack = False
        self.commands = 0  # data commands returned so far (not PING/REPLCONF/SELECT)
        self._pending_commands = 0

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        buf = self.buf
        while True:
            parsed = parse_command(buf, self._pos)
            if parsed is None:
                break
            end, name, arg = parsed
            self._pos = end
            if name == b"SELECT":
                self._db_at_pos = int(arg)
            elif name == b"MULTI":
                self._in_multi = True
            elif name in (b"EXEC", b"DISCARD"):
                self._in_multi = False
            elif name == b"REPLCONF":
                if arg.upper() == b"GETACK":
                    self.getack = True
            if name not in _LINK_COMMANDS and name != b"SELECT":
                self._pending_commands += 1
            if not self._in_multi:
                self._safe = end
                self.db = self._db_at_pos
                self.commands += self._pending_commands
                self._pending_commands = 0
        if not self._safe:
            return b""
        out = bytes(buf[: self._safe])
        del buf[: self._safe]
        self._pos -= self._safe
        self._safe = 0
        return out

    def pending(self) -> int:
        return len(self.buf)


def parse_command(buf: bytes | bytearray, pos: int) -> tuple[int, bytes, bytes] | None:
    """One RESP array command at ``pos``: (end, NAME uppercased, first argument), or None if incomplete."""
    size = len(buf)
    if pos >= size:
        return None
    if buf[pos] != 0x2A:  # "*"
        raise EngineError(f"replication stream: expected a command at byte {pos}, found {bytes(buf[pos : pos + 20])!r}")
    nl = buf.find(b"\r\n", pos)
    if nl < 0:
        return None
    count = int(buf[pos + 1 : nl])
    p = nl + 2
    name = arg = b""
    for i in range(count):
        if p >= size:
            return None
        nl = buf.find(b"\r\n", p)
        if nl < 0:
            return None
        length = int(buf[p + 1 : nl])
        start = nl + 2
        end = start + length
        if end + 2 > size:
            return None
        if i == 0:
            name = bytes(buf[start:end]).upper()
        elif i == 1:
            arg = bytes(buf[start:end])
        p = end + 2
    return p, name, arg


# -- pieces ---------------------------------------------------------------------------------


def _header(replid: str, offset: int, db: int) -> bytes:
    body = json.dumps({"replid": replid, "offset": offset, "db": db}, sort_keys=True).encode()
    return MAGIC + struct.pack(">I", len(body)) + body


class PieceReader:
    """Reads a piece back: its header, then its records (``(received_ms, commands)``)."""

    def __init__(self, f: BinaryIO, where: str) -> None:
        self.f, self.where = f, where
        if self._read(len(MAGIC)) != MAGIC:
            raise IntegrityError(f"{where}: not a Redis log piece (bad magic)")
        (n,) = struct.unpack(">I", self._read(4))
        try:
            self.header = json.loads(self._read(n))
        except ValueError:
            raise IntegrityError(f"{where}: the piece's header is not valid JSON") from None
        self.ended = False

    def _read(self, n: int) -> bytes:
        data = self.f.read(n)
        while len(data) < n:
            more = self.f.read(n - len(data))
            if not more:
                raise IntegrityError(f"{self.where}: the piece ends early (truncated)")
            data += more
        return data

    def records(self) -> Iterator[tuple[int, bytes]]:
        count = total = 0
        while True:
            tag = self._read(1)
            if tag == b"R":
                at, n = struct.unpack(">QI", self._read(12))
                data = self._read(n)
                count += 1
                total += n
                yield at, data
            elif tag == b"E":
                records, size = struct.unpack(">QQ", self._read(16))
                if (records, size) != (count, total):
                    raise IntegrityError(f"{self.where}: the piece's trailer does not match its records (corrupt)")
                self.ended = True
                return
            else:
                raise IntegrityError(f"{self.where}: unexpected record tag {tag!r} (corrupt)")


class Spool:
    """The piece being filled, on local disk: only what is not shipped yet."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = directory / "piece.spool"
        self.f: BinaryIO | None = None
        self.start: dict[str, Any] = {}
        self.db = 0
        self.first_ms = self.last_ms = 0
        self.records = self.bytes = self.commands = 0

    def open(self, replid: str, offset: int, db: int) -> None:
        self.close()
        self.f = open(self.path, "w+b")  # noqa: SIM115 - kept open while the piece fills
        os.chmod(self.path, 0o600)
        self.f.write(_header(replid, offset, db))
        self.start = {"replid": replid, "offset": offset}
        self.db = db
        self.first_ms = self.last_ms = 0
        self.records = self.bytes = self.commands = 0

    def add(self, at_ms: int, data: bytes, commands: int) -> None:
        assert self.f is not None
        self.f.write(_RECORD.pack(b"R", at_ms, len(data)))
        self.f.write(data)
        # To the OS at once (not fsynced): a killed capture's next run ships it (a crashed host's
        # run reads it from the primary's backlog instead).
        self.f.flush()
        if not self.records:
            self.first_ms = at_ms
        self.last_ms = at_ms
        self.records += 1
        self.bytes += len(data)
        self.commands += commands

    def finish(self) -> BinaryIO:
        """The whole piece, trailer written, positioned at its start."""
        assert self.f is not None
        self.f.write(_TRAILER.pack(b"E", self.records, self.bytes))
        self.f.flush()
        self.f.seek(0)
        return self.f

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def recover(self) -> tuple[dict[str, Any], int, list[tuple[int, bytes]]] | None:
        """What a killed capture left: (start, db, complete records), or None."""
        try:
            with open(self.path, "rb") as f:
                if f.read(len(MAGIC)) != MAGIC:
                    return None
                (n,) = struct.unpack(">I", f.read(4))
                header = json.loads(f.read(n))
                records = []
                while True:
                    head = f.read(_RECORD.size)
                    if len(head) < _RECORD.size or head[:1] != b"R":
                        break
                    _, at, size = _RECORD.unpack(head)
                    data = f.read(size)
                    if len(data) < size:
                        break  # the record being written when the capture died
                    records.append((at, data))
        except (OSError, ValueError, struct.error):
            return None
        start = {"replid": header["replid"], "offset": int(header["offset"])}
        return start, int(header.get("db", 0)), records


def spool_dir(source: str) -> Path:
    root = os.environ.get("GENESIS_DR_SPOOL_DIR")
    base = Path(root) if root else Path.home() / ".local" / "state" / "genesis-dr" / "spool"
    return base / source


# -- capture --------------------------------------------------------------------------------


class Capture:
    """One capture session of one Redis source (``RedisEngine.capture``)."""

    def __init__(self, engine: RedisEngine, log: LogSink, stop: Any, until: dict[str, Any] | None) -> None:
        self.engine, self.log, self.stop, self.until = engine, log, stop, until
        self.label = engine.label
        # Half the RPO: a write is in the vault well within it, shipping time included.
        self.ship_after = max(0.5, engine.config.rpo_seconds / 2)
        # Only the primary's PINGs (every repl-ping-replica-period, 10 s) pending: nothing to lose,
        # but the log's covered time moves on, so a restore to a quiet moment needs no guess.
        self.idle_after = max(float(engine.config.rpo_seconds), IDLE_SHIP_S)
        self.spool = Spool(spool_dir(log.source))
        self.replid = ""
        self.offset = 0  # the last byte shipped or spooled (a replica's "processed offset")
        self.db = 0

    def run(self) -> None:
        if self.engine.config.mode != "rdb":
            raise ConfigError(
                f"{self.label}: log capture reads the replication stream, which needs mode 'rdb'; "
                "set mode: rdb for this source (managed Redis without SYNC has snapshots only)"
            )
        try:
            sync: ReplicaSync | None = self._start()
            failures = 0
            while True:
                assert sync is not None
                began = time.monotonic()
                try:
                    if self._stream(sync):
                        return
                except SourceUnavailableError as exc:
                    failure = exc
                finally:
                    sync.close()
                # The link dropped: ship what arrived, then continue after it as a replica would.
                self._ship()
                if time.monotonic() - began > IO_TIMEOUT:
                    failures = 0  # the link had been healthy: count this drop afresh
                sync = None
                while sync is None:
                    failures += 1
                    if failures > RECONNECTS:
                        raise failure
                    self.log.progress(f"{self.label}: {failure}; reconnecting ({failures}/{RECONNECTS})")
                    if self.stop.wait(min(8.0, 0.5 * 2**failures)):
                        return
                    try:
                        sync = self._connect()
                    except SourceUnavailableError as exc:
                        failure = exc
        finally:
            self.spool.close()

    # -- where to start --

    def _start(self) -> ReplicaSync:
        """Continue where the vault's log ends; else from the newest full's snapshot (when it is
        newer: a capture that shipped nothing after a full it took); else take a new full."""
        last = self.log.last_piece()
        full = self.log.newest_full()
        full_start = _log_start(full.position) if full is not None else None
        refused: ReplicaSync | None = None
        why = "the vault holds no rdb full backup of this source to start the log from"
        if last is not None:
            self.replid, self.offset = str(last.end["replid"]), int(last.end["offset"])
            self.db = int(last.extra.get("db_end", 0))
            self._ship_recovered()
            refused = self._psync()
            if refused is None:
                return self._sync
            why = self._cannot_continue()
        if full_start is not None and (last is None or full_start[1] > self.offset):
            if refused is not None:
                refused.close()
            self.replid, self.offset = full_start
            # The primary forces a SELECT into the stream right after a snapshot.
            self.db = 0
            if last is None:
                self._ship_recovered()  # a first capture killed before it shipped anything
            else:
                self.spool.remove()
            refused = self._psync()
            if refused is None:
                return self._sync
            why = self._cannot_continue()
        return self._new_full(why, refused)

    def _cannot_continue(self) -> str:
        return (
            f"the primary cannot continue the stream after offset {self.offset} (its backlog no longer holds it; "
            "raise repl-backlog-size)"
        )

    def _psync(self) -> ReplicaSync | None:
        """Ask to continue after ``self.offset``: None when the primary does (the link is ``self._sync``),
        else the link on which it started a full resync."""
        sync = self.engine.replica_sync(rdb_only=False, resume=(self.replid, self.offset))
        if not sync.header.continued:
            return sync
        if sync.header.replid != self.replid:
            self.log.progress(f"{self.label}: the primary's replication id is now {sync.header.replid[:8]}")
            self.replid = sync.header.replid
        self._sync = sync
        return None

    def _ship_recovered(self) -> None:
        """Ship the piece a killed capture spooled but did not ship (if it starts where the log ends)."""
        found = self.spool.recover()
        if found is None:
            return
        start, db, records = found
        if start != {"replid": self.replid, "offset": self.offset} or not records:
            self.spool.remove()  # shipped already, or nothing in it
            return
        framer = Framer(db)
        self.spool.open(self.replid, self.offset, db)
        for at, data in records:
            if framer.feed(data) != data:
                break  # not whole commands: keep what is
            self.spool.add(at, data, 0)
        self.spool.commands = framer.commands
        self.db = framer.db
        self.offset += self.spool.bytes
        self.log.progress(f"{self.label}: shipping {self.spool.records} records a stopped capture had spooled")
        self._ship()

    def _connect(self) -> ReplicaSync:
        refused = self._psync()
        if refused is None:
            return self._sync
        return self._new_full(self._cannot_continue(), refused)

    def _new_full(self, why: str, sync: ReplicaSync | None = None) -> ReplicaSync:
        """A new full backup taken through this engine, whose replication link goes on as the stream."""
        self.spool.remove()
        self.log.progress(f"{self.label}: {why}; taking a new full backup and streaming on from its snapshot")
        engine = self.engine
        engine.adopt_link(sync)
        try:
            result = self.log.take_full()
        except BaseException:
            kept = engine.release_link()  # the full failed after its snapshot: drop the link it kept
            if kept is not None:
                kept.close()
            raise
        held = engine.release_link()
        start = _log_start(result.position)
        if start is None:
            if held is not None:
                held.close()
            raise LogGapError(
                f"{self.label}: the new full backup has no replication position (mode logical?); "
                "the stream cannot start from it - take an rdb full backup"
            )
        self.replid, self.offset = start
        self.db = 0
        if held is not None and (held.header.replid, held.header.offset) == start:
            return held
        if held is not None:
            held.close()
        # The full was taken without our link (another engine object): join it over the backlog.
        sync = engine.replica_sync(rdb_only=False, resume=start)
        if not sync.header.continued:
            sync.close()
            raise LogGapError(
                f"{self.label}: the new full backup's link was not handed to the capture and the primary cannot "
                f"continue from its snapshot (offset {start[1]}); the log has a gap after it - run the capture again "
                "to take a new full"
            )
        return sync

    # -- the stream --

    def _stream(self, sync: ReplicaSync) -> bool:
        """Read and ship until stopped (True) or the link fails (raises SourceUnavailableError)."""
        conn = sync.conn
        sock = conn.sock
        framer = Framer(self.db)
        if self.spool.f is None:
            self.spool.open(self.replid, self.offset, self.db)
        heard = time.monotonic()
        acked = 0.0
        # A diskless snapshot's stream starts at the first ACK (Redis 7).
        self._ack(conn, self.offset)
        leftover = conn.take_buffered()  # stream bytes read with the snapshot's last ones
        while True:
            data = leftover
            leftover = b""
            if not data:
                if readable(sock, 0.2):
                    try:
                        data = sock.recv(RECV_SIZE)
                    except OSError as exc:
                        raise SourceUnavailableError(
                            f"{self.label}: {connection_reason(exc)} on the replication link",
                            transient=transient_os_error(exc),
                        ) from None
                    if not data:
                        raise SourceUnavailableError(f"{self.label}: the primary closed the replication link")
            now = time.monotonic()
            if data:
                heard = now
                before = framer.commands
                whole = framer.feed(data)
                if whole:
                    self.spool.add(_now_ms(), whole, framer.commands - before)
                    self.offset += len(whole)
                    self.db = framer.db
            elif now - heard > IO_TIMEOUT:
                raise SourceUnavailableError(f"{self.label}: no data on the replication link for {IO_TIMEOUT:.0f}s")
            if framer.getack or now - acked >= ACK_INTERVAL:
                framer.getack = False
                acked = now
                self._ack(conn, self.offset)
            wait = self.ship_after if self.spool.commands else self.idle_after
            due = self.spool.records and (
                time.time() - self.spool.first_ms / 1000 >= wait or self.spool.bytes >= PIECE_BYTES
            )
            if due:
                self._ship()
            if self.stop.is_set() or (self.until is not None and self.offset >= int(self.until["offset"])):
                self._ship()
                self.spool.remove()
                return True

    def _ack(self, conn: Any, offset: int) -> None:
        try:
            conn.send("REPLCONF", "ACK", offset)
        except OSError as exc:
            raise SourceUnavailableError(
                f"{self.label}: {connection_reason(exc)} acknowledging the stream", transient=transient_os_error(exc)
            ) from None

    def _ship(self) -> None:
        spool = self.spool
        if spool.f is None or not spool.records:
            return
        end = {"replid": self.replid, "offset": spool.start["offset"] + spool.bytes}
        info = PieceInfo(
            start=spool.start,
            end=end,
            first_time=iso_ms(spool.first_ms),
            last_time=iso_ms(spool.last_ms),
            name=f"{self.replid[:8]}:{spool.start['offset']}-{end['offset']}",
            extra={
                "format": 1,
                "db_start": spool.db,
                "db_end": self.db,
                "records": spool.records,
                "commands": spool.commands,
            },
        )
        self.log.ship(info, spool.finish())
        self.log.progress(
            f"{self.label}: shipped stream {info.name} ({spool.bytes} bytes, {spool.commands} commands, "
            f"to {info.last_time})"
        )
        spool.open(self.replid, end["offset"], self.db)


class HeldLink:
    """A full backup's replication link, kept for the capture that asked for it: acknowledged
    every second (a primary drops a silent replica) until the capture takes it over."""

    def __init__(self, sync: ReplicaSync) -> None:
        self.sync = sync
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-held-link", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(ACK_INTERVAL):
            try:
                self.sync.conn.send("REPLCONF", "ACK", self.sync.header.offset)
            except OSError:
                return  # the capture finds the link dead when it reads

    def release(self) -> ReplicaSync:
        self._stop.set()
        self._thread.join()
        return self.sync


def _log_start(position: dict[str, Any]) -> tuple[str, int] | None:
    if "replid" not in position or position.get("offset") is None:
        return None
    return str(position["replid"]), int(position["offset"])


# -- replay ---------------------------------------------------------------------------------


class Replayer:
    """Sends recorded commands to the target in pipelined batches and checks every reply."""

    def __init__(self, engine: RedisEngine) -> None:
        self.label = engine.label
        self.pipe = engine._pipe(0)
        self.out = bytearray()
        self.waiting = 0

    def add(self, raw: bytes | memoryview) -> None:
        self.out += raw
        self.waiting += 1
        if len(self.out) >= REPLAY_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.waiting:
            return
        replies = self.pipe.execute(bytes(self.out), self.waiting)
        self.out.clear()
        self.waiting = 0
        for reply in replies:
            # EXEC answers with one reply per queued command.
            for one in reply if isinstance(reply, list) else (reply,):
                if isinstance(one, RespError):
                    raise EngineError(f"{self.label}: a replayed command failed on the target: {str(one)[:200]}")

    def record(self, data: bytes, skip: int = 0, only_select: bool = False) -> int:
        """Queue a record's commands (not the link's own; of its first ``skip`` bytes, and with
        ``only_select`` of all of it, only SELECTs); returns how many write the dataset."""
        view = memoryview(data)
        pos = count = 0
        while pos < len(data):
            parsed = parse_command(data, pos)
            if parsed is None:
                raise IntegrityError(f"{self.label}: a stream record ends inside a command (corrupt)")
            end, name, _ = parsed
            if pos < skip < end:
                raise IntegrityError(f"{self.label}: the full's stream offset falls inside a command (corrupt)")
            if name == b"SELECT" or (name not in _LINK_COMMANDS and pos >= skip and not only_select):
                self.add(view[pos:end])
                if name != b"SELECT":
                    count += 1
            pos = end
        return count

    def close(self) -> None:
        self.pipe.close()


def replay(engine: RedisEngine, steps: Any, stop: StopPoint, progress: Any = None) -> RecoveryPoint:
    """``RedisEngine.restore_chain``: the full, then the stream up to ``stop``."""
    say = progress or (lambda message: None)
    base = steps.base
    result = base.result
    notes = list(engine.restore(base, result) or [])
    start = _log_start(result.position)
    snapshot_time = result.position.get("started_at")
    if start is None or not steps.pieces:
        return RecoveryPoint(
            position=dict(result.position),
            time=snapshot_time,
            proof=f"the snapshot itself (taken {snapshot_time}); no stream replayed",
            notes=notes,
        )
    replid, offset = start
    stop_ms = int(stop.time.timestamp() * 1000) if stop.time is not None else None
    stop_offset = int(stop.position["offset"]) if stop.position else None
    last_ms: int | None = None  # receive time of the last applied data command
    last_record_ms: int | None = None
    applied = 0
    replayer = Replayer(engine)
    done = False
    try:
        for number, (info, opener) in enumerate(steps.pieces):
            pos = int(info.start["offset"])  # where the piece's next record starts in the stream
            # The first piece may begin before the full (a full taken while the capture ran): its
            # commands up to the snapshot are in the snapshot already.
            if pos != offset and not (number == 0 and pos < offset < int(info.end["offset"])):
                raise LogGapError(
                    f"{engine.label}: the stream piece {info.name} starts at offset {pos}, "
                    f"but the restore has reached {offset}; the log has a gap - restore to a point before it"
                )
            with opener() as f:
                reader = PieceReader(f, f"{engine.label}: stream piece {info.name}")
                if int(reader.header["offset"]) != pos:
                    raise IntegrityError(f"{reader.where}: its header names offset {reader.header['offset']}")
                replayer.add(_select(int(reader.header.get("db", 0))))
                for at_ms, data in reader.records():
                    end = pos + len(data)
                    if end <= offset:  # before the snapshot: only where it leaves the database selected
                        replayer.record(data, only_select=True)
                        pos = end
                        continue
                    if (stop_ms is not None and at_ms > stop_ms) or (stop_offset is not None and end > stop_offset):
                        done = True
                        break
                    count = replayer.record(data, skip=offset - pos)
                    pos = offset = end
                    last_record_ms = at_ms
                    if count:
                        applied += count
                        last_ms = at_ms
                if not done and not reader.ended:
                    raise IntegrityError(f"{reader.where}: the piece has no trailer (truncated)")
            replid = str(info.end.get("replid", replid))
            say(f"{engine.label}: replayed stream piece {info.name} up to offset {offset}")
            if done:
                break
        replayer.flush()
    except DRError as exc:
        raise type(exc)(f"{exc}; the target {engine.describe()} was left partially restored") from None
    finally:
        replayer.close()
    if last_ms is not None:
        when = iso_ms(last_ms)
        proof = (
            f"receive time over the replication link of the last applied command, {when} "
            f"(offset {offset}; {applied} commands replayed after the snapshot at offset {start[1]})"
        )
    else:
        when = snapshot_time
        reached = f", stream read to {iso_ms(last_record_ms)}" if last_record_ms is not None else ""
        proof = f"the snapshot (taken {snapshot_time}): no write in the stream before the stop point{reached}"
    return RecoveryPoint(position={"replid": replid, "offset": offset}, time=when, proof=proof, notes=notes)


def _select(db: int) -> bytes:
    text = str(db).encode()
    return b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n" % (len(text), text)
