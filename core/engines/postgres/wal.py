"""Continuous WAL capture through a physical replication slot into the vault's log.

``pg_receivewal --slot <slot> --synchronous --no-loop -D <spool>`` streams the
source's WAL into a local spool directory; this module ships each completed
segment as one piece of the vault's log (name = WAL file name, start/end LSN,
the first and last commit time inside it from ``pg_waldump``) and deletes it
from the spool once ``ship`` returned. The spool only ever holds what is not
yet in the vault (about one segment, plus whatever a slow vault backs up).

RPO: a segment fills only as fast as the server writes (16 MB; on a quiet
database that takes hours). Whenever ``rpo_seconds`` passed since the last
piece and new WAL was flushed, the WAL flushed since the last piece is shipped
at once as a piece that ends inside the segment; the next piece starts where it
ended, so a segment may reach the vault in several pieces (each named by its
segment file, ``extra.offset`` its byte offset in it) and no byte is shipped
twice. We chose this over the two obvious ways:

- forcing ``pg_switch_wal()`` makes the server write and keep a whole new
  16 MB segment per RPO interval (at a 30 s RPO, 46 GB of WAL a day on an idle
  database: the known cost of ``archive_timeout``) and needs a privilege the
  capture does not otherwise need;
- shipping the segment's whole flushed prefix again as a piece that a later one
  supersedes costs up to a segment per RPO interval in the vault: a source that
  writes a little all day would store hundreds of copies of each segment.

The RPO is ``rpo_seconds`` plus the time to seal one piece. ``--synchronous``
makes pg_receivewal flush and report each write at once; the flush position
its walsender shows (``pg_stat_replication.flush_lsn``) is exactly how much of
the ``.partial`` file is durable: what we ship, never more.

Times: each piece records the first and last commit (or abort) time among the
records that end inside it, read with ``pg_waldump`` (``walfiles.py``); a piece
with no commit records the time of the last commit before it (not the clock
when it was cut: a piece shipped late would then look newer than commits in the
pieces after it, and a planner would stop too early). A commit record that
straddles a segment boundary can be missed by that reading, which only lowers a
piece's ``last_time``: a planner then takes a piece more, never one too few,
and the restore stops at the target by the server's own reading of the WAL.

Resume: the slot keeps the server from removing WAL pg_receivewal has not
flushed; the vault's last piece says where the log ends. At start the spool is
cleaned of what the vault holds, and when it holds nothing past the vault's end
it is seeded with an empty (sparse) ``.partial`` of the next segment, which is
where pg_receivewal starts streaming: so a capture killed at any point, or a
lost spool, resumes at the vault's end. If the server no longer has that WAL
(slot dropped and WAL recycled, ``max_slot_wal_keep_size`` exceeded), the
stream fails and capture raises ``LogGapError`` naming the missing range: a new
full backup is needed.

Spool: ``$GENESIS_DR_SPOOL_DIR/<source>`` or ``~/.local/state/genesis-dr/spool/<source>``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from core.engines.base import LogSink, PieceInfo
from core.engines.postgres import physical, walfiles
from core.engines.postgres.position import lsn_int, lsn_text
from core.engines.postgres.walfiles import SEGMENT_NAME, position
from core.engines.tools import StderrTail, last_line
from core.errors import EngineError, LogGapError, SourceUnavailableError, redact

if TYPE_CHECKING:
    from core.engines.postgres.engine import PostgresEngine

POLL_S = 0.25
UNTIL_TIMEOUT_S = 600.0  # a backup waiting for its WAL position fails after this, never hangs
RECEIVER_RESTARTS = 5  # consecutive failed starts of pg_receivewal before capture gives up (the flow retries)


def spool_dir(source: str) -> Path:
    root = os.environ.get("GENESIS_DR_SPOOL_DIR") or str(Path.home() / ".local/state/genesis-dr/spool")
    path = Path(root) / source
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _die_with_parent() -> None:
    # A capture killed with SIGKILL must not leave pg_receivewal holding the slot: the restarted
    # capture could not stream until the server noticed.
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def log_position(engine: PostgresEngine, switch: bool) -> dict[str, Any]:
    """The current WAL insert position; ``switch`` closes the current segment first (when it holds
    anything), so everything below the returned position is in completed segments."""
    with engine._connect() as conn:
        try:
            if switch:
                conn.execute("SELECT pg_switch_wal()")
            lsn, name = conn.execute(
                "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())"
            ).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            # Without the switch the running capture ships the position as a partial piece.
            lsn, name = conn.execute(
                "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())"
            ).fetchone()
        except psycopg.Error as exc:
            raise engine._sql_error(exc, "reading the WAL position of", "check the server is a primary") from None
    return {"lsn": lsn, "timeline": walfiles.segment_timeline(name)}


class WalCapture:
    """One capture session of one source (see the module docstring)."""

    def __init__(self, engine: PostgresEngine, log: LogSink, stop: threading.Event, until: dict | None) -> None:
        from core.engines.postgres.engine import find_tool

        self.engine, self.log, self.stop = engine, log, stop
        self.until = lsn_int(until["lsn"]) if until else None
        self.where = engine.describe()
        self.slot = engine.config.slot
        self.rpo = float(engine.config.rpo_seconds)
        self.pg_receivewal = find_tool("pg_receivewal")
        self.pg_waldump = find_tool("pg_waldump")
        self.spool = spool_dir(log.source)
        self.scratch = self.spool / ".ship"
        self.proc: subprocess.Popen | None = None
        self.stderr: StderrTail | None = None
        self.shipped_end: int | None = None  # end of the vault's log: where the next piece starts
        self.counted: int | None = None  # LSN of the last commit record whose time a piece recorded
        # Commit time of that record (or an upper bound of every commit before the log's start):
        # a piece with no commit is described by it.
        self.last_commit_time: str | None = None
        self.last_ship = 0.0
        self.failures = 0

    # ---------------------------------------------------------------- session

    def run(self) -> None:
        self.conn = self.engine._connect()
        try:
            self.seg_size = int(
                self.conn.execute("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()[
                    0
                ]
            )
            if not physical.may_replicate(self.conn):
                raise EngineError(
                    f"WAL capture of {self.where} needs a login with REPLICATION (or a superuser): "
                    f"ALTER ROLE {self.engine.config.user} REPLICATION"
                )
            created = physical.ensure_slot(self.conn, self.slot, self.where)
            if created:
                self.log.progress(f"capture of {self.log.source}: created physical replication slot '{self.slot}'")
            self._resume_point()
            self._check_timeline()
            self._prepare_spool()
            self._start_receiver()
            self._loop()
        except psycopg.Error as exc:
            raise self.engine._sql_error(exc, "capturing WAL of", "check the server") from None
        finally:
            self._stop_receiver()
            self.conn.close()

    def _resume_point(self) -> None:
        last = self.log.last_piece()
        if last is not None:
            self.timeline = int(last.end.get("timeline") or 1)
            self.shipped_end = lsn_int(last.end["lsn"])
            self.counted = lsn_int(last.extra.get("last_commit_lsn") or last.start["lsn"])
            self.last_commit_time = last.last_time
            return
        full = self.log.newest_full()
        if full is not None and full.position.get("physical"):
            self._start_at(full.position)
            return
        # Nothing to continue: the log starts where the slot (or the server) is now.
        self.timeline = walfiles.segment_timeline(
            self.conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        )

    def _start_at(self, position: dict) -> None:
        """The log starts at a physical full's start LSN (where its replay begins)."""
        self.timeline = int(position.get("timeline") or 1)
        self.shipped_end = self.counted = lsn_int(position["lsn"])
        # Every commit before the backup's end is older than its end time.
        self.last_commit_time = position.get("end_time")

    def _newer_full(self) -> dict | None:
        """The newest full's position when the log can start again there: physical, on the server's
        timeline, after the vault's log (taken after a gap, as its remedy)."""
        full = self.log.newest_full()
        if full is None or not full.position.get("physical") or self.shipped_end is None:
            return None
        name = self.conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        position = full.position
        if int(position.get("timeline") or 1) != walfiles.segment_timeline(name):
            return None
        later = int(position.get("timeline") or 1) != self.timeline or lsn_int(position["lsn"]) > self.shipped_end
        return position if later else None

    def _restart_at_full(self, position: dict, why: str) -> None:
        self.log.progress(
            f"capture of {self.log.source}: {why}; the log starts again at the newest full backup "
            f"({lsn_text(lsn_int(position['lsn']))}): restores to times before that full and after "
            f"{lsn_text(self.shipped_end or 0)} are not possible"
        )
        self._start_at(position)

    def _check_timeline(self) -> None:
        """A log continues only on its own timeline: after a failover (a promoted standby is on a
        new timeline) the vault's log cannot simply go on."""
        name = self.conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        current = walfiles.segment_timeline(name)
        if self.shipped_end is not None and current != self.timeline:
            full = self._newer_full()
            if full is not None:
                self._restart_at_full(full, f"the server moved to timeline {current}")
                return
            raise LogGapError(
                f"{self.where} is on WAL timeline {current}, the vault's log of '{self.log.source}' on timeline "
                f"{self.timeline} (ends at {lsn_text(self.shipped_end)}): the server was promoted or restored since; "
                f"take a new full backup (genesis-dr backup full --source {self.log.source}) and restart capture"
            )

    def _segment(self, lsn: int) -> int:
        return walfiles.floor_segment(lsn, self.seg_size)

    def _spooled(self) -> list[tuple[int, str, bool]]:
        """(segment start, file name, partial) of the spool's WAL files, in log order."""
        out = []
        for entry in self.spool.iterdir():
            base, partial = entry.name.removesuffix(".partial"), entry.name.endswith(".partial")
            if SEGMENT_NAME.match(base) and entry.is_file():
                out.append((walfiles.segment_start(base, self.seg_size), entry.name, partial))
        return sorted(out)

    def _prepare_spool(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        self.scratch.mkdir(mode=0o700)
        if self.shipped_end is None:
            return
        resume = self._segment(self.shipped_end)
        for start, name, _ in self._spooled():
            if start < resume:
                (self.spool / name).unlink()  # in the vault already
        spooled = self._spooled()
        if spooled and spooled[0][0] != resume:
            # The spool does not continue the vault (lost or from elsewhere): stream again from the vault's end.
            for _, name, _ in spooled:
                (self.spool / name).unlink()
            spooled = []
        if not spooled:
            # pg_receivewal streams from the start of the newest .partial segment it finds.
            seed = self.spool / (walfiles.segment_name(self.timeline, resume, self.seg_size) + ".partial")
            with open(seed, "wb") as f:
                f.truncate(self.seg_size)

    # ---------------------------------------------------------------- the receiver

    def _start_receiver(self) -> None:
        argv = [
            self.pg_receivewal,
            "-D",
            str(self.spool),
            f"--slot={self.slot}",
            "--synchronous",  # flush and report every write: its flush_lsn is what the spool holds
            "--no-loop",  # we restart it ourselves, and see why it stopped
            "--status-interval=1",
            "--no-password",
            "-d",
            physical.replication_conninfo(self.engine, f"genesis-dr-capture-{self.slot}"),
        ]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.engine._tool_env(),
            preexec_fn=_die_with_parent,
        )
        self.stderr = StderrTail(self.proc.stderr)

    def _stop_receiver(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # ends cleanly: the .partial stays, flushed
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.stderr is not None:
            self.stderr.join(5)  # reads to EOF, then the pipe is closed with the process object

    def _receiver_ended(self) -> None:
        """pg_receivewal exited while we still capture: a gap (fatal), or a lost link (restart)."""
        text = redact(self.stderr.text() if self.stderr else "", self.engine.config.secrets())
        self._stop_receiver()
        if "has already been removed" in text:
            full = self._newer_full()
            if full is not None:
                self._restart_at_full(full, f"the WAL from {lsn_text(self.shipped_end or 0)} is gone from the server")
                self._prepare_spool()
                self._start_receiver()
                return
            state = physical.slot_state(self.conn, self.slot)
            now = self.conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
            begin = lsn_text(self.shipped_end if self.shipped_end is not None else 0)
            upto = state["restart_lsn"] if state and state["restart_lsn"] else now
            raise LogGapError(
                f"WAL of '{self.log.source}' from {begin} is no longer on {self.where} (removed before it was "
                f"captured: the slot '{self.slot}' was dropped or lost it); the vault's log ends at {begin} and the "
                f"server keeps WAL only from about {upto}: take a new full backup "
                f"(genesis-dr backup full --source {self.log.source}) and restart capture"
            )
        low = text.lower()
        if "password authentication failed" in low or "pg_hba.conf" in low or "must have replication" in low:
            raise EngineError(
                f"WAL capture of {self.where} was refused: {last_line(text)}; allow replication connections for "
                f"{self.engine.config.user} in the server's pg_hba.conf and give the role REPLICATION"
            )
        self.failures += 1
        if self.failures > RECEIVER_RESTARTS:
            raise SourceUnavailableError(
                f"WAL capture of {self.where} keeps failing: {last_line(text)}; check the server, pg_hba.conf "
                "(replication connections) and the slot",
                transient=True,
            )
        self.log.progress(f"capture of {self.log.source}: pg_receivewal stopped ({last_line(text)}); restarting")
        self.stop.wait(min(10.0, 0.5 * 2**self.failures))
        if not self.stop.is_set():
            self._start_receiver()

    # ---------------------------------------------------------------- shipping

    def _loop(self) -> None:
        deadline = time.monotonic() + UNTIL_TIMEOUT_S
        while True:
            self._ship_completed()
            if self._reached():
                return
            if self.until is not None and time.monotonic() > deadline:
                raise EngineError(
                    f"WAL of {self.where} up to {lsn_text(self.until)} did not reach the vault within "
                    f"{UNTIL_TIMEOUT_S:.0f}s (it holds up to {lsn_text(self.shipped_end or 0)}); check the capture's "
                    "connection and the slot"
                )
            if self.stop.is_set():
                flush = self._flushed()  # while our receiver is still connected
                self._stop_receiver()
                self._ship_completed()
                if flush is not None:
                    self._ship_partial(flush=flush)  # what was flushed before the stop is in the vault
                return
            if self.proc is not None and self.proc.poll() is not None:
                self._receiver_ended()
                continue
            if time.monotonic() - self.last_ship >= self.rpo:
                self._ship_partial()
            elif self.until is not None:
                self._ship_partial(at_least=self.until)
            if self._reached():
                return
            self.stop.wait(POLL_S)

    def _reached(self) -> bool:
        return self.until is not None and self.shipped_end is not None and self.shipped_end >= self.until

    def _server_time(self) -> str:
        return walfiles.iso_z(self.conn.execute("SELECT clock_timestamp()").fetchone()[0])

    def _ship_completed(self) -> None:
        for start, name, partial in self._spooled():
            if partial:
                continue
            if self.shipped_end is None:
                self.shipped_end = self.counted = start
            if start + self.seg_size <= self.shipped_end:
                (self.spool / name).unlink()  # shipped before a restart
                continue
            if start > self._segment(self.shipped_end):
                raise LogGapError(
                    f"WAL of '{self.log.source}' from {lsn_text(self.shipped_end)} to {lsn_text(start)} never "
                    f"reached the spool {self.spool}; take a new full backup and restart capture"
                )
            self._ship(name, self.spool / name, self.shipped_end, start + self.seg_size)
            (self.spool / name).unlink()

    def _flushed(self) -> int | None:
        """How much WAL our pg_receivewal has flushed into the spool, as it reported it in this
        session (the slot's own restart_lsn may predate our spool: a new slot reserves from the
        server's current position before the receiver has written anything)."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        row = self.conn.execute(
            "SELECT r.flush_lsn::text FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid "
            "WHERE s.slot_name = %s",
            (self.slot,),
        ).fetchone()
        return lsn_int(row[0]) if row and row[0] else None

    def _ship_partial(self, at_least: int = 0, flush: int | None = None) -> None:
        """Ship the WAL flushed since the last piece, when there is some inside the current segment
        (and it reaches ``at_least``: a backup waiting for its position needs one piece, not one per poll)."""
        flush = self._flushed() if flush is None else flush
        if flush is None:
            return
        if self.shipped_end is None:
            partials = [start for start, _, partial in self._spooled() if partial]
            if not partials:
                return
            self.shipped_end = self.counted = partials[0]
        segment = self._segment(self.shipped_end)
        if flush <= self.shipped_end or flush < at_least or flush >= segment + self.seg_size:
            return  # nothing new, or the segment is complete and ships from its completed file
        name = walfiles.segment_name(self.timeline, segment, self.seg_size)
        path = self.spool / (name + ".partial")
        if not path.exists():
            return  # completed meanwhile: it ships from the completed file
        self._ship(name, path, self.shipped_end, flush)

    def _ship(self, name: str, path: Path, start: int, end: int) -> None:
        """Ship bytes [start, end) of segment file ``path`` (segment ``name``) as one piece."""
        timeline = walfiles.segment_timeline(name)
        segment = walfiles.segment_start(name, self.seg_size)
        # pg_waldump finds WAL files by name: a link named as the segment, read up to ``end``.
        link = self.scratch / name
        link.unlink(missing_ok=True)
        link.symlink_to(path.absolute())
        try:
            times = walfiles.commit_times(
                self.pg_waldump, self.scratch, timeline, max(segment, self.counted or segment), end, self.counted
            )
        finally:
            link.unlink(missing_ok=True)
        # No commit inside: the piece adds nothing after the last commit before it, so that is its
        # time (the clock when it was cut could be later than commits in the pieces after it).
        quiet = self.last_commit_time or self._server_time()
        complete = end == segment + self.seg_size
        info = PieceInfo(
            start=position(start, timeline),
            end=position(end, timeline),
            first_time=times.first or quiet,
            last_time=times.last or quiet,
            name=name,
            extra={
                "timeline": timeline,
                "segment_bytes": self.seg_size,
                "offset": start - segment,
                "commits": times.count,
                "last_commit_lsn": lsn_text(times.last_lsn)
                if times.last_lsn
                else (lsn_text(self.counted) if self.counted else None),
                # How first/last_time are known: the piece's own commit records, or (a piece with
                # no commit) the last commit before it.
                "times": "commit records" if times.count else "no commit: the last commit before it",
            },
        )
        with open(path, "rb") as f:
            f.seek(start - segment)
            self.log.ship(info, _Range(f, end - start))
        self.shipped_end = end
        if times.last_lsn:
            self.counted = times.last_lsn
            self.last_commit_time = max(times.last, self.last_commit_time or times.last)
        self.last_ship = time.monotonic()
        self.failures = 0
        self.log.progress(
            f"shipped WAL {name} {'' if complete else 'up to '}{lsn_text(end)} ({lsn_text(start)} -> {lsn_text(end)}, "
            f"{end - start} bytes, {times.count} commits" + (f", last {times.last}" if times.last else "") + ")"
        )


class _Range:
    """A readable view of the next ``size`` bytes of a file (one piece of a segment)."""

    def __init__(self, f, size: int) -> None:
        self._f, self._left = f, size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._f.read(n)
        if len(data) < n:
            raise EngineError(f"the spooled WAL {self._f.name} is shorter than the flushed position")
        self._left -= len(data)
        return data
