"""PostgreSQL: logical backups with ``pg_dump``, restores with ``pg_restore``.

Backup
    One stream, ``pg_dump.custom``: ``pg_dump --format=custom --compress=0``
    (the vault compresses) of one database, restorable into a server of the
    same or a newer major version. We open a REPEATABLE READ READ ONLY
    transaction, export its snapshot and run ``pg_dump --snapshot``: the dump
    and the checks (row counts, content hashes, schema inventory - see
    ``postgres_checks``) describe the same instant. The checks run on our
    connection while pg_dump streams (measured: it overlaps most of their cost).
    Recorded position: WAL LSN (replay LSN on a standby), txid snapshot, the
    snapshot's time, server version, database, and the database's encoding and
    locale. Not included (as with any pg_dump): roles, tablespaces and
    database-level settings (``ALTER DATABASE ... SET``, database GRANTs) - keep
    them with ``pg_dumpall --globals-only`` or configuration management.

Restore semantics
    - Target database: created if missing (``TEMPLATE template0`` with the
      backup's encoding and locale; if the target server lacks that locale,
      create the database yourself, empty, and restore again). An existing
      *empty* database is used as it is (its owner, settings and grants stay).
    - Clean: if the target holds data (the caller checked ``has_data()`` and
      was given ``--force``; the operation takes a rollback backup first), the
      database is dropped (``WITH (FORCE)``: its sessions are disconnected) and
      re-created, keeping its owner, connection limit, comment, grants and
      ``ALTER DATABASE/ROLE ... SET`` settings. This is the only clean that
      leaves exactly the backup's objects behind (``pg_restore --clean`` keeps
      objects the backup does not know, and fails on their dependencies).
    - Owners and privileges: kept when every role the backup references as
      owner or grantee exists on the target and the restoring user may act
      as them (superuser, or member); otherwise the restore runs with
      ``--no-owner --no-privileges``, so a bare DR server still gets the data
      (objects then belong to the restoring user, without GRANTs; create the
      roles and restore again to keep them). ``last_restore`` says which.
    - ``--exit-on-error``; a failure leaves the database partially restored
      (a database we created in that call is dropped again). We do not use
      ``--single-transaction``: it needs a lock per object and large schemas
      run out of lock table space.
    - Speed: the dump arrives as a pipe, so ``pg_restore -j`` (which needs a
      seekable file) is out; the session runs with ``synchronous_commit=off``
      and a larger ``maintenance_work_mem`` (index builds), and one synchronous
      commit at the end makes everything durable.
    - The restore is proven by ``collect_checks``: same counts, hashes,
      sequences and inventory as recorded at backup time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from core.engines import postgres_checks as checks
from core.engines.base import BackupResult, Engine, StreamSink, StreamSource
from core.errors import DRError, EngineError, SourceUnavailableError, redact
from core.sources import PostgresSourceConfig

STREAM = "pg_dump.custom"
CONNECT_TIMEOUT = 10
RESTORE_SESSION_OPTIONS = "-c synchronous_commit=off -c maintenance_work_mem=256MB"
_STDERR_KEEP = 64 * 1024

# ALTER DATABASE/ROLE SET values of these are stored as SQL lists; re-quoting them would
# change them (pg_dump knows the same list).
_LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
}


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
    for cand in candidates:
        if os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which(name)
    if not found:
        raise EngineError(
            f"{name} not found; install the PostgreSQL client (major version >= the server's) "
            "or set GENESIS_DR_PG_BINDIR to its bin directory"
        )
    return found


def tool_version(path: str) -> str:
    """'15.20' from ``pg_dump --version`` ("pg_dump (PostgreSQL) 15.20 (Debian ...)")."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out) or re.search(r"(\d+(?:\.\d+)?)", out)
    if not match:
        raise EngineError(f"cannot tell the version of {path} (printed {out.strip()!r}); reinstall the client")
    return match.group(1)


def _major(version: str) -> int:
    return int(version.split(".")[0])


