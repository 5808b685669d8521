"""Failback: rebuilding a former primary as a replica of the new one (core/failover/rebuild.py) and the whole
round trip (core/failover/failback.py) on throw-away pairs of this module: failover, writes on the new
primary, failback, those writes on the original primary, DNS back (moto Route53), nothing lost."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.failover.promote import Step, promote_mysql, promote_postgres
from core.failover.rebuild import NEW_SUFFIX, OLD_SUFFIX, rebuild_mysql, rebuild_postgres, rebuild_redis
from core.failover.topology import PgRebuildConfig
from tests.fixtures_mysql import DR_USER
from tests.fixtures_postgres import PITR_SERVER_OPTIONS, PostgresServer, _as_postgres, start_postgres_server
from tests.fixtures_replication import MariaDBNode, MySQLPair, PgPair, RedisNode, _redis_node, _start_mariadb
from tests.servers import free_port, require_binary, shared_tmpdir

PG_BIN = "/usr/lib/postgresql/15/bin"
# Both members may be a rewind's source or target: full-page writes, replication, and (unless a test wants a
# refusal) wal_log_hints, which pg_rewind needs on the server it rewinds.
PG_OPTIONS = PITR_SERVER_OPTIONS + " -c hot_standby=on -c wal_receiver_status_interval=1s"
PG_OPTIONS += " -c wal_retrieve_retry_interval=200ms -c wal_keep_size=64MB"
HINTS = " -c wal_log_hints=on"


def assert_ok(step: Step, *words: str) -> None:
    assert (step.name, step.ok) == ("rebuild", True), step
    assert "\n" not in step.detail
    for word in words:
        assert word in step.detail, step.detail


def start_options(server: PostgresServer) -> str:
    """The -o options PostgresServer.start gives the server (so a rebuild starts it the same way)."""
    return (
        f"-p {server.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={server.root}"
        f" -c fsync=off -c full_page_writes=off -c synchronous_commit=off {server.options}"
    )


def rebuild_config(server: PostgresServer) -> PgRebuildConfig:
    return PgRebuildConfig(
        data_directory=str(server.datadir), bin_dir=PG_BIN, run_as="postgres", options=start_options(server)
    )


def stop_pg(*servers: PostgresServer) -> None:
    for server in servers:
        try:
            if (server.datadir / "postmaster.pid").exists():
                server.stop()
        finally:
            for path in (server.root, Path(str(server.datadir) + NEW_SUFFIX), Path(str(server.datadir) + OLD_SUFFIX)):
                shutil.rmtree(path, ignore_errors=True)


def make_pg_pair(prefix: str, options: str) -> PgPair:
    basebackup = require_binary("pg_basebackup", f"{PG_BIN}/pg_basebackup")
    primary = start_postgres_server(prefix, options)
    standby = PostgresServer(
        port=free_port(), password=primary.password, root=shared_tmpdir(prefix + "stby-"), pg_ctl=primary.pg_ctl,
        options=options,
    )  # fmt: skip
    try:
        _as_postgres(
            basebackup,
            *("-h", str(primary.root), "-p", str(primary.port), "-U", "postgres", "-D", str(standby.datadir)),
            *("-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        )
        standby.start()
        pair = PgPair(primary, standby)
        pair.wait_streaming()
    except BaseException:
        stop_pg(standby, primary)
        raise
    return pair


def make_mysql_pair(first_id: int) -> MySQLPair:
    password = f"pw-{secrets.token_hex(6)} #;'\"\\x"
    primary = _start_mariadb(first_id, password)
    replica = _start_mariadb(first_id + 1, password)
    with replica.connect() as conn, conn.cursor() as cur:
        cur.execute("SET GLOBAL read_only = 1")
        cur.execute(
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER=%s, MASTER_PASSWORD=%s, "
            "MASTER_CONNECT_RETRY=1, MASTER_USE_GTID=slave_pos",
            (primary.port, DR_USER, password),
        )
        cur.execute("START REPLICA")
    pair = MySQLPair(primary, replica)
    pair.wait_caught_up()
    return pair


def stop_mysql(*nodes: MariaDBNode) -> None:
    for node in nodes:
        node.stop()
        shutil.rmtree(node.root, ignore_errors=True)


def stop_redis(*nodes: RedisNode) -> None:
    for node in nodes:
        node.stop()
        shutil.rmtree(node.dir, ignore_errors=True)


def pg_rows(server: PostgresServer, query: str = "SELECT id, item FROM orders ORDER BY id") -> list[tuple]:
    with server.connect() as conn:
        return conn.execute(query).fetchall()


# ---------------------------------------------------------------- PostgreSQL rebuild


@pytest.fixture(scope="module")
def pg_nohints() -> Iterator[PgPair]:
    """A pair whose members run without wal_log_hints (and without checksums): pg_rewind refuses them."""
    pair = make_pg_pair("gdr-pg-fb-nh-", PG_OPTIONS)
    yield pair
    stop_pg(pair.standby, pair.primary)


def _unplanned_failover_pg(pair: PgPair) -> None:
    """Promote the standby while the old primary still takes one more write (an unplanned failover: it diverged)."""
    with pair.primary.connect() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        conn.execute("INSERT INTO orders VALUES (1, 'before-failover')")
    pair.wait_streaming()
    assert promote_postgres(pair.standby.config("east-pg")).ok
    with pair.primary.connect() as conn:
        conn.execute("INSERT INTO orders VALUES (2, 'lost-on-the-old-primary')")
        conn.execute("CHECKPOINT")
    with pair.standby.connect() as conn:
        conn.execute("INSERT INTO orders VALUES (3, 'on-the-new-primary')")


def test_postgres_rebuild_by_rewind_then_again_does_nothing():
    pair = make_pg_pair("gdr-pg-fb-rw-", PG_OPTIONS + HINTS)
    try:
        old, new = pair.primary.config("west-pg"), pair.standby.config("east-pg")
        _unplanned_failover_pg(pair)

        step = rebuild_postgres(old, new, rebuild_config(pair.primary), timeout=60)

        assert_ok(step, "west-pg", "rebuilt by pg_rewind", f"standby of 127.0.0.1:{pair.standby.port}", "streaming")
        assert pair.primary.password not in step.detail
        assert pg_rows(pair.primary) == [(1, "before-failover"), (3, "on-the-new-primary")]
        assert pg_rows(pair.primary, "SELECT pg_is_in_recovery()") == [(True,)]
        with pair.standby.connect() as conn:
            conn.execute("INSERT INTO orders VALUES (4, 'streamed')")
        PgPair(pair.standby, pair.primary).wait_streaming(20)
        assert pg_rows(pair.primary)[-1] == (4, "streamed")

        again = rebuild_postgres(old, new, rebuild_config(pair.primary), timeout=30)
        assert_ok(again, "a standby of 127.0.0.1", "already")
    finally:
        stop_pg(pair.standby, pair.primary)


def test_postgres_without_wal_log_hints_refuses_or_falls_back_to_basebackup(pg_nohints: PgPair):
    pair = pg_nohints
    old, new = pair.primary.config("west-pg"), pair.standby.config("east-pg")
    _unplanned_failover_pg(pair)
    config = rebuild_config(pair.primary)

    refused = rebuild_postgres(old, new, config, timeout=30, allow_basebackup=False)
    assert (refused.name, refused.ok) == ("rebuild", False)
    assert "pg_rewind failed" in refused.detail and "wal_log_hints" in refused.detail, refused.detail
    assert "set wal_log_hints=on on the primary" in refused.detail and "\n" not in refused.detail
    assert pair.primary.password not in refused.detail

    step = rebuild_postgres(old, new, config, timeout=60)

    assert_ok(step, "rebuilt by pg_basebackup", "pg_rewind refused", "set wal_log_hints=on", "streaming")
    assert pg_rows(pair.primary) == [(1, "before-failover"), (3, "on-the-new-primary")]
    # The swapped-out directory is gone once the new one runs; nothing of ours is left beside it.
    assert not Path(config.data_directory + OLD_SUFFIX).exists()
    assert not Path(config.data_directory + NEW_SUFFIX).exists()


def test_postgres_rebuild_refusals(pg_nohints: PgPair):
    """Never from a standby, never onto the new primary itself, never over another cluster's directory."""
    pair = pg_nohints
    primary_now = pair.standby if not pg_rows(pair.standby, "SELECT pg_is_in_recovery()")[0][0] else pair.primary
    standby_now = pair.primary if primary_now is pair.standby else pair.standby
    new, old = primary_now.config("east-pg"), standby_now.config("west-pg")

    from_standby = rebuild_postgres(new, old, rebuild_config(primary_now), timeout=5)
    assert not from_standby.ok and "is a standby, not a primary" in from_standby.detail

    itself = rebuild_postgres(new, new, rebuild_config(primary_now), timeout=5)
    assert not itself.ok and "is the new primary" in itself.detail

    other = start_postgres_server("gdr-pg-fb-other-", PG_OPTIONS)
    try:
        wrong = rebuild_postgres(other.config("other-pg"), new, rebuild_config(other), timeout=5)
        assert not wrong.ok and "holds another cluster" in wrong.detail, wrong.detail
        assert pg_rows(other, "SELECT 1") == [(1,)]  # untouched and still running
    finally:
        stop_pg(other)

    missing = rebuild_config(standby_now).model_copy(update={"data_directory": "/nonexistent/gdr/data"})
    gone = rebuild_postgres(standby_now.config("west-pg", port=free_port()), new, missing, timeout=5)
    assert not gone.ok and "is not a PostgreSQL data directory on this machine" in gone.detail


