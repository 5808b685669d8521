"""Failback: rebuilding a former primary as a replica of the new one (core/failover/rebuild.py) and the whole
round trip (core/failover/failback.py) on throw-away pairs of this module: failover, writes on the new
primary, failback, those writes on the original primary, DNS back (moto Route53), nothing lost."""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pymysql
import pytest
import redis

from core.errors import FailoverIncompleteError, StaleEpochError, TargetRefusedError
from core.failover.choose import State
from core.failover.dns import current_value
from core.failover.failback import FailbackPlan, execute_failback, plan_failback
from core.failover.health import Check, RegionHealth, Tracker, score_region
from core.failover.monitor import assess
from core.failover.promote import Step, fence_mysql, fence_postgres, promote_mysql, promote_postgres
from core.failover.rebuild import NEW_SUFFIX, OLD_SUFFIX, rebuild_mysql, rebuild_postgres, rebuild_redis
from core.failover.run import execute_failover, plan_failover
from core.failover.state import StateStore
from core.failover.topology import DnsConfig, FailoverConfig, PgRebuildConfig, RegionConfig
from core.storage.local import LocalStore
from tests.fixtures_failover import route53_zone
from tests.fixtures_postgres import PITR_SERVER_OPTIONS, PostgresServer, start_postgres_server
from tests.fixtures_replication import (
    MySQLPair,
    PgPair,
    RedisNode,
    RedisPair,
    _redis_node,
    started_mysql_pair,
    started_pg_pair,
    started_redis_pair,
)
from tests.servers import free_port

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
    with started_pg_pair("gdr-pg-fb-nh-", primary_options=PG_OPTIONS, standby_options=PG_OPTIONS) as pair:
        yield pair


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
    old = pair.primary.config("west-pg")
    writable = rebuild_postgres(old, pair.standby.config("east-pg"), rebuild_config(pair.primary), timeout=5)
    assert not writable.ok and "is a primary taking writes; fence it first" in writable.detail, writable.detail
    assert fence_postgres(old).ok  # what the failover does (or the monitor, when the old primary returns)


def test_postgres_rebuild_by_rewind_then_again_does_nothing():
    options = PG_OPTIONS + HINTS
    with started_pg_pair("gdr-pg-fb-rw-", primary_options=options, standby_options=options) as pair:
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


def test_postgres_without_wal_log_hints_refuses_or_falls_back_to_basebackup(pg_nohints: PgPair):
    pair = pg_nohints
    old, new = pair.primary.config("west-pg"), pair.standby.config("east-pg")
    _unplanned_failover_pg(pair)
    config = rebuild_config(pair.primary)

    refused = rebuild_postgres(old, new, config, timeout=30, allow_basebackup=False)
    assert (refused.name, refused.ok) == ("rebuild", False)
    assert refused.detail == (
        f"postgres 'west-pg' at 127.0.0.1:{pair.primary.port}: pg_rewind cannot rewind it: it has neither "
        "wal_log_hints=on nor data checksums (set wal_log_hints=on on every primary so a failback can rewind); "
        "rebuild it with pg_basebackup instead (allow_basebackup)"
    )
    assert pg_rows(pair.primary, "SELECT pg_is_in_recovery()") == [(False,)]  # refused before stopping anything

    step = rebuild_postgres(old, new, config, timeout=60)

    assert_ok(step, "rebuilt by pg_basebackup (pg_rewind cannot rewind it", "set wal_log_hints=on", "streaming")
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
        assert fence_postgres(other.config("other-pg")).ok
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
    with started_mysql_pair((41, 42)) as pair:
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
        writable = rebuild_mysql(old, new, timeout=5)
        assert not writable.ok and "is a primary taking writes (read_only=OFF)" in writable.detail
        assert fence_mysql(old).ok

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


# ---------------------------------------------------------------- the failback plan (pure)

AT = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)


def _region(name: str, priority: int, host: str, rebuild: bool = True) -> dict:
    region = {
        "name": name,
        "priority": priority,
        "postgres": {"host": host, "port": 5432, "user": "dr", "password": "pg-secret", "database": "app"},
        "mysql": {"host": host, "port": 3306, "user": "dr", "password": "my-secret", "database": "shop"},
        "redis": {"host": host, "port": 6379, "password": "rd-secret"},
        "dns": {
            "provider": "route53",
            "zone": "Z123",
            "record_name": "app.example.com.",
            "value": f"lb-{name}.example",
        },
    }
    if rebuild:
        region["postgres_rebuild"] = {"data_directory": f"/srv/{name}/pgdata", "bin_dir": PG_BIN, "run_as": "postgres"}
    return region


