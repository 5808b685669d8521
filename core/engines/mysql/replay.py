"""Replaying captured binlog pieces into a restored database, up to a time or a GTID.

The pieces are read from the vault one at a time and their events streamed, never
staged on disk, through ``mariadb-binlog`` (which turns events into SQL: statements
with the session settings they ran under - sql_mode, character sets, time zone,
``SET TIMESTAMP``, foreign_key_checks - and row events as ``BINLOG`` statements) into
one ``mariadb`` session on the target:

    vault piece -> our event filter -> mariadb-binlog --database=SRC --rewrite-db=SRC->DST - -> mariadb DST

Our filter decides where the replay stops, a whole transaction at a time: a transaction
is applied when its commit event (XID, COMMIT, or the DDL statement itself) carries a
time at or before the target's second (binlog event times are whole seconds), or when
it is at or before the target GTID/position. So a transaction is never cut in half,
and the recovery point is the commit time of the last transaction applied. Events below
the full backup's position (a piece that began before the full) are skipped; each file's
format description is passed once, as mariadb-binlog needs it to read the events.

What is applied is this source's database only: ``--database`` keeps row events of its
tables and statements whose default database (``USE``) was it; ``--rewrite-db`` points
both at the target database. Statement-based events that name another database
explicitly are filtered by their ``USE`` (as the server's own replicate-do-db does), so
sources that must be replayed exactly should log in ROW format (see docs/FORMAT.md).

GTIDs: mariadb-binlog sets ``gtid_domain_id``, ``server_id`` and ``gtid_seq_no`` of the
source before each transaction; we drop those three lines, so the target logs the
replayed transactions under its own GTIDs (a filtered, renamed replay is not the
source's transactions, and reusing their numbers would break a target in
gtid_strict_mode or fork its replicas).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from datetime import datetime
from typing import Any

from core.engines.base import ChainSteps, RecoveryPoint, StopPoint
from core.engines.mysql import binlog
from core.engines.mysql import position as mysql_position
from core.engines.tools import Tool
from core.errors import DRError, EngineError, RecoveryTargetError

_SOURCE_GTID_LINE = re.compile(
    rb"^/\*M?!100001 SET @@session\.(gtid_domain_id|server_id|gtid_seq_no)=\d+\*/\s*/\*!\*/;\s*$"
)
LOCK_WAIT_TIMEOUT = 30
HOLD_IN_MEMORY = 16 << 20  # bytes of one transaction held in memory before it spills to a temporary file


class _Stop(Exception):
    """The target point is reached: no further event is fed."""


class _Held:
    """The events of one transaction, held until its commit event says whether it is applied:
    in memory up to ``HOLD_IN_MEMORY`` bytes, then in an unlinked temporary file (a transaction
    of gigabytes must not be held in memory)."""

    def __init__(self) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=HOLD_IN_MEMORY)
        self.size = 0

    def add(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def chunks(self):
        self._file.seek(0)
        while chunk := self._file.read(1 << 20):
            yield chunk

    def clear(self) -> None:
        if self.size > HOLD_IN_MEMORY:  # spilled: back to memory for the next transaction
            self._file.close()
            self._file = tempfile.SpooledTemporaryFile(max_size=HOLD_IN_MEMORY)
        else:
            self._file.seek(0)
            self._file.truncate()
        self.size = 0


class Replay:
    def __init__(self, engine: Any, source_db: str, start: dict[str, Any], stop: StopPoint) -> None:
        self.engine, self.source_db, self.start, self.stop = engine, source_db, start, stop
        self.where = f"replay into {engine.describe()}"
        self.stop_second = int(stop.time.timestamp()) if stop.time is not None else None
        self.stop_gtid = binlog.gtid_state(str((stop.position or {}).get("gtid", ""))) if stop.position else {}
        self.stop_order = (
            mysql_position.order(stop.position) if stop.position and stop.position.get("binlog_file") else None
        )
        self.gtid = binlog.gtid_state(start.get("gtid", ""))
        self.applied: dict[str, Any] = dict(start)  # end of the last transaction applied
        self.applied_ts: int | None = None
        self.applied_gtid: str | None = None
        self.transactions = 0
        self.next_ts: int | None = None  # commit time of the first transaction left out
        self.pieces_read = 0
        self.at: str = mysql_position.text(start)

    # deciding -----------------------------------------------------------------------

    def _beyond(self, commit: binlog.Event, gtid: str | None, end: dict[str, Any]) -> bool:
        if self.stop_second is not None and commit.timestamp > self.stop_second:
            return True
        if self.stop_order is not None and mysql_position.order(end) > self.stop_order:
            return True
        if self.stop_gtid and gtid:
            bits = gtid.split("-")
            if len(bits) == 3 and bits[0] in self.stop_gtid:
                limit = int(self.stop_gtid[bits[0]].split("-")[2])
                return int(bits[2]) > limit
        return False

    def guard(self, names: set[str]) -> None:
        """Databases a replayed statement must not name (every other one on the target server)."""
        target = self.engine.config.database
        names = {n for n in names if n.lower() not in ("information_schema", "performance_schema")}
        names = (names | {self.source_db}) - {target}
        if names:
            alternatives = b"|".join(re.escape(n.encode()) for n in sorted(names, key=len, reverse=True))
            self._foreign = re.compile(rb"(?<![\w$.`])`?(" + alternatives + rb")`?\s*\.", re.IGNORECASE)

    _foreign: re.Pattern[bytes] | None = None

    def _violation(self, event: binlog.Event, file: str) -> str | None:
        """A statement-logged event of the source database that names another database would write
        outside the target (``--rewrite-db`` changes only its ``USE``): never apply it."""
        if self._foreign is None or event.default_database() != self.source_db:
            return None
        found = self._foreign.search(event.query())
        if found:
            return (
                f"{self.where}: the binlog statement at {file}:{event.log_pos - event.size} (logged as a statement) "
                f"names database {found.group(1).decode(errors='replace')}, so replaying it would write outside "
                f"{self.engine.config.database}; the replay stopped before it. Restore to an earlier time, or set "
                "binlog_format=ROW on the source so its log replays exactly"
            )
        return None

    def events(self, pieces: list[tuple[Any, Any]]):
        """The bytes to feed mariadb-binlog: a binlog stream of whole transactions up to the stop."""
        yield binlog.MAGIC
        base = mysql_position.order(self.start)
        fde_for: str | None = None
        grouper = binlog.Grouper()
        for info, opener in pieces:
            file = info.start["binlog_file"]
            self.pieces_read += 1
            group = _Held()
            group_gtid: str | None = None
            was_data = False
            violation: str | None = None
            with opener() as stream:
                for event in binlog.read_events(
                    stream, f"{self.where}: binlog piece {mysql_position.text(info.start)}"
                ):
                    if event.type == binlog.FORMAT_DESCRIPTION:
                        if fde_for != file:  # mariadb-binlog reads the file's events through it
                            fde_for = file
                            yield event.raw
                        continue
                    if (
                        event.log_pos
                        and mysql_position.order({"binlog_file": file, "binlog_pos": event.log_pos - event.size}) < base
                    ):
                        continue  # before the full backup's position: already in the restored dump
                    if event.type == binlog.QUERY and violation is None:
                        violation = self._violation(event, file)
                    inside = grouper.inside
                    boundary = grouper.feed(event)
                    found = event.gtid()
                    if found is not None:
                        group_gtid = found[0]
                    group.add(event.raw)
                    was_data = was_data or inside or event.type == binlog.QUERY
                    if not boundary:
                        continue
                    end = {"binlog_file": file, "binlog_pos": event.log_pos}
                    if event.type == binlog.ROTATE:
                        end = dict(info.end)
                    if was_data:
                        if self._beyond(event, group_gtid, end):
                            self.next_ts = event.timestamp
                            return
                        if violation is not None:
                            raise EngineError(violation)
                        if group_gtid and "-" in group_gtid:
                            self.gtid[group_gtid.split("-")[0]] = group_gtid
                        self.transactions += 1
                        self.applied_ts = event.timestamp
                        self.applied_gtid = group_gtid
                        self.applied = {**end, "gtid": binlog.gtid_text(self.gtid)}
                    yield from group.chunks()
                    self.at = f"{file}:{event.log_pos}"
                    group.clear()
                    group_gtid = None
                    was_data = False
                    violation = None
            # A piece ends at a transaction boundary; an unfinished group here means a damaged chain.
            if group.size:
                raise EngineError(
                    f"{self.where}: binlog piece {mysql_position.text(info.start)} ends inside a transaction; "
                    "the log in the vault is damaged"
                )

    # running ------------------------------------------------------------------------

    def run(self, pieces: list[tuple[Any, Any]]) -> None:
        engine = self.engine
        cfg = engine.config
        tool = engine_tool("mariadb-binlog", "mysqlbinlog")
        client = engine_tool("mariadb", "mysql")
        mariadb_tool = "mariadb" in os.path.basename(tool) or _is_mariadb(tool)
        # mariadb-binlog filters on the name before --rewrite-db; MySQL's mysqlbinlog on the name after it.
        argv = [tool, "--no-defaults", f"--database={self.source_db if mariadb_tool else cfg.database}"]
        if self.source_db != cfg.database:
            argv.append(f"--rewrite-db={self.source_db}->{cfg.database}")
        argv += ["--skip-gtid-strict-mode"] if mariadb_tool else ["--skip-gtids"]
        argv.append("-")
        env = {**os.environ, "TZ": "UTC"}
        with engine._session(None, "listing the target server's databases") as (_, cur):
            cur.execute("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
            self.guard({name for (name,) in cur.fetchall()})
        secrets = cfg.secrets()
        with (
            engine._option_file() as (option_file, pass_fds),
            Tool(
                [
                    client,
                    *engine._tool_args(option_file),
                    "--binary-mode",
                    "--max-allowed-packet=1G",
                    f"--init-command=SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}",
                    f"--database={cfg.database}",
                ],
                secrets=secrets,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=pass_fds,
            ) as load,
            Tool(argv, secrets=secrets, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) as decode,
        ):
            failure: list[BaseException] = []

            def feed() -> None:
                try:
                    for data in self.events(pieces):
                        decode.proc.stdin.write(data)
                except BrokenPipeError:
                    pass  # mariadb-binlog stopped reading: its exit code says why
                except BaseException as exc:
                    failure.append(exc)
                    decode.proc.kill()
                    load.proc.kill()  # a damaged piece must not be applied any further
                finally:
                    try:
                        decode.proc.stdin.close()
                    except BrokenPipeError:
                        pass

            def pump() -> None:
                try:
                    for line in decode.proc.stdout:
                        if not _SOURCE_GTID_LINE.match(line):
                            load.proc.stdin.write(line)
                except BrokenPipeError:
                    decode.proc.kill()  # the client died: its error is the one to report
                finally:
                    try:
                        load.proc.stdin.close()
                    except BrokenPipeError:
                        pass

            threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=pump, daemon=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if failure:
                raise failure[0]
            remedy = f"near binlog {self.at}; the target database was left partially restored"
            # The client first: when it dies, mariadb-binlog is stopped because of it.
            load.wait(f"{self.where}: {os.path.basename(client)}", remedy)
            decode.wait(f"{self.where}: {os.path.basename(tool)}", remedy)


def engine_tool(*names: str) -> str:
    from core.engines.mysql.engine import _find_tool

    return _find_tool(*names)


def _is_mariadb(tool: str) -> bool:
    from core.engines.mysql.engine import _tool_version

    return _tool_version(tool)[0] == "mariadb"


def restore_chain(engine: Any, steps: ChainSteps, stop: StopPoint, progress: Any = None) -> RecoveryPoint:
    """The full backup (``steps.base``) into the target, then its binlog pieces up to ``stop``."""
    say = progress or (lambda message: None)
    result = steps.base.result
    base = result.position or {}
    start = mysql_position.log_start(base)
    if start is None and steps.pieces:
        raise RecoveryTargetError(
            f"restore into {engine.describe()}: the full backup has no binlog position (binlog was off), "
            "so no binlog can be replayed on it; restore it alone, or enable log_bin and take a new full"
        )
    if stop.time is not None and base.get("snapshot_at"):
        taken = datetime.fromisoformat(str(base["snapshot_at"]).replace("Z", "+00:00"))
        if stop.time < taken.replace(microsecond=0):
            raise RecoveryTargetError(
                f"restore into {engine.describe()}: target {binlog.iso(stop.time.timestamp())} is before the full "
                f"backup's snapshot ({base['snapshot_at']}); pick a later time or an older full"
            )
    notes = list(engine.restore(steps.base, result) or [])
    say(f"restored the full backup at {mysql_position.text(base)}")
    if not steps.pieces:
        return RecoveryPoint(
            position=start or {},
            time=base.get("snapshot_at"),
            proof=f"the full backup's snapshot at {mysql_position.text(base) or base.get('snapshot_at')}; no binlog replayed",
            notes=notes,
        )
    replay = Replay(engine, base.get("database") or engine.config.database, start, stop)
    try:
        replay.run(steps.pieces)
    except DRError:
        raise
    say(
        f"replayed {replay.transactions} transactions from {replay.pieces_read} binlog pieces up to "
        f"{mysql_position.text(replay.applied)}"
    )
    if replay.applied_ts is None:
        proof = (
            f"no binlog transaction committed between the full backup's position ({mysql_position.text(start)}) "
            "and the target; the recovery point is the full backup's snapshot"
        )
        return RecoveryPoint(position=replay.applied, time=base.get("snapshot_at"), proof=proof, notes=notes)
    proof = (
        f"binlog event time {binlog.iso(replay.applied_ts)} of the last replayed transaction"
        + (f" (GTID {replay.applied_gtid})" if replay.applied_gtid else "")
        + f" ending at {replay.applied['binlog_file']}:{replay.applied['binlog_pos']}"
    )
    if replay.next_ts is not None:
        proof += f"; the next one committed at {binlog.iso(replay.next_ts)}, after the target"
    return RecoveryPoint(position=replay.applied, time=binlog.iso(replay.applied_ts), proof=proof, notes=notes)
