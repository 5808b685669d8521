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
session's snapshot after the dump has streamed.

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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pymysql

from core.engines import mysql_checks, mysql_grants
from core.engines.base import BackupResult, Engine, StreamSink, StreamSource
from core.engines.mysql_dump import DumpFacts, DumpInspector, DumpRewriter, InspectingReader, quote_name
from core.errors import DRError, EngineError, SourceUnavailableError, redact
from core.sources import MySQLSourceConfig

log = logging.getLogger(__name__)

STREAM = "dump.sql"
CONNECT_TIMEOUT = 5  # seconds; ping and every session we open
LOCK_WAIT_TIMEOUT = 30  # seconds FLUSH TABLES WITH READ LOCK may wait behind long statements
SNAPSHOT_DEADLINE = 120  # seconds the dump gets to open its snapshot while writes are blocked

# pymysql error codes we explain instead of passing through.
_LOGIN_REFUSED = {1044, 1045, 1698}  # access denied to database / for user / unix_socket user
_UNKNOWN_DATABASE = 1049
_UNREACHABLE = {2002, 2003, 2005, 2006, 2013}
_LOCK_WAIT = 1205
_ACCESS_DENIED = {1142, 1227, 1370}


@dataclass(frozen=True)
class ServerInfo:
    flavor: str  # "mariadb" or "mysql"
    version: str
    numeric: tuple[int, int, int]
    log_bin: bool