THREE = FailoverConfig.model_validate(
    {
        "active_region": "us-west-2",
        "regions": [
            _region("us-west-2", 1, "10.1.0.10"),
            _region("us-east-1", 2, "10.2.0.10", rebuild=False),
            _region("eu-west-1", 3, "10.3.0.10"),
        ],
    }
)


def _health(name: str, *failed: str) -> RegionHealth:
    names = ("postgres.connect", "postgres.replication", "mysql.connect", "redis.ping")
    return score_region(THREE.region(name), [Check(n, n not in failed, detail=f"{n} detail") for n in names], at=AT)


HEALTHY = {name: _health(name) for name in ("us-west-2", "us-east-1", "eu-west-1")}
AWAY = State("us-east-1", 1, AT, "failover", previous="us-west-2")

GOLDEN = """\
failback to us-west-2: from us-east-1 (epoch 1 -> 2)
reason: back home
expected data loss: up to 0 s, 0 bytes
regions:
  us-west-2: the primary region (priority 1): the failback target
  us-east-1: the active region (the one being left): fenced, then rebuilt as a replica
  eu-west-1: replicas repointed at us-west-2
note: planned switchover: us-east-1 is fenced and us-west-2 catches up with everything it committed before anything \
is promoted (zero data loss); a failure before the promotion lifts the fence again
note: us-east-1 has no postgres_rebuild: its PostgreSQL stays a fenced primary after the failback
steps:
   1. rebuild postgres in us-west-2: 'us-west-2-postgres' at 10.1.0.10:5432: becomes a replica of \
'us-east-1-postgres' at 10.2.0.10:5432 (pg_rewind, else pg_basebackup, of /srv/us-west-2/pgdata), caught up \
[on failure: stop]
   2. rebuild mysql in us-west-2: 'us-west-2-mysql' at 10.1.0.10:3306: becomes a replica of 'us-east-1-mysql' at \
10.2.0.10:3306 (GTID repoint, or a re-seed from a dump if it diverged), caught up [on failure: stop]
   3. rebuild redis in us-west-2: 'us-west-2-redis' at 10.1.0.10:6379: becomes a replica of 'us-east-1-redis' at \
10.2.0.10:6379 (REPLICAOF), caught up [on failure: stop]
   4. fence postgres in us-east-1: 'us-east-1-postgres' at 10.2.0.10:5432: refuse writes \
(default_transaction_read_only=on), end client sessions [on failure: stop]
   5. fence mysql in us-east-1: 'us-east-1-mysql' at 10.2.0.10:3306: refuse writes (read_only=ON) [on failure: stop]
   6. fence redis in us-east-1: 'us-east-1-redis' at 10.2.0.10:6379: pause writes until it becomes a replica \
[on failure: stop]
   7. catch_up postgres in us-west-2: 'us-west-2-postgres' at 10.1.0.10:5432: until it has everything \
'us-east-1-postgres' at 10.2.0.10:5432 committed before the fence (zero data loss) [on failure: stop]
   8. catch_up mysql in us-west-2: 'us-west-2-mysql' at 10.1.0.10:3306: until it has everything 'us-east-1-mysql' at \
10.2.0.10:3306 committed before the fence (zero data loss) [on failure: stop]
   9. catch_up redis in us-west-2: 'us-west-2-redis' at 10.1.0.10:6379: until it has everything 'us-east-1-redis' at \
10.2.0.10:6379 committed before the fence (zero data loss) [on failure: stop]
  10. promote postgres in us-west-2: 'us-west-2-postgres' at 10.1.0.10:5432: pg_promote(), remove the fence left by \
the failover [on failure: stop]
  11. promote mysql in us-west-2: 'us-west-2-mysql' at 10.1.0.10:3306: STOP REPLICA, RESET REPLICA ALL, \
read_only=OFF [on failure: stop]
  12. promote redis in us-west-2: 'us-west-2-redis' at 10.1.0.10:6379: REPLICAOF NO ONE [on failure: stop]
  13. rebuild redis in us-east-1: 'us-east-1-redis' at 10.2.0.10:6379: becomes a replica of 'us-west-2-redis' at \
10.1.0.10:6379 (refuses writes for good) [on failure: continue]
  14. prove_writes postgres in us-west-2: 'us-west-2-postgres' at 10.1.0.10:5432: write a probe, read it back, \
remove it [on failure: stop]
  15. prove_writes mysql in us-west-2: 'us-west-2-mysql' at 10.1.0.10:3306: write a probe, read it back, remove it \
[on failure: stop]
  16. prove_writes redis in us-west-2: 'us-west-2-redis' at 10.1.0.10:6379: write a probe, read it back, remove it \
[on failure: stop]
  17. repoint postgres in eu-west-1: 'eu-west-1-postgres' at 10.3.0.10:5432: replicate from 'us-west-2-postgres' at \
10.1.0.10:5432 [on failure: continue]
  18. repoint mysql in eu-west-1: 'eu-west-1-mysql' at 10.3.0.10:3306: replicate from 'us-west-2-mysql' at \
10.1.0.10:3306 [on failure: continue]
  19. repoint redis in eu-west-1: 'eu-west-1-redis' at 10.3.0.10:6379: replicate from 'us-west-2-redis' at \
10.1.0.10:6379 [on failure: continue]
  20. rebuild postgres in us-east-1: 'us-east-1-postgres' at 10.2.0.10:5432: becomes a replica of \
'us-west-2-postgres' at 10.1.0.10:5432 (must be a standby already (the region has no postgres_rebuild)); stays \
fenced if not [on failure: continue]
  21. rebuild mysql in us-east-1: 'us-east-1-mysql' at 10.2.0.10:3306: becomes a replica of 'us-west-2-mysql' at \
10.1.0.10:3306 (GTID repoint, or a re-seed from a dump if it diverged); stays fenced if not [on failure: continue]
  22. switch_dns dns in us-west-2: route53 app.example.com. CNAME -> lb-us-west-2.example (TTL 60) \
[on failure: page; the state still moves]
  23. record_state state in us-west-2: us-west-2 active at epoch 2, nothing in progress [on failure: stop]"""


