"""Probes against real replicated pairs: roles and lag of healthy pairs, lag while a replica falls
behind, and quick failed checks (never exceptions) for stopped, hung or refusing servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pymysql
import pytest
from pydantic import SecretStr

from core.failover.health import Check
from core.failover.probes import probe_http, probe_mysql, probe_postgres, probe_redis
from tests.fixtures_replication import MySQLPair, PgPair, RedisPair, wait_until
from tests.servers import free_port


def by_name(checks: list[Check]) -> dict[str, Check]:
    names = [c.name for c in checks]
    assert len(names) == len(set(names)), names
    return {c.name: c for c in checks}


def timed(probe, *args, **kwargs) -> tuple[list[Check], float]:
    started = time.monotonic()
    checks = probe(*args, **kwargs)
    return checks, time.monotonic() - started


def assert_down(checks: list[Check], name: str, label: str, seconds: float, limit: float) -> None:
    """One failed check naming the server, within ``limit`` seconds."""
    assert [(c.name, c.ok) for c in checks] == [(name, False)]
    assert label in checks[0].detail and "\n" not in checks[0].detail
    assert seconds < limit, f"probe took {seconds:.2f}s"


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections and never says anything (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_pair_roles_and_zero_lag(pg_replica_pair: PgPair):
    pair = pg_replica_pair
    pair.wait_streaming()
    primary = by_name(probe_postgres(pair.primary.config("east-postgres")))
    assert primary["postgres.connect"].ok and primary["postgres.connect"].latency_s < 1
    assert primary["postgres.role"].detail == "primary"
    assert primary["postgres.replicas"].detail.startswith("1 standby(s) streaming")
    assert "postgres.replication" not in primary

    standby = by_name(probe_postgres(pair.standby.config("west-postgres")))
    assert standby["postgres.role"].detail == "standby"
    repl = standby["postgres.replication"]
    assert (repl.ok, repl.lag_bytes, repl.lag_s) == (True, 0, 0.0)
    assert "west-postgres" in repl.detail
    assert sum(c.weight for c in standby.values()) == 2  # connect + replication count; role is informational


def test_postgres_paused_replay_shows_lag_in_bytes_and_seconds(pg_replica_pair: PgPair):
    pair = pg_replica_pair
    with pair.primary.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS probe_lag (id serial PRIMARY KEY, body text)")
        conn.execute("INSERT INTO probe_lag (body) VALUES ('marker')")
    pair.wait_streaming()
    marker_replayed = time.monotonic()
    with pair.standby.connect() as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        try:
            wait_until(lambda: standby.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused")
            (replayed,) = standby.execute("SELECT pg_last_wal_replay_lsn()").fetchone()
            time.sleep(1.0)
            with pair.primary.connect() as conn:
                conn.execute("INSERT INTO probe_lag (body) SELECT repeat('x', 1000) FROM generate_series(1, 500)")
                (written,) = conn.execute("SELECT pg_current_wal_flush_lsn()").fetchone()
            wait_until(lambda: standby.execute("SELECT pg_last_wal_receive_lsn() >= %s", (written,)).fetchone()[0])
            (floor,) = standby.execute("SELECT pg_wal_lsn_diff(%s, %s)::bigint", (written, replayed)).fetchone()

            repl = by_name(probe_postgres(pair.standby.config("west-postgres")))["postgres.replication"]
            (ceiling,) = standby.execute(
                "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint"
            ).fetchone()
            since_marker = time.monotonic() - marker_replayed
            assert repl.ok  # still streaming: lag is judged by the target choice, not here
            assert floor <= repl.lag_bytes <= ceiling
            assert floor > 500_000  # the 500 rows of 1000 bytes are in it
            assert 1.0 <= repl.lag_s <= since_marker + 1  # seconds since the last replayed commit
            assert "replay is paused" in repl.detail
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")
    pair.wait_streaming()
    repl = by_name(probe_postgres(pair.standby.config("west-postgres")))["postgres.replication"]
    assert (repl.lag_bytes, repl.lag_s) == (0, 0.0)


def test_postgres_stopped_standby_then_stopped_primary(pg_replica_pair: PgPair):
    pair = pg_replica_pair
    pair.wait_streaming()
    pair.standby.stop()
    try:
        checks, took = timed(probe_postgres, pair.standby.config("west-postgres"), timeout=2)
        assert_down(checks, "postgres.connect", "postgres 'west-postgres' at 127.0.0.1:", took, 3)
        assert "check the server is running" in checks[0].detail
        wait_until(
            lambda: by_name(probe_postgres(pair.primary.config()))["postgres.replicas"].detail.startswith("0 standby")
        )
    finally:
        pair.standby.start()
    pair.wait_streaming()

    pair.primary.stop()
    try:
        checks, took = timed(probe_postgres, pair.primary.config("east-postgres"), timeout=2)
        assert_down(checks, "postgres.connect", "postgres 'east-postgres'", took, 3)

        def standby_notices() -> bool:
            repl = by_name(probe_postgres(pair.standby.config()))["postgres.replication"]
            return not repl.ok and "does not stream from its primary" in repl.detail

        wait_until(standby_notices, 15, "standby reporting its lost primary")
    finally:
        pair.primary.start()
    pair.wait_streaming()


# ---------------------------------------------------------------- MariaDB


def test_mysql_pair_roles_and_zero_lag(mysql_replica_pair: MySQLPair):
    pair = mysql_replica_pair
    pair.wait_caught_up()
    primary = by_name(probe_mysql(pair.primary.config("east-mysql")))
    assert primary["mysql.connect"].ok
    assert primary["mysql.role"].detail == "primary"
    assert primary["mysql.read_only"].ok and "mysql.replication" not in primary

    replica = by_name(probe_mysql(pair.replica.config("west-mysql")))
    assert replica["mysql.role"].detail == "standby"
    assert replica["mysql.read_only"].detail.endswith("read_only=ON")
    repl = replica["mysql.replication"]
    assert (repl.ok, repl.lag_s, repl.lag_bytes) == (True, 0.0, 0)
    assert repl.detail.endswith("replicates; 0 transaction(s) received not applied")


def test_mysql_stopped_sql_thread_shows_unapplied_transactions(mysql_replica_pair: MySQLPair):
    pair = mysql_replica_pair
    pair.wait_caught_up()
    with pair.replica.connect() as conn, conn.cursor() as cur:
        cur.execute("STOP REPLICA SQL_THREAD")
    try:
        with pair.primary.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS probe_lag")
            cur.execute("CREATE TABLE IF NOT EXISTS probe_lag.t (id INT AUTO_INCREMENT PRIMARY KEY, body TEXT)")
            for _ in range(3):
                cur.execute("INSERT INTO probe_lag.t (body) VALUES (REPEAT('y', 2000))")
            cur.execute("SELECT @@gtid_binlog_pos")
            (written,) = cur.fetchone()

        def received() -> bool:
            with pair.replica.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
                cur.execute("SHOW REPLICA STATUS")
                return cur.fetchone()["Gtid_IO_Pos"] == written

        wait_until(received, 15, "replica receiving the writes")
        repl = by_name(probe_mysql(pair.replica.config("west-mysql")))["mysql.replication"]
        assert not repl.ok
        assert "IO=Yes SQL=No" in repl.detail
        assert "5 transaction(s) received not applied" in repl.detail  # CREATE DATABASE, CREATE TABLE, 3 inserts
        assert repl.lag_s is None  # the server does not know it while the SQL thread is stopped
        with pair.replica.connect() as conn, conn.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW REPLICA STATUS")
            row = cur.fetchone()
        assert repl.lag_bytes == row["Read_Master_Log_Pos"] - row["Exec_Master_Log_Pos"]
        assert repl.lag_bytes > 0
    finally:
        with pair.replica.connect() as conn, conn.cursor() as cur:
            cur.execute("START REPLICA SQL_THREAD")
    pair.wait_caught_up()
    repl = by_name(probe_mysql(pair.replica.config()))["mysql.replication"]
    assert (repl.ok, repl.lag_bytes) == (True, 0)


def test_mysql_stopped_replica_then_stopped_primary(mysql_replica_pair: MySQLPair):
    pair = mysql_replica_pair
    pair.wait_caught_up()
    pair.replica.stop()
    try:
        checks, took = timed(probe_mysql, pair.replica.config("west-mysql"), timeout=2)
        assert_down(checks, "mysql.connect", "mysql 'west-mysql' at 127.0.0.1:", took, 3)
        assert pair.password_free(checks)
    finally:
        pair.replica.start()
    pair.wait_caught_up()

    pair.primary.stop()
    try:
        checks, took = timed(probe_mysql, pair.primary.config("east-mysql"), timeout=2)
        assert_down(checks, "mysql.connect", "mysql 'east-mysql'", took, 3)

        def replica_notices() -> bool:
            repl = by_name(probe_mysql(pair.replica.config()))["mysql.replication"]
            return not repl.ok and "IO=Connecting SQL=Yes" in repl.detail

        wait_until(replica_notices, 15, "replica reporting its lost primary")
        repl = by_name(probe_mysql(pair.replica.config()))["mysql.replication"]
        assert pair.password_free([repl])
    finally:
        pair.primary.start()
    pair.wait_caught_up()


# ---------------------------------------------------------------- Redis


def test_redis_pair_roles_and_zero_lag(redis_replica_pair: RedisPair):
    pair = redis_replica_pair
    pair.wait_linked()
    primary = by_name(probe_redis(pair.primary.config("east-redis")))
    assert primary["redis.ping"].ok and primary["redis.role"].detail == "primary"
    assert primary["redis.replicas"].lag_bytes == 0
    assert "with 1 replica(s)" in primary["redis.replicas"].detail

    replica = by_name(probe_redis(pair.replica.config("west-redis")))
    assert replica["redis.role"].detail == "standby"
    repl = replica["redis.replication"]
    assert (repl.ok, repl.lag_s) == (True, 0.0)
    assert f"replicates from 127.0.0.1:{pair.primary.port}" in repl.detail


def test_redis_hung_replica_falls_behind_and_times_out(redis_replica_pair: RedisPair):
    pair = redis_replica_pair
    pair.wait_linked()
    primary = pair.primary.client()
    synced = primary.info("replication")["master_repl_offset"]
    pair.replica.freeze()
    try:
        primary.set("probe:lag", b"z" * 50_000)
        before = primary.info("replication")["master_repl_offset"]
        replicas = by_name(probe_redis(pair.primary.config("east-redis")))["redis.replicas"]
        after = primary.info("replication")["master_repl_offset"]
        assert before - synced <= replicas.lag_bytes <= after - synced
        assert replicas.lag_bytes > 50_000
        assert f"the slowest {replicas.lag_bytes} bytes behind" in replicas.detail

        checks, took = timed(probe_redis, pair.replica.config("west-redis"), timeout=1)
        assert_down(checks, "redis.ping", "redis 'west-redis' at 127.0.0.1:", took, 2)
    finally:
        pair.replica.thaw()
    pair.wait_linked()
    assert by_name(probe_redis(pair.primary.config()))["redis.replicas"].lag_bytes == 0


def test_redis_stopped_primary(redis_replica_pair: RedisPair):
    pair = redis_replica_pair
    pair.wait_linked()
    pair.primary.stop()
    try:
        checks, took = timed(probe_redis, pair.primary.config("east-redis"), timeout=2)
        assert_down(checks, "redis.ping", "redis 'east-redis'", took, 3)

        def replica_notices() -> bool:
            return not by_name(probe_redis(pair.replica.config()))["redis.replication"].ok

        wait_until(replica_notices, 15, "replica reporting its lost primary")
        time.sleep(1.1)
        repl = by_name(probe_redis(pair.replica.config("west-redis")))["redis.replication"]
        assert f"lost its link to 127.0.0.1:{pair.primary.port}" in repl.detail
        assert repl.lag_s >= 1  # the replica's data is as old as the lost link
    finally:
        pair.primary.start()
    pair.wait_linked()


# ---------------------------------------------------------------- refused logins, hung servers, HTTP


def test_wrong_passwords_fail_without_showing_them(pg_replica_pair, mysql_replica_pair, redis_replica_pair):
    wrong = "wrong-pw-Secret-9f3a"
    results = [
        probe_postgres(pg_replica_pair.primary.config("pg", password=wrong)),
        probe_mysql(mysql_replica_pair.primary.config("my", password=SecretStr(wrong))),
        probe_redis(redis_replica_pair.primary.config("rd").model_copy(update={"password": SecretStr(wrong)})),
    ]
    for checks, name in zip(results, ("postgres.connect", "mysql.connect", "redis.ping"), strict=True):
        assert [(c.name, c.ok) for c in checks] == [(name, False)]
        assert wrong not in checks[0].detail
    assert "password authentication failed" in results[0][0].detail
    assert "Access denied" in results[1][0].detail


def test_hung_servers_time_out():
    with silent_listener() as port:
        from core.sources import MySQLSourceConfig, PostgresSourceConfig, RedisSourceConfig

        for probe, cfg, timeout, limit in (
            (probe_postgres, PostgresSourceConfig(name="pg", port=port), 2, 3),  # libpq: whole seconds, >= 2
            (probe_mysql, MySQLSourceConfig(name="my", port=port, database="app"), 1, 2),
            (probe_redis, RedisSourceConfig(name="rd", port=port), 1, 2),
            (probe_http, f"http://127.0.0.1:{port}/health", 1, 2),
        ):
            checks, took = timed(probe, cfg, timeout=timeout)
            assert len(checks) == 1 and not checks[0].ok, checks
            assert took < limit, f"{probe.__name__} took {took:.2f}s"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status = {"/ok": 200, "/broken": 503, "/moved": 302}.get(self.path.split("?")[0], 404)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_probe(http_base: str):
    (ok,) = probe_http(f"{http_base}/ok?token=Secret-tok-77")
    assert (ok.name, ok.ok) == (f"http {http_base}/ok", True)
    assert ok.detail.startswith(f"GET {http_base}/ok answered 200 in ")
    assert "Secret-tok-77" not in ok.detail + ok.name
    (moved,) = probe_http(f"{http_base}/moved")
    assert moved.ok and "answered 200" in moved.detail
    (broken,) = probe_http(f"{http_base}/broken")
    assert not broken.ok and "answered 503" in broken.detail
    refused_port = free_port()
    (refused,), took = timed(probe_http, f"http://127.0.0.1:{refused_port}/health?key=Secret-k", timeout=1)
    assert not refused.ok and took < 2
    assert refused.detail.startswith(f"GET http://127.0.0.1:{refused_port}/health unreachable: ")
    assert "Secret-k" not in refused.detail