def _find_tool(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise EngineError(
        f"none of {', '.join(names)} found on PATH; install the MariaDB or MySQL client tools on this worker"
    )


def _tool_version(tool: str) -> tuple[str, str, tuple[int, ...]]:
    """(flavor, version text, numeric version) of a client tool from its --version line."""
    out = subprocess.run([tool, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
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


def _last_line(text: str, secrets: list[str]) -> str:
    lines = [line.strip() for line in redact(text, secrets).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    line = (errors or lines or ["no error output"])[-1]
    return line[:400]


class _Tail(threading.Thread):
    """Drains a pipe (a tool's stderr) in the background, keeping its last bytes."""

    def __init__(self, pipe, limit: int = 1 << 16) -> None:
        super().__init__(daemon=True)
        self._pipe, self._limit, self._data = pipe, limit, b""
        self.start()

    def run(self) -> None:
        while chunk := self._pipe.read(8192):
            self._data = (self._data + chunk)[-self._limit :]

    def text(self) -> str:
        self.join()
        return self._data.decode("utf-8", "replace")


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
                    raise EngineError(
                        f"{self._where}: the backup user may not run FLUSH TABLES WITH READ LOCK; "
                        "GRANT RELOAD ON *.* to it (needed for a consistent binlog position)"
                    ) from None
                raise
        self.held = True

    def release(self) -> None:
        with self._mutex:
            if self.held:
                self.held = False
                with self._conn.cursor() as cur:
                    cur.execute("UNLOCK TABLES")  # keeps the consistent-snapshot transaction open


class MySQLEngine(Engine):
    """MariaDB 10.x/11.x and MySQL 8.x, one database per source."""

    kind = "mysql"
    config: MySQLSourceConfig

    # --- connections ---------------------------------------------------------

    def _where(self) -> str:
        cfg = self.config
        return f"mysql '{cfg.name}' at {cfg.socket or f'{cfg.host}:{cfg.port}'}"

    def describe(self) -> str:
        cfg = self.config
        return f"mysql {cfg.socket or f'{cfg.host}:{cfg.port}'}/{cfg.database}"

    def _password(self) -> str:
        return self.config.password.get_secret_value() if self.config.password else ""

    def _connect(self, database: str | None = None) -> pymysql.connections.Connection:
        cfg = self.config
        kwargs: dict[str, Any] = dict(
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
            kwargs.update(host=cfg.host, port=cfg.port)
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

    def _tool_args(self, option_file: str) -> list[str]:
        """Connection options for the command-line tools; the option file must come first."""
        cfg = self.config
        args = [f"--defaults-extra-file={option_file}", f"--user={cfg.user}"]
        # An explicit --protocol: the tools otherwise read host 'localhost' as "use the
        # default socket", and a site option file could pick the other transport.
        if cfg.socket:
            args += [f"--socket={cfg.socket}", "--protocol=SOCKET"]
        else:
            args += [f"--host={cfg.host}", f"--port={cfg.port}", "--protocol=TCP"]
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
        if info.log_bin:
            if tool_flavor == "mariadb":
                args += ["--master-data=2", "--gtid"]
            else:
                args.append("--source-data=2" if tool_numeric >= (8, 0, 26) else "--master-data=2")
        if tool_flavor == "mysql":
            # A SET @@GLOBAL.GTID_PURGED in the dump would fail on any target that has
            # executed transactions; the GTID set is recorded in the manifest instead.
            args.append("--set-gtid-purged=OFF")
        return args

    def backup(self, sink: StreamSink) -> BackupResult:
        cfg = self.config
        tool = _find_tool("mariadb-dump", "mysqldump")
        tool_flavor, tool_text, tool_numeric = _tool_version(tool)
        with self._session(cfg.database, "backup") as (conn, cur):
            info = self._server_info(cur)
            lock = _GlobalReadLock(conn, self._where())
            lock.acquire()
            try:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                position = self._position(cur, info)
                inventory = mysql_checks.inventory(cur, cfg.database)
                history, skipped = self._history_plan(inventory, tool_flavor, tool_numeric)
                dump_args = self._dump_args(tool_flavor, tool_numeric, info) + (["--dump-history"] if history else [])
                facts = self._stream_dump(sink, tool, dump_args, lock)
            finally:
                lock.release()
            self._check_coordinates(position, facts)
            checks = mysql_checks.build_checks(
                cur, cfg.database, inventory, facts.auto_increment, default_auto_increment=1, history=history
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

    def _stream_dump(self, sink: StreamSink, tool: str, dump_args: list[str], lock: _GlobalReadLock) -> DumpFacts:
        """Run the dump into ``sink``; release ``lock`` once the dump's snapshot is open."""
        name = os.path.basename(tool)
        with self._option_file() as (option_file, pass_fds):
            argv = [tool, *self._tool_args(option_file), *dump_args, "--", self.config.database]
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds
            )
            stderr = _Tail(proc.stderr)
            inspector = DumpInspector(on_snapshot=lock.release)
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
            raise EngineError(
                f"{self._where()}: {name} failed (exit {code}): {_last_line(errors, self.config.secrets())}; "
                "fix the cause and run the backup again"
            )
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
        try:
            accounts, me = self._prepare_target(result.checks.get("database") or {})
            rewriter = DumpRewriter(source_db, cfg.database, accounts)
            self._run_client(client, source, rewriter)
            notes = [
                f"{kind} {name}: definer {definer} does not exist on the target; it now runs as {me}"
                for kind, name, definer in sorted(rewriter.objects)
            ]
            if mysql_grants.STREAM in source.stream_names():
                data = b"".join(source.iter_stream(mysql_grants.STREAM))
                with self._session(None, "granting the backup's privileges") as (_, cur):
                    notes += mysql_grants.apply(cur, data, cfg.database, accounts)
            notes += self._event_notes(result)
            notes += list(getattr(result, "skipped", None) or [])  # left out at backup time
        except DRError as exc:
            if not self._touched:
                raise
            raise type(exc)(f"{exc}; the target database {self.describe()} was left partially restored") from None
        for note in notes:
            log.warning("restore into %s: %s", self.describe(), note)
        return notes

    def _run_client(self, client: str, source: StreamSource, rewriter: DumpRewriter) -> None:
        """Feed the (rewritten) dump to the command-line client; never hangs on a failure.

        A vault error mid-stream kills the client at once (a damaged stream is
        applied no further) and is raised as it is; a client failure raises an
        EngineError with the client's last error line.
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
            failure: list[BaseException] = []

            def feed() -> None:
                pieces = source.iter_stream(STREAM)
                try:
                    for piece in pieces:
                        out = rewriter.feed(piece)
                        if out:
                            proc.stdin.write(out)
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
            stderr = _Tail(proc.stderr)
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
        if code != 0:
            raise EngineError(
                f"restore into {self.describe()}: {name} failed (exit {code}): {_last_line(errors, cfg.secrets())}; "
                "fix the cause and restore again with --force"
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
            checks = mysql_checks.build_checks(
                cur, db, inventory, counters, default_auto_increment=None, history=history
            )
            cur.execute("COMMIT")
        return checks