def test_the_plan_of_a_three_region_failback_is_golden_and_secret_free():
    plan = plan_failback(THREE, AWAY, HEALTHY, "back home")
    assert plan.render() == GOLDEN, plan.render()
    assert (plan.kind, plan.source, plan.target, plan.epoch, plan.forced) == (
        "failback",
        "us-east-1",
        "us-west-2",
        1,
        False,
    )
    text = plan.render() + json.dumps(plan.to_dict())
    assert not any(s in text for s in ("pg-secret", "my-secret", "rd-secret"))
    assert FailbackPlan.from_dict(plan.to_dict()) == plan


def test_a_failback_is_refused_when_home_already_in_progress_or_unhealthy():
    home = State("us-west-2", 2, AT, "failback")
    with pytest.raises(TargetRefusedError, match="primary region us-west-2 is active already .epoch 2.; nothing to"):
        plan_failback(THREE, home, HEALTHY, "again")
    busy = State("us-west-2", 2, AT, "failback", in_progress="failback to us-west-2", previous="us-east-1")
    with pytest.raises(StaleEpochError, match="if that run died run the failback again with --force"):
        plan_failback(THREE, busy, HEALTHY, "again")
    # Forced: run.py's re-run of the failover to us-west-2 finishes it (the region left stays fenced).
    finish = plan_failback(THREE, busy, HEALTHY, "finish", force=True)
    assert (finish.kind, finish.source, finish.target, finish.epoch) == ("failover", "us-east-1", "us-west-2", 2)
    assert finish.steps[0].what == "fence postgres in us-east-1" and finish.notes[-1].startswith(
        "finishes 'failback to us-west-2'; us-east-1 stays fenced"
    )
    other = State("us-east-1", 2, AT, "failover", in_progress="failover to us-east-1", previous="us-west-2")
    with pytest.raises(StaleEpochError, match="run the failover again with --force"):
        plan_failback(THREE, other, HEALTHY, "again", force=True)
    # Not streaming (not a replica yet) is what a failback repairs; a dead server is not.
    ok = plan_failback(THREE, AWAY, {**HEALTHY, "us-west-2": _health("us-west-2", "postgres.replication")}, "r")
    assert ok.target == "us-west-2"
    with pytest.raises(TargetRefusedError) as down:
        plan_failback(THREE, AWAY, {**HEALTHY, "us-west-2": _health("us-west-2", "mysql.connect")}, "r")
    assert "primary region us-west-2 is unhealthy (mysql.connect (mysql.connect detail)); restore it" in str(down.value)
    with pytest.raises(TargetRefusedError, match="if it is down, fail over instead .'failover run us-west-2'."):
        plan_failback(THREE, AWAY, {**HEALTHY, "us-east-1": _health("us-east-1", "redis.ping")}, "r")
    with pytest.raises(TargetRefusedError, match="no health measured for the primary region us-west-2"):
        plan_failback(THREE, AWAY, {"us-east-1": HEALTHY["us-east-1"]}, "r")


