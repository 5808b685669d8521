"""MariaDB / MySQL: a consistent logical dump with binlog coordinates, restorable into any database.

Consistency. The dump (``mariadb-dump``/``mysqldump --single-transaction``)
and our checks session must see the same data, and the recorded binlog
position must be the dump's. We take ``FLUSH TABLES WITH READ LOCK`` in the
checks session, open its ``START TRANSACTION WITH CONSISTENT SNAPSHOT``, read
the binlog file/position and GTID set, start the dump, and release the lock as
soon as the dump stream shows its snapshot exists (the coordinates comment, or
any table section, is printed only after the dump's own START TRANSACTION). No
commit can happen while the lock is held, so both snapshots and the position
are the same point in time - whatever the flavor, and with the binlog off too.
The dump's own ``-- CHANGE MASTER TO`` coordinates are cross-checked against
ours, and each table's AUTO_INCREMENT is read from the dump's CREATE TABLE
(the counter is not transactional, so only the dump knows the value it wrote).
Writes are blocked only from the lock until the dump's first output (what
mysqldump itself does with ``--master-data`` on MySQL); a watchdog kills the
dump if that takes longer than ``SNAPSHOT_DEADLINE``, so a stuck dump can never
hold the lock. The row counts and checksums are computed in the checks
session's snapshot *while* the dump streams (a thread started when the lock
is released), so a backup costs one pass over the data, not two.

Without RELOAD (``snapshot: gtid``, or ``auto`` when FLUSH TABLES WITH READ LOCK is
refused) there is no global lock: see ``_full`` (lock-free when the dump's coordinates equal
our snapshot's ``binlog_snapshot`` position, else a READ lock on this database's tables only).
Differential and incremental backups are binlog positions; the binlog itself is captured by
``binlog.py`` and replayed on the full by ``replay.py``.

Layouts (``mysql_split``). A small database is one ``dump.sql``, readable and
loadable by hand. From ``GENESIS_DR_MYSQL_SPLIT_MIN_BYTES`` (64 MiB) on, the
backup is split the way mydumper does it: ``GENESIS_DR_MYSQL_JOBS`` (2) dump
processes, each taking its share of the tables, plus one for the schema and
one for triggers and events, all started while the lock is held; the lock is
released once every one of them has printed its first section (so its
snapshot exists), after reading the binlog position again in the locked
session - it must not have moved. Each table's data becomes a stream of its
own. The restore loads the schema, then the tables ``GENESIS_DR_MYSQL_JOBS``
at a time through as many ``mariadb`` sessions (largest first), checking each
table as soon as its load ends while the others still load, then triggers
and events. Those checks are reused by ``collect_checks`` only while the
server's write counters prove no row was written since (see
``_checks_still_valid``); otherwise every table is read again.

Secrets. The password goes to the tools through an option file that never
touches a disk: a 0600 memory file (memfd) inherited by the tool and named as
``--defaults-extra-file=/dev/fd/N`` (the first option; the client opens it with
fopen, which reopens the memory file from its start). Nothing is left behind
even when the run is killed with SIGKILL; to pymysql directly.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymysql

from core import tls
from core.engines import tools
from core.engines.base import (
    BackupResult,
    BaseBackup,
    ChainSteps,
    Engine,
    LogSink,
    RecoveryPoint,
    StopPoint,
    StreamSink,
    StreamSource,
)
from core.engines.mysql import binlog as mysql_binlog
from core.engines.mysql import checks as mysql_checks
from core.engines.mysql import grants as mysql_grants
from core.engines.mysql import split as mysql_split
from core.engines.mysql.dump import DumpFacts, DumpInspector, DumpRewriter, InspectingReader, quote_name
from core.engines.mysql.tools import DumpGroup, last_line
from core.engines.tools import StderrTail, Stopped, ToolGroup
from core.errors import DRError, EngineError, IntegrityError, SourceUnavailableError, redact
from core.sources import MySQLSourceConfig

log = logging.getLogger(__name__)

STREAM = "dump.sql"
CONNECT_TIMEOUT = 5  # seconds; ping and every session we open
LOCK_WAIT_TIMEOUT = 30  # seconds FLUSH TABLES WITH READ LOCK may wait behind long statements
SNAPSHOT_DEADLINE = 120  # seconds the dump gets to open its snapshot while writes are blocked
LOCK_FREE_ATTEMPTS = 3  # lock-free fulls tried before the database's READ lock is taken

# pymysql error codes we explain instead of passing through.
_LOGIN_REFUSED = {1044, 1045, 1698}  # access denied to database / for user / unix_socket user
_UNKNOWN_DATABASE = 1049
_UNREACHABLE = {2002, 2003, 2005, 2006, 2013}
_LOCK_WAIT = 1205
_ACCESS_DENIED = {1142, 1227, 1370}


def float_notes(inventory: dict[str, Any]) -> list[str]:
    """A skip line per FLOAT column: a logical dump cannot carry its exact values.

    mariadb-dump and mysqldump write a FLOAT as the server prints it, with 6
    significant digits, and no option changes that: 16777216 comes back as
    16777200, 0.12345678 as 0.123457. The row checks compare that same text,
    so they pass; only this line tells the operator. (DOUBLE and DECIMAL
    round-trip exactly.)
    """
    return [
        f"table {table} column {column}: FLOAT values are kept to 6 significant digits by the dump tool, "
        "so the restore holds them rounded (e.g. 16777216 as 16777200); use DOUBLE or DECIMAL for exact values"
        for table, info in sorted(inventory["tables"].items())
        for column in info.get("floats", [])
    ]


@dataclass(frozen=True)
class ServerInfo:
    flavor: str  # "mariadb" or "mysql"
    version: str
    numeric: tuple[int, int, int]
    log_bin: bool


def _find_tool(*names: str) -> str:
    return tools.find_tool(*names, remedy="install the MariaDB or MySQL client tools on this worker")


def _tool_version(tool: str) -> tuple[str, str, tuple[int, ...]]:
    """(flavor, version text, numeric version) of a client tool from its --version line."""
    out = tools.version_output(tool)
    flavor = "mariadb" if "mariadb" in out.lower() else "mysql"
    text = re.sub(r"^\S+\s+", "", out)  # drop the program name
    # MariaDB tools print "Ver 10.19 Distrib 10.11.19-MariaDB": the distribution version is the real one.
    found = re.search(r"Distrib (\d+)\.(\d+)\.(\d+)", out) or re.search(r"Ver (\d+)\.(\d+)\.(\d+)", out)
    numeric = tuple(int(x) for x in found.groups()) if found else (0, 0, 0)
    return flavor, text, numeric


def _option_value(value: str) -> str:
    """A value for a MySQL option file: double-quoted, with the escapes the parser understands."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class _GlobalReadLock:
    """FLUSH TABLES WITH READ LOCK on one session; released once, from whichever thread gets there first."""

    def __init__(self, conn: pymysql.connections.Connection, where: str) -> None:
        self._conn, self._where = conn, where
        self._mutex = threading.Lock()
        self.held = False

    def acquire(self) -> None:
        with self._conn.cursor() as cur:
            cur.execute("SET SESSION lock_wait_timeout = %s", (LOCK_WAIT_TIMEOUT,))
            try:
                cur.execute("FLUSH TABLES WITH READ LOCK")
            except pymysql.err.MySQLError as exc:
                code = exc.args[0] if exc.args else None
                if code == _LOCK_WAIT:
                    raise EngineError(
                        f"{self._where}: could not take the global read lock within {LOCK_WAIT_TIMEOUT}s "
                        "(a long-running statement holds tables); retry when it has finished"
                    ) from None
                if code in _ACCESS_DENIED:
                    raise _NoReload(
                        f"{self._where}: the backup user may not run FLUSH TABLES WITH READ LOCK; "
                        "GRANT RELOAD ON *.* to it, or set snapshot: gtid (a READ lock on this database only)"
                    ) from None
                raise
        self.held = True

    def release(self) -> None:
        with self._mutex:
            if self.held:
                self.held = False
                with self._conn.cursor() as cur:
                    cur.execute("UNLOCK TABLES")  # keeps the consistent-snapshot transaction open


