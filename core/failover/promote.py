"""Promotion primitives: fence the old primary, wait for the replica to replay, promote it, prove it
takes writes, and repoint other replicas at it — per engine, each an idempotent ``Step``.

Every step returns one ``Step`` and never raises: a server that is unreachable or refuses gives a failed
step whose one-line detail names the server and the remedy, with secrets redacted. Running a step twice
is safe (fencing a fenced server, promoting a primary, ... report what they found).
"""

from __future__ import annotations

import math
import secrets as _secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psycopg
import pymysql
import pymysql.cursors
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

from core import tls
from core.failover.probes import _gtid_behind, _one_line
from core.sources import MySQLSourceConfig, PostgresSourceConfig, RedisSourceConfig

DEFAULT_TIMEOUT = 10.0
PROBE_NAME = "genesis_dr_failover"  # the probe table (PostgreSQL), database (MariaDB), key prefix (Redis)
_POLL = 0.1


@dataclass(frozen=True)
class Step:
    """One promotion step's outcome: ``detail`` is one line (what was done or why it failed)."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class _Failed(Exception):
    """A step that reached its server but could not do its job (detail is already one line)."""


def _run(name: str, label: str, remedy: str, secrets: list[str], body: Callable[[], str]) -> Step:
    """Run ``body`` (returns the success detail); failures become a failed step naming ``label``."""
    started = time.monotonic()
    try:
        detail = body()
        return Step(name, True, f"{label}: {detail}", round(time.monotonic() - started, 3))
    except _Failed as exc:
        return Step(name, False, f"{label}: {_one_line(exc, secrets)}", round(time.monotonic() - started, 3))
    except Exception as exc:  # noqa: BLE001 - a step reports every failure as a failed Step, never raises
        return Step(
            name, False, f"{label} failed: {_one_line(exc, secrets)}; {remedy}", round(time.monotonic() - started, 3)
        )


def _poll(predicate: Callable[[], tuple[bool, str]], timeout: float) -> tuple[bool, str]:
    """Call ``predicate`` until it says done or ``timeout`` passes; the last (done, detail)."""
    deadline = time.monotonic() + timeout
    while True:
        done, detail = predicate()
        if done or time.monotonic() >= deadline:
            return done, detail
        time.sleep(_POLL)


# ---------------------------------------------------------------- PostgreSQL


def _pg_label(cfg: PostgresSourceConfig) -> str:
    return f"postgres '{cfg.name}' at {cfg.host}:{cfg.port}"


def _pg_connect(cfg: PostgresSourceConfig, timeout: float = DEFAULT_TIMEOUT) -> psycopg.Connection:
    kwargs = dict(
        host=cfg.host,
        port=cfg.port,
        user=cfg.user,
        dbname=cfg.database,
        connect_timeout=max(2, math.ceil(timeout)),
        application_name="genesis-dr-failover",
        autocommit=True,
    )
    if cfg.password is not None:
        kwargs["password"] = cfg.password.get_secret_value()
    kwargs.update(tls.libpq_params(cfg.tls, cfg.host, cfg.sslmode))
    return psycopg.connect(**kwargs)


_REACH = "check the server is running and reachable"


def fence_postgres(cfg: PostgresSourceConfig, timeout: float = DEFAULT_TIMEOUT) -> Step:
    """Make the server refuse writes: default_transaction_read_only=on (ALTER SYSTEM + reload), then
    end the other client sessions (they would keep a read-write session otherwise; they reconnect
    read-only). Replication connections are left alone so the standby receives everything committed."""

    def body() -> str:
        with _pg_connect(cfg, timeout) as conn:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")

            # The reload is asynchronous: new sessions are read-only once the postmaster re-read it.
            # The probes' own backends may still be exiting when the sessions are ended below: their
            # pids are left out, so the count is of the clients' sessions only.
            probes: list[int] = []

            def applied() -> tuple[bool, str]:
                with _pg_connect(cfg, timeout) as fresh:
                    value, pid = fresh.execute(
                        "SELECT current_setting('default_transaction_read_only'), pg_backend_pid()"
                    ).fetchone()
                probes.append(pid)
                return value == "on", value

            done, value = _poll(applied, timeout)
            if not done:
                raise _Failed(f"default_transaction_read_only is still {value} after reload; check postgresql.conf")
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND NOT pid = ANY(%s)",
                (probes,),
            ).fetchall()
        ended = sum(1 for (ok,) in rows if ok)
        return f"fenced (default_transaction_read_only=on), {ended} client session(s) ended"

    return _run("fence", _pg_label(cfg), _REACH, cfg.secrets(), body)


def wait_replayed_postgres(standby_cfg: PostgresSourceConfig, timeout: float = 30.0) -> Step:
    """Until the standby has replayed all the WAL it received (replay LSN >= receive LSN)."""

    def body() -> str:
        with _pg_connect(standby_cfg, timeout) as conn:
            (standby,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if not standby:
                return "is a primary already; nothing to replay"

            def replayed() -> tuple[bool, str]:
                received, replay, caught = conn.execute(
                    "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,"
                    " pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()"
                ).fetchone()
                return bool(caught), f"received {received}, replayed {replay}"

            done, detail = _poll(replayed, timeout)
        if not done:
            raise _Failed(f"not replayed within {timeout:g}s ({detail}); check replay is not paused")
        return f"replayed all it received ({detail})"

    return _run("wait_replayed", _pg_label(standby_cfg), _REACH, standby_cfg.secrets(), body)


def promote_postgres(cfg: PostgresSourceConfig, timeout: float = 60.0) -> Step:
    """SELECT pg_promote(wait => true); a server that is a primary already is left as it is. A fence
    left by an earlier failover (default_transaction_read_only) is removed so it takes writes."""

    def body() -> str:
        with _pg_connect(cfg) as conn:
            (standby,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if standby:
                (promoted,) = conn.execute(
                    "SELECT pg_promote(wait => true, wait_seconds => %s)", (max(1, int(timeout)),)
                ).fetchone()
                if not promoted:
                    raise _Failed(f"pg_promote did not finish within {timeout:g}s; check the server log")
                done = "promoted to primary"
            else:
                done = "is a primary already"
            (fenced,) = conn.execute(
                "SELECT count(*) FROM pg_file_settings WHERE name = 'default_transaction_read_only'"
                " AND setting = 'on' AND applied"
            ).fetchone()
            if fenced:
                conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
                conn.execute("SELECT pg_reload_conf()")
                done += ", earlier fence removed"
        return done

    return _run("promote", _pg_label(cfg), _REACH, cfg.secrets(), body)


def prove_writes_postgres(cfg: PostgresSourceConfig) -> Step:
    """Write a row in the genesis_dr_failover probe table, read it back, remove it."""

    def body() -> str:
        token = _secrets.token_hex(8)
        with _pg_connect(cfg) as conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {PROBE_NAME} (token text PRIMARY KEY, at timestamptz DEFAULT now())"
            )
            conn.execute(f"INSERT INTO {PROBE_NAME} (token) VALUES (%s)", (token,))
            row = conn.execute(f"SELECT token FROM {PROBE_NAME} WHERE token = %s", (token,)).fetchone()
            conn.execute(f"DELETE FROM {PROBE_NAME} WHERE token = %s", (token,))
        if row is None:
            raise _Failed(f"the probe row written to {PROBE_NAME} was not read back")
        return f"takes writes (probe row in {PROBE_NAME} written, read back, removed)"

    return _run("prove_writes", _pg_label(cfg), "check the server is a primary and not fenced", cfg.secrets(), body)


def _conninfo(cfg: PostgresSourceConfig) -> str:
    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    parts = {"host": cfg.host, "port": str(cfg.port), "user": cfg.user, "application_name": "genesis-dr-standby"}
    if cfg.password is not None:
        parts["password"] = cfg.password.get_secret_value()
    # The standby's own libpq reads this on the standby's host: the mode, the CA file named in the stack file
    # (it must exist there too) and the name to check; never this worker's system CA path or client key.
    params = tls.libpq_params(cfg.tls, cfg.host, cfg.sslmode)
    parts.update({k: v for k, v in params.items() if k in ("sslmode", "host", "hostaddr")})
    resolved = tls.postgres_tls(cfg.tls, cfg.sslmode)
    if resolved is not None and resolved.ca_file and resolved.verify:
        parts["sslrootcert"] = resolved.ca_file
    return " ".join(f"{k}={quote(v)}" for k, v in parts.items())


def repoint_postgres(replica_cfg: PostgresSourceConfig, new_primary_cfg: PostgresSourceConfig) -> Step:
    """Set the standby's primary_conninfo to the new primary and reload. If the server says the
    setting needs a restart, the step says so (ok, detail 'restart needed') instead of restarting."""
    target = f"{new_primary_cfg.host}:{new_primary_cfg.port}"

    def body() -> str:
        with _pg_connect(replica_cfg) as conn:
            (standby,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if not standby:
                raise _Failed(
                    f"is a primary, not a standby; rebuild it from {target} (pg_rewind or pg_basebackup) to follow it"
                )
            conn.execute(
                sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(sql.Literal(_conninfo(new_primary_cfg)))
            )
            conn.execute("SELECT pg_reload_conf()")
            (pending,) = conn.execute(
                "SELECT pending_restart FROM pg_settings WHERE name = 'primary_conninfo'"
            ).fetchone()
        if pending:
            return f"primary_conninfo points at {target}; restart needed for it to take effect"
        return f"primary_conninfo points at {target} (reloaded)"

    secrets = replica_cfg.secrets() + new_primary_cfg.secrets()
    return _run("repoint", _pg_label(replica_cfg), _REACH, secrets, body)


# ---------------------------------------------------------------- MariaDB / MySQL


def _my_label(cfg: MySQLSourceConfig) -> str:
    return f"mysql '{cfg.name}' at {cfg.socket if cfg.socket else f'{cfg.host}:{cfg.port}'}"


def _my_connect(cfg: MySQLSourceConfig, timeout: float = DEFAULT_TIMEOUT) -> pymysql.connections.Connection:
    kwargs = dict(
        user=cfg.user,
        password=cfg.password.get_secret_value() if cfg.password else "",
        connect_timeout=timeout,
        read_timeout=max(timeout, 30.0),
        write_timeout=timeout,
        autocommit=True,
        cursorclass=pymysql.cursors.DictCursor,
    )
    if cfg.socket:
        kwargs["unix_socket"] = cfg.socket
    else:
        kwargs.update(host=cfg.host, port=cfg.port, **tls.pymysql_ssl(cfg.tls, _my_label(cfg)))
    return pymysql.connect(**kwargs)


def _has_variable(cur, name: str) -> bool:
    cur.execute("SHOW GLOBAL VARIABLES LIKE %s", (name,))
    return cur.fetchone() is not None


# Server threads a fence leaves alone: replication (the replicas must receive everything committed) and
# the server's own daemons.
_MY_SERVER_COMMANDS = ("Binlog Dump", "Binlog Dump GTID", "Daemon", "Slave_IO", "Slave_SQL", "Slave_worker")


def fence_mysql(cfg: MySQLSourceConfig, timeout: float = DEFAULT_TIMEOUT) -> Step:
    """SET GLOBAL read_only=1 (and super_read_only=1 where the server has it: MySQL), then end the other
    client sessions, so none keeps a transaction open across the fence (they reconnect read-only). On
    MariaDB, accounts with READ ONLY ADMIN can still write after reconnecting: the detail says so."""

    def body() -> str:
        with _my_connect(cfg, timeout) as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL read_only = 1")
            strict = _has_variable(cur, "super_read_only")
            if strict:
                cur.execute("SET GLOBAL super_read_only = 1")
            marks = ", ".join(["%s"] * len(_MY_SERVER_COMMANDS))
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()"
                f" AND COMMAND NOT IN ({marks}) AND USER NOT IN ('system user', 'event_scheduler')",
                _MY_SERVER_COMMANDS,
            )
            ended = 0
            for row in cur.fetchall():
                try:
                    cur.execute(f"KILL CONNECTION {int(row['ID'])}")
                    ended += 1
                except pymysql.err.OperationalError as exc:
                    if exc.args[0] != 1094:  # unknown thread id: it ended by itself meanwhile
                        raise
        sessions = f"{ended} client session(s) ended"
        if strict:
            return f"fenced (read_only=ON, super_read_only=ON), {sessions}"
        return f"fenced (read_only=ON), {sessions}; accounts with READ ONLY ADMIN can still write"

    return _run("fence", _my_label(cfg), _REACH, cfg.secrets(), body)


def wait_replayed_mysql(replica: MySQLSourceConfig, timeout: float = 30.0) -> Step:
    """Until the SQL thread applied every GTID the IO thread received and the relay log is consumed."""

    def body() -> str:
        with _my_connect(replica, timeout) as conn, conn.cursor() as cur:

            def applied() -> tuple[bool, str]:
                cur.execute("SHOW REPLICA STATUS")
                status = cur.fetchone()
                if not status:
                    return True, ""
                cur.execute("SELECT @@gtid_slave_pos AS applied")
                have = cur.fetchone()["applied"]
                behind = _gtid_behind(status.get("Gtid_IO_Pos", ""), have)
                relay_done = (
                    status["Relay_Master_Log_File"] == status["Master_Log_File"]
                    and status["Read_Master_Log_Pos"] == status["Exec_Master_Log_Pos"]
                )
                return behind == 0 and relay_done, f"applied {have or 'nothing'}, {behind} transaction(s) pending"

            done, detail = _poll(applied, timeout)
        if not detail:
            return "is not a replica; nothing to replay"
        if not done:
            raise _Failed(f"not applied within {timeout:g}s ({detail}); check SHOW REPLICA STATUS for errors")
        return f"applied all it received ({detail})"

    return _run("wait_replayed", _my_label(replica), _REACH, replica.secrets(), body)


def promote_mysql(cfg: MySQLSourceConfig) -> Step:
    """STOP REPLICA; RESET REPLICA ALL; SET GLOBAL read_only=0 (and super_read_only=0 where it exists)."""

    def body() -> str:
        with _my_connect(cfg) as conn, conn.cursor() as cur:
            cur.execute("SHOW REPLICA STATUS")
            was_replica = cur.fetchone() is not None
            if was_replica:
                cur.execute("STOP REPLICA")
                cur.execute("RESET REPLICA ALL")
            if _has_variable(cur, "super_read_only"):
                cur.execute("SET GLOBAL super_read_only = 0")
            cur.execute("SET GLOBAL read_only = 0")
        return "promoted (replication removed, read_only=OFF)" if was_replica else "is a primary, read_only=OFF"

    return _run("promote", _my_label(cfg), _REACH, cfg.secrets(), body)


def prove_writes_mysql(cfg: MySQLSourceConfig) -> Step:
    """Write a row in genesis_dr_failover.probe, read it back, remove it."""

    def body() -> str:
        token = _secrets.token_hex(8)
        with _my_connect(cfg) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {PROBE_NAME}")
            cur.execute(
                f"CREATE TABLE IF NOT EXISTS {PROBE_NAME}.probe (token varchar(32) PRIMARY KEY,"
                " at timestamp DEFAULT CURRENT_TIMESTAMP)"
            )
            cur.execute(f"INSERT INTO {PROBE_NAME}.probe (token) VALUES (%s)", (token,))
            cur.execute(f"SELECT token FROM {PROBE_NAME}.probe WHERE token = %s", (token,))
            row = cur.fetchone()
            cur.execute(f"DELETE FROM {PROBE_NAME}.probe WHERE token = %s", (token,))
        if row is None:
            raise _Failed(f"the probe row written to {PROBE_NAME}.probe was not read back")
        return f"takes writes (probe row in {PROBE_NAME}.probe written, read back, removed)"

    return _run("prove_writes", _my_label(cfg), "check the server is a primary with read_only=OFF", cfg.secrets(), body)


def repoint_mysql(replica_cfg: MySQLSourceConfig, new_primary_cfg: MySQLSourceConfig) -> Step:
    """CHANGE MASTER TO the new primary with MASTER_USE_GTID=slave_pos and START REPLICA. A former
    primary first takes its own binlog position as its replica position (gtid_current_pos), so it
    does not fetch again what it already has."""
    target = f"{new_primary_cfg.host}:{new_primary_cfg.port}"

    def body() -> str:
        with _my_connect(replica_cfg) as conn, conn.cursor() as cur:
            cur.execute("STOP REPLICA")
            cur.execute("SET GLOBAL gtid_slave_pos = @@gtid_current_pos")
            cur.execute(
                "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s,"
                " MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
                (
                    new_primary_cfg.host,
                    new_primary_cfg.port,
                    new_primary_cfg.user,
                    new_primary_cfg.password.get_secret_value() if new_primary_cfg.password else "",
                ),
            )
            cur.execute("START REPLICA")
        return f"replicates from {target} (GTID slave_pos)"

    secrets = replica_cfg.secrets() + new_primary_cfg.secrets()
    return _run("repoint", _my_label(replica_cfg), _REACH, secrets, body)


# ---------------------------------------------------------------- Redis


def _rd_label(cfg: RedisSourceConfig) -> str:
    return f"redis '{cfg.name}' at {cfg.host}:{cfg.port}"


def _rd_client(cfg: RedisSourceConfig, timeout: float = DEFAULT_TIMEOUT) -> redis.Redis:
    return tls.redis_client(
        cfg.tls,
        cfg.name,
        host=cfg.host,
        port=cfg.port,
        username=cfg.username,
        password=cfg.password.get_secret_value() if cfg.password else None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _follow(client: redis.Redis, new_primary: RedisSourceConfig) -> None:
    if new_primary.password is not None:
        # The replica logs in to its new primary with these (the same user/password as ours to it).
        if new_primary.username:
            client.config_set("masteruser", new_primary.username)
        client.config_set("masterauth", new_primary.password.get_secret_value())
    client.replicaof(new_primary.host, new_primary.port)
    # A replica refuses writes by itself; a pause left by an earlier fence would only delay them.
    client.execute_command("CLIENT", "UNPAUSE")


def fence_redis(cfg: RedisSourceConfig, new_primary: RedisSourceConfig | None = None, *, pause_s: float = 60.0) -> Step:
    """Without ``new_primary``: CLIENT PAUSE WRITE for ``pause_s`` seconds (writes wait, then go on:
    the failover must finish within it). With it: REPLICAOF the new primary (a replica refuses
    writes for good) and lift any pause."""

    def body() -> str:
        client = _rd_client(cfg)
        try:
            if new_primary is None:
                client.execute_command("CLIENT", "PAUSE", max(1, int(pause_s * 1000)), "WRITE")
                return f"fenced (writes paused for {pause_s:g}s)"
            _follow(client, new_primary)
            return f"fenced (replica of {new_primary.host}:{new_primary.port})"
        finally:
            client.close()

    secrets = cfg.secrets() + (new_primary.secrets() if new_primary else [])
    return _run("fence", _rd_label(cfg), _REACH, secrets, body)


def wait_replayed_redis(
    replica: RedisSourceConfig, timeout: float = 30.0, primary: RedisSourceConfig | None = None
) -> Step:
    """Until the replica's link is up and its offset reached ``primary``'s master_repl_offset.

    Without ``primary`` (it is unreachable: the region holding it is lost) there is nothing to wait for: a
    Redis replica applies what it receives at once, so it holds all it will ever get from that primary;
    the detail records its offset and link state (the data loss is bounded by the lag the monitor last
    measured, not here)."""

    def body() -> str:
        client = _rd_client(replica, timeout)
        source = _rd_client(primary, timeout) if primary is not None else None
        try:
            want = int(source.info("replication")["master_repl_offset"]) if source is not None else None

            def caught_up() -> tuple[bool, str]:
                info = client.info("replication")
                if info["role"] == "master":
                    return True, ""
                have = int(info.get("slave_repl_offset", -1))
                up = info.get("master_link_status") == "up"
                # A full resync under way would replace the dataset: not done until it ends (or times out).
                syncing = bool(int(info.get("master_sync_in_progress", 0) or 0))
                done = (want is None and not syncing) or (up and want is not None and have >= want)
                return done, f"link {'up' if up else 'down'}{', full resync' if syncing else ''}, offset {have}" + (
                    f" of {want}" if want is not None else ""
                )

            done, detail = _poll(caught_up, timeout)
        finally:
            client.close()
            if source is not None:
                source.close()
        if not detail:
            return "is a primary already; nothing to replay"
        if not done:
            raise _Failed(f"not in sync within {timeout:g}s ({detail}); check the primary is up and masterauth")
        if want is None:
            return f"applied all it received, its primary unreachable ({detail})"
        return f"in sync ({detail})"

    secrets = replica.secrets() + (primary.secrets() if primary else [])
    return _run("wait_replayed", _rd_label(replica), _REACH, secrets, body)


def promote_redis(cfg: RedisSourceConfig) -> Step:
    """REPLICAOF NO ONE, and lift a write pause an earlier fence may have left."""

    def body() -> str:
        client = _rd_client(cfg)
        try:
            was_replica = client.info("replication")["role"] != "master"
            client.replicaof("NO", "ONE")
            client.execute_command("CLIENT", "UNPAUSE")
        finally:
            client.close()
        return "promoted to primary (REPLICAOF NO ONE)" if was_replica else "is a primary already"

    return _run("promote", _rd_label(cfg), _REACH, cfg.secrets(), body)


def prove_writes_redis(cfg: RedisSourceConfig, timeout: float = 5.0) -> Step:
    """SET a genesis_dr_failover:probe:<token> key, read it back, delete it."""

    def body() -> str:
        key = f"{PROBE_NAME}:probe:{_secrets.token_hex(8)}"
        client = _rd_client(cfg, timeout)
        try:
            client.set(key, "1", ex=60)
            value = client.get(key)
            client.delete(key)
        finally:
            client.close()
        if value != b"1":
            raise _Failed(f"the probe key {PROBE_NAME}:probe:* was not read back")
        return f"takes writes (probe key {PROBE_NAME}:probe:* set, read back, deleted)"

    return _run("prove_writes", _rd_label(cfg), "check the server is a primary and not paused", cfg.secrets(), body)


def repoint_redis(replica_cfg: RedisSourceConfig, new_primary_cfg: RedisSourceConfig) -> Step:
    """REPLICAOF the new primary (masterauth set from its config), lifting any write pause."""

    def body() -> str:
        client = _rd_client(replica_cfg)
        try:
            _follow(client, new_primary_cfg)
        finally:
            client.close()
        return f"replica of {new_primary_cfg.host}:{new_primary_cfg.port}"

    secrets = replica_cfg.secrets() + new_primary_cfg.secrets()
    return _run("repoint", _rd_label(replica_cfg), _REACH, secrets, body)