# ---------------------------------------------------------------- the round trip


def _round_trip_config(endpoint: str, zone: tuple[str, str], pg: PgPair, my: MySQLPair, rd) -> FailoverConfig:
    zone_id, name = zone

    def region(region: str, priority: int, pg_server: PostgresServer, my_node, rd_node) -> RegionConfig:
        return RegionConfig(
            name=region,
            priority=priority,
            postgres=pg_server.config(f"{region}-postgres"),
            mysql=my_node.config(f"{region}-mysql"),
            redis=rd_node.config(f"{region}-redis"),
            postgres_rebuild=rebuild_config(pg_server),
            dns=DnsConfig(
                provider="route53",
                zone=zone_id,
                record_name=f"app.{name}",
                value=f"lb.{region}.example.com",
                endpoint_url=endpoint,
            ),
        )

    return FailoverConfig(
        active_region="us-west-2",
        regions=[
            region("us-west-2", 1, pg.primary, my.primary, rd[0]),
            region("us-east-1", 2, pg.standby, my.replica, rd[1]),
        ],
    )


def _roles(config: FailoverConfig) -> dict[str, tuple]:
    """Who is primary now, as the servers themselves say."""
    out = {}
    for region in config.regions:
        with psycopg.connect(**_pg_kwargs(region.postgres)) as conn:
            (pg_standby,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        my = region.mysql
        with pymysql.connect(host=my.host, port=my.port, user=my.user, password=my.password.get_secret_value()) as c:
            with c.cursor() as cur:
                cur.execute("SHOW REPLICA STATUS")
                my_replica = cur.fetchone() is not None
        rd_role = redis.Redis(
            host=region.redis.host, port=region.redis.port, password=region.redis.password.get_secret_value()
        ).info("replication")["role"]
        out[region.name] = (
            "standby" if pg_standby else "primary",
            "replica" if my_replica else "primary",
            "replica" if rd_role == "slave" else "primary",
        )
    return out


def _pg_kwargs(cfg) -> dict:
    return dict(
        host=cfg.host, port=cfg.port, user=cfg.user, password=cfg.password.get_secret_value(), dbname=cfg.database,
        autocommit=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def round_trip_servers():
    options = PG_OPTIONS + HINTS
    with (
        started_pg_pair("gdr-pg-fb-rt-", primary_options=options, standby_options=options) as pg,
        started_mysql_pair((51, 52)) as my,
        started_redis_pair() as rd,
    ):
        yield pg, my, (rd.primary, rd.replica)


def test_round_trip_failover_writes_failback_nothing_lost_dns_back(round_trip_servers, moto_endpoint, tmp_path):
    pg, my, rd = round_trip_servers
    config = _round_trip_config(moto_endpoint, route53_zone(moto_endpoint), pg, my, rd)
    west, east = config.region("us-west-2"), config.region("us-east-1")
    with pg.primary.connect() as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
        conn.execute("INSERT INTO orders VALUES (1, 'before-failover')")
    with my.primary.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE shop")
        cur.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, item varchar(40))")
        cur.execute("INSERT INTO shop.orders VALUES (1, 'before-failover')")
    rd[0].client().set("order:1", "before-failover")
    pg.wait_streaming()
    my.wait_caught_up()
    RedisPair(*rd).wait_linked()
    states = StateStore(LocalStore(tmp_path / "vault"), config)

    # Failover to us-east-1 (run.py), then the application writes there.
    plan = plan_failover(config, states.read(), assess(config, Tracker(1), timeout=3), "us-east-1", reason="drill")
    assert execute_failover(config, plan, states, wait_timeout=20).outcome == "completed"
    assert _roles(config) == {"us-west-2": ("primary", "primary", "replica"), "us-east-1": ("primary",) * 3}
    with pg.standby.connect() as conn:
        conn.execute("INSERT INTO orders SELECT g, 'during-failover ' || g FROM generate_series(2, 101) g")
    with my.replica.connect() as conn, conn.cursor() as cur:
        cur.executemany("INSERT INTO shop.orders VALUES (%s, %s)", [(i, f"during-failover {i}") for i in range(2, 102)])
    rd[1].client().mset({f"order:{i}": f"during-failover {i}" for i in range(2, 102)})

    # Failback: the plan as --dry-run shows it changes nothing; then it runs.
    state = states.read()
    assessment = assess(config, Tracker(1), timeout=3, active=state.active_region)
    plan = plan_failback(config, state, assessment, "back home after the drill")
    assert plan.render().splitlines()[0] == "failback to us-west-2: from us-east-1 (epoch 1 -> 2)"
    assert states.read() == state and current_value(west.dns) == "lb.us-east-1.example.com"
    events: list[dict] = []

    report = execute_failback(config, plan, states, notify=events.append, wait_timeout=20, rebuild_timeout=60)

    assert [(s.what, s.status) for s in report.steps] == [
        ("rebuild postgres in us-west-2", "ok"),
        ("rebuild mysql in us-west-2", "ok"),
        ("rebuild redis in us-west-2", "ok"),
        ("fence postgres in us-east-1", "ok"),
        ("fence mysql in us-east-1", "ok"),
        ("fence redis in us-east-1", "ok"),
        ("catch_up postgres in us-west-2", "ok"),
        ("catch_up mysql in us-west-2", "ok"),
        ("catch_up redis in us-west-2", "ok"),
        ("promote postgres in us-west-2", "ok"),
        ("promote mysql in us-west-2", "ok"),
        ("promote redis in us-west-2", "ok"),
        ("rebuild redis in us-east-1", "ok"),
        ("prove_writes postgres in us-west-2", "ok"),
        ("prove_writes mysql in us-west-2", "ok"),
        ("prove_writes redis in us-west-2", "ok"),
        ("rebuild postgres in us-east-1", "ok"),
        ("rebuild mysql in us-east-1", "ok"),
        ("switch_dns dns in us-west-2", "ok"),
        ("record_state state in us-west-2", "ok"),
    ], report.render()
    details = {s.what: s.detail for s in report.steps}
    assert "rebuilt by pg_rewind" in details["rebuild postgres in us-west-2"]
    assert "repointed at" in details["rebuild mysql in us-west-2"]  # a planned failover leaves no divergence
    assert "rebuilt by pg_rewind" in details["rebuild postgres in us-east-1"]
    assert (report.kind, report.outcome, report.epoch, report.data_loss["planned"]) == (
        "failback", "completed", 2, {"lag_s": 0.0, "lag_bytes": 0},
    )  # fmt: skip
    secrets_ = (pg.primary.password, my.primary.password, rd[0].password)
    assert not any(s in json.dumps(report.to_dict()) + report.render() + json.dumps(events) for s in secrets_)
    assert [(e["severity"], e["title"]) for e in events] == [("info", "failback to us-west-2: completed")]

    # Back home: every write made during the failover is on the original primaries, roles and DNS restored.
    state = states.read()
    assert (state.active_region, state.epoch, state.in_progress, state.outcome) == ("us-west-2", 2, None, "completed")
    assert [r["kind"] for r in states.reports()] == ["failover", "failback"]
    assert current_value(west.dns) == "lb.us-west-2.example.com"
    assert _roles(config) == {"us-west-2": ("primary",) * 3, "us-east-1": ("standby", "replica", "replica")}
    assert pg_rows(pg.primary, "SELECT count(*), max(id) FROM orders") == [(101, 101)]
    with my.primary.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), max(id) FROM shop.orders")
        assert cur.fetchone() == (101, 101)
    values = rd[0].client().mget([f"order:{i}" for i in range(1, 102)])
    assert values[0] == b"before-failover" and values[1:] == [f"during-failover {i}".encode() for i in range(2, 102)]

    # The original primaries take writes again and the region left follows them.
    with pg.primary.connect() as conn:
        conn.execute("INSERT INTO orders VALUES (200, 'after-failback')")
    with my.primary.connect() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO shop.orders VALUES (200, 'after-failback')")
    rd[0].client().set("order:200", "after-failback")
    pg.wait_streaming(20)
    my.wait_caught_up(20)
    RedisPair(*rd).wait_linked()
    assert pg_rows(pg.standby, "SELECT item FROM orders WHERE id = 200") == [("after-failback",)]
    assert rd[1].client().get("order:200") == b"after-failback"
    assert east.postgres is not None


