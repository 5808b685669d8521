"""PostgreSQL: logical backups with ``pg_dump``, restores with ``pg_restore``; physical
backups, WAL capture and point-in-time restore (the modules named below).

Full backups come in two kinds (``backup_method``): logical (below: one
database, restorable into any server of the same or a newer major) and
physical (``physical.py``: the whole cluster from ``pg_basebackup``, the base
of a WAL replay). ``auto`` takes a physical full once the source is set up for
WAL capture (the login may replicate and the capture's slot exists), logical
otherwise. A differential or incremental stores no data: it forces a WAL
switch and records the position the vault's log must reach (``wal.py``
captures the WAL continuously through a replication slot). A point-in-time
restore builds a new cluster in ``data_dir`` from the physical full and the
WAL pieces, stopped at the target time (``recovery.py``); a physical full
restored by its id is the same with no WAL.

Logical backup
    We open a REPEATABLE READ READ ONLY transaction, export its snapshot, and
    run every ``pg_dump --snapshot`` of the backup on it, so all streams and
    the checks (row counts, content hashes, sequences, schema inventory - see
    ``postgres_checks``, computed on our connection while the dumps stream)
    describe the same instant. The transaction stays open until the last dump
    ends. Streams, each a ``pg_dump --format=custom --compress=0`` archive
    (the vault compresses), restorable into a server of the same or a newer
    major version:

    - ``schema.pgdump``: ``--section=pre-data --section=post-data``;
    - ``data-0.pgdump`` .. ``data-N.pgdump``: ``--section=data``, numbered
      largest first: each big table in a stream of its own (up to
      ``GENESIS_DR_PG_TABLE_STREAMS``, default 7, of at least
      ``GENESIS_DR_PG_TABLE_STREAM_MIN_BYTES``, default 32 MiB), the other
      tables in one or two more. One of them (the "rest") excludes the listed
      tables instead of naming its own, so sequence values, large objects and
      anything unforeseen always land somewhere. A piped archive cannot feed
      ``pg_restore -j`` (it needs a seekable file); this split is what lets a
      restore load tables in parallel straight from the vault, the way
      ``pg_restore -j`` would (measured on a 1 GB database, 2 cores: one
      piped pg_restore took ~2.4x as long as ``pg_restore -j 2``; split, about
      the same server CPU as ``-j 2``). ``GENESIS_DR_PG_JOBS`` (default 2) sets
      how many pg_dump/pg_restore processes run at once.

    - ``globals.json``: the roles the database uses (owners, grantees, their
      members; attributes, memberships, settings; password hashes only with
      ``role_passwords``), every object's owner and grants, and the
      database's own properties (owner, comment, grants, ``ALTER
      DATABASE/ROLE ... SET``, connection limit) - see ``postgres_roles``.

    By hand: create the roles, ``pg_restore --section=pre-data
    schema.pgdump``, then each ``data-*.pgdump`` (in any order or at once),
    then ``pg_restore --section=post-data schema.pgdump``.

    Recorded position: WAL LSN (replay LSN on a standby), txid snapshot, the
    snapshot's time, server version, database, and the database's encoding
    and locale. Not included (as with any pg_dump): tablespaces, and roles
    the database does not use.

Restore semantics
    - Beside the target (``stage``/``swap_in``/``discard``): the backup is
      restored into a new database ``<db>_gdr_<tag>`` on the same server
      (``TEMPLATE template0`` with the backup's encoding and locale, owned by
      the target's owner), verified there, and only then swapped in: the
      target's sessions are ended, it is renamed to ``<db>_gdr_old_<tag>``,
      the staged copy renamed into place, the old one dropped. The target is
      untouched until the swap, and keeps its identity: owner, comment,
      grants, ``ALTER DATABASE/ROLE ... SET`` settings and connection limit
      carry over. A database that did not exist takes the source's
      properties instead. A failed or abandoned restore drops the staged
      copy (``discard`` also undoes a swap killed between its two renames).
      Staging needs CREATEDB (and ownership of an existing target) or a
      superuser; without them ``stage`` returns None and the restore runs
      in place (below), as on a managed server whose database was made for us.
    - In place: the database is created if missing; an existing *empty*
      database is used as it is; one holding data (``--force``, after the
      rollback backup) is dropped and re-created with its properties kept.
      ``pg_restore --clean`` is never used: it keeps objects the backup does
      not know, and fails on their dependencies.
    - Roles: recorded roles the server lacks are created first when the
      target config allows (``create_roles``, the default); existing roles
      are never altered.
    - Owners and privileges: kept when every role the backup names exists and
      the restoring user may act as it (superuser, or member). Otherwise the
      restore runs with ``--no-privileges`` (and ``--no-owner`` if an owner is
      missing: objects then belong to the restoring user), and then replays
      the dump's GRANTs one statement at a time, so a grant to a missing role
      loses only itself.
    - Notes: ``restore`` returns one line per thing not restored exactly as it
      was: a role not created (or created without its password), an owner
      replaced, a grant missing or added (found by comparing every object's
      owner and grants with those recorded), a database property the server
      refused, and every warning pg_restore printed. ``last_restore`` sums up.
    - Order: pre-data, then the data streams (largest first, one
      ``pg_restore`` each, ``GENESIS_DR_PG_JOBS`` at once), then post-data
      (indexes, constraints, triggers, ACLs, materialized view refreshes). All with
      ``--exit-on-error``. A failure in a staged copy leaves the target as it
      was (the error says so); in place it leaves the database partially
      restored, except that a database created by this restore is dropped again.
      No ``--single-transaction``: it cannot span parallel loads, and it takes a
      lock per object, which large schemas run out of.
    - Speed: sessions run with ``synchronous_commit=off`` and a larger
      ``maintenance_work_mem`` (index builds); one synchronous commit at the
      end makes the whole restore durable.
    - The restore is proven by ``collect_checks``: the same counts, hashes,
      sequences and inventory as recorded at backup time, none of which
      depends on the database's name or on OIDs (see ``postgres_checks``).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

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
from core.engines.postgres import checks, physical, recovery, roles, target, wal
from core.engines.postgres.roles import GLOBALS_STREAM
from core.engines.tools import StderrTail, ToolGroup, last_line
from core.errors import ConfigError, DRError, EngineError, SourceUnavailableError, redact
from core.sources import PostgresSourceConfig

SCHEMA_STREAM = "schema.pgdump"
CONNECT_TIMEOUT = 10
# Server states that pass by themselves (a restart, a crash recovery, a dropped link); retried by the flows.
_TRANSIENT_MESSAGES = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "server closed the connection unexpectedly",
    "connection reset",
    "sorry, too many clients already",
)
RESTORE_SESSION_OPTIONS = "-c synchronous_commit=off -c maintenance_work_mem=256MB"


def data_stream(index: int) -> str:
    return f"data-{index}.pgdump"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def parallel_jobs() -> int:
    """pg_dump/pg_restore processes at once (``GENESIS_DR_PG_JOBS``, default 2)."""
    return max(1, _env_int("GENESIS_DR_PG_JOBS", 2))


def find_tool(name: str) -> str:
    """Path of a PostgreSQL client tool, newest major first.

    ``GENESIS_DR_PG_BINDIR`` wins; then the newest ``/usr/lib/postgresql/*/bin``
    (a newer pg_dump reads older servers, never the reverse); then ``PATH``.
    """
    bindir = os.environ.get("GENESIS_DR_PG_BINDIR")
    candidates = [Path(bindir) / name] if bindir else []

    def major(p: Path) -> int:
        return int(p.parts[-3]) if p.parts[-3].isdigit() else 0

    candidates += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=major, reverse=True)
    return tools.find_tool(
        name,
        candidates=[str(c) for c in candidates],
        remedy="install the PostgreSQL client (major version >= the server's) or set GENESIS_DR_PG_BINDIR to its "
        "bin directory",
    )


def tool_version(path: str) -> str:
    """'15.20' from ``pg_dump --version`` ("pg_dump (PostgreSQL) 15.20 (Debian ...)")."""
    out = tools.version_output(path)
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out) or re.search(r"(\d+(?:\.\d+)?)", out)
    if not match:
        raise EngineError(f"cannot tell the version of {path} (printed {out.strip()!r}); reinstall the client")
    return match.group(1)


MAX_LISTED_TABLES = 1000
Table = tuple[str, str]


@dataclass
class DataGroup:
    """The tables of one data stream; ``rest`` takes every table no other group lists."""

    tables: list[Table]
    size: int
    rest: bool = False


def plan_data_groups(
    sizes: list[tuple[Table, int]],
    max_single: int | None = None,
    min_single: int | None = None,
    max_listed: int = MAX_LISTED_TABLES,
) -> list[DataGroup]:
    """Split the tables into data streams, largest first (the order restores take them in).

    Like ``pg_restore -j``, a restore keeps a few loads running and gives the
    next one to whichever finishes first, so big tables get a stream each
    (load cost per byte varies a lot by type: jsonb is slow, bytea fast) and
    the rest go into one or two streams of about equal size. The ``rest``
    group is never listed on a command line (its dump excludes the others),
    and the other listed group is capped at ``max_listed`` tables: that bounds
    argv and pg_dump's per-pattern catalog lookups on huge schemas.
    """
    max_single = _env_int("GENESIS_DR_PG_TABLE_STREAMS", 7) if max_single is None else max_single
    min_single = _env_int("GENESIS_DR_PG_TABLE_STREAM_MIN_BYTES", 32 << 20) if min_single is None else min_single
    ranked = sorted(sizes, key=lambda item: (-item[1], item[0]))
    singles = [DataGroup([table], size) for table, size in ranked[:max_single] if size >= min_single]
    remaining = ranked[len(singles) :]
    rest, listed = DataGroup([], 0, rest=True), DataGroup([], 0)
    split = sum(size for _, size in remaining) >= 2 * max(min_single, 1)
    for table, size in remaining:
        group = listed if split and listed.size < rest.size and len(listed.tables) < max_listed else rest
        group.tables.append(table)
        group.size += size
    groups = [rest, *singles] + ([listed] if listed.tables else [])
    return sorted(groups, key=lambda g: -g.size)


def _pattern(table: Table) -> str:
    """An exact pg_dump table pattern: inside double quotes nothing is a wildcard."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in table)


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _missing_database(exc: BaseException) -> bool:
    return bool(re.search(r'database ".*" does not exist', str(exc)))


class PostgresEngine(Engine):
    """One PostgreSQL database (a backup source or a restore target), or, with ``data_dir``
    set, a new cluster a physical backup and its WAL are recovered into (``recovery.py``)."""

    kind = "postgres"
    config: PostgresSourceConfig
    backup_types = ("full", "differential", "incremental")
    captures_log = True

    def __init__(self, config: PostgresSourceConfig) -> None:
        super().__init__(config)
        self.last_restore: dict[str, Any] = {}
        # Set on a staged copy (``stage``): the target database it will replace, and the tag.
        self._staged_for: tuple[str, str] | None = None
        self._created_roles: list[str] = []

    # ------------------------------------------------------------------ connections

    def describe(self) -> str:
        if self.config.data_dir:
            return f"postgres cluster in {self.config.data_dir} on port {self.config.port}"
        return f"postgres {self.config.host}:{self.config.port}/{self.config.database}"

    def _where(self) -> str:
        return f"postgres '{self.config.name}' at {self.config.host}:{self.config.port}"

    def _connect_kwargs(self, dbname: str) -> dict[str, Any]:
        c = self.config
        kwargs: dict[str, Any] = dict(
            host=c.host,
            port=c.port,
            user=c.user,
            dbname=dbname,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="genesis-dr",
        )
        if c.password is not None:
            kwargs["password"] = c.password.get_secret_value()
        kwargs.update(self._tls_params())
        return kwargs

    def _tls_params(self) -> dict[str, str]:
        """libpq TLS parameters of the source (core/tls.py). None for a cluster this restore starts itself
        (``data_dir``): it runs on this host, is reached over loopback, and a copy of the source's data
        directory need not carry the source's certificate or TLS settings."""
        c = self.config
        return {} if c.data_dir else tls.libpq_params(c.tls, c.host, c.sslmode)

    def _connect(self, dbname: str | None = None) -> psycopg.Connection:
        """Autocommit connection; connection failures become SourceUnavailableError."""
        try:
            return psycopg.connect(**self._connect_kwargs(dbname or self.config.database), autocommit=True)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc, dbname or self.config.database) from None

    def _maintenance_db(self) -> str:
        return "template1" if self.config.database == "postgres" else "postgres"

    def _sql_error(self, exc: psycopg.Error, action: str, remedy: str) -> DRError:
        """A lost connection is the server being unavailable; anything else is the SQL failing."""
        if isinstance(exc, psycopg.OperationalError):
            return self._unavailable(exc, self.config.database)
        detail = last_line(redact(str(exc), self.config.secrets()))
        return EngineError(f"{action} {self.describe()} failed: {detail}; {remedy}")

    def _unavailable(self, exc: BaseException, dbname: str) -> SourceUnavailableError:
        text = redact(str(exc), self.config.secrets())
        c = self.config
        if tls.postgres_tls(c.tls, c.sslmode) is not None and tls.tls_problem(text):
            return tls.tls_error(c.name, f"{c.host}:{c.port}", text, tls.postgres_tls(c.tls, c.sslmode), "postgres")
        low = text.lower()
        user = self.config.user
        transient = False  # only what may pass by itself is retried by the flows
        if _missing_database(exc):
            reason = f"database '{dbname}' does not exist; check database in the stack file"
        elif "password authentication failed" in low or "no password supplied" in low:
            reason = f"login refused for user '{user}'; check user and password in the stack file"
        elif "pg_hba.conf" in low or (f'role "{user}" does not exist' in text):
            reason = f"login refused for user '{user}' ({last_line(text)}); check the user and the server's pg_hba.conf"
        elif "connection refused" in low:
            reason = "connection refused; check the server is running and host/port in the stack file"
            transient = True
        elif "timeout expired" in low:
            reason = f"no answer within {CONNECT_TIMEOUT}s; check host/port and firewalls"
            transient = True
        elif any(m in low for m in _TRANSIENT_MESSAGES):
            reason = f"{last_line(text)}; check the server and the connection settings in the stack file"
            transient = True
        elif "could not translate host name" in low:
            reason = "unknown host name; check host in the stack file"
        else:
            reason = f"{last_line(text)}; check the server and the connection settings in the stack file"
        return SourceUnavailableError(f"{self._where()}: {reason}", transient=transient)

    def _tool_env(self, session_options: str = "") -> dict[str, str]:
        """Connection settings for pg_dump/pg_restore; the password only ever travels here."""
        c = self.config
        env = dict(os.environ)
        env.update(
            PGHOST=c.host,
            PGPORT=str(c.port),
            PGUSER=c.user,
            PGCONNECT_TIMEOUT=str(CONNECT_TIMEOUT),
            PGAPPNAME="genesis-dr",
        )
        if c.password is not None:
            env["PGPASSWORD"] = c.password.get_secret_value()
        env.update(tls.libpq_env(self._tls_params()))
        if session_options:
            env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " " + session_options).strip()
        return env

    def _dbname_arg(self) -> str:
        # A quoted conninfo string: a database name is then never parsed as a URI or options.
        return "--dbname=" + make_conninfo("", dbname=self.config.database)

    def _tool_error(self, tool: str, stderr: str, what: str) -> DRError:
        text = redact(stderr, self.config.secrets())
        errors = [ln for ln in text.splitlines() if "error:" in ln or "FATAL:" in ln or "ERROR:" in ln]
        detail = (errors[-1] if errors else last_line(text) or "no message").strip()
        low = text.lower()
        if tls.postgres_tls(self.config.tls, self.config.sslmode) is not None and tls.tls_problem(text):
            return self._unavailable(RuntimeError(text), self.config.database)
        if "connection to server" in low and ("failed" in low or "refused" in low):
            return self._unavailable(RuntimeError(text), self.config.database)
        if "server version mismatch" in low:
            return EngineError(
                f"{tool} is older than the server of {self._where()} ({detail}); "
                "install the newer PostgreSQL client or set GENESIS_DR_PG_BINDIR"
            )
        if "permission denied" in low or "must be owner" in low:
            remedy = (
                "give the user read access to every object (e.g. GRANT pg_read_all_data) or use a superuser"
                if tool == "pg_dump"
                else "restore as the target database's owner or a superuser"
            )
            return EngineError(f"{tool} {what} {self.describe()} was refused ({detail}); {remedy}")
        return EngineError(f"{tool} {what} {self.describe()} failed: {detail}")

    # ------------------------------------------------------------------ engine API

    def ping(self) -> None:
        """Connect with a short timeout; raise SourceUnavailableError if down, login refused
        or the database missing."""
        self._connect().close()

    def ping_target(self) -> None:
        """Like ``ping``, but a database that does not exist yet is fine: ``restore`` creates it.
        A new cluster (``data_dir``): its parent directory exists and the port is free."""
        if self.config.data_dir:
            recovery.check_target(self)
            return
        try:
            psycopg.connect(**self._connect_kwargs(self.config.database)).close()
        except psycopg.OperationalError as exc:
            if not _missing_database(exc):
                raise self._unavailable(exc, self.config.database) from None
            self._connect(self._maintenance_db()).close()  # the server is up and takes our login

    def has_data(self) -> bool:
        """True if the database exists and holds user objects or large objects (a new cluster's
        ``data_dir``: exists and is not empty)."""
        if self.config.data_dir:
            return recovery.data_dir_holds_data(Path(self.config.data_dir))
        try:
            conn = psycopg.connect(**self._connect_kwargs(self.config.database), autocommit=True)
        except psycopg.OperationalError as exc:
            if _missing_database(exc):
                return False
            raise self._unavailable(exc, self.config.database) from None
        with conn:
            return target.holds_data(conn)

    def backup(self, sink: StreamSink, base: BaseBackup | None = None) -> BackupResult:
        """A full (physical or logical, see ``backup_method``), or on a ``base``: no data, the WAL
        position the vault's log must reach (the WAL since the base is the change)."""
        if base is not None:
            # A backup on a differential or incremental is on a physical full: the first one was checked.
            if base.type == "full" and not base.result.position.get("physical"):
                raise EngineError(
                    f"backup {base.id} of {self.config.name} is a logical dump: WAL cannot be replayed onto it, so a "
                    f"backup on it would restore nothing; take a physical full first (backup_method: physical, "
                    "or auto once 'genesis-dr capture' has created the slot)"
                )
            position = self.log_position(switch=True)
            return BackupResult(position=position, tool_versions={"server": self._server_version()})
        if self._physical():
            return physical.backup_physical(self, sink)
        return self._backup_logical(sink)

    def _physical(self) -> bool:
        method = self.config.backup_method
        if method != "auto":
            return method == "physical"
        with self._connect() as conn:
            return physical.physical_possible(conn, self.config.slot)

    def _server_version(self) -> str:
        with self._connect() as conn:
            return conn.execute("SELECT current_setting('server_version')").fetchone()[0].split()[0]

    # ------------------------------------------------------------------ WAL (see wal.py, recovery.py)

    def log_position(self, switch: bool = False) -> dict[str, Any]:
        return wal.log_position(self, switch)

    def capture(self, log: LogSink, stop: Any, until: dict[str, Any] | None = None) -> None:
        wal.WalCapture(self, log, stop, until).run()

    def preflight(self, position: dict[str, Any]) -> None:
        if position.get("physical") and not self.config.data_dir:
            raise ConfigError(
                f"restore of {self.config.name}: a physical backup builds a new cluster; give the target a new data "
                f"directory and a free port (--target data_dir=/path port=N, or {self.config.name}.data_dir=... "
                "with --mode)"
            )
        if position.get("physical"):
            # A physical copy starts only under the major version that wrote it: say so before anything changes.
            major = int(str(position.get("server_version", "0")).split(".")[0])
            physical.server_tool("pg_ctl", major)
            physical.server_tool("postgres", major)

    def restore_chain(self, steps: ChainSteps, stop: StopPoint, progress: Any = None) -> RecoveryPoint:
        if not self.config.data_dir:
            raise EngineError(
                f"a point-in-time restore of {self.config.name} builds a new cluster: set data_dir (and a free port) "
                "on the restore target"
            )
        position = steps.base.result.position
        return recovery.restore_cluster(self, steps.base, position, steps.pieces, stop, progress)

    def _backup_logical(self, sink: StreamSink) -> BackupResult:
        pg_dump = find_tool("pg_dump")
        dump_version = tool_version(pg_dump)
        conn = self._connect()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            info = _snapshot_info(conn)  # first statement: it takes the snapshot it exports
            checks.apply_fixed_settings(conn)
            # The checks share the CPUs with pg_dump and the vault: parallel scans only add
            # contention there (measured: backups ~15-25% slower with them on 2 cores).
            conn.execute("SELECT set_config('max_parallel_workers_per_gather', '0', true)")
            if _major(dump_version) < _major(info["server_version"]):
                raise EngineError(
                    f"pg_dump {dump_version} cannot dump {self._where()} (server {info['server_version']}); "
                    "install a PostgreSQL client of the server's major version or newer, or set GENESIS_DR_PG_BINDIR"
                )
            sizes = checks.table_sizes(conn, info["in_recovery"])
            sequences_before = checks.read_sequences(conn)
            referenced = checks.referenced_roles(conn)
            globals_ = roles.read_globals(conn, referenced, self.config.role_passwords)
            # Not a check (a restore onto a server without the roles differs, and says so): the
            # reference the restore reports every owner and grant it did not restore against.
            globals_["privileges"] = roles.privileges(conn)
            with sink.open_stream(GLOBALS_STREAM) as out:
                out.write(roles.encode_globals(globals_))
            jobs = self._dump_jobs(pg_dump, info.pop("snapshot"), plan_data_groups(sizes))
            content = self._dump_while_checking(conn, jobs, info["in_recovery"], sink)
            sequences_after = checks.read_sequences(conn)
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise self._sql_error(
                exc, "reading", "check the backup user may read every object (e.g. GRANT pg_read_all_data)"
            ) from None
        finally:
            conn.close()
        content["sequences"] = checks.sequence_checks(sequences_before, sequences_after)
        content["restore"] = {"roles": referenced}
        return BackupResult(
            position=info,
            checks=content,
            tool_versions={"pg_dump": dump_version, "server": info["server_version"]},
        )

    def _dump_jobs(self, pg_dump: str, snapshot: str, groups: list[DataGroup]) -> list[tuple[str, list[str]]]:
        """(stream name, pg_dump argv) for the schema and each data group, all on one snapshot."""
        base = [pg_dump, "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password"]
        db = self._dbname_arg()
        jobs = [(SCHEMA_STREAM, [*base, "--section=pre-data", "--section=post-data", db])]
        listed = [t for g in groups if not g.rest for t in g.tables]
        for index, group in enumerate(groups):
            if group.rest:
                # "Everything the others do not take": sequence values, large objects and any
                # table we did not list land here instead of being lost to a too-narrow list.
                select = [f"--exclude-table-data={_pattern(t)}" for t in listed]
            else:
                select = [f"--table={_pattern(t)}" for t in group.tables]
            jobs.append((data_stream(index), [*base, "--section=data", *select, db]))
        return jobs

    def _dump_while_checking(
        self, conn: psycopg.Connection, jobs: list[tuple[str, list[str]]], in_recovery: bool, sink: StreamSink
    ) -> dict:
        """Run the dumps into the sink while the checks run on ``conn`` (same snapshot).

        The schema first, then the data streams, ``parallel_jobs()`` at a time
        (two at once measured ~10-15% faster than one after another on 2 cores:
        the server, pg_dump and the vault's compression overlap better).
        """
        tools = ToolGroup()
        outcome: dict[str, Any] = {}

        def run_checks() -> None:
            try:
                outcome["checks"] = checks.content_checks(conn, in_recovery)
            except BaseException as exc:  # re-raised in the caller's thread
                outcome["error"] = exc
                tools.kill_all()  # no point streaming a backup we will fail

        checker = threading.Thread(target=run_checks, name="pg-checks", daemon=True)
        checker.start()
        try:
            (schema_name, schema_argv), data_jobs = jobs[0], jobs[1:]
            self._dump_one(schema_name, schema_argv, sink, tools.started)
            tools.run([lambda job=job: self._dump_one(*job, sink, tools.started) for job in data_jobs], parallel_jobs())
        except BaseException:
            if "error" in outcome:  # the checks failed first and stopped the dumps
                checker.join()
                raise outcome["error"] from None
            # Abort the checks: a cancelled statement aborts the transaction, so the
            # thread's next statement fails at once; repeat in case we hit between two.
            while checker.is_alive():
                _cancel(conn)
                checker.join(0.5)
            raise
        checker.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["checks"]

    def _dump_one(
        self, name: str, argv: list[str], sink: StreamSink, started: Callable[[subprocess.Popen], None]
    ) -> None:
        returncode, stderr = tools.stream_into(sink, name, argv, env=self._tool_env(), started=started)
        if returncode != 0:
            raise self._tool_error("pg_dump", stderr, "of")

    def restore(self, source: StreamSource, result: BackupResult) -> list[str]:
        """Restore into this config's database (see the module docstring); returns the notes:
        one line per role, owner, grant or object not restored exactly as backed up.
        A physical full restores into a new cluster (``data_dir``), stopping at its own end."""
        if result.position.get("physical") or self.config.data_dir:
            point = recovery.restore_cluster(self, source, result.position, [], StopPoint())
            return list(point.notes)
        pg_restore = find_tool("pg_restore")
        restore_version = tool_version(pg_restore)
        dumped_by = result.tool_versions.get("pg_dump")
        if dumped_by and _major(restore_version) < _major(dumped_by):
            raise EngineError(
                f"pg_restore {restore_version} cannot read a dump made by pg_dump {dumped_by}; "
                "install a newer PostgreSQL client or set GENESIS_DR_PG_BINDIR"
            )
        names = source.stream_names()
        # Numbered largest first at backup time: taking them in that order balances the loads.
        data_streams = sorted((n for n in names if n.startswith("data-")), key=_stream_index)
        options = result.position.get("database_options") or {}
        hints = result.checks.get("restore", {})
        globals_ = roles.decode_globals(b"".join(source.iter_stream(GLOBALS_STREAM))) if GLOBALS_STREAM in names else {}
        notes: list[str] = []
        has_data = False if self._staged_for else self.has_data()
        shown = self._staged_for[0] if self._staged_for else self.config.database
        created, created_roles = False, []
        try:
            with self._connect(self._maintenance_db()) as conn:
                # A database this restore brings into existence gets the source's database properties.
                new_target = not target.database_exists(conn, shown)
                if globals_:
                    created_roles, role_notes = roles.create_missing_roles(conn, globals_, self.config.create_roles)
                    self._created_roles = created_roles  # removed again if this restore is discarded
                    notes += role_notes
                if self._staged_for:
                    # A fresh sibling; a leftover of the same name can only be ours (the name carries the tag).
                    target.drop_database(conn, self.config.database)
                    props = {}
                    if target.database_exists(conn, self._staged_for[0]):
                        props = {"owner": target.database_properties(conn, self._staged_for[0])["owner"]}
                    target.create_database(conn, self.config.database, options, props, self.describe())
                    created = True
                else:
                    created = target.prepare_database(conn, self.config.database, options, has_data, self.describe())
        except BaseException:
            self._drop_roles_quietly(created_roles)
            raise
        try:
            recorded = globals_.get("privileges")
            wanted = hints.get("roles", [])
            with self._connect() as conn:
                # Missing, or we may not act as them (ALTER DEFAULT PRIVILEGES FOR ROLE, a grant
                # made by another grantor and pg_restore's OWNER TO all need membership).
                unusable = set(target.unusable_roles(conn, wanted))
            owners = set(wanted) if recorded is None else {owner for owner, _ in recorded.values()}
            no_owner = bool(unusable & owners)
            no_privileges = bool(unusable)
            argv = [pg_restore, "--exit-on-error", "--no-password", self._dbname_arg()]
            if no_owner:
                argv.append("--no-owner")  # ALTER ... OWNER TO a missing role would stop the restore
            if no_privileges:
                argv.append("--no-privileges")  # replayed one GRANT at a time below
            env = self._tool_env(RESTORE_SESSION_OPTIONS)
            warnings = self._restore_one([*argv, "--section=pre-data"], env, source.iter_stream(SCHEMA_STREAM))
            tools = ToolGroup()
            loads = [
                lambda n=n: warnings.extend(self._restore_one(argv, env, source.iter_stream(n), tools.started))
                for n in data_streams
            ]
            tools.run(loads, parallel_jobs())
            warnings += self._restore_one([*argv, "--section=post-data"], env, source.iter_stream(SCHEMA_STREAM))
            if no_privileges:
                self._replay_grants(pg_restore, env, source)
            if recorded is not None:
                with self._connect() as conn:
                    actual = roles.privileges(conn)
                    everyone = {o for o, _ in recorded.values()} | {
                        g.rpartition(":")[0] for _, grants in recorded.values() for g in grants
                    }
                    existing = roles.existing_roles(conn, sorted(everyone))
                    notes += roles.privilege_notes(recorded, actual, existing, unusable)
            elif no_owner or no_privileges:
                notes.append(
                    "owners and grants were not restored (roles missing on the target: "
                    + ", ".join(sorted(unusable))
                    + "); every object belongs to the restoring user"
                )
            notes += [f"pg_restore: {w}" for w in warnings]
        except BaseException:
            if created:
                self._drop_database_quietly()
            self._drop_roles_quietly(created_roles)
            raise
        self._make_durable()
        if new_target and globals_.get("database"):
            with self._connect(self._maintenance_db()) as conn:
                notes += target.apply_recorded_properties(conn, self.config.database, globals_["database"], shown)
        self.last_restore = {
            "database_created": created,
            "owners_and_privileges": "kept" if not (no_owner or no_privileges) else "partly",
            "missing_roles": sorted(unusable),
            "created_roles": created_roles,
            "pg_restore": restore_version,
            "notes": list(notes),
        }
        return notes

    def _restore_one(
        self,
        argv: list[str],
        env: dict[str, str],
        pieces: Iterator[bytes],
        started: Callable[[subprocess.Popen], None] | None = None,
    ) -> list[str]:
        """Feed one stream into one pg_restore (stderr drained by a thread meanwhile);
        returns the warnings it printed."""
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        if started:
            started(proc)
        stderr = StderrTail(proc.stderr)
        try:
            for piece in pieces:
                proc.stdin.write(piece)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # pg_restore stopped reading: its exit status and stderr say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        returncode = proc.wait()
        if returncode != 0:
            error = self._tool_error("pg_restore", stderr.text(), "into")
            if isinstance(error, EngineError):
                error = EngineError(f"{error.message}; {self._after_failure()}")
            raise error
        text = redact(stderr.text(), self.config.secrets())
        return [ln.split("warning:", 1)[1].strip() for ln in text.splitlines() if "warning:" in ln]

    def _after_failure(self) -> str:
        """What a failed pg_restore left behind, for its error message."""
        if self._staged_for:
            return (
                f"it ran into the staged copy {self.config.database}, which is removed: "
                f"the target database '{self._staged_for[0]}' was not changed - fix the cause and restore again"
            )
        return "the target database is left partially restored - fix the cause, then restore again with --force"

    def _tool_output(
        self, argv: list[str], env: dict[str, str], pieces: Iterator[bytes], pass_fds: tuple[int, ...] = ()
    ) -> bytes:
        """Run a pg_restore that writes to stdout (a listing, SQL), feeding it a stream."""
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            pass_fds=pass_fds,
        )
        stderr = StderrTail(proc.stderr)
        failure: list[BaseException] = []

        def feed() -> None:
            try:
                for piece in pieces:
                    proc.stdin.write(piece)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            except BaseException as exc:
                failure.append(exc)
                proc.kill()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        out = proc.stdout.read()
        proc.stdout.close()
        feeder.join()
        returncode = proc.wait()
        if failure:
            raise failure[0]
        if returncode != 0:
            raise self._tool_error("pg_restore", stderr.text(), "into")
        return out

    def _replay_grants(self, pg_restore: str, env: dict[str, str], source: StreamSource) -> None:
        """Grants of the schema stream, one statement at a time, so a GRANT to a role the
        target lacks loses only itself (pg_restore runs an object's grants as one unit).

        Statements that fail are not raised: ``privilege_notes`` reports every grant
        that is not as it was, whatever the reason.
        """
        listing = self._tool_output([pg_restore, "--list"], env, source.iter_stream(SCHEMA_STREAM)).decode()
        entries = [ln for ln in listing.splitlines() if re.match(r"^\d+; \d+ \d+ (DEFAULT )?ACL ", ln)]
        if not entries:
            return
        # The list goes through a pipe, never to disk (it names every object).
        read_fd, write_fd = os.pipe()

        def write_list() -> None:
            try:
                with os.fdopen(write_fd, "w") as out:
                    out.write("\n".join(entries) + "\n")
            except OSError:
                pass  # pg_restore ended without reading it: its own error says why

        writer = threading.Thread(target=write_list, daemon=True)
        writer.start()
        try:
            script = self._tool_output(
                [pg_restore, "--no-owner", f"--use-list=/dev/fd/{read_fd}", "--file=-"],
                env,
                source.iter_stream(SCHEMA_STREAM),
                pass_fds=(read_fd,),
            ).decode()
        finally:
            os.close(read_fd)
            writer.join()
        with self._connect() as conn:
            for statement in _sql_statements(script):
                try:
                    conn.execute(statement)
                except psycopg.OperationalError as exc:
                    raise self._sql_error(exc, "restoring grants into", "check the server") from None
                except psycopg.Error:
                    continue

    # ------------------------------------------------------------------ restoring beside the target

    def stage(self, tag: str) -> PostgresEngine | None:
        """An engine on ``<database>_gdr_<tag>`` on the same server (created by its ``restore``);
        None (restore in place) if the user may not create it and rename it into place, or for a
        new cluster (``data_dir``: it is only ever built in an empty directory)."""
        if self._staged_for or self.config.data_dir:
            return None
        with self._connect(self._maintenance_db()) as conn:
            if not target.may_swap(conn, self.config.database):
                return None
        name = target.sibling_name(self.config.database, "staged", tag)
        staged = PostgresEngine(self.config.model_copy(update={"database": name}))
        staged._staged_for = (self.config.database, tag)
        return staged

    def restores_beside(self) -> bool:
        if self.config.data_dir:
            return False
        return self.stage("00000000") is not None  # stage() only reads the catalog

    def swap_in(self, staged: Engine) -> None:
        """Rename the verified staged database into place; the old target is renamed away,
        then dropped. Its owner (set when the staged copy was created), comment, grants,
        ``ALTER DATABASE/ROLE ... SET`` settings and connection limit carry over."""
        if not isinstance(staged, PostgresEngine) or not staged._staged_for:
            raise EngineError(f"{self.describe()}: can only swap in a staged copy of itself")
        name, tag = staged._staged_for
        new, old = staged.config.database, target.sibling_name(name, "old", tag)
        try:
            with self._connect(self._maintenance_db()) as conn:
                existed = target.database_exists(conn, name)
                if existed:
                    props = target.database_properties(conn, name)
                    for statement in target.swap_properties_sql(new, props):
                        conn.execute(statement)
                    # Each rename first ends the database's sessions (and retries if a client
                    # reconnects in between); nothing is dropped before the new one is in place.
                    target.rename_database(conn, name, old)
                    try:
                        target.rename_database(conn, new, name)
                    except BaseException:
                        target.rename_database(conn, old, name)
                        raise
                    target.drop_database(conn, old)
                else:
                    target.rename_database(conn, new, name)
        except psycopg.Error as exc:
            raise self._sql_error(
                exc,
                "swapping the restored copy into",
                f"the verified copy is {new}; connect as the database owner or a superuser and restore again",
            ) from None
        self.last_restore = dict(staged.last_restore, database_created=not existed, staged_as=new)

    def discard(self) -> None:
        """Drop this staged database (and the roles its restore created); finish or undo a
        swap a killed restore left halfway."""
        if not self._staged_for:
            raise EngineError(f"{self.describe()} is not a staged copy; refusing to drop it")
        name, tag = self._staged_for
        old = target.sibling_name(name, "old", tag)
        try:
            with self._connect(self._maintenance_db()) as conn:
                target.drop_database(conn, self.config.database)
                if self._created_roles:
                    self._drop_roles_quietly(self._created_roles)
                if target.database_exists(conn, old):
                    if target.database_exists(conn, name):
                        target.drop_database(conn, old)  # the swap was done; only the clean-up was not
                    else:
                        target.rename_database(conn, old, name)  # killed between the two renames
        except psycopg.Error as exc:
            raise self._sql_error(exc, "removing the staged copy", "drop it by hand (DROP DATABASE)") from None

    def target_key(self) -> str:
        if self.config.data_dir:
            return f"postgres cluster {Path(self.config.data_dir).absolute()}"
        return f"postgres {self.config.host.lower()}:{self.config.port}/{self.config.database}"

    def collect_checks(self, reference: dict[str, Any]) -> dict[str, Any]:
        if set(reference) <= {"cluster"}:
            # A physical full's checks: the recovered cluster is that cluster (see physical.py).
            with self._connect() as conn:
                return {"cluster": physical.cluster_checks(conn)} if reference else {}
        conn = self._connect()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            checks.apply_fixed_settings(conn)
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            actual = checks.content_checks(conn, in_recovery, reference)
            actual["sequences"] = checks.collect_sequences(conn, reference.get("sequences", {}))
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            raise self._sql_error(exc, "checking", "check the restoring user may read every object") from None
        finally:
            conn.close()
        if "restore" in reference:
            actual["restore"] = reference["restore"]  # restore hints, not a check
        # Shaped like the reference: a check kind it did not record is not compared.
        return {k: v for k, v in actual.items() if k in reference}

    # ------------------------------------------------------------------ restore helpers

    def _drop_database_quietly(self) -> None:
        """Remove a database this restore created, so a failed restore leaves nothing behind."""
        try:
            with self._connect(self._maintenance_db()) as conn:
                target.drop_database(conn, self.config.database)
        except (psycopg.Error, DRError):
            pass  # the restore's own error is what the operator must see; the leftover is harmless

    def _drop_roles_quietly(self, names: list[str]) -> None:
        """Remove roles this restore created, once nothing of it needs them (a failed restore)."""
        if not names:
            return
        try:
            with self._connect(self._maintenance_db()) as conn:
                for name in names:
                    try:
                        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
                    except psycopg.Error:
                        pass  # used by something else meanwhile: it stays, which harms nothing
        except DRError:
            pass  # the restore's own error is what the operator must see

    def _make_durable(self) -> None:
        """The restore ran with synchronous_commit=off; one synchronous commit flushes all of its WAL."""
        with self._connect() as conn:
            conn.execute("SET synchronous_commit = on")
            with conn.transaction():
                conn.execute("SELECT txid_current()")


def _sql_statements(script: str) -> Iterator[str]:
    """The statements of a pg_restore SQL script of grants: one per line (pg_dump writes each
    GRANT/REVOKE/SET on its own line), comments and blank lines left out."""
    pending: list[str] = []
    for line in script.splitlines():
        if not pending and (not line.strip() or line.startswith("--")):
            continue
        pending.append(line)
        if line.rstrip().endswith(";"):
            yield "\n".join(pending)
            pending = []


def _stream_index(name: str) -> int:
    match = re.search(r"(\d+)", name)
    return int(match.group(1)) if match else 0


def _cancel(conn: psycopg.Connection) -> None:
    try:
        conn.cancel_safe(timeout=5)
    except Exception:
        pass  # best effort: the connection is closed right after anyway


def _snapshot_info(conn: psycopg.Connection) -> dict[str, Any]:
    """Export the snapshot and read the position in the same statement (so they agree)."""
    current_snapshot = "pg_current_snapshot()" if conn.info.server_version >= 130000 else "txid_current_snapshot()"
    row = conn.execute(
        "SELECT pg_export_snapshot(), pg_is_in_recovery(), "
        "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text, "
        f"{current_snapshot}::text, current_setting('server_version'), current_database(), statement_timestamp(), "
        "pg_encoding_to_char(d.encoding), to_jsonb(d) FROM pg_database d WHERE d.datname = current_database()"
    ).fetchone()
    snapshot, in_recovery, lsn, txids, version, database, at, encoding, db = row
    provider = {"c": "libc", "i": "icu", "b": "builtin"}.get(db.get("datlocprovider", "c"), "libc")
    return {
        "snapshot": snapshot,
        "in_recovery": in_recovery,
        "lsn": lsn,
        "txid_snapshot": txids,
        "server_version": version.split()[0],
        "database": database,
        "snapshot_time": at.isoformat() if isinstance(at, datetime) else str(at),
        "database_options": {
            "encoding": encoding,
            "lc_collate": db.get("datcollate"),
            "lc_ctype": db.get("datctype"),
            "locale_provider": provider,
            # datlocale from PostgreSQL 17, daticulocale in 15 and 16.
            "locale": db.get("datlocale") or db.get("daticulocale"),
        },
    }