class _StderrTail(threading.Thread):
    """Drains a tool's stderr (so it never blocks on a full pipe), keeping the tail."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self._stream, self._buf = stream, bytearray()

    def run(self) -> None:
        for line in iter(self._stream.readline, b""):
            self._buf += line
            if len(self._buf) > _STDERR_KEEP:
                del self._buf[: len(self._buf) - _STDERR_KEEP]

    def text(self) -> str:
        self.join()
        return self._buf.decode("utf-8", "replace")


class PostgresEngine(Engine):
    """One PostgreSQL database: a backup source or a restore target."""

    kind = "postgres"
    config: PostgresSourceConfig

    def __init__(self, config: PostgresSourceConfig) -> None:
        super().__init__(config)
        self.last_restore: dict[str, Any] = {}

    # ------------------------------------------------------------------ connections

    def describe(self) -> str:
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
        if c.sslmode:
            kwargs["sslmode"] = c.sslmode
        return kwargs

    def _connect(self, dbname: str | None = None) -> psycopg.Connection:
        """Autocommit connection; connection failures become SourceUnavailableError."""
        try:
            return psycopg.connect(**self._connect_kwargs(dbname or self.config.database), autocommit=True)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc, dbname or self.config.database) from None

    def _maintenance_db(self) -> str:
        return "template1" if self.config.database == "postgres" else "postgres"

    def _unavailable(self, exc: BaseException, dbname: str) -> SourceUnavailableError:
        text = redact(str(exc), self.config.secrets())
        low = text.lower()
        user = self.config.user
        if _missing_database(exc):
            reason = f"database '{dbname}' does not exist; check database in the stack file"
        elif "password authentication failed" in low or "no password supplied" in low:
            reason = f"login refused for user '{user}'; check user and password in the stack file"
        elif "pg_hba.conf" in low or (f'role "{user}" does not exist' in text):
            reason = (
                f"login refused for user '{user}' ({_last_line(text)}); check the user and the server's pg_hba.conf"
            )
        elif "connection refused" in low:
            reason = "connection refused; check the server is running and host/port in the stack file"
        elif "timeout expired" in low:
            reason = f"no answer within {CONNECT_TIMEOUT}s; check host/port and firewalls"
        elif "could not translate host name" in low:
            reason = "unknown host name; check host in the stack file"
        else:
            reason = f"{_last_line(text)}; check the server and the connection settings in the stack file"
        return SourceUnavailableError(f"{self._where()}: {reason}")

    def _tool_env(self) -> dict[str, str]:
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
        if c.sslmode:
            env["PGSSLMODE"] = c.sslmode
        return env

    def _dbname_arg(self) -> str:
        # A quoted conninfo string: a database name is then never parsed as a URI or options.
        return "--dbname=" + make_conninfo("", dbname=self.config.database)

    def _tool_error(self, tool: str, stderr: str, what: str) -> DRError:
        text = redact(stderr, self.config.secrets())
        errors = [ln for ln in text.splitlines() if "error:" in ln or "FATAL:" in ln or "ERROR:" in ln]
        detail = (errors[-1] if errors else _last_line(text) or "no message").strip()
        low = text.lower()
        if "connection to server" in low and ("failed" in low or "refused" in low):
            return self._unavailable(RuntimeError(text), self.config.database)
        if "server version mismatch" in low:
            return EngineError(
                f"{tool} is older than the server of {self._where()} ({detail}); "
                "install the newer PostgreSQL client or set GENESIS_DR_PG_BINDIR"
            )
        if "permission denied" in low:
            return EngineError(
                f"{tool} {what} {self.describe()} was refused ({detail}); "
                "give the user read access to every object (e.g. GRANT pg_read_all_data) or use a superuser"
            )
        return EngineError(f"{tool} {what} {self.describe()} failed: {detail}")

    # ------------------------------------------------------------------ engine API

    def ping(self) -> None:
        """Connect with a short timeout; raise SourceUnavailableError if down or login refused.

        A missing database is fine here (a restore creates it); ``backup`` reports it.
        """
        try:
            psycopg.connect(**self._connect_kwargs(self.config.database)).close()
        except psycopg.OperationalError as exc:
            if not _missing_database(exc):
                raise self._unavailable(exc, self.config.database) from None
            self._connect(self._maintenance_db()).close()

    def has_data(self) -> bool:
        """True if the database exists and holds user objects or large objects."""
        try:
            conn = psycopg.connect(**self._connect_kwargs(self.config.database), autocommit=True)
        except psycopg.OperationalError as exc:
            if _missing_database(exc):
                return False
            raise self._unavailable(exc, self.config.database) from None
        with conn:
            return _holds_data(conn)

    def backup(self, sink: StreamSink) -> BackupResult:
        pg_dump = find_tool("pg_dump")
        dump_version = tool_version(pg_dump)
        conn = self._connect()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            info = _snapshot_info(conn)  # first statement: it takes the snapshot it exports
            checks.apply_fixed_settings(conn)
            if _major(dump_version) < _major(info["server_version"]):
                raise EngineError(
                    f"pg_dump {dump_version} cannot dump {self._where()} (server {info['server_version']}); "
                    "install a PostgreSQL client of the server's major version or newer, or set GENESIS_DR_PG_BINDIR"
                )
            sequences_before = checks.read_sequences(conn)
            roles = checks.referenced_roles(conn)
            content = self._dump_while_checking(conn, pg_dump, info, sink)
            sequences_after = checks.read_sequences(conn)
            conn.execute("COMMIT")
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc, self.config.database) from None
        except psycopg.Error as exc:
            raise EngineError(
                f"reading {self.describe()} failed: {_last_line(redact(str(exc), self.config.secrets()))}; "
                "check the backup user may read every object (e.g. GRANT pg_read_all_data)"
            ) from None
        finally:
            conn.close()
        content["sequences"] = checks.sequence_checks(sequences_before, sequences_after)
        content["restore"] = {"roles": roles}
        info.pop("snapshot")  # only meaningful while our transaction was open
        return BackupResult(
            position=info,
            checks=content,
            tool_versions={"pg_dump": dump_version, "server": info["server_version"]},
        )

    def _dump_while_checking(self, conn: psycopg.Connection, pg_dump: str, info: dict, sink: StreamSink) -> dict:
        """Stream pg_dump into the sink while the checks run on ``conn`` (same snapshot)."""
        argv = [
            pg_dump,
            "--format=custom",
            "--compress=0",
            f"--snapshot={info['snapshot']}",
            "--no-password",
            self._dbname_arg(),
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._tool_env()
        )
        stderr = _StderrTail(proc.stderr)
        stderr.start()
        outcome: dict[str, Any] = {}

        def run_checks() -> None:
            try:
                outcome["checks"] = checks.content_checks(conn, info["in_recovery"])
            except BaseException as exc:  # re-raised in the caller's thread
                outcome["error"] = exc
                proc.terminate()  # no point streaming a backup we will fail

        checker = threading.Thread(target=run_checks, name="pg-checks", daemon=True)
        checker.start()
        try:
            sink.write_stream(STREAM, proc.stdout)
            returncode = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            # Abort the checks: a cancelled statement aborts the transaction, so the
            # thread's next statement fails at once; repeat in case we hit between two.
            while checker.is_alive():
                _cancel(conn)
                checker.join(0.5)
            raise
        finally:
            proc.stdout.close()
        checker.join()
        if "error" in outcome:
            raise outcome["error"]
        if returncode != 0:
            raise self._tool_error("pg_dump", stderr.text(), "of")
        return outcome["checks"]

    def restore(self, source: StreamSource, result: BackupResult) -> None:
        pg_restore = find_tool("pg_restore")
        restore_version = tool_version(pg_restore)
        dumped_by = result.tool_versions.get("pg_dump")
        if dumped_by and _major(restore_version) < _major(dumped_by):
            raise EngineError(
                f"pg_restore {restore_version} cannot read a dump made by pg_dump {dumped_by}; "
                "install a newer PostgreSQL client or set GENESIS_DR_PG_BINDIR"
            )
        created = self._prepare_database(result.position.get("database_options") or {})
        missing = self._unusable_roles(result.checks.get("restore", {}).get("roles", []))
        self.last_restore = {
            "database_created": created,
            "owners_and_privileges": "skipped" if missing else "kept",
            "missing_roles": missing,
            "pg_restore": restore_version,
        }
        argv = [pg_restore, "--exit-on-error", "--no-password", self._dbname_arg()]
        if missing:
            argv += ["--no-owner", "--no-privileges"]
        env = self._tool_env()
        env["PGOPTIONS"] = (env.get("PGOPTIONS", "") + " " + RESTORE_SESSION_OPTIONS).strip()
        try:
            self._run_restore(argv, env, source.iter_stream(STREAM))
        except BaseException:
            if created:
                self._drop_database_quietly()
            raise
        self._make_durable()

    def _run_restore(self, argv: list[str], env: dict[str, str], pieces: Iterator[bytes]) -> None:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        stderr = _StderrTail(proc.stderr)
        stderr.start()
        with proc:
            try:
                for piece in pieces:
                    proc.stdin.write(piece)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped reading: its exit status and stderr say why
            except BaseException:
                proc.kill()
                raise
            returncode = proc.wait()
        if returncode != 0:
            error = self._tool_error("pg_restore", stderr.text(), "into")
            if isinstance(error, EngineError):
                error = EngineError(
                    f"{error.message}; the target database is left partially restored - fix the cause, "
                    "then restore again with --force"
                )
            raise error

    def collect_checks(self, reference: dict[str, Any]) -> dict[str, Any]:
        conn = self._connect()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            checks.apply_fixed_settings(conn)
            in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
            actual = checks.content_checks(conn, in_recovery, reference)
            actual["sequences"] = checks.collect_sequences(conn, reference.get("sequences", {}))
            conn.execute("COMMIT")
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc, self.config.database) from None
        finally:
            conn.close()
        if "restore" in reference:
            actual["restore"] = reference["restore"]  # restore hints, not a check
        # Shaped like the reference: a check kind it did not record is not compared.
        return {k: v for k, v in actual.items() if k in reference}

    # ------------------------------------------------------------------ restore helpers

    def _prepare_database(self, options: dict[str, Any]) -> bool:
        """Make the target database exist and be empty; True if we created it from nothing."""
        name = self.config.database
        with self._connect(self._maintenance_db()) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                self._create_database(conn, options, owner=None)
                return True
            if not self.has_data():
                return False
            keep = _database_properties(conn, name)
            try:
                if conn.info.server_version >= 130000:
                    conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                else:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    )
                    conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
            except psycopg.Error as exc:
                raise EngineError(
                    f"cannot clear {self.describe()} for the forced restore: {_last_line(str(exc))}; "
                    "connect as the database owner or a superuser"
                ) from None
            self._create_database(conn, options, owner=keep["owner"], connection_limit=keep["connection_limit"])
            for statement in _restore_properties_sql(name, keep):
                conn.execute(statement)
            return False

    def _create_database(
        self, conn: psycopg.Connection, options: dict[str, Any], owner: str | None, connection_limit: int = -1
    ) -> None:
        parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(self.config.database))]
        if owner:
            parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
        if connection_limit != -1:
            parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(connection_limit)))
        if options.get("encoding"):
            parts.append(sql.SQL("ENCODING {}").format(sql.Literal(options["encoding"])))
        for key, clause in (("lc_collate", "LC_COLLATE"), ("lc_ctype", "LC_CTYPE")):
            if options.get(key):
                parts.append(sql.SQL(clause + " {}").format(sql.Literal(options[key])))
        provider, locale = options.get("locale_provider"), options.get("locale")
        if provider == "libc" and conn.info.server_version >= 150000:
            # Otherwise the target's template0 decides, and it may use ICU.
            parts.append(sql.SQL("LOCALE_PROVIDER libc"))
        elif provider in ("icu", "builtin") and locale:
            parts.append(
                sql.SQL("LOCALE_PROVIDER {} {} {}").format(
                    sql.SQL(provider),
                    sql.SQL("ICU_LOCALE" if provider == "icu" else "BUILTIN_LOCALE"),
                    sql.Literal(locale),
                )
            )
        try:
            conn.execute(sql.SQL(" ").join(parts))
        except psycopg.Error as exc:
            text = _last_line(str(exc))
            remedy = (
                "create the database yourself (empty, with a locale this server has) and restore again"
                if "locale" in text.lower() or "collation" in text.lower()
                else "connect as a user with CREATEDB, or create the empty database yourself"
            )
            raise EngineError(f"cannot create database for {self.describe()}: {text}; {remedy}") from None

    def _drop_database_quietly(self) -> None:
        """Remove a database this restore created, so a failed restore leaves nothing behind."""
        try:
            with self._connect(self._maintenance_db()) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(self.config.database)))
        except (psycopg.Error, DRError):
            pass  # the restore's own error is what the operator must see; the leftover is harmless

    def _unusable_roles(self, roles: list[str]) -> list[str]:
        """Roles the dump names that do not exist on the target or we may not act as."""
        if not roles:
            return []
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT r, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) "
                "AND pg_has_role(current_user, r, 'MEMBER') FROM unnest(%s::text[]) AS r",
                (roles,),
            ).fetchall()
        return sorted(r for r, usable in rows if not usable)

    def _make_durable(self) -> None:
        """The restore ran with synchronous_commit=off; one synchronous commit flushes all of its WAL."""
        with self._connect() as conn:
            conn.execute("SET synchronous_commit = on")
            with conn.transaction():
                conn.execute("SELECT txid_current()")


# ---------------------------------------------------------------------- helpers


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _missing_database(exc: BaseException) -> bool:
    return bool(re.search(r'database ".*" does not exist', str(exc)))


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
        "to_jsonb(d) FROM pg_database d WHERE d.datname = current_database()"
    ).fetchone()
    snapshot, in_recovery, lsn, txids, version, database, at, db = row
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
            "encoding": conn.execute("SELECT pg_encoding_to_char(%s)", (db["encoding"],)).fetchone()[0],
            "lc_collate": db.get("datcollate"),
            "lc_ctype": db.get("datctype"),
            "locale_provider": provider,
            "locale": db.get("datlocale") or db.get("daticulocale"),
        },
    }


_HOLDS_DATA_SQL = f"""
SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {checks._USER_NS}
               AND {checks._not_extension_member("pg_class", "c.oid")})
    OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE {checks._USER_NS} AND {checks._not_extension_member("pg_proc", "p.oid")})
    OR EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
               WHERE t.typtype IN ('d', 'e', 'r') AND {checks._USER_NS}
               AND {checks._not_extension_member("pg_type", "t.oid")})
    OR EXISTS (SELECT 1 FROM pg_namespace n WHERE {checks._USER_NS} AND n.nspname <> 'public'
               AND {checks._not_extension_member("pg_namespace", "n.oid")})
    OR EXISTS (SELECT 1 FROM pg_largeobject_metadata)