def test_a_failback_that_fails_after_fencing_but_before_any_promotion_rolls_back(round_trip_servers, tmp_path):
    """The active region is fenced, then the primary region's catch-up fails: the fences are lifted and the state
    moves back to the region that stays active. The failure is real: the plan's catch-up names the primary region
    itself as the one to catch up with (a standby has no WAL position of its own to give)."""
    pg, my, rd = round_trip_servers
    config = _round_trip_config("http://127.0.0.1:9", ("Z1", "gdr.test."), pg, my, rd)
    # us-west-2 is active (the round trip brought it back): make us-east-1 the home region to fail back to.
    away, home = config.regions
    config = config.model_copy(
        update={"regions": [away.model_copy(update={"priority": 2}), home.model_copy(update={"priority": 1})]}
    )
    states = StateStore(LocalStore(tmp_path / "vault"), config)
    plan = plan_failback(config, states.read(), assess(config, Tracker(1), timeout=3), "try")
    plan = dataclasses.replace(
        plan,
        steps=tuple(
            dataclasses.replace(s, peer="us-east-1") if s.what == "catch_up postgres in us-east-1" else s
            for s in plan.steps
        ),
    )
    events: list[dict] = []

    with pytest.raises(FailoverIncompleteError) as stopped:
        execute_failback(config, plan, states, notify=events.append, wait_timeout=5, rebuild_timeout=20)

    message = str(stopped.value)
    assert "failback to us-east-1 stopped before any promotion at 'catch_up postgres in us-east-1'" in message
    assert "fences lifted, us-west-2 active again at epoch 2" in message and "\n" not in message
    report = stopped.value.report
    assert (report["operation"], report["outcome"], report["epoch"]) == (
        "roll back of failback to us-east-1", "rolled_back", 2,
    )  # fmt: skip
    steps = [(s["action"], s["component"], s["region"], s["status"]) for s in report["steps"]]
    assert steps[3:7] == [
        ("fence", "postgres", "us-west-2", "ok"),
        ("fence", "mysql", "us-west-2", "ok"),
        ("fence", "redis", "us-west-2", "ok"),
        ("catch_up", "postgres", "us-east-1", "failed"),
    ]
    assert steps[-4:] == [
        ("unfence", "postgres", "us-west-2", "ok"),
        ("unfence", "mysql", "us-west-2", "ok"),
        ("unfence", "redis", "us-west-2", "ok"),
        ("record_state", "state", "us-west-2", "ok"),
    ]
    assert not any(status == "ok" for action, _, _, status in steps if action == "promote")
    state = states.read()
    assert (state.active_region, state.epoch, state.in_progress, state.outcome) == ("us-west-2", 2, None, "rolled_back")
    assert [r["outcome"] for r in states.reports()] == ["incomplete", "rolled_back"]
    assert [(e["severity"], e["title"]) for e in events] == [
        ("critical", "failback to us-east-1: incomplete"),
        ("warning", "roll back of failback to us-east-1: rolled_back"),
    ]
    # Nothing was promoted and us-west-2 takes writes again (fence and pause lifted); us-east-1 still follows.
    assert _roles(config) == {"us-west-2": ("primary",) * 3, "us-east-1": ("standby", "replica", "replica")}
    with pg.primary.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS still_writable (id int)")
        conn.execute("INSERT INTO still_writable VALUES (1)")
    with my.primary.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT @@read_only")
        assert cur.fetchone() == (0,)
    rd[0].client().set("order:still", "writable")
