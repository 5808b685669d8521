"""Probes: what a region's servers say about themselves, as ``Check``s for health scoring.

Every probe has a timeout and never raises for a server that is down, hung or refusing the login:
it returns a failed ``Check`` whose detail is one line naming the server and the remedy (secrets are
redacted from driver messages). Check names are stable (``postgres.connect``, ``mysql.replication``,
``redis.role``, ``http <url>``, ...) so regions can override their weights by name.

A replica's link check (``*.replication``) names its upstream's kind in ``Check.upstream`` and says in
``Check.replayed`` whether it applied all it received: with the active region down, that is what makes a
replica healthy for its role (``core.failover.health``).

Roles use one vocabulary for every kind: the ``*.role`` check's detail is ``primary`` or ``standby``
(a PostgreSQL standby, a MariaDB replica, a Redis replica). Role and replica-count checks are
informational (weight 0): a region is not less healthy for being a standby.

Replication lag is measured where the server can measure it: a PostgreSQL standby compares the WAL it
received with what it replayed; a MariaDB replica reports Seconds_Behind_Master and its unapplied
relay log; a Redis replica applies what it receives at once, so its own lag is 0 while its link is
up and the time since the link went down otherwise, and the primary's probe reports how many bytes
each replica is behind (``redis.replicas``).
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import psycopg
import pymysql
import pymysql.cursors
from redis.backoff import NoBackoff
from redis.retry import Retry

from core import tls
from core.errors import redact
from core.failover.health import Check
from core.sources import MySQLSourceConfig, PostgresSourceConfig, RedisSourceConfig
from core.tls import TLSConfig

DEFAULT_TIMEOUT = 5.0
PRIMARY = "primary"
STANDBY = "standby"
_DETAIL_MAX = 300


def _one_line(exc: BaseException, secrets: list[str]) -> str:
    """The first non-blank line of a driver's message (the later ones are hints), secrets redacted."""
    text = redact(str(exc), secrets) or type(exc).__name__
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return first[:_DETAIL_MAX]


def _guarded(
    name: str,
    label: str,
    remedy: str,
    secrets: list[str],
    probe: Callable[[float], list[Check]],
    tls_of: tuple[Any, TLSConfig | None] | None = None,
) -> list[Check]:
    """Run ``probe``; any failure becomes one failed ``name`` check (latency = time until it failed).
    ``tls_of`` (the source config, its TLS): a certificate or name refused says so and how to fix it."""
    started = time.monotonic()
    try:
        return probe(started)
    except Exception as exc:  # noqa: BLE001 - a probe reports every failure as a failed check, never raises
        detail = f"{label} unreachable: {_one_line(exc, secrets)}; {remedy}"
        if tls_of is not None and tls_of[1] is not None and tls.tls_problem(exc):
            cfg = tls_of[0]
            detail = str(tls.tls_error(cfg.name, f"{cfg.host}:{cfg.port}", exc, tls_of[1], cfg.kind))
        return [Check(name=name, ok=False, latency_s=time.monotonic() - started, detail=detail)]


# ---------------------------------------------------------------- PostgreSQL

_PG_STATE = """
SELECT pg_is_in_recovery(),
       (SELECT status FROM pg_stat_wal_receiver LIMIT 1),
       greatest(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint,
       CASE WHEN pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
       (SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming')
"""