class _Prefixed:
    """``read(n)`` over bytes already read, then the rest of a reader."""

    def __init__(self, head: bytes, rest) -> None:
        self._head, self._rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            take = self._head if n is None or n < 0 else self._head[:n]
            self._head = self._head[len(take) :]
            return take
        return self._rest.read(n)


class _NoReload(EngineError):
    """The backup user may not take the global read lock (no RELOAD)."""


class _DatabaseReadLock:
    """LOCK TABLES ... READ on every base table of the source database, on a session of its own
    (a START TRANSACTION would release it on ours): the gtid snapshot's only lock. Writes to this
    database wait from here until every dump has opened its snapshot; the rest of the server runs
    on. Needs LOCK TABLES and SELECT on the database, not RELOAD."""

    def __init__(self, engine: MySQLEngine) -> None:
        self._engine = engine
        self._conn = None
        self._mutex = threading.Lock()
        self.held = False

    def acquire(self) -> None:
        engine, db = self._engine, self._engine.config.database
        conn = engine._connect(db)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
                    "AND TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED', 'SEQUENCE') ORDER BY TABLE_NAME",
                    (db,),
                )
                tables = [name for (name,) in cur.fetchall()]
                cur.execute("SET SESSION lock_wait_timeout = %s", (LOCK_WAIT_TIMEOUT,))
                if tables:
                    cur.execute("LOCK TABLES " + ", ".join(f"{quote_name(t)} READ" for t in tables))
        except pymysql.err.MySQLError as exc:
            conn.close()
            code = exc.args[0] if exc.args else None
            if code == _LOCK_WAIT:
                raise EngineError(
                    f"{engine._where()}: could not lock the tables of {db} for reading within {LOCK_WAIT_TIMEOUT}s "
                    "(a long-running statement holds them); retry when it has finished"
                ) from None
            if code in _ACCESS_DENIED:
                raise EngineError(
                    f"{engine._where()}: the backup user may not LOCK TABLES on {db}; GRANT LOCK TABLES ON "
                    f"{quote_name(db)}.* to it (the gtid snapshot's lock on this database only)"
                ) from None
            raise
        self._conn = conn
        self.held = True

    def release(self) -> None:
        with self._mutex:
            if self._conn is not None:
                self.held = False
                conn, self._conn = self._conn, None
                try:
                    with conn.cursor() as cur:
                        cur.execute("UNLOCK TABLES")
                finally:
                    conn.close()


def _table_sizes(cur, database: str, inventory: dict[str, Any]) -> dict[str, int]:
    """Estimated data bytes of each base table (information_schema statistics: a plan, not a check)."""
    cur.execute(
        "SELECT TABLE_NAME, COALESCE(DATA_LENGTH, 0) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
        (database,),
    )
    return {name: int(size) for name, size in cur.fetchall() if name in inventory["tables"]}


class _Checker:
    """The row checks of a backup, in threads, on sessions that share the backup's snapshot.

    The backup session itself, free once the global read lock is released,
    plus ``mysql_split.jobs() - 1`` sessions opened while the lock is still
    held (so their snapshots are the same instant). Measured on 2 cores: with
    one session the checks ended 2.5 s after the dump (they were the critical
    path); the tables go largest first to whichever session is free.
    ``result`` waits for them; ``stop`` ends them early (KILL QUERY from
    another session) when the backup fails.
    """

    def __init__(
        self, engine: MySQLEngine, conn, inventory: dict[str, Any], history: set[str], sizes: dict[str, int]
    ) -> None:
        self._engine, self._inventory, self._history, self._sizes = engine, inventory, history, sizes
        self._conns = [conn]
        self._own: list[Any] = []  # the sessions opened here, closed by close()
        self._threads: list[threading.Thread] = []
        self._queue: list[str] = []
        self._mutex = threading.Lock()
        self._rows: dict[str, tuple[int, str]] = {}
        self._errors: list[BaseException] = []
        self._stopped = False

    def add_sessions(self, count: int) -> None:
        """Open ``count`` more sessions on the same snapshot; call while the global read lock is held."""
        for _ in range(count):
            extra = self._engine._connect(self._engine.config.database)
            self._own.append(extra)
            with extra.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            self._conns.append(extra)

    def start(self) -> None:
        if self._threads:
            return
        sizes = self._sizes
        tables = sorted(self._inventory["tables"], key=lambda t: (-sizes.get(t, 0), t))
        self._queue = list(reversed(tables))
        for conn in self._conns:
            thread = threading.Thread(target=self._run, args=(conn,), name="mysql-checks", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn) -> None:
        db = self._engine.config.database
        try:
            with conn.cursor() as cur:
                while True:
                    with self._mutex:
                        if self._stopped or self._errors or not self._queue:
                            return
                        name = self._queue.pop()
                    info = self._inventory["tables"][name]
                    found = mysql_checks.table_entry(cur, db, name, info, name in self._history, mysql_checks.ALGORITHM)
                    with self._mutex:
                        self._rows[name] = found
        except BaseException as exc:  # re-raised by result() in the caller's thread
            with self._mutex:
                self._errors.append(exc)

    def result(self) -> dict[str, tuple[int, str]]:
        self.start()
        for thread in self._threads:
            thread.join()
        error = self._errors[0] if self._errors else None
        if isinstance(error, pymysql.err.MySQLError):
            code = error.args[0] if error.args else None
            detail = error.args[-1] if error.args else error
            raise EngineError(
                redact(
                    f"{self._engine._where()}: computing the checks failed: {detail} (error {code}); "
                    "check the server log and grants",
                    self._engine.config.secrets(),
                )
            ) from None
        if error is not None:
            raise error
        missing = sorted(set(self._inventory["tables"]) - set(self._rows))
        if missing:
            raise EngineError(f"{self._engine._where()}: table {missing[0]} was not checked; run the backup again")
        return dict(sorted(self._rows.items()))

    def stop(self) -> None:
        self._stopped = True
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            try:
                with self._engine._session(None, "stopping the checks") as (_, cur):
                    for conn in self._conns:
                        cur.execute("KILL QUERY %s", (conn.thread_id(),))
            except DRError:
                pass  # the backup is failing already; the sessions are closed right after
            for thread in alive:
                thread.join(30)

    def close(self) -> None:
        for conn in self._own:
            try:
                conn.close()
            except Exception:
                pass  # closing a session we no longer need; nothing to recover


