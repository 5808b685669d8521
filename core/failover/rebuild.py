"""Rebuild a former primary as a replica of the new primary: the first half of a failback.

After a failover the old primary is fenced but still holds its own history, possibly with writes the new
primary never received. Before it can be promoted again it must follow the new primary and catch up:

- PostgreSQL: stop it, ``pg_rewind`` it onto the new primary's timeline (needs ``wal_log_hints=on`` or data
  checksums on the old primary), else a fresh ``pg_basebackup -R`` into a sibling directory swapped in place
  (the old directory is kept until the new one runs); started as a standby, waited for until it streams and
  has replayed what the new primary had written. This runs on the machine holding the data directory
  (``RegionConfig.postgres_rebuild``).
- MariaDB: when its GTID history is a prefix of the new primary's, CHANGE MASTER TO the new primary by GTID;
  when it diverged (the new primary refuses its position, or a domain is ahead), a re-seed:
  ``mariadb-dump --gtid --master-data`` of the new primary loaded into it, then replication from the dump's
  position.
- Redis: REPLICAOF the new primary (masterauth from its config), waited for until in sync.

Each returns one ``Step`` named ``rebuild`` and never raises, like ``core.failover.promote``; running one
twice is safe (a server that already follows the new primary is only waited for). Each refuses to touch a
server when the "new primary" is not a primary, or is the same server: rebuilding the live primary from a
replica would destroy the newest data.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core import tls
from core.engines.mysql.engine import MySQLEngine
from core.engines.tools import Tool, last_line
from core.errors import EngineError
from core.failover.probes import _gtid_behind
from core.failover.promote import (
    Step,
    _Failed,
    _follow,
    _my_connect,
    _my_label,
    _pg_connect,
    _pg_label,
    _poll,
    _rd_client,
    _rd_label,
    _run,
    repoint_mysql,
)
from core.failover.topology import PgRebuildConfig
from core.sources import MySQLSourceConfig, PostgresSourceConfig, RedisSourceConfig

NAME = "rebuild"
PG_TIMEOUT = 300.0
MYSQL_TIMEOUT = 300.0
REDIS_TIMEOUT = 120.0
# Suffixes of the sibling directories a pg_basebackup rebuild uses next to the data directory.
NEW_SUFFIX = ".genesis-dr-new"
OLD_SUFFIX = ".genesis-dr-old"
_NOT_REWINDABLE = (
    "pg_rewind cannot rewind it: it has neither wal_log_hints=on nor data checksums (set wal_log_hints=on on every "
    "primary so a failback can rewind)"
)
# MariaDB: the primary does not have the GTID the replica asks for (its history diverged).
_GTID_NOT_IN_BINLOG = 1236
_SYSTEM_SCHEMAS = ("information_schema", "mysql", "performance_schema", "sys")


# ---------------------------------------------------------------- PostgreSQL


@dataclass(frozen=True)
class _PgTools:
    pg_ctl: str
    pg_rewind: str
    pg_basebackup: str
    pg_controldata: str
    run_as: str | None


def _pg_tools(rebuild: PgRebuildConfig) -> _PgTools:
    def find(name: str) -> str:
        if rebuild.bin_dir:
            path = os.path.join(rebuild.bin_dir, name)
            if os.access(path, os.X_OK):
                return path
            raise _Failed(f"{name} not found in {rebuild.bin_dir}; set postgres_rebuild.bin_dir to the PostgreSQL bin")
        found = shutil.which(name)
        if not found:
            raise _Failed(f"{name} not on PATH; set postgres_rebuild.bin_dir to the directory of the PostgreSQL tools")
        return found

    run_as = rebuild.run_as
    if run_as is not None:
        try:
            pwd.getpwnam(run_as)
        except KeyError:
            raise _Failed(f"OS user {run_as!r} (postgres_rebuild.run_as) does not exist on this machine") from None
        me = pwd.getpwuid(os.geteuid()).pw_name
        if run_as == me:
            run_as = None
        elif os.geteuid() != 0:
            raise _Failed(f"cannot run the PostgreSQL tools as {run_as!r} from user {me!r}; run the failback as root")
    names = ("pg_ctl", "pg_rewind", "pg_basebackup", "pg_controldata")
    return _PgTools(*(find(n) for n in names), run_as=run_as)


def _as(run_as: str | None, argv: list[str]) -> list[str]:
    # The server refuses to run as root; runuser keeps the environment (PGPASSWORD stays out of argv).
    return ["runuser", "-u", run_as, "--", *argv] if run_as else argv


def _tool(tools: _PgTools, argv: list[str], what: str, remedy: str, secrets: list[str], env=None) -> str:
    """Run a PostgreSQL tool to its end; its stdout (a failure is one _Failed line with its last stderr line)."""
    with Tool(_as(tools.run_as, argv), secrets=secrets, env=env, stdout=subprocess.PIPE) as tool:
        out = tool.proc.stdout.read().decode("utf-8", "replace")
        try:
            tool.wait(what, remedy)
        except EngineError as exc:
            raise _Failed(str(exc)) from None
    return out


def _source_conninfo(cfg: PostgresSourceConfig) -> str:
    """A conninfo for the tools, without the password (that goes in PGPASSWORD: argv is public in ps)."""

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    parts = {"host": cfg.host, "port": str(cfg.port), "user": cfg.user, "dbname": cfg.database}
    parts["application_name"] = "genesis-dr-standby"
    parts.update(tls.libpq_params(cfg.tls, cfg.host, cfg.sslmode))
    return " ".join(f"{k}={quote(v)}" for k, v in parts.items())


def _tool_env(cfg: PostgresSourceConfig) -> dict[str, str]:
    # The environment's own PGPASSWORD (another server's) must not be tried against this one.
    env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    if cfg.password is not None:
        env["PGPASSWORD"] = cfg.password.get_secret_value()
    return env


def _control(tools: _PgTools, data_dir: str, secrets: list[str]) -> dict[str, str]:
    """pg_controldata of the data directory: its system identifier, and whether pg_rewind can work on it."""
    out = _tool(tools, [tools.pg_controldata, "-D", data_dir], "pg_controldata", "check the data directory", secrets)
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "Database system identifier" not in fields:
        raise _Failed(f"pg_controldata printed no system identifier for {data_dir}; check the data directory")
    return fields


def _rewindable(control: dict[str, str]) -> bool:
    # pg_rewind needs hint bits WAL-logged: wal_log_hints=on or data checksums (a checksum version other than 0).
    return control.get("wal_log_hints setting") == "on" or control.get("Data page checksum version", "0") != "0"


def _running(tools: _PgTools, data_dir: str) -> bool:
    proc = subprocess.run(
        _as(tools.run_as, [tools.pg_ctl, "status", "-D", data_dir]), capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


def _pg_role(cfg: PostgresSourceConfig, primary: PostgresSourceConfig) -> str:
    """'following' (a standby streaming from ``primary``), 'writable' (a primary taking writes: never to be
    rebuilt), 'other' (fenced, a standby of another) or 'down' (does not answer)."""
    try:
        with _pg_connect(cfg, 5) as conn:
            standby, read_only, status, host, port = conn.execute(
                "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'),"
                " r.status, r.sender_host, r.sender_port FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true"
            ).fetchone()
    except Exception:  # noqa: BLE001 - a stopped or unreachable server is rebuilt from its data directory
        return "down"
    if standby:
        return "following" if status == "streaming" and (host, port) == (primary.host, primary.port) else "other"
    return "other" if read_only == "on" else "writable"


_PRIMARY_POSITION = (
    # The timeline from the WAL file name: the control file's lags behind a promotion until its next checkpoint.
    "SELECT pg_current_wal_flush_lsn()::text, ('x' || substr(pg_walfile_name(pg_current_wal_flush_lsn()), 1, 8))"
    "::bit(32)::int"
)


def _wait_streaming(cfg: PostgresSourceConfig, primary: PostgresSourceConfig, timeout: float) -> str:
    """Until ``cfg`` streams on the primary's timeline and has replayed what the primary had flushed."""
    with _pg_connect(primary) as conn:
        written, timeline = conn.execute(_PRIMARY_POSITION).fetchone()

    def caught_up() -> tuple[bool, str]:
        try:
            with _pg_connect(cfg, 5) as conn:
                status, tli, replay, done = conn.execute(
                    "SELECT r.status, r.received_tli, pg_last_wal_replay_lsn()::text,"
                    " coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, false)"
                    " FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true",
                    (written,),
                ).fetchone()
        except Exception as exc:  # noqa: BLE001 - the standby may still be starting; keep polling
            return False, f"not answering yet ({type(exc).__name__})"
        detail = f"receiver {status or 'not running'} on timeline {tli}, replayed {replay} of {written}"
        return status == "streaming" and tli == timeline and done, detail

    done, detail = _poll(caught_up, timeout)
    if not done:
        raise _Failed(f"not streaming and caught up within {timeout:g}s ({detail}); check its server log")
    return detail


