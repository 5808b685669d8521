"""Promotion primitives on throw-away replicated pairs of this module (the session pairs keep their
roles): fence the primary, wait for replay, promote the replica, prove it takes writes, repoint the
old primary; the fenced primary refuses writes and every write committed before the fence survives."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator

import psycopg
import pymysql
import pytest
import redis
from pydantic import SecretStr
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.failover.promote import (
    Step,
    fence_mysql,
    fence_postgres,
    fence_redis,
    promote_mysql,
    promote_postgres,
    promote_redis,
    prove_writes_mysql,
    prove_writes_postgres,
    prove_writes_redis,
    repoint_mysql,
    repoint_postgres,
    repoint_redis,
    wait_replayed_mysql,
    wait_replayed_postgres,
    wait_replayed_redis,
)
from core.sources import MySQLSourceConfig, PostgresSourceConfig, RedisSourceConfig
from tests.fixtures_postgres import PostgresServer, _as_postgres
from tests.fixtures_replication import (
    MySQLPair,
    PgPair,
    RedisPair,
    started_mysql_pair,
    started_pg_pair,
    started_redis_pair,
    wait_until,
)
from tests.servers import free_port, require_binary, shared_tmpdir


def assert_ok(step: Step, name: str, *words: str) -> None:
    assert (step.name, step.ok) == (name, True), step
    assert "\n" not in step.detail and step.seconds >= 0
    for word in words:
        assert word in step.detail, step.detail


def assert_failed(step: Step, name: str, label: str, password: str) -> None:
    assert (step.name, step.ok) == (name, False), step
    assert label in step.detail and "\n" not in step.detail
    assert password not in step.detail


# ---------------------------------------------------------------- pairs of this module


@pytest.fixture(scope="module")
def pg_pair() -> Iterator[PgPair]:
    with started_pg_pair("gdr-pg-prom-") as pair:
        yield pair


@pytest.fixture(scope="module")
def my_pair() -> Iterator[MySQLPair]:
    with started_mysql_pair((21, 22)) as pair:
        yield pair


@pytest.fixture(scope="module")
def rd_pair() -> Iterator[RedisPair]:
    with started_redis_pair() as pair:
        yield pair


# ---------------------------------------------------------------- PostgreSQL


def test_postgres_fence_promote_prove(pg_pair: PgPair):
    old, new = pg_pair.primary.config("east-pg"), pg_pair.standby.config("west-pg")
    with pg_pair.primary.connect() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        conn.execute("INSERT INTO orders VALUES (1, 'before-fence'), (2, 'also-before')")
    session = pg_pair.primary.connect()  # an application session open across the fence

    assert_ok(fence_postgres(old), "fence", "east-pg", "default_transaction_read_only=on", "1 client session(s)")
    assert_ok(fence_postgres(old), "fence", "0 client session(s)")  # idempotent
    with pytest.raises(psycopg.OperationalError):
        session.execute("INSERT INTO orders VALUES (3, 'old session')")  # it was ended
    session.close()
    with pg_pair.primary.connect() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused:
        conn.execute("INSERT INTO orders VALUES (3, 'after-fence')")
    assert "cannot execute INSERT in a read-only transaction" in str(refused.value)
    refused_probe = prove_writes_postgres(old)
    assert refused_probe.ok is False and "read-only transaction" in refused_probe.detail

    assert_ok(wait_replayed_postgres(new, timeout=20), "wait_replayed", "west-pg", "replayed all it received")
    assert_ok(promote_postgres(new), "promote", "promoted to primary")
    assert_ok(promote_postgres(new), "promote", "is a primary already")
    assert_ok(prove_writes_postgres(new), "prove_writes", "takes writes")
    with pg_pair.standby.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        assert conn.execute("SELECT id, item FROM orders ORDER BY id").fetchall() == [
            (1, "before-fence"),
            (2, "also-before"),
        ]
        assert conn.execute("SELECT count(*) FROM genesis_dr_failover").fetchone() == (0,)  # probe removed

    # The old primary is no standby: repointing it says what it needs instead of pretending.
    step = repoint_postgres(old, new)
    assert_failed(step, "repoint", "east-pg", pg_pair.primary.password)
    assert "is a primary, not a standby" in step.detail


def test_postgres_repoint_of_a_standby_reloads(pg_pair: PgPair):
    """A standby of the (now promoted) server: primary_conninfo is reloadable on PostgreSQL 15."""
    standby = PostgresServer(
        port=free_port(),
        password=pg_pair.standby.password,
        root=shared_tmpdir("gdr-pg-prom-third-"),
        pg_ctl=pg_pair.standby.pg_ctl,
        options="-c hot_standby=on",
    )
    basebackup = require_binary("pg_basebackup", "/usr/lib/postgresql/15/bin/pg_basebackup")
    try:
        _as_postgres(
            basebackup,
            *("-h", str(pg_pair.standby.root), "-p", str(pg_pair.standby.port), "-U", "postgres"),
            *("-D", str(standby.datadir), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        )
        standby.start()
        new_primary = pg_pair.standby.config("west-pg")
        step = repoint_postgres(standby.config("third-pg"), new_primary)
        assert_ok(step, "repoint", "third-pg", f"127.0.0.1:{pg_pair.standby.port}", "(reloaded)")
        assert pg_pair.standby.password not in step.detail
        with standby.connect() as conn:
            (conninfo,) = conn.execute("SHOW primary_conninfo").fetchone()
        assert f"port='{pg_pair.standby.port}'" in conninfo
        with pg_pair.standby.connect() as conn:
            conn.execute("INSERT INTO orders VALUES (10, 'after-promotion')")
        wait_until(
            lambda: (
                standby.connect().execute("SELECT item FROM orders WHERE id = 10").fetchone() == ("after-promotion",)
            ),
            20,
            "third standby streaming from the promoted server",
        )
    finally:
        if (standby.datadir / "postmaster.pid").exists():
            standby.stop()
        shutil.rmtree(standby.root, ignore_errors=True)


def test_postgres_unreachable_gives_failed_steps():
    cfg = PostgresSourceConfig(name="gone-pg", host="127.0.0.1", port=free_port(), password="s3cret-pw-x")
    for step in (fence_postgres(cfg, timeout=2), promote_postgres(cfg), prove_writes_postgres(cfg)):
        assert_failed(step, step.name, "postgres 'gone-pg' at 127.0.0.1", "s3cret-pw-x")
        assert "check the server is running" in step.detail or "check the server is a primary" in step.detail


# ---------------------------------------------------------------- MariaDB


def test_mysql_fence_promote_prove_repoint(my_pair: MySQLPair):
    old, new = my_pair.primary.config("east-my"), my_pair.replica.config("west-my")
    app_password = "app-" + secrets.token_hex(6)
    with my_pair.primary.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE shop")
        cur.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, item varchar(40))")
        cur.execute("INSERT INTO shop.orders VALUES (1, 'before-fence'), (2, 'also-before')")
        # The application's account: no READ ONLY ADMIN, so read_only applies to it.
        cur.execute("CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY %s", (app_password,))
        cur.execute("GRANT ALL ON shop.* TO 'app'@'127.0.0.1'")

    # A session opened before the fence does not outlive it (it would keep writing across the fence).
    before = pymysql.connect(host="127.0.0.1", port=my_pair.primary.port, user="app", password=app_password)
    assert_ok(fence_mysql(old), "fence", "east-my", "read_only=ON", "client session(s) ended")
    assert_ok(fence_mysql(old), "fence", "read_only=ON")
    with pytest.raises(pymysql.err.OperationalError) as ended:
        before.cursor().execute("SELECT 1")
    assert ended.value.args[0] in (2006, 2013, 4031), ended.value  # gone away / lost / disconnected by the server
    before.close()
    app = pymysql.connect(host="127.0.0.1", port=my_pair.primary.port, user="app", password=app_password)
    with app, app.cursor() as cur, pytest.raises(pymysql.err.OperationalError) as refused:
        cur.execute("INSERT INTO shop.orders VALUES (3, 'after-fence')")
    assert refused.value.args[0] == 1290 and "read-only" in refused.value.args[1]

    assert_ok(wait_replayed_mysql(new, timeout=20), "wait_replayed", "west-my", "0 transaction(s) pending")
    assert_ok(promote_mysql(new), "promote", "promoted")
    assert_ok(promote_mysql(new), "promote", "is a primary, read_only=OFF")
    assert_ok(wait_replayed_mysql(new), "wait_replayed", "is not a replica")
    assert_ok(prove_writes_mysql(new), "prove_writes", "takes writes")
    with my_pair.replica.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT id, item FROM shop.orders ORDER BY id")
        assert cur.fetchall() == ((1, "before-fence"), (2, "also-before"))
        cur.execute("SELECT @@read_only")
        assert cur.fetchone() == (0,)
        cur.execute("SHOW REPLICA STATUS")
        assert cur.fetchone() is None
    app = pymysql.connect(host="127.0.0.1", port=my_pair.replica.port, user="app", password=app_password)
    with app, app.cursor() as cur:
        cur.execute("INSERT INTO shop.orders VALUES (3, 'on-new-primary')")
        app.commit()

    # The old primary follows the new one from where its own history ends.
    step = repoint_mysql(old, new)
    assert_ok(step, "repoint", "east-my", f"replicates from 127.0.0.1:{my_pair.replica.port}")
    assert my_pair.primary.password not in step.detail
    swapped = MySQLPair(primary=my_pair.replica, replica=my_pair.primary)
    swapped.wait_caught_up(20)
    with my_pair.primary.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT item FROM shop.orders WHERE id = 3")
        assert cur.fetchone() == ("on-new-primary",)


def test_mysql_unreachable_gives_failed_steps():
    cfg = MySQLSourceConfig(
        name="gone-my", host="127.0.0.1", port=free_port(), user="dr", password=SecretStr("s3cret-pw-y"), database="x"
    )
    for step in (fence_mysql(cfg, timeout=2), promote_mysql(cfg), wait_replayed_mysql(cfg, timeout=1)):
        assert_failed(step, step.name, "mysql 'gone-my' at 127.0.0.1", "s3cret-pw-y")


# ---------------------------------------------------------------- Redis


def test_redis_fence_promote_prove_repoint(rd_pair: RedisPair):
    old, new = rd_pair.primary.config("east-rd"), rd_pair.replica.config("west-rd")
    rd_pair.primary.client().set("order:1", "before-fence")
    rd_pair.primary.client().set("order:2", "also-before")

    assert_ok(fence_redis(old, pause_s=20), "fence", "east-rd", "writes paused for 20s")
    slow = redis.Redis(
        host="127.0.0.1",
        port=rd_pair.primary.port,
        password=rd_pair.primary.password,
        socket_timeout=1,
        retry=Retry(NoBackoff(), 0),  # one attempt: a retried write would wait out the pause again
    )
    with pytest.raises(redis.exceptions.TimeoutError):
        slow.set("order:3", "after-fence")  # the write waits out the pause
    slow.close()

    assert_ok(wait_replayed_redis(new, timeout=10, primary=old), "wait_replayed", "west-rd", "in sync")
    assert_ok(promote_redis(new), "promote", "promoted to primary")
    assert_ok(promote_redis(new), "promote", "is a primary already")
    assert_ok(prove_writes_redis(new), "prove_writes", "takes writes")
    replica = rd_pair.replica.client()
    assert replica.mget("order:1", "order:2", "order:3") == [b"before-fence", b"also-before", None]

    # The old primary becomes a replica of the new one: it refuses writes for good, pause lifted.
    step = repoint_redis(old, new)
    assert_ok(step, "repoint", "east-rd", f"replica of 127.0.0.1:{rd_pair.replica.port}")
    assert rd_pair.primary.password not in step.detail
    with pytest.raises(redis.exceptions.ReadOnlyError):
        rd_pair.primary.client().set("order:4", "on-old")
    replica.set("order:5", "on-new")
    RedisPair(primary=rd_pair.replica, replica=rd_pair.primary).wait_linked(20)
    assert rd_pair.primary.client().get("order:5") == b"on-new"


def test_redis_unreachable_gives_failed_steps():
    cfg = RedisSourceConfig(name="gone-rd", host="127.0.0.1", port=free_port(), password=SecretStr("s3cret-pw-z"))
    for step in (fence_redis(cfg), promote_redis(cfg), prove_writes_redis(cfg), wait_replayed_redis(cfg, 1)):
        assert_failed(step, step.name, "redis 'gone-rd' at 127.0.0.1", "s3cret-pw-z")