"""


def _holds_data(conn: psycopg.Connection) -> bool:
    # User schemas count too: the dump's CREATE SCHEMA would fail on them.
    return bool(conn.execute(_HOLDS_DATA_SQL).fetchone()[0])


def _database_properties(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """What a forced restore keeps of the database it replaces."""
    owner, limit, has_acl, comment = conn.execute(
        "SELECT pg_get_userbyid(d.datdba), d.datconnlimit, d.datacl IS NOT NULL, "
        "shobj_description(d.oid, 'pg_database') FROM pg_database d WHERE d.datname = %s",
        (name,),
    ).fetchone()
    grants = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
        "a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
        (name,),
    ).fetchall()
    settings = conn.execute(
        "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setconfig "
        "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s",
        (name,),
    ).fetchall()
    return {
        "owner": owner,
        "connection_limit": limit,
        "has_acl": has_acl,
        "grants": grants,
        "settings": settings,
        "comment": comment,
    }


def _restore_properties_sql(name: str, props: dict[str, Any]) -> list[sql.Composed]:
    db = sql.Identifier(name)
    out = []
    if props["comment"] is not None:
        out.append(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(props["comment"])))
    if props["has_acl"]:
        # An explicit ACL replaces the default one (PUBLIC may CONNECT/TEMP): start from nothing.
        out.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        for grantee, privilege, grantable in props["grants"]:
            out.append(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),
                    db,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
    for role, config in props["settings"]:
        target = (
            sql.SQL("ALTER DATABASE {}").format(db)
            if role is None
            else sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), db)
        )
        for item in config or []:
            key, _, value = item.partition("=")
            # List settings are stored already quoted as SQL; others are one literal.
            listed = key.lower() in _LIST_SETTINGS and value != '""'
            rendered = sql.SQL(value) if listed else sql.Literal("" if value == '""' else value)
            out.append(sql.SQL("{} SET {} = {}").format(target, sql.Identifier(key), rendered))
    return out