def catch_up_postgres(standby: PostgresSourceConfig, primary: PostgresSourceConfig, timeout: float = 60.0) -> Step:
    """Until ``standby`` streams from ``primary`` on its timeline and has replayed everything ``primary`` had
    flushed when the step began: with the primary fenced first, nothing committed is left behind."""

    def body() -> str:
        return "caught up with " + f"{primary.host}:{primary.port} (" + _wait_streaming(standby, primary, timeout) + ")"

    return _run("catch_up", _pg_label(standby), "check replication", standby.secrets() + primary.secrets(), body)


def _start(tools: _PgTools, rebuild: PgRebuildConfig, secrets: list[str]) -> None:
    log_dir = Path(rebuild.data_directory) / "log"
    log_dir.mkdir(exist_ok=True)
    if tools.run_as:
        entry = pwd.getpwnam(tools.run_as)
        os.chown(log_dir, entry.pw_uid, entry.pw_gid)
    argv = [tools.pg_ctl, "start", "-D", rebuild.data_directory, "-w", "-t", "120"]
    argv += ["-l", str(log_dir / "genesis-dr-failback.log")]
    if rebuild.options:
        argv += ["-o", rebuild.options]
    # pg_ctl's output goes to the log; a pipe would be held open by the server it starts.
    proc = subprocess.run(_as(tools.run_as, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        line = last_line(proc.stderr.decode("utf-8", "replace"))
        raise _Failed(
            f"pg_ctl start failed (exit {proc.returncode}): {line or 'no message'}; see {log_dir}/genesis-dr-failback.log"
        )


def _basebackup(tools: _PgTools, rebuild: PgRebuildConfig, new_primary: PostgresSourceConfig, secrets: list[str]):
    """pg_basebackup into a sibling directory, swapped in place; the old directory kept until the new one
    started (then removed: its divergent history is what the failover already gave up)."""
    data = rebuild.data_directory.rstrip("/")
    fresh, kept = data + NEW_SUFFIX, data + OLD_SUFFIX
    for leftover in (fresh, kept):
        if os.path.exists(leftover):
            # Ours from an interrupted rebuild: the live directory is still in place (swaps are renames).
            shutil.rmtree(leftover)
    argv = [tools.pg_basebackup, "-d", _source_conninfo(new_primary), "-D", fresh]
    argv += ["-R", "-X", "stream", "--checkpoint=fast"]
    _tool(
        tools, argv, "pg_basebackup", "check the new primary allows replication connections", secrets,
        env=_tool_env(new_primary),
    )  # fmt: skip
    os.rename(data, kept)
    os.rename(fresh, data)
    try:
        _start(tools, rebuild, secrets)
    except _Failed:
        os.rename(data, fresh)
        os.rename(kept, data)
        raise
    shutil.rmtree(kept, ignore_errors=True)


def rebuild_postgres(
    old: PostgresSourceConfig,
    new_primary: PostgresSourceConfig,
    rebuild: PgRebuildConfig | None,
    *,
    timeout: float = PG_TIMEOUT,
    allow_basebackup: bool = True,
) -> Step:
    """Make the old primary (``old``, data in ``rebuild.data_directory`` on this machine) a streaming standby of
    ``new_primary``: pg_rewind, else (``allow_basebackup``) pg_basebackup; started, waited for until it has
    replayed what the new primary had written. A server taking writes is never touched (fence it first);
    without ``rebuild`` only a server already following ``new_primary`` passes."""
    target = f"{new_primary.host}:{new_primary.port}"
    secrets = old.secrets() + new_primary.secrets()

    def body() -> str:
        if (old.host, old.port) == (new_primary.host, new_primary.port):
            raise _Failed(f"is the new primary {target} itself; give the old primary's address")
        with _pg_connect(new_primary) as conn:
            standby, system_id = conn.execute(
                "SELECT pg_is_in_recovery(), system_identifier::text FROM pg_control_system()"
            ).fetchone()
        if standby:
            raise _Failed(f"{target} is a standby, not a primary; promote it before rebuilding from it")
        role = _pg_role(old, new_primary)
        if role == "following":
            return f"a standby of {target} already; " + _wait_streaming(old, new_primary, timeout)
        if role == "writable":
            raise _Failed("is a primary taking writes; fence it first (a rebuild replaces its data)")
        if rebuild is None:
            raise _Failed(
                f"is not a standby of {target} and its region has no postgres_rebuild; add it (data_directory, "
                "bin_dir, run_as) or rebuild it by hand with pg_rewind"
            )
        data = rebuild.data_directory
        if not os.path.isfile(os.path.join(data, "PG_VERSION")):
            raise _Failed(
                f"{data} is not a PostgreSQL data directory on this machine; run the failback where the old "
                "primary's data is, or fix postgres_rebuild.data_directory"
            )
        tools = _pg_tools(rebuild)
        control = _control(tools, data, secrets)
        if control["Database system identifier"] != system_id:
            raise _Failed(
                f"{data} holds another cluster than the new primary {target} (system identifiers differ); "
                "check postgres_rebuild.data_directory"
            )
        rewind = _rewindable(control)
        if not rewind and not allow_basebackup:
            # Refused before anything is stopped: the server keeps running as it was.
            raise _Failed(f"{_NOT_REWINDABLE}; rebuild it with pg_basebackup instead (allow_basebackup)")
        if _running(tools, data):
            _tool(tools, [tools.pg_ctl, "stop", "-D", data, "-m", "fast", "-w", "-t", "120"], "pg_ctl stop",
                  "stop the server by hand", secrets)  # fmt: skip
        how = f"pg_basebackup ({_NOT_REWINDABLE})"
        if rewind:
            with _pg_connect(new_primary) as conn:
                # pg_rewind reads the source's timeline from its control file, which a promotion updates only at
                # the next checkpoint: without one a just-promoted source looks like "no rewind required".
                conn.execute("CHECKPOINT")
            argv = [tools.pg_rewind, "--target-pgdata", data, "--source-server", _source_conninfo(new_primary), "-R"]
            try:
                _tool(tools, argv, "pg_rewind", "see the message", secrets, env=_tool_env(new_primary))
                how = "pg_rewind"
            except _Failed as exc:
                if not allow_basebackup:
                    raise _Failed(f"{exc}; the server is stopped: rebuild it with pg_basebackup") from None
                how = f"pg_basebackup (pg_rewind failed: {last_line(str(exc))[:160]})"
        if how == "pg_rewind":
            _start(tools, rebuild, secrets)
        else:
            _basebackup(tools, rebuild, new_primary, secrets)
        return f"rebuilt by {how} as a standby of {target}; " + _wait_streaming(old, new_primary, timeout)

    return _run(NAME, _pg_label(old), "check the data directory, the tools and the server log", secrets, body)


# ---------------------------------------------------------------- MariaDB / MySQL


def _gtid_map(pos: str) -> dict[int, tuple[int, int]]:
    """domain -> (server id, sequence number) of a GTID position like '0-11-42,1-12-7'."""
    out: dict[int, tuple[int, int]] = {}
    for part in filter(None, (p.strip() for p in (pos or "").split(","))):
        domain, server, seq = part.split("-")
        out[int(domain)] = (int(server), int(seq))
    return out


def _ahead(old_pos: str, new_pos: str) -> list[str]:
    """The GTIDs of ``old_pos`` the new primary cannot hold (a domain it lacks, or a higher sequence number):
    the old history surely diverged. An empty list does not prove a prefix; the new primary's answer does."""
    old_map, new_map = _gtid_map(old_pos), _gtid_map(new_pos)
    return [f"{d}-{s}-{q}" for d, (s, q) in old_map.items() if d not in new_map or q > new_map[d][1]]


def _replica_status(cur) -> dict | None:
    cur.execute("SHOW REPLICA STATUS")
    return cur.fetchone()


def _wait_caught_up_mysql(cfg: MySQLSourceConfig, want: str, timeout: float) -> tuple[bool, str, int]:
    """(caught up, detail, IO error number) once the replica applied ``want`` or ``timeout`` passed; stops early
    on a replication error."""
    with _my_connect(cfg) as conn, conn.cursor() as cur:
        state = {"errno": 0}

        def caught_up() -> tuple[bool, str]:
            status = _replica_status(cur) or {}
            cur.execute("SELECT @@gtid_slave_pos AS applied")
            have = cur.fetchone()["applied"]
            io_errno, sql_errno = int(status.get("Last_IO_Errno") or 0), int(status.get("Last_SQL_Errno") or 0)
            if io_errno or sql_errno:
                state["errno"] = io_errno or sql_errno
                error = status.get("Last_IO_Error") or status.get("Last_SQL_Error") or ""
                return True, f"replication error {state['errno']}: {error}"
            behind = _gtid_behind(want, have)
            running = status.get("Slave_IO_Running") == "Yes" and status.get("Slave_SQL_Running") == "Yes"
            return running and behind == 0, f"applied {have or 'nothing'} of {want or 'nothing'}"

        done, detail = _poll(caught_up, timeout)
    return done and not state["errno"], detail, state["errno"]


def catch_up_mysql(replica: MySQLSourceConfig, primary: MySQLSourceConfig, timeout: float = 60.0) -> Step:
    """Until ``replica`` runs both threads and applied every GTID of ``primary``'s binlog at the step's start."""

    def body() -> str:
        with _my_connect(primary) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos AS pos")
            want = cur.fetchone()["pos"]
        ok, detail, _ = _wait_caught_up_mysql(replica, want, timeout)
        if not ok:
            raise _Failed(f"not caught up with {primary.host}:{primary.port} within {timeout:g}s ({detail})")
        return f"caught up with {primary.host}:{primary.port} ({detail})"

    return _run("catch_up", _my_label(replica), "check replication", replica.secrets() + primary.secrets(), body)


def _user_databases(cur) -> list[str]:
    cur.execute("SHOW DATABASES")
    return sorted(row["Database"] for row in cur.fetchall() if row["Database"].lower() not in _SYSTEM_SCHEMAS)


def _reseed(old: MySQLSourceConfig, new_primary: MySQLSourceConfig, new_pos: str) -> str:
    """Replace the old primary's databases with a consistent dump of the new primary's, at its GTID position."""
    with _my_connect(new_primary) as conn, conn.cursor() as cur:
        databases = _user_databases(cur)
    with _my_connect(old) as conn, conn.cursor() as cur:
        cur.execute("STOP REPLICA")
        cur.execute("RESET REPLICA ALL")
        # Its own divergent binlog goes: after the re-seed its history is the new primary's.
        cur.execute("RESET MASTER")
        cur.execute("SET sql_log_bin = 0")
        dropped = [db for db in _user_databases(cur) if db not in databases]
        for db in dropped:
            cur.execute(f"DROP DATABASE `{db.replace('`', '``')}`")
        if not databases:
            cur.execute("SET GLOBAL gtid_slave_pos = %s", (new_pos,))
    if databases:
        source, sink = MySQLEngine(new_primary), MySQLEngine(old)
        dump_tool = shutil.which("mariadb-dump") or shutil.which("mysqldump")
        load_tool = shutil.which("mariadb") or shutil.which("mysql")
        if not dump_tool or not load_tool:
            raise _Failed("mariadb-dump/mariadb not on PATH; install the MariaDB client tools on this worker")
        with source._option_file() as (src_opts, src_fds), sink._option_file() as (dst_opts, dst_fds):
            dump_argv = [dump_tool, *source._tool_args(src_opts), "--single-transaction", "--gtid", "--master-data=1"]
            dump_argv += ["--add-drop-database", "--routines", "--events", "--triggers", "--databases", *databases]
            # sql_log_bin=0: the load is not a transaction of this server's own history.
            load_argv = [load_tool, *sink._tool_args(dst_opts), "--init-command=SET sql_log_bin=0", "--batch"]
            secrets = old.secrets() + new_primary.secrets()
            with Tool(dump_argv, secrets=secrets, stdout=subprocess.PIPE, pass_fds=src_fds) as dump:
                with Tool(load_argv, secrets=secrets, stdin=dump.proc.stdout, pass_fds=dst_fds) as load:
                    dump.proc.stdout.close()  # the load holds it; a dead load must stop the dump (SIGPIPE)
                    try:
                        load.wait("loading the dump", "check the old primary's error log")
                        dump.wait("mariadb-dump of the new primary", "check its grants (RELOAD, REPLICATION CLIENT)")
                    except EngineError as exc:
                        raise _Failed(str(exc)) from None
    gone = f", dropped {', '.join(dropped)} (not on the new primary)" if dropped else ""
    return f"re-seeded {len(databases)} database(s) from a dump{gone}"


def rebuild_mysql(old: MySQLSourceConfig, new_primary: MySQLSourceConfig, *, timeout: float = MYSQL_TIMEOUT) -> Step:
    """Make the old primary a read-only GTID replica of ``new_primary``, caught up: repointed when its history is
    a prefix of the new primary's, re-seeded from a dump when it diverged."""
    target = f"{new_primary.host}:{new_primary.port}"
    secrets = old.secrets() + new_primary.secrets()

    def body() -> str:
        with _my_connect(new_primary) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@read_only AS ro, @@server_id AS id, @@gtid_binlog_pos AS pos")
            new = cur.fetchone()
            status = _replica_status(cur)
        if new["ro"] or (status and status.get("Slave_IO_Running") == "Yes"):
            raise _Failed(f"{target} is not a primary (read_only or replicating); promote it before rebuilding")
        with _my_connect(old) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@server_id AS id, @@gtid_current_pos AS pos, @@read_only AS ro")
            mine = cur.fetchone()
            status = _replica_status(cur)
        if not mine["ro"] and status is None:
            raise _Failed("is a primary taking writes (read_only=OFF); fence it first (a rebuild may replace its data)")
        with _my_connect(old) as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL read_only = 1")  # a replica that was not read-only (followed another) is now
        if mine["id"] == new["id"]:
            raise _Failed(f"has the server_id {mine['id']} of {target}; give each server its own server_id")
        following = (
            status is not None
            and (status.get("Master_Host"), int(status.get("Master_Port") or 0)) == (new_primary.host, new_primary.port)
            and status.get("Slave_IO_Running") == "Yes"
            and not int(status.get("Last_IO_Errno") or 0)
        )
        if following:
            how = f"a replica of {target} already"
        else:
            ahead = _ahead(mine["pos"], new["pos"])
            how = ""
            if not ahead:
                step = repoint_mysql(old, new_primary)
                if not step.ok:
                    raise _Failed(step.detail)
                ok, detail, errno = _wait_caught_up_mysql(old, new["pos"], min(timeout, 15.0))
                if ok:
                    how = f"repointed at {target} by GTID (its history is a prefix of the new primary's)"
                elif errno != _GTID_NOT_IN_BINLOG:
                    raise _Failed(f"replicating from {target}: {detail}; check SHOW REPLICA STATUS")
                else:
                    ahead = [f"{mine['pos']} (not in the new primary's binlog)"]
            if not how:
                seeded = _reseed(old, new_primary, new["pos"])
                step = repoint_mysql(old, new_primary)
                if not step.ok:
                    raise _Failed(step.detail)
                how = f"diverged ({', '.join(ahead)}): {seeded}, replicating from {target} by GTID"
        # Caught up with what the new primary has now (writes may have gone on meanwhile).
        with _my_connect(new_primary) as conn, conn.cursor() as cur:
            cur.execute("SELECT @@gtid_binlog_pos AS pos")
            want = cur.fetchone()["pos"]
        ok, detail, _ = _wait_caught_up_mysql(old, want, timeout)
        if not ok:
            raise _Failed(f"{how}, but not caught up within {timeout:g}s ({detail}); check SHOW REPLICA STATUS")
        return f"{how}; read_only, caught up ({detail})"

    return _run(NAME, _my_label(old), "check both servers are running and reachable", secrets, body)


# ---------------------------------------------------------------- Redis


def rebuild_redis(old: RedisSourceConfig, new_primary: RedisSourceConfig, *, timeout: float = REDIS_TIMEOUT) -> Step:
    """REPLICAOF ``new_primary`` (masterauth from its config) and wait until the link is up and the offset
    reached the new primary's."""
    target = f"{new_primary.host}:{new_primary.port}"
    secrets = old.secrets() + new_primary.secrets()

    def body() -> str:
        if (old.host, old.port) == (new_primary.host, new_primary.port):
            raise _Failed(f"is the new primary {target} itself; give the old primary's address")
        source, client = _rd_client(new_primary), _rd_client(old)
        try:
            if source.info("replication")["role"] != "master":
                raise _Failed(f"{target} is a replica, not a primary; promote it before rebuilding from it")
            _follow(client, new_primary)
            want = int(source.info("replication")["master_repl_offset"])

            def in_sync() -> tuple[bool, str]:
                info = client.info("replication")
                have = int(info.get("slave_repl_offset", -1))
                up = info.get("master_link_status") == "up"
                return up and have >= want, f"link {'up' if up else 'down'}, offset {have} of {want}"

            done, detail = _poll(in_sync, timeout)
        finally:
            source.close()
            client.close()
        if not done:
            raise _Failed(f"replica of {target} but not in sync within {timeout:g}s ({detail}); check masterauth")
        return f"replica of {target}, in sync ({detail})"

    return _run(NAME, _rd_label(old), "check both servers are running and reachable", secrets, body)