def probe_postgres(cfg: PostgresSourceConfig, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """Connect + query latency, role (pg_is_in_recovery), and on a standby its replay lag in bytes
    (received WAL not yet replayed) and seconds (since the last replayed commit; 0 when caught up).
    libpq counts connect timeouts in whole seconds, at least 2."""
    label = f"postgres '{cfg.name}' at {cfg.host}:{cfg.port}"

    def probe(started: float) -> list[Check]:
        kwargs = dict(
            host=cfg.host,
            port=cfg.port,
            user=cfg.user,
            dbname=cfg.database,
            connect_timeout=max(2, math.ceil(timeout)),
            application_name="genesis-dr-probe",
            # A server that accepts the login but hangs in the query must not hang the monitor.
            options=f"-c statement_timeout={max(1, int(timeout * 1000))}",
            autocommit=True,
        )
        if cfg.password is not None:
            kwargs["password"] = cfg.password.get_secret_value()
        kwargs.update(tls.libpq_params(cfg.tls, cfg.host, cfg.sslmode))
        with psycopg.connect(**kwargs) as conn:
            standby, status, lag_bytes, lag_s, paused, replicas = conn.execute(_PG_STATE).fetchone()
        latency = time.monotonic() - started
        checks = [
            Check("postgres.connect", True, latency, f"{label} answered in {latency * 1000:.0f} ms"),
            Check("postgres.role", True, detail=STANDBY if standby else PRIMARY, weight=0),
        ]
        if not standby:
            checks.append(
                Check("postgres.replicas", True, detail=f"{replicas} standby(s) streaming from {label}", weight=0)
            )
            return checks
        streaming = status == "streaming"
        detail = (
            f"{label} streams from its primary; {lag_bytes} bytes received not replayed"
            if streaming
            else f"{label} does not stream from its primary (WAL receiver {status or 'not running'}); "
            "check the primary is up and primary_conninfo"
        )
        if paused:
            detail += "; replay is paused (SELECT pg_wal_replay_resume() resumes it)"
        checks.append(
            Check(
                "postgres.replication",
                streaming,
                detail=detail,
                lag_s=None if lag_s is None else round(float(lag_s), 3),
                lag_bytes=None if lag_bytes is None else int(lag_bytes),
                upstream="postgres",
                # The startup process replays what is in pg_wal before it asks for more: nothing received
                # left unreplayed means it has all it will get from a lost primary.
                replayed=None if lag_bytes is None else int(lag_bytes) == 0,
            )
        )
        return checks

    return _guarded(
        "postgres.connect",
        label,
        "check the server is running and reachable",
        cfg.secrets(),
        probe,
        (cfg, tls.postgres_tls(cfg.tls, cfg.sslmode)),
    )


# ---------------------------------------------------------------- MariaDB / MySQL


def _gtid_behind(received: str, applied: str) -> int | None:
    """Transactions received (Gtid_IO_Pos) but not applied (gtid_slave_pos), summed over domains."""

    def parse(pos: str) -> dict[int, int]:
        out: dict[int, int] = {}
        for part in filter(None, (p.strip() for p in (pos or "").split(","))):
            domain, _server, seq = part.split("-")
            out[int(domain)] = int(seq)
        return out

    try:
        got, done = parse(received), parse(applied)
    except ValueError:
        return None
    return sum(max(0, seq - done.get(domain, 0)) for domain, seq in got.items())


def probe_mysql(cfg: MySQLSourceConfig, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """Connect + query latency, read_only, role (a replica has SHOW REPLICA STATUS), and on a replica
    whether both replication threads run, Seconds_Behind_Master, the relay log not yet applied (bytes)
    and the GTIDs received but not applied."""
    where = cfg.socket if cfg.socket else f"{cfg.host}:{cfg.port}"
    label = f"mysql '{cfg.name}' at {where}"

    def probe(started: float) -> list[Check]:
        kwargs = dict(
            user=cfg.user,
            password=cfg.password.get_secret_value() if cfg.password else "",
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=True,
        )
        if cfg.socket:
            kwargs["unix_socket"] = cfg.socket
        else:
            kwargs.update(host=cfg.host, port=cfg.port, **tls.pymysql_ssl(cfg.tls, label))
        with pymysql.connect(**kwargs) as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SELECT @@read_only AS read_only, @@gtid_slave_pos AS applied")
            row = cur.fetchone()
            read_only, applied = bool(row["read_only"]), row["applied"]
            cur.execute("SHOW REPLICA STATUS")
            status = cur.fetchone()
        latency = time.monotonic() - started
        role = STANDBY if status else PRIMARY
        checks = [
            Check("mysql.connect", True, latency, f"{label} answered in {latency * 1000:.0f} ms"),
            Check("mysql.role", True, detail=role, weight=0),
        ]
        if role == PRIMARY:
            # A read-only primary refuses every write of the application.
            checks.append(
                Check(
                    "mysql.read_only",
                    not read_only,
                    detail=f"{label} is a primary with read_only=ON; SET GLOBAL read_only=0 to take writes"
                    if read_only
                    else f"{label} takes writes",
                )
            )
            return checks
        checks.append(
            Check("mysql.read_only", True, detail=f"{label} read_only={'ON' if read_only else 'OFF'}", weight=0)
        )
        io, sql = status["Slave_IO_Running"], status["Slave_SQL_Running"]
        running = io == "Yes" and sql == "Yes"
        lag_bytes = None
        if status["Relay_Master_Log_File"] == status["Master_Log_File"]:
            lag_bytes = max(0, int(status["Read_Master_Log_Pos"]) - int(status["Exec_Master_Log_Pos"]))
        behind = _gtid_behind(status.get("Gtid_IO_Pos", ""), applied)
        pending = f"{behind if behind is not None else '?'} transaction(s) received not applied"
        if running:
            detail = f"{label} replicates; {pending}"
        else:
            error = status["Last_IO_Error"] or status["Last_SQL_Error"] or ""
            error = redact(error, cfg.secrets()).replace("\n", " ")[:_DETAIL_MAX]
            detail = (
                f"{label} replication threads IO={io} SQL={sql}"
                + (f" ({error})" if error else "")
                + f"; {pending}; check the primary is up and START REPLICA"
            )
        seconds = status["Seconds_Behind_Master"]
        # Replayed: the SQL thread runs and has applied every transaction the IO thread received (GTIDs; the
        # relay log position without them). A stopped SQL thread is a fault of the replica itself.
        unapplied = behind if behind is not None else lag_bytes
        replayed = False if sql != "Yes" else (None if unapplied is None else unapplied == 0)
        checks.append(
            Check(
                "mysql.replication",
                running,
                detail=detail,
                lag_s=None if seconds is None else float(seconds),
                lag_bytes=lag_bytes,
                upstream="mysql",
                replayed=replayed,
            )
        )
        return checks

    return _guarded(
        "mysql.connect", label, "check the server is running and reachable", cfg.secrets(), probe, (cfg, cfg.tls)
    )


# ---------------------------------------------------------------- Redis


def probe_redis(cfg: RedisSourceConfig, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """PING latency, role, and replication: on a replica its link status (lag 0 while up, seconds since
    it went down otherwise); on a primary its master_repl_offset and how many bytes its slowest
    replica is behind."""
    label = f"redis '{cfg.name}' at {cfg.host}:{cfg.port}"

    def probe(started: float) -> list[Check]:
        client = tls.redis_client(
            cfg.tls,
            cfg.name,
            host=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one attempt: the monitor's next run is the retry
        )
        try:
            client.ping()
            latency = time.monotonic() - started
            info = client.info("replication")
        finally:
            client.close()
        role = PRIMARY if info["role"] == "master" else STANDBY
        checks = [
            Check("redis.ping", True, latency, f"{label} answered PING in {latency * 1000:.0f} ms"),
            Check("redis.role", True, detail=role, weight=0),
        ]
        if role == PRIMARY:
            offset = int(info["master_repl_offset"])
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            behind = max((max(0, offset - int(r["offset"])) for r in replicas), default=None)
            checks.append(
                Check(
                    "redis.replicas",
                    True,
                    detail=f"{label} at offset {offset} with {len(replicas)} replica(s)"
                    + (f", the slowest {behind} bytes behind" if behind is not None else ""),
                    weight=0,
                    lag_bytes=behind,
                )
            )
            return checks
        up = info.get("master_link_status") == "up"
        down_for = info.get("master_link_down_since_seconds")
        if up:
            detail = f"{label} replicates from {info.get('master_host')}:{info.get('master_port')}"
        else:
            detail = (
                f"{label} lost its link to {info.get('master_host')}:{info.get('master_port')}"
                + (f" {down_for} s ago" if down_for not in (None, -1) else "")
                + "; check the primary is up and masterauth"
            )
        lag_s = 0.0 if up else (float(down_for) if down_for not in (None, -1) else None)
        # A replica applies the stream as it arrives; only a full resync in progress leaves it with less than
        # it received (its old data set until the new one is loaded).
        syncing = bool(int(info.get("master_sync_in_progress", 0) or 0))
        checks.append(
            Check("redis.replication", up, detail=detail, lag_s=lag_s, upstream="redis", replayed=not syncing)
        )
        return checks

    return _guarded(
        "redis.ping", label, "check the server is running and reachable", cfg.secrets(), probe, (cfg, cfg.tls)
    )


# ---------------------------------------------------------------- HTTP


def _safe_url(url: str) -> str:
    """The URL without credentials, query or fragment (tokens often travel there)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


def probe_http(url: str, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    """GET ``url`` (redirects followed): ok for a 2xx answer within ``timeout``; latency to the answer."""
    safe = _safe_url(url)
    name = f"http {safe}"
    secrets = [p for p in (urllib.parse.urlsplit(url).password, urllib.parse.urlsplit(url).query) if p]

    def probe(started: float) -> list[Check]:
        request = urllib.request.Request(url, headers={"User-Agent": "genesis-dr-probe"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - configured URL
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        latency = time.monotonic() - started
        ok = 200 <= status < 300
        detail = f"GET {safe} answered {status} in {latency * 1000:.0f} ms"
        if not ok:
            detail += "; check the service behind it"
        return [Check(name, ok, latency, detail)]

    return _guarded(name, f"GET {safe}", "check the service is running and reachable", secrets, probe)