# ---------------------------------------------------------------- MariaDB rebuild


def test_mysql_rebuild_of_a_diverged_primary_reseeds_it():
    pair = make_mysql_pair(41)
    try:
        old, new = pair.primary.config("west-my"), pair.replica.config("east-my")
        with pair.primary.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE shop")
            cur.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, item varchar(40))")
            cur.execute("INSERT INTO shop.orders VALUES (1, 'before-failover')")
        pair.wait_caught_up()
        assert promote_mysql(new).ok
        with pair.primary.connect() as conn, conn.cursor() as cur:
            # The old primary took writes the new one never got (an unplanned failover).
            cur.execute("INSERT INTO shop.orders VALUES (2, 'lost-on-the-old-primary')")
            cur.execute("CREATE DATABASE scratch")
        with pair.replica.connect() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO shop.orders VALUES (3, 'on-the-new-primary')")

        step = rebuild_mysql(old, new, timeout=30)

        assert_ok(step, "west-my", "diverged", "re-seeded", "dropped scratch", "caught up")
        assert pair.primary.password not in step.detail
        with pair.replica.connect() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO shop.orders VALUES (4, 'replicated')")
        MySQLPair(pair.replica, pair.primary).wait_caught_up(20)
        with pair.primary.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT id, item FROM shop.orders ORDER BY id")
            assert cur.fetchall() == ((1, "before-failover"), (3, "on-the-new-primary"), (4, "replicated"))
            cur.execute("SELECT @@read_only")
            assert cur.fetchone() == (1,)
            cur.execute("SHOW DATABASES LIKE 'scratch'")
            assert cur.fetchone() is None

        again = rebuild_mysql(old, new, timeout=20)
        assert_ok(again, "a replica of 127.0.0.1", "already", "caught up")

        backwards = rebuild_mysql(new, old, timeout=5)
        assert not backwards.ok and "is not a primary" in backwards.detail
    finally:
        stop_mysql(pair.replica, pair.primary)


# ---------------------------------------------------------------- Redis rebuild


def test_redis_rebuild_follows_the_new_primary():
    password = "pw-" + secrets.token_hex(8)
    new_node = _redis_node(password)
    old_node = _redis_node(password)
    try:
        old, new = old_node.config("west-rd"), new_node.config("east-rd")
        old_node.client().set("order:2", "lost-on-the-old-primary")
        new_node.client().set("order:3", "on-the-new-primary")

        step = rebuild_redis(old, new, timeout=20)

        assert_ok(step, "west-rd", f"replica of 127.0.0.1:{new_node.port}", "in sync")
        assert password not in step.detail
        assert old_node.client().mget("order:2", "order:3") == [None, b"on-the-new-primary"]
        backwards = rebuild_redis(new, old, timeout=5)
        assert not backwards.ok and "is a replica, not a primary" in backwards.detail
    finally:
        stop_redis(old_node, new_node)