class MySQLEngine(Engine):
    """MariaDB 10.x/11.x and MySQL 8.x, one database per source."""

    kind = "mysql"
    config: MySQLSourceConfig
    # A differential or incremental is a binlog position (FLUSH BINARY LOGS): its changes are
    # the binlog the capture ships, replayed on the full by restore_chain.
    backup_types = ("full", "differential", "incremental")
    captures_log = True

    # --- connections ---------------------------------------------------------

    def _where(self) -> str:
        cfg = self.config
        return f"mysql '{cfg.name}' at {cfg.socket or f'{cfg.host}:{cfg.port}'}"

    def describe(self) -> str:
        cfg = self.config
        return f"mysql {cfg.socket or f'{cfg.host}:{cfg.port}'}/{cfg.database}"

    def _password(self) -> str:
        return self.config.password.get_secret_value() if self.config.password else ""

    def _connect(
        self, database: str | None = None, read_timeout: float | None = None
    ) -> pymysql.connections.Connection:
        cfg = self.config
        kwargs: dict[str, Any] = dict(
            read_timeout=read_timeout,
            user=cfg.user,
            password=self._password(),
            database=database,
            charset="utf8mb4",
            connect_timeout=CONNECT_TIMEOUT,
            autocommit=True,
        )
        if cfg.socket:
            kwargs["unix_socket"] = cfg.socket
        else:
            kwargs.update(host=cfg.host, port=cfg.port, **tls.pymysql_ssl(cfg.tls, self._where()))
        try:
            return pymysql.connect(**kwargs)
        except pymysql.err.MySQLError as exc:
            raise self._unavailable(exc, database) from None

    @contextmanager
    def _session(self, database: str | None, doing: str) -> Iterator[tuple[pymysql.connections.Connection, Any]]:
        """A connection and cursor; server errors become one-line DRErrors naming ``doing``."""
        conn = self._connect(database)
        try:
            with conn.cursor() as cur:
                yield conn, cur
        except pymysql.err.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            if code in _UNREACHABLE or code in _LOGIN_REFUSED:
                raise self._unavailable(exc, database) from None
            detail = exc.args[-1] if exc.args else exc
            raise EngineError(
                redact(
                    f"{self._where()}: {doing} failed: {detail} (error {code}); check the server log and grants",
                    self.config.secrets(),
                )
            ) from None
        finally:
            conn.close()

    def _unavailable(self, exc: Exception, database: str | None) -> SourceUnavailableError:
        cfg = self.config
        if cfg.tls is not None and not cfg.socket and tls.tls_problem(exc):
            return tls.tls_error(cfg.name, f"{cfg.host}:{cfg.port}", exc, cfg.tls, "mysql")
        code = exc.args[0] if exc.args else None
        if code in _LOGIN_REFUSED:
            reason = f"login refused for user '{self.config.user}'; check user and password (and its grants) in the stack file"
        elif code == _UNKNOWN_DATABASE:
            reason = f"database '{database}' does not exist; check 'database' in the stack file"
        elif code in _UNREACHABLE:
            reason = "cannot connect (refused or timed out); check the server is running and host/port/socket in the stack file"
        else:
            detail = exc.args[1] if len(exc.args) > 1 else exc
            reason = f"{detail}; check the server and the stack file"
        # Unreachable (refused, timed out, the link dropped) may pass by itself: the flows retry it.
        return SourceUnavailableError(
            redact(f"{self._where()}: {reason}", self.config.secrets()), transient=code in _UNREACHABLE
        )

    def _tool_failure(self, what: str, name: str, code: int, stderr: str, remedy: str) -> DRError:
        """A client tool's non-zero exit: a refused TLS handshake as TLSError, anything else as EngineError."""
        cfg = self.config
        line = last_line(stderr, cfg.secrets())
        if cfg.tls is not None and not cfg.socket and tls.tls_problem(line):
            return tls.tls_error(cfg.name, f"{cfg.host}:{cfg.port}", line, cfg.tls, "mysql")
        return EngineError(f"{what}: {name} failed (exit {code}): {line}; {remedy}")

    def _tool_args(self, option_file: str) -> list[str]:
        """Connection options for the command-line tools; the option file must come first."""
        cfg = self.config
        args = [f"--defaults-extra-file={option_file}", f"--user={cfg.user}"]
        # An explicit --protocol: the tools otherwise read host 'localhost' as "use the
        # default socket", and a site option file could pick the other transport.
        if cfg.socket:
            args += [f"--socket={cfg.socket}", "--protocol=SOCKET"]
        else:
            args += [f"--host={cfg.host}", f"--port={cfg.port}", "--protocol=TCP", *tls.mysql_tool_args(cfg.tls)]
        return args

    @contextmanager
    def _option_file(self) -> Iterator[tuple[str, tuple[int, ...]]]:
        """A [client] option file with the password: (its path for the tool, the fds to pass it).

        A memfd, so a killed run leaves nothing on disk: 0600 (the clients ignore a
        world-writable option file, and a memfd starts 0777), closed when the tool has
        exited. Without memfd (not Linux), a 0600 file in a 0700 temporary directory.
        """
        text = "[client]\n"
        if self.config.password is not None:
            text += f"password={_option_value(self._password())}\n"
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("genesis-dr-mysql-options", os.MFD_CLOEXEC)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, text.encode("utf-8"))
                os.lseek(fd, 0, os.SEEK_SET)
                yield f"/dev/fd/{fd}", (fd,)
            finally:
                os.close(fd)
            return
        tmp = tempfile.mkdtemp(prefix="genesis-dr-mysql-")
        try:
            path = os.path.join(tmp, "client.cnf")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            yield path, ()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _server_info(self, cur) -> ServerInfo:
        cur.execute("SELECT VERSION(), @@GLOBAL.log_bin")
        version, log_bin = cur.fetchone()
        found = re.match(r"(\d+)\.(\d+)\.(\d+)", version)
        numeric = tuple(int(x) for x in found.groups()) if found else (0, 0, 0)
        flavor = "mariadb" if "mariadb" in version.lower() else "mysql"
        return ServerInfo(flavor, version, numeric, bool(int(log_bin)))  # type: ignore[arg-type]

    # --- Engine --------------------------------------------------------------

    def ping(self) -> None:
        with self._session(None, "ping") as (_, cur):
            cur.execute("SELECT 1")

    def has_data(self) -> bool:
        db = self.config.database
        with self._session(None, "looking for data in the target") as (_, cur):
            cur.execute(
                "SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s),"
                " (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s)"
                " + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s)"
                " + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s)",
                (db, db, db, db),
            )
            exists, objects = cur.fetchone()
        return bool(exists) and int(objects) > 0

    def _position(self, cur, info: ServerInfo) -> dict[str, Any]:
        position: dict[str, Any] = {
            "flavor": info.flavor,
            "server_version": info.version,
            "database": self.config.database,
            "snapshot_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "binlog_enabled": info.log_bin,
        }
        if not info.log_bin:
            position["binlog"] = "disabled"
            return position
        # MySQL 8.2 renamed SHOW MASTER STATUS (removed in 8.4); MariaDB keeps it.
        modern = info.flavor == "mysql" and info.numeric >= (8, 2, 0)
        gtid_variable = "gtid_binlog_pos" if info.flavor == "mariadb" else "gtid_executed"
        try:
            cur.execute("SHOW BINARY LOG STATUS" if modern else "SHOW MASTER STATUS")
            row = cur.fetchone()
            cur.execute(f"SELECT @@GLOBAL.{gtid_variable}")
            gtid = cur.fetchone()[0]
        except pymysql.err.MySQLError as exc:
            if exc.args and exc.args[0] in _ACCESS_DENIED:
                grant = "BINLOG MONITOR" if info.flavor == "mariadb" else "REPLICATION CLIENT"
                raise EngineError(
                    f"{self._where()}: the backup user may not read the binlog position; GRANT {grant} ON *.* to it"
                ) from None
            raise
        if row is None:
            raise EngineError(
                f"{self._where()}: log_bin is on but the server reports no binlog position; check the server"
            )
        position.update(binlog_file=row[0], binlog_pos=int(row[1]), gtid=gtid or "", gtid_variable=gtid_variable)
        return position

    def _dump_args(self, tool_flavor: str, tool_numeric: tuple[int, ...], info: ServerInfo) -> list[str]:
        args = [
            "--single-transaction",
            "--quick",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--no-tablespaces",  # needs PROCESS on MySQL 8 and is meaningless for one database
            "--default-character-set=utf8mb4",
        ]
        if tool_flavor == "mysql":
            # A SET @@GLOBAL.GTID_PURGED in the dump would fail on any target that has
            # executed transactions; the GTID set is recorded in the manifest instead.
            args.append("--set-gtid-purged=OFF")
        return args

    def _with_coordinates(
        self, args: list[str], tool_flavor: str, tool_numeric: tuple[int, ...], info: ServerInfo
    ) -> list[str]:
        """A single-stream dump prints its binlog coordinates, which we cross-check with ours."""
        if not info.log_bin:
            return args
        if tool_flavor == "mariadb":
            return [*args, "--master-data=2", "--gtid"]
        return [*args, "--source-data=2" if tool_numeric >= (8, 0, 26) else "--master-data=2"]

    # --- chains: binlog position, capture, point-in-time restore -------------------

    def log_position(self, switch: bool = False) -> dict[str, Any]:
        """The binlog position now ({"binlog_file", "binlog_pos", "gtid"}); ``switch``: FLUSH BINARY
        LOGS first, so the capture can close the file. Without RELOAD the position is read without
        rotating: pieces are byte ranges, so nothing needs the rotation."""
        with self._session(None, "reading the binlog position") as (_, cur):
            info = self._server_info(cur)
            if not info.log_bin:
                raise EngineError(
                    f"{self._where()}: log_bin is off, so there is no binlog to take a differential or incremental "
                    "from; enable log_bin (and binlog capture) or take full backups only"
                )
            if switch:
                try:
                    cur.execute("FLUSH BINARY LOGS")
                except pymysql.err.MySQLError as exc:
                    if not exc.args or exc.args[0] not in _ACCESS_DENIED:
                        raise
                    log.info("%s: no RELOAD privilege; the binlog position is read without rotating", self._where())
            found = self._position(cur, info)
        return {"binlog_file": found["binlog_file"], "binlog_pos": found["binlog_pos"], "gtid": found["gtid"]}

    def capture(self, log: LogSink, stop: Any, until: dict[str, Any] | None = None) -> None:
        mysql_binlog.BinlogCapture(self, log, stop, until).run()

    def restore_chain(self, steps: ChainSteps, stop: StopPoint, progress: Any = None) -> RecoveryPoint:
        from core.engines.mysql import replay

        return replay.restore_chain(self, steps, stop, progress)

    def backup(self, sink: StreamSink, base: BaseBackup | None = None) -> BackupResult:
        if base is not None:
            # No data streams: what changed since the base is the binlog up to here.
            position = self.log_position(switch=True)
            with self._session(None, "reading the server version") as (_, cur):
                info = self._server_info(cur)
            return BackupResult(
                position={**position, "database": self.config.database, "flavor": info.flavor, "base": base.id},
                tool_versions={"server": info.version},
            )
        return self._full(sink)

    def _snapshot_position(self, cur, info: ServerInfo, lock) -> dict[str, Any]:
        """The binlog position of this session's snapshot (opened just before).

        Under the global read lock nothing commits: SHOW MASTER STATUS is the snapshot's.
        Without it (gtid mode) MariaDB says exactly where its consistent snapshot stands in the
        binlog (``Binlog_snapshot_file/position``, taken atomically with the snapshot) and
        ``BINLOG_GTID_POS`` gives the GTID state there. MySQL has no such status; there the
        position is read while our READ lock on the database's tables is held: other databases
        may commit meanwhile, but no event of this database lies between the snapshot and that
        position, so a replay of this database from it is exact either way.
        """
        position = self._position(cur, info)
        position["snapshot"] = "read_lock" if isinstance(lock, _GlobalReadLock) else "gtid"
        position["lock"] = (
            "global read lock" if isinstance(lock, _GlobalReadLock) else "database read lock" if lock else "none"
        )
        if isinstance(lock, _GlobalReadLock) or not info.log_bin or info.flavor != "mariadb":
            return position
        cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
        status = {str(k).lower(): v for k, v in cur.fetchall()}
        file, pos = status.get("binlog_snapshot_file"), status.get("binlog_snapshot_position")
        if not file or pos is None:
            return position
        cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", (file, int(pos)))
        gtid = cur.fetchone()[0]
        position.update(binlog_file=file, binlog_pos=int(pos), gtid=gtid if gtid is not None else position["gtid"])
        return position

    def _full(self, sink: StreamSink) -> BackupResult:
        """A full dump, one instant for the dump, the checks and the binlog position (``snapshot``):
        read_lock (or auto with RELOAD): under FLUSH TABLES WITH READ LOCK. gtid (or auto without
        RELOAD): lock-free first (see ``_full_lock_free``); if the database keeps being written
        in the instant that takes, under a READ lock on this database's tables only."""
        tool = _find_tool("mariadb-dump", "mysqldump")
        versions = _tool_version(tool)
        mode = self.config.snapshot
        if mode != "gtid":
            try:
                return self._full_locked(sink, tool, versions, global_lock=True)
            except _NoReload:
                if mode == "read_lock":
                    raise
                log.info("%s: no RELOAD privilege; taking the lock-free (gtid) snapshot", self._where())
        result = self._full_lock_free(sink, tool, versions)
        if result is not None:
            return result
        return self._full_locked(sink, tool, versions, global_lock=False)

    def _full_lock_free(
        self, sink: StreamSink, tool: str, versions: tuple[str, str, tuple[int, ...]]
    ) -> BackupResult | None:
        """A full with no lock at all (MariaDB, one dump stream), or None when that cannot be proven.

        Our checks session opens its consistent snapshot and reads where it stands in the binlog
        (``Binlog_snapshot_file/position``); mariadb-dump opens its own and prints its coordinates
        before any data. Equal coordinates mean no transaction committed between the two
        snapshots: they are one instant, and the position is exact for both. The dump's output
        is held back until its coordinates are read, so a dump that missed is killed before
        anything reaches the vault, and the pair is tried again (``LOCK_FREE_ATTEMPTS``). A
        database written to all the time, or one large enough for the per-table layout (whose
        several dumps cannot be aligned this way), returns None: the caller takes the READ
        lock on this database instead."""
        cfg = self.config
        tool_flavor, tool_text, tool_numeric = versions
        with self._session(cfg.database, "backup") as (conn, cur):
            info = self._server_info(cur)
            if not info.log_bin or info.flavor != "mariadb" or tool_flavor != "mariadb":
                return None
            for attempt in range(LOCK_FREE_ATTEMPTS):
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                position = self._snapshot_position(cur, info, None)
                inventory = mysql_checks.inventory(cur, cfg.database)
                sizes = _table_sizes(cur, cfg.database, inventory)
                if sum(sizes.values()) >= mysql_split.split_min_bytes():
                    cur.execute("COMMIT")
                    return None
                history, skipped = self._history_plan(inventory, tool_flavor, tool_numeric)
                skipped += float_notes(inventory)
                args = self._with_coordinates(
                    self._dump_args(tool_flavor, tool_numeric, info), tool_flavor, tool_numeric, info
                )
                checker = _Checker(self, conn, inventory, history, sizes)
                try:
                    facts = self._gated_dump(
                        sink, tool, args + (["--dump-history"] if history else []), position, checker.start
                    )
                    rows = checker.result() if facts is not None else None
                except BaseException:
                    checker.stop()
                    raise
                finally:
                    checker.close()
                if facts is None or rows is None:
                    cur.execute("COMMIT")
                    log.info(
                        "%s: a transaction committed between our snapshot and the dump's (attempt %d)",
                        self._where(),
                        attempt + 1,
                    )
                    time.sleep(0.05 * (attempt + 1))
                    continue
                checks = mysql_checks.assemble(
                    inventory, rows, facts.auto_increment, default_auto_increment=1, history=history
                )
                cur.execute("COMMIT")
                cur.execute("SELECT @@GLOBAL.event_scheduler")
                position["event_scheduler"] = str(cur.fetchone()[0]).upper()
                with sink.open_stream(mysql_grants.STREAM) as out:
                    out.write(mysql_grants.encode(mysql_grants.collect(cur, cfg.database)))
                return BackupResult(
                    position=position,
                    checks=checks,
                    tool_versions={os.path.basename(tool): tool_text, "server": info.version},
                    skipped=skipped,
                )
        log.info("%s: the database kept being written; taking its READ lock for the snapshot", self._where())
        return None

    def _gated_dump(
        self, sink: StreamSink, tool: str, dump_args: list[str], position: dict[str, Any], then: Callable[[], None]
    ) -> DumpFacts | None:
        """Run the dump into ``sink`` if its coordinates are ``position``'s; None (killed, nothing
        written) if they are not."""
        name = os.path.basename(tool)
        with self._option_file() as (option_file, pass_fds):
            argv = [tool, *self._tool_args(option_file), *dump_args, "--", self.config.database]
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds
            )
            stderr = StderrTail(proc.stderr)
            try:
                inspector = DumpInspector(on_snapshot=lambda: None)
                head = bytearray()
                while not inspector.facts.snapshot_started:
                    data = proc.stdout.read1(1 << 16)
                    if not data:
                        inspector.finish()
                        break
                    head += data
                    inspector.feed(data)
                facts = inspector.facts
                if (facts.binlog_file, facts.binlog_pos) != (position["binlog_file"], position["binlog_pos"]):
                    proc.kill()
                    proc.wait()
                    if facts.binlog_file is None and proc.returncode not in (0, -9):
                        raise EngineError(
                            f"{self._where()}: {name} failed before printing its coordinates: "
                            f"{last_line(stderr.text(), self.config.secrets())}; fix the cause and run the backup again"
                        )
                    return None
                then()
                sink.write_stream(STREAM, _Prefixed(bytes(head), InspectingReader(proc.stdout, inspector)))
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            code = proc.wait()
        if code != 0:
            raise self._tool_failure(self._where(), name, code, stderr.text(), "fix the cause and run the backup again")
        return inspector.facts

    def _full_locked(
        self, sink: StreamSink, tool: str, versions: tuple[str, str, tuple[int, ...]], global_lock: bool
    ) -> BackupResult:
        cfg = self.config
        tool_flavor, tool_text, tool_numeric = versions
        with self._session(cfg.database, "backup") as (conn, cur):
            info = self._server_info(cur)
            lock: _GlobalReadLock | _DatabaseReadLock
            lock = _GlobalReadLock(conn, self._where()) if global_lock else _DatabaseReadLock(self)
            lock.acquire()
            checker: _Checker | None = None
            try:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                position = self._snapshot_position(cur, info, lock)
                inventory = mysql_checks.inventory(cur, cfg.database)
                history, skipped = self._history_plan(inventory, tool_flavor, tool_numeric)
                skipped += float_notes(inventory)
                sizes = _table_sizes(cur, cfg.database, inventory)
                # The row checks run on this snapshot while the dump streams (they used to
                # follow it: 15-19 s after a 4.7 s dump of 400 MB).
                checker = _Checker(self, conn, inventory, history, sizes)
                checker.add_sessions(min(mysql_split.jobs(), len(inventory["tables"])) - 1)
                base_args = self._dump_args(tool_flavor, tool_numeric, info)
                if sum(sizes.values()) >= mysql_split.split_min_bytes():
                    facts = self._dump_split(sink, tool, base_args, history, lock, checker, sizes, position, info, cur)
                else:
                    dump_args = base_args
                    if isinstance(lock, _GlobalReadLock):  # mysqldump's coordinates need RELOAD on MySQL
                        dump_args = self._with_coordinates(base_args, tool_flavor, tool_numeric, info)
                    facts = self._stream_dump(
                        sink, tool, dump_args + (["--dump-history"] if history else []), lock, checker.start
                    )
                    if isinstance(lock, _GlobalReadLock):
                        # Under the table lock the binlog may move (other databases); ours may not.
                        self._check_coordinates(position, facts)
                rows = checker.result()
            except BaseException:
                if checker is not None:
                    checker.stop()
                raise
            finally:
                lock.release()
                if checker is not None:
                    checker.close()
            checks = mysql_checks.assemble(
                inventory, rows, facts.auto_increment, default_auto_increment=1, history=history
            )
            cur.execute("COMMIT")
            cur.execute("SELECT @@GLOBAL.event_scheduler")
            position["event_scheduler"] = str(cur.fetchone()[0]).upper()
            with sink.open_stream(mysql_grants.STREAM) as out:
                out.write(mysql_grants.encode(mysql_grants.collect(cur, cfg.database)))
        return BackupResult(
            position=position,
            checks=checks,
            tool_versions={os.path.basename(tool): tool_text, "server": info.version},
            skipped=skipped,
        )

    def _dump_split(
        self,
        sink: StreamSink,
        tool: str,
        base_args: list[str],
        history: set[str],
        lock: _GlobalReadLock | _DatabaseReadLock,
        checker: _Checker,
        sizes: dict[str, int],
        position: dict[str, Any],
        info: ServerInfo,
        cur,
    ) -> DumpFacts:
        """The per-table layout (see ``mysql_split``): every dump process opens its snapshot
        while our global read lock is held, so they, the checks and ``position`` are one instant.

        The lock is released once every process has shown it is past its START TRANSACTION
        (its first section, or its end); before that, the binlog position is read again in
        the locked session: it must not have moved.
        """
        prefixes, shares = mysql_split.plan(sizes, mysql_split.jobs())
        group = DumpGroup(self, tool)
        schema: dict[str, DumpInspector] = {}

        def dump_schema(pipe, started: Callable[[], None]) -> None:
            # The schema's CREATE TABLEs carry the AUTO_INCREMENT values the restore will set.
            schema["inspector"] = DumpInspector(on_snapshot=started)
            sink.write_stream(mysql_split.SCHEMA_STREAM, InspectingReader(pipe, schema["inspector"]))

        def dump_post(pipe, started: Callable[[], None]) -> None:
            sink.write_stream(mysql_split.POST_STREAM, InspectingReader(pipe, DumpInspector(on_snapshot=started)))

        group.add([*base_args, "--no-data", "--skip-triggers", "--routines", "--skip-events"], dump_schema)
        group.add([*base_args, "--no-data", "--no-create-info", "--triggers", "--events", "--skip-routines"], dump_post)
        splitters = []
        for tables in shares:
            splitter = mysql_split.TableSplitter(sink, prefixes)
            splitters.append((splitter, tables))
            args = [*base_args, "--no-create-info", "--skip-triggers", "--skip-routines", "--skip-events"]
            # No ALTER TABLE in a data stream (see _checks_still_valid), and no LOCK TABLES:
            # the parts of one table load in parallel sessions.
            args += ["--skip-disable-keys", "--skip-add-locks"]
            if any(t in history for t in tables):
                args.append("--dump-history")
            group.add(args, splitter.consume, tables)
        with group:
            group.wait_for_snapshots(SNAPSHOT_DEADLINE)
            if position["binlog_enabled"] and isinstance(lock, _GlobalReadLock):
                now = self._position(cur, info)
                if (now["binlog_file"], now["binlog_pos"]) != (position["binlog_file"], position["binlog_pos"]):
                    raise EngineError(
                        f"{self._where()}: the binlog moved while writes were blocked for the backup; "
                        "the backup would not be consistent - run it again"
                    )
            lock.release()
            checker.start()
            group.join()
        written: dict[str, str] = {}
        for splitter, tables in splitters:
            missing = sorted(set(tables) - set(splitter.tables))
            if missing:
                raise EngineError(
                    f"{self._where()}: the dump printed no data section for table {missing[0]}; "
                    "was it dropped during the backup? run it again"
                )
            written.update(splitter.streams)
        with sink.open_stream(mysql_split.LAYOUT_STREAM) as out:  # the parts are known only now
            out.write(mysql_split.encode_layout(written))
        return schema["inspector"].facts

    def _history_plan(
        self, inventory: dict[str, Any], tool_flavor: str, tool_numeric: tuple[int, ...]
    ) -> tuple[set[str], list[str]]:
        """System-versioned tables whose history the dump will carry, and a skip line for the others.

        mariadb-dump keeps history only with --dump-history (10.11+), and refuses
        it outright (for the whole dump) if any table has transaction-precise history.
        """
        versioned = sorted(name for name, t in inventory["tables"].items() if t.get("period"))
        if not versioned:
            return set(), []
        precise = [name for name in versioned if inventory["tables"][name].get("precise")]
        if tool_flavor == "mariadb" and tool_numeric >= (10, 11, 0) and not precise:
            return set(versioned), []
        reason = (
            f"transaction-precise history (table {precise[0]}) cannot be dumped"
            if precise
            else "this dump tool cannot dump it (needs mariadb-dump 10.11 or later)"
        )
        return set(), [f"table {name}: system-versioning history not backed up ({reason})" for name in versioned]

    def _stream_dump(
        self,
        sink: StreamSink,
        tool: str,
        dump_args: list[str],
        lock: _GlobalReadLock | _DatabaseReadLock,
        then: Callable[[], None],
    ) -> DumpFacts:
        """Run the dump into ``sink``; release ``lock`` once the dump's snapshot is open, then call ``then``."""
        name = os.path.basename(tool)
        with self._option_file() as (option_file, pass_fds):
            argv = [tool, *self._tool_args(option_file), *dump_args, "--", self.config.database]
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds
            )
            stderr = StderrTail(proc.stderr)

            def opened() -> None:
                lock.release()
                then()

            inspector = DumpInspector(on_snapshot=opened)
            stuck = threading.Event()

            def watchdog() -> None:
                if not inspector.facts.snapshot_started:
                    stuck.set()
                    proc.kill()

            timer = threading.Timer(SNAPSHOT_DEADLINE, watchdog)
            timer.daemon = True
            timer.start()
            try:
                sink.write_stream(STREAM, InspectingReader(proc.stdout, inspector))
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                timer.cancel()
            code = proc.wait()
        errors = stderr.text()
        if stuck.is_set():
            raise EngineError(
                f"{self._where()}: {name} did not open its snapshot within {SNAPSHOT_DEADLINE}s while writes were "
                "blocked, so it was stopped; check the server for blocking statements and retry"
            )
        if code != 0:
            raise self._tool_failure(self._where(), name, code, errors, "fix the cause and run the backup again")
        return inspector.facts

    def _check_coordinates(self, position: dict[str, Any], facts: DumpFacts) -> None:
        if not position["binlog_enabled"]:
            return
        ours = (position["binlog_file"], position["binlog_pos"])
        theirs = (facts.binlog_file, facts.binlog_pos)
        if theirs != ours:
            raise EngineError(
                f"{self._where()}: the dump reports binlog position {theirs} but the locked snapshot is at {ours}; "
                "the backup would not be consistent - run it again"
            )

    def restore(self, source: StreamSource, result: BackupResult) -> list[str]:
        """Recreate the target database from the dump, then its grants; returns the restore notes.

        In place: the target database is dropped first (the caller proved the
        backup readable and took a rollback backup). Any failure after that
        says the target was left partially restored.
        """
        cfg = self.config
        client = _find_tool("mariadb", "mysql")
        source_db = result.position.get("database") or cfg.database
        self._touched = False
        self._loaded = None
        try:
            accounts, me = self._prepare_target(result.checks.get("database") or {})
            names = source.stream_names()
            notes: list[str] = []

            def grant() -> None:
                if mysql_grants.STREAM in names:
                    data = b"".join(source.iter_stream(mysql_grants.STREAM))
                    with self._session(None, "granting the backup's privileges") as (_, cur):
                        notes.extend(mysql_grants.apply(cur, data, cfg.database, accounts))

            if mysql_split.LAYOUT_STREAM in names:
                rewriters = self._restore_split(client, source, result, source_db, accounts, grant)
            else:  # the single dump.sql (small databases, and every backup before the per-table layout)
                rewriters = [DumpRewriter(source_db, cfg.database, accounts)]
                self._run_client(client, source, STREAM, rewriters[0])
                grant()
            notes[:0] = [
                f"{kind} {name}: definer {definer} does not exist on the target; it now runs as {me}"
                for kind, name, definer in sorted(o for r in rewriters for o in r.objects)
            ]
            notes += self._event_notes(result)
            notes += list(getattr(result, "skipped", None) or [])  # left out at backup time
        except DRError as exc:
            self._loaded = None
            if not self._touched:
                raise
            raise type(exc)(f"{exc}; the target database {self.describe()} was left partially restored") from None
        except BaseException:
            self._loaded = None
            raise
        for note in notes:
            log.warning("restore into %s: %s", self.describe(), note)
        return notes

    def _restore_split(
        self,
        client: str,
        source: StreamSource,
        result: BackupResult,
        source_db: str,
        accounts: set[tuple[str, str]],
        grant: Callable[[], None],
    ) -> list[DumpRewriter]:
        """Schema and grants, then the per-table data streams ``mysql_split.jobs()`` at a time
        (largest first), then triggers and events. Each table is checked as soon as its load
        ends, while the others still load (see ``_checks_still_valid`` for when those count)."""
        db = self.config.database
        where = f"restore into {self.describe()}"
        layout = mysql_split.decode_layout(b"".join(source.iter_stream(mysql_split.LAYOUT_STREAM)), where)
        names = set(source.stream_names())
        absent = sorted(set(layout) - names)
        if absent or not {mysql_split.SCHEMA_STREAM, mysql_split.POST_STREAM} <= names:
            raise IntegrityError(
                f"{where}: the backup lacks stream {(absent or ['schema.sql/post.sql'])[0]}; it is damaged"
            )
        schema = DumpRewriter(source_db, db, accounts)
        self._run_client(client, source, mysql_split.SCHEMA_STREAM, schema)
        grant()  # before the loads: grants change no rows, and nothing of ours may write after `before`
        reference = result.checks or {}
        algorithm = reference.get("algorithm")
        verify = algorithm in mysql_checks.ALGORITHMS and algorithm != "mysql-checks/1" and "tables" in reference
        history = {n for n, t in (reference.get("tables") or {}).items() if t.get("history")}
        inventory: dict[str, Any] = {"tables": {}}
        before: dict[str, int] | None = None
        partitioned: set[str] = set()
        if verify:
            with self._session(db, "reading the restored schema") as (_, cur):
                inventory = mysql_checks.inventory(cur, db, algorithm)
                cur.execute(
                    "SELECT DISTINCT TABLE_NAME FROM information_schema.PARTITIONS "
                    "WHERE TABLE_SCHEMA = %s AND PARTITION_NAME IS NOT NULL",
                    (db,),
                )
                partitioned = {name for (name,) in cur.fetchall()}
                before = _write_counters(cur)
        checked: dict[str, tuple[int, str]] = {}
        clients = ToolGroup()
        parts_left: dict[str, int] = {}
        for table in layout.values():
            parts_left[table] = parts_left.get(table, 0) + 1
        mutex = threading.Lock()

        def load(stream: str, table: str) -> None:
            self._run_client(client, source, stream, None, clients)
            with mutex:
                parts_left[table] -= 1
                last = parts_left[table] == 0
            info = inventory["tables"].get(table)
            if last and info is not None:  # the table's last part is in: check it while others load
                with self._session(db, f"checking table {table}") as (_, cur):
                    checked[table] = mysql_checks.table_entry(cur, db, table, info, table in history, algorithm)

        # Tables with the most parts (dump bytes), then the most rows (a row costs more to insert
        # than its bytes say) first, each table's parts together: a big table loaded early is
        # checked while the small ones load, instead of at the end.
        parts = dict(parts_left)
        recorded = reference.get("tables") or {}
        order = sorted(layout, key=lambda n: (-parts[layout[n]], -int(recorded.get(layout[n], {}).get("rows", 0)), n))
        clients.run([lambda n=n: load(n, layout[n]) for n in order], mysql_split.jobs())
        post = DumpRewriter(source_db, db, accounts)
        self._run_client(client, source, mysql_split.POST_STREAM, post)
        if before is not None:
            with self._session(db, "reading the write counters") as (_, cur):
                end = _write_counters(cur)
            # Our own writes since `before`: every row loaded (twice in a partitioned table: the
            # partition handler counts, and so does the partition's), one mysql.event row per event.
            expected = dict(before)
            expected["Handler_write"] += sum(n * (2 if t in partitioned else 1) for t, (n, _) in checked.items())
            expected["Handler_write"] += len(reference.get("events") or {})
            if end == expected and len(checked) == len(inventory["tables"]):
                self._loaded = {"algorithm": algorithm, "counters": end, "rows": checked}
            else:
                log.info(
                    "restore into %s: the server was written to during the load; the checks will read every table again",
                    self.describe(),
                )
        return [schema, post]

    def _run_client(
        self,
        client: str,
        source: StreamSource,
        stream: str,
        rewriter: DumpRewriter | None,
        clients: ToolGroup | None = None,
    ) -> None:
        """Feed one stream (rewritten, or as it is) to the command-line client; never hangs on a failure.

        A vault error mid-stream kills the client at once (a damaged stream is
        applied no further) and is raised as it is; a client failure raises an
        EngineError with the client's last error line. Data streams of the
        per-table layout hold nothing to rewrite and go through untouched.
        """
        cfg = self.config
        name = os.path.basename(client)
        with self._option_file() as (option_file, pass_fds):
            # --binary-mode: take the dump's bytes as they are and run no client
            # commands other than DELIMITER (a dump needs nothing else).
            argv = [
                client,
                *self._tool_args(option_file),
                "--binary-mode",
                "--default-character-set=utf8mb4",
                f"--init-command=SET SESSION lock_wait_timeout = {LOCK_WAIT_TIMEOUT}",
                f"--database={cfg.database}",
            ]
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, pass_fds=pass_fds
            )
            if clients is not None:
                clients.started(proc)
            failure: list[BaseException] = []

            def feed() -> None:
                pieces = source.iter_stream(stream)
                try:
                    for piece in pieces:
                        out = rewriter.feed(piece) if rewriter is not None else piece
                        if out:
                            proc.stdin.write(out)
                    if rewriter is not None:
                        proc.stdin.write(rewriter.finish())
                except BrokenPipeError:
                    pass  # the client stopped reading; its exit code and stderr say why
                except BaseException as exc:
                    failure.append(exc)
                    proc.kill()  # a damaged stream must not be applied any further
                finally:
                    close = getattr(pieces, "close", None)
                    if close is not None:
                        close()
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass

            feeder = threading.Thread(target=feed, name="mysql-restore-feed", daemon=True)
            feeder.start()
            stderr = StderrTail(proc.stderr)
            try:
                errors = stderr.text()
                code = proc.wait()
                feeder.join()
            except BaseException:
                proc.kill()  # interrupted: never leave the client applying the rest
                proc.wait()
                raise
        if failure:
            raise failure[0]
        if clients is not None and clients.stopped:
            raise Stopped()
        if code != 0:
            raise self._tool_failure(
                f"restore into {self.describe()}", name, code, errors, "fix the cause and restore again with --force"
            )

    def _event_notes(self, result: BackupResult) -> list[str]:
        """Enabled events that will not run on the target because its scheduler is off."""
        enabled = sorted(n for n, e in (result.checks.get("events") or {}).items() if e.get("status") == "ENABLED")
        if not enabled:
            return []
        with self._session(None, "reading event_scheduler") as (_, cur):
            cur.execute("SELECT @@GLOBAL.event_scheduler")
            state = str(cur.fetchone()[0]).upper()
        was = str(result.position.get("event_scheduler", "ON")).upper()
        if state == "ON" or was != "ON":
            return []  # runs as on the source, or did not run there either
        return [
            f"event {name}: event_scheduler is {state} on the target (ON on the source), so it will not run"
            for name in enabled
        ]

    def _prepare_target(self, database: dict[str, Any]) -> tuple[set[tuple[str, str]], str]:
        """(Re)create the target database empty, with the source's charset; returns the
        accounts on the target and the restoring account (``'user'@'host'``).

        The caller has already refused a non-empty target unless forced (and
        taken a rollback backup), so dropping it here is the forced overwrite.
        """
        db = quote_name(self.config.database)
        options = ""
        for clause, key in (("CHARACTER SET", "charset"), ("COLLATE", "collation")):
            value = database.get(key)
            if value and re.fullmatch(r"\w+", value):  # names like utf8mb4_unicode_ci, never SQL
                options += f" {clause} {value}"
        with self._session(None, f"recreating database {db} for the restore") as (_, cur):
            # A session holding the database open must fail the restore, not hang it.
            cur.execute("SET SESSION lock_wait_timeout = %s", (LOCK_WAIT_TIMEOUT,))
            cur.execute("SELECT CURRENT_USER()")
            user, _, host = cur.fetchone()[0].rpartition("@")
            me = f"'{user}'@'{host}'"
            self._touched = True
            cur.execute(f"DROP DATABASE IF EXISTS {db}")
            cur.execute(f"CREATE DATABASE {db}{options}")
            try:
                cur.execute("SELECT User, Host FROM mysql.user")
                return {(u, h) for u, h in cur.fetchall()}, me
            except pymysql.err.MySQLError as exc:
                if exc.args and exc.args[0] not in _ACCESS_DENIED:
                    raise
                # May not list accounts (managed servers): only our own is known to exist.
                return {(user, host)}, me

    def collect_checks(self, reference: dict[str, Any]) -> dict[str, Any]:
        algorithm = reference.get("algorithm", mysql_checks.ALGORITHM)
        if algorithm not in mysql_checks.ALGORITHMS:
            raise EngineError(
                f"{self.describe()}: the backup's checks use {algorithm!r}, which this version cannot compute; "
                "verify with the genesis-dr version that took the backup"
            )
        db = self.config.database
        with self._session(db, "computing checks") as (_, cur):
            info = self._server_info(cur)
            cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            inventory = mysql_checks.inventory(cur, db, algorithm)
            counters = mysql_checks.live_auto_increments(cur, db, info.flavor)
            history = {name for name, t in (reference.get("tables") or {}).items() if t.get("history")}
            algorithm = mysql_checks.algorithm_of(inventory, algorithm)
            kept = self._checks_still_valid(cur, algorithm)
            rows = {
                name: kept[name]
                if name in kept
                else mysql_checks.table_entry(cur, db, name, t, name in history, algorithm)
                for name, t in sorted(inventory["tables"].items())
            }
            checks = mysql_checks.assemble(
                inventory, rows, counters, default_auto_increment=None, history=history, algorithm=algorithm
            )
            cur.execute("COMMIT")
        return checks

    def _checks_still_valid(self, cur, algorithm: str) -> dict[str, tuple[int, str]]:
        """Row checks the last per-table restore computed, if no row can have changed since.

        Each table was checked right after its own load, so a second pass would
        read the same rows again. Those checks count only while the server
        proves nothing else wrote. ``_restore_split`` read the server-wide
        ``Handler_write/update/delete`` and DDL counters (``Com_truncate``,
        ``Com_*_table``) just before the first load and again after triggers
        and events were created, and kept its checks only if the difference
        was exactly our own writes: every row it loaded (twice for a
        partitioned table: the partition handler counts, and so does the
        partition's), one ``mysql.event`` row per event, no update, no delete,
        no table truncated, dropped, created, altered or renamed (the data
        streams hold no ALTER TABLE). Here the counters must not have moved
        at all since. The counters count rows as they are written, before any
        commit, so a write in progress shows too. A write anywhere on the
        server - another database, a replica thread, an event the restore
        created - means a full pass, as before. The schema, AUTO_INCREMENT
        counters, views, routines, triggers, events and sequences are always
        read again (they are cheap).
        """
        loaded = getattr(self, "_loaded", None)
        if not loaded or loaded["algorithm"] != algorithm:
            return {}
        if _write_counters(cur) != loaded["counters"]:
            log.info("checks of %s: the server was written to since the restore; reading every table", self.describe())
            return {}
        return loaded["rows"]


_WRITE_COUNTERS = (
    "Handler_write",
    "Handler_update",
    "Handler_delete",
    "Com_truncate",
    "Com_drop_table",
    "Com_create_table",
    "Com_alter_table",
    "Com_rename_table",
)


def _write_counters(cur) -> dict[str, int]:
    """Server-wide counters that move with any row written and any table replaced (see collect_checks)."""
    cur.execute(
        "SHOW GLOBAL STATUS WHERE Variable_name IN (" + ",".join(["%s"] * len(_WRITE_COUNTERS)) + ")",
        _WRITE_COUNTERS,
    )
    found = {name: int(value) for name, value in cur.fetchall()}
    return {name: found.get(name, -1) for name in _WRITE_COUNTERS}
