"""The failover itself (core/failover/run.py, rds.py): golden plans (pure), then real runs on throw-away
replicated pairs of this module (the session pairs keep their roles) with Route53 and RDS on the moto server:
a full failover of PostgreSQL + MariaDB + Redis + RDS with the DNS switch, raced by a second run that must lose
having touched nothing; a dead old primary fenced when it returns; a run stopped halfway, taken over with --force
and ending in a failed DNS switch that leaves the old primary fenced."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime

import boto3
import psycopg
import pytest

from core.errors import (
    ConfigError,
    DnsSwitchError,
    FailoverIncompleteError,
    NoHealthyRegionError,
    StaleEpochError,
    TargetRefusedError,
)
from core.failover.choose import State
from core.failover.dns import current_value
from core.failover.health import Check, Tracker, score_region
from core.failover.monitor import assess
from core.failover.rds import promote_rds, rds_status
from core.failover.report import FailoverReport
from core.failover.run import FailoverPlan, execute_failover, plan_failover, refence_if_returned
from core.failover.state import StateStore
from core.failover.topology import FailoverConfig, RegionConfig, set_credentials_resolver
from core.storage.local import LocalStore
from tests.fixtures_failover import route53_zone
from tests.fixtures_postgres import PostgresServer
from tests.fixtures_replication import started_mysql_pair, started_pg_pair, started_redis_pair

AT = datetime(2026, 12, 6, 3, 30, tzinfo=UTC)

# ---------------------------------------------------------------- plans (pure)


def _region(name: str, priority: int, host: str, rds: str | None = None, dns: str | None = None) -> dict:
    region = {
        "name": name,
        "priority": priority,
        "postgres": {"host": host, "port": 5432, "user": "dr", "password": "pg-secret", "database": "app"},
        "mysql": {"host": host, "port": 3306, "user": "dr", "password": "my-secret", "database": "shop"},
        "redis": {"host": host, "port": 6379, "password": "rd-secret"},
    }
    if rds:
        region["rds_instance_id"] = rds
    if dns:
        region["dns"] = {"provider": "route53", "zone": "Z123", "record_name": "app.example.com.", "value": dns}
    return region


THREE = FailoverConfig.model_validate(
    {
        "active_region": "us-west-2",
        "max_data_loss_seconds": 5,
        "regions": [
            _region("us-west-2", 1, "10.1.0.10", "app-db", "lb-west.example.com"),
            _region("us-east-1", 2, "10.2.0.10", "app-db-east", "lb-east.example.com"),
            _region("eu-west-1", 3, "10.3.0.10", None, "lb-eu.example.com"),
        ],
    }
)


def _health(name: str, ok: bool = True, lag: float | None = 0.0, lag_bytes: int | None = 0):
    checks = [Check("postgres.connect", ok), Check("postgres.replication", ok, lag_s=lag, lag_bytes=lag_bytes)]
    return score_region(THREE.region(name), checks, at=AT)


HEALTH = {
    "us-west-2": _health("us-west-2", ok=False),
    "us-east-1": _health("us-east-1", lag=1.5, lag_bytes=4096),
    "eu-west-1": _health("eu-west-1", lag=0.2),
}
STATE = State("us-west-2", 3, AT, "initial")

GOLDEN = """\
failover to us-east-1: from us-west-2 (epoch 3 -> 4)
reason: us-west-2 down 3 checks
expected data loss: up to 1.5 s, 4096 bytes
regions:
  us-west-2: the active region (the one being left)
  us-east-1: chosen: priority 2, healthy (score 1.00), lag 1.5 s within 5 s
  eu-west-1: qualifies, but priority 3 ranks below us-east-1 (priority 2)
note: RDS has no write fence: the old RDS primary keeps taking writes from clients that still reach it
steps:
   1. fence postgres in us-west-2: 'us-west-2-postgres' at 10.1.0.10:5432: refuse writes \
(default_transaction_read_only=on), end client sessions; if unreachable, recorded and fenced when it returns \
[on failure: stop unless unreachable]
   2. fence mysql in us-west-2: 'us-west-2-mysql' at 10.1.0.10:3306: refuse writes (read_only=ON); if unreachable, \
recorded and fenced when it returns [on failure: stop unless unreachable]
   3. fence redis in us-west-2: 'us-west-2-redis' at 10.1.0.10:6379: pause writes (CLIENT PAUSE WRITE) until it \
becomes a replica of the new primary; if unreachable, recorded and fenced when it returns \
[on failure: stop unless unreachable]
   4. wait_replayed postgres in us-east-1: 'us-east-1-postgres' at 10.2.0.10:5432: until it replayed all it \
received [on failure: stop]
   5. wait_replayed mysql in us-east-1: 'us-east-1-mysql' at 10.2.0.10:3306: until it replayed all it received \
[on failure: stop]
   6. wait_replayed redis in us-east-1: 'us-east-1-redis' at 10.2.0.10:6379: until it replayed all it received \
(and reached the offset of us-west-2's primary while it answers) [on failure: stop]
   7. promote postgres in us-east-1: 'us-east-1-postgres' at 10.2.0.10:5432: pg_promote(), remove an earlier fence \
[on failure: stop]
   8. promote mysql in us-east-1: 'us-east-1-mysql' at 10.2.0.10:3306: STOP REPLICA, RESET REPLICA ALL, \
read_only=OFF [on failure: stop]
   9. promote redis in us-east-1: 'us-east-1-redis' at 10.2.0.10:6379: REPLICAOF NO ONE [on failure: stop]
  10. fence redis in us-west-2: 'us-west-2-redis' at 10.1.0.10:6379: becomes a replica of 'us-east-1-redis' at \
10.2.0.10:6379 (refuses writes for good) [on failure: stop unless unreachable]
  11. promote rds in us-east-1: 'app-db-east' in us-east-1: PromoteReadReplica, wait until available \
[on failure: stop]
  12. prove_writes postgres in us-east-1: 'us-east-1-postgres' at 10.2.0.10:5432: write a probe, read it back, \
remove it [on failure: stop]
  13. prove_writes mysql in us-east-1: 'us-east-1-mysql' at 10.2.0.10:3306: write a probe, read it back, remove it \
[on failure: stop]
  14. prove_writes redis in us-east-1: 'us-east-1-redis' at 10.2.0.10:6379: write a probe, read it back, remove it \
[on failure: stop]
  15. repoint postgres in eu-west-1: 'eu-west-1-postgres' at 10.3.0.10:5432: replicate from 'us-east-1-postgres' at \
10.2.0.10:5432 [on failure: continue]
  16. repoint mysql in eu-west-1: 'eu-west-1-mysql' at 10.3.0.10:3306: replicate from 'us-east-1-mysql' at \
10.2.0.10:3306 [on failure: continue]
  17. repoint redis in eu-west-1: 'eu-west-1-redis' at 10.3.0.10:6379: replicate from 'us-east-1-redis' at \
10.2.0.10:6379 [on failure: continue]
  18. switch_dns dns in us-east-1: route53 app.example.com. CNAME -> lb-east.example.com (TTL 60) \
[on failure: page; the state still moves]
  19. record_state state in us-east-1: us-east-1 active at epoch 4, nothing in progress (in the vault) \
[on failure: stop]"""


def test_the_plan_of_a_three_region_failover_is_golden_and_secret_free():
    plan = plan_failover(THREE, STATE, HEALTH, reason="us-west-2 down 3 checks")
    assert plan.render() == GOLDEN
    assert (plan.target, plan.source, plan.leaving, plan.epoch, plan.forced) == (
        "us-east-1",
        "us-west-2",
        ("us-west-2",),
        3,
        False,
    )
    assert (plan.data_loss_s, plan.data_loss_bytes) == (1.5, 4096)
    assert FailoverPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    text = plan.render() + json.dumps(plan.to_dict())
    assert not any(s in text for s in ("pg-secret", "my-secret", "rd-secret"))


def test_a_named_target_is_checked_and_force_is_recorded():
    named = plan_failover(THREE, STATE, HEALTH, "eu-west-1", reason="drill")
    assert named.target == "eu-west-1" and not named.forced
    assert named.reasons["eu-west-1"] == "chosen by name: qualifies, but priority 3 ranks below us-east-1 (priority 2)"
    assert named.reasons["us-east-1"] == (
        "not named: priority 2, healthy (score 1.00), lag 1.5 s within 5 s (the first choice by priority)"
    )
    # The other region's replicas follow the new primary.
    assert [s.what for s in named.steps if s.action == "repoint"] == [
        "repoint postgres in us-east-1",
        "repoint mysql in us-east-1",
        "repoint redis in us-east-1",
    ]

    lagging = {**HEALTH, "eu-west-1": _health("eu-west-1", lag=30.0)}
    with pytest.raises(TargetRefusedError) as refused:
        plan_failover(THREE, STATE, lagging, "eu-west-1", reason="drill")
    assert str(refused.value) == (
        "failover target eu-west-1 refused: lags 30 s, over the 5 s allowed data loss; choose another region, or "
        "pass --force to fail over anyway (the report records it)"
    )
    assert refused.value.exit_code == 27
    forced = plan_failover(THREE, STATE, lagging, "eu-west-1", force=True, reason="drill")
    assert forced.forced and forced.reasons["eu-west-1"] == "chosen by force: lags 30 s, over the 5 s allowed data loss"
    assert forced.render().splitlines()[0] == "failover to eu-west-1: from us-west-2 (epoch 3 -> 4) FORCED"
    # A forced run accepts the lag: waiting for replay no longer stops it.
    assert {s.on_failure for s in forced.steps if s.action == "wait_replayed"} == {"continue"}

    sick = {**HEALTH, "eu-west-1": _health("eu-west-1", ok=False)}
    with pytest.raises(TargetRefusedError, match=r"refused: unhealthy \(score 0.00; failed: postgres.connect"):
        plan_failover(THREE, STATE, sick, "eu-west-1", reason="drill")
    with pytest.raises(TargetRefusedError, match="us-west-2 is the active region already"):
        plan_failover(THREE, STATE, HEALTH, "us-west-2", reason="drill")
    with pytest.raises(ConfigError, match="unknown region 'ap-south-1'"):
        plan_failover(THREE, STATE, HEALTH, "ap-south-1", reason="drill")


def test_no_qualifying_region_names_every_reason():
    down = {
        "us-west-2": _health("us-west-2", ok=False),
        "us-east-1": _health("us-east-1", ok=False),
        "eu-west-1": _health("eu-west-1", lag=None),
    }
    with pytest.raises(NoHealthyRegionError) as caught:
        plan_failover(THREE, STATE, down, reason="all down")
    assert str(caught.value) == (
        "no region qualifies to fail over to from us-west-2: us-west-2: the active region (the one being left); "
        "us-east-1: unhealthy (score 0.00; failed: postgres.connect, postgres.replication); eu-west-1: replication "
        "lag unknown (no passing check measured it); restore a region's health, or name a target with --force to "
        "accept its lag"
    )
    assert caught.value.exit_code == 26
    # --force without a name takes the best healthy one whatever its lag (never an unhealthy one).
    forced = plan_failover(THREE, STATE, down, force=True, reason="all down")
    assert (forced.target, forced.forced) == ("eu-west-1", True)


def test_an_operation_in_progress_is_refused_and_force_reruns_or_takes_it_over():
    busy = State("us-east-1", 4, AT, "down", in_progress="failover to us-east-1", previous="us-west-2")
    with pytest.raises(StaleEpochError) as caught:
        plan_failover(THREE, busy, HEALTH, "us-east-1", reason="again")
    assert str(caught.value) == (
        "failover state epoch 4: 'failover to us-east-1' is in progress since 2026-12-06T03:30:00+00:00; wait for "
        "it, or if that run died take it over with --force"
    )
    rerun = plan_failover(THREE, busy, HEALTH, "us-east-1", force=True, reason="again")
    assert (rerun.source, rerun.leaving, rerun.target, rerun.epoch) == ("us-west-2", ("us-west-2",), "us-east-1", 4)
    assert "re-runs 'failover to us-east-1' left in progress at epoch 4; done steps are no-ops" in rerun.notes
    # Elsewhere: the half-promoted target of the dead run is fenced as well as the region it left.
    elsewhere = plan_failover(THREE, busy, HEALTH, "eu-west-1", force=True, reason="east is failing too")
    assert elsewhere.leaving == ("us-east-1", "us-west-2")
    assert [s.region for s in elsewhere.steps if s.action == "fence"] == ["us-east-1"] * 3 + ["us-west-2"] * 3 + [
        "us-east-1",
        "us-west-2",
    ]
    assert not [s for s in elsewhere.steps if s.action == "repoint"]


def test_credentials_blocks_are_resolved_before_anything_is_claimed(tmp_path):
    config = THREE.model_copy(deep=True)
    target = config.region("us-east-1")
    target.dns = target.dns.model_copy(update={"credentials": "dns-creds"})
    target.aws_credentials = "rds-creds"
    store = LocalStore(tmp_path / "vault")
    plan = plan_failover(config, State("us-west-2", 0, AT, "initial"), HEALTH, reason="drill")
    set_credentials_resolver(None)
    with pytest.raises(ConfigError) as caught:
        execute_failover(config, plan, StateStore(store, config))
    assert str(caught.value) == (
        "dns app.example.com.: credentials block 'dns-creds' cannot be read outside genesis-dr's flows; import "
        "blocks first (import blocks.failover) or drop it to use the default chain"
    )
    asked: list[tuple[str, str]] = []

    class Stop(Exception):
        pass

    def resolver(provider: str, name: str):
        asked.append((provider, name))
        if name == "rds-creds":
            raise Stop
        return object()

    set_credentials_resolver(resolver)
    try:
        with pytest.raises(Stop):
            execute_failover(config, plan, StateStore(store, config))
    finally:
        set_credentials_resolver(None)
    assert asked == [("aws", "dns-creds"), ("aws", "rds-creds")]
    assert list(store.list("")) == []  # nothing claimed, nothing touched


# ---------------------------------------------------------------- throw-away pairs of this module


def _dump(cfg) -> dict:
    data = cfg.model_dump(exclude={"name", "kind"})
    data["password"] = cfg.password.get_secret_value() if cfg.password else None
    return data


def _rds(endpoint: str, *, replica: bool = True) -> tuple[str, str]:
    """A fresh RDS instance in us-west-2 and (``replica``) its cross-region read replica in us-east-1."""
    source, copy = f"app-{uuid.uuid4().hex[:8]}", f"app-east-{uuid.uuid4().hex[:8]}"
    west = boto3.client("rds", endpoint_url=endpoint, region_name="us-west-2")
    arn = west.create_db_instance(
        DBInstanceIdentifier=source,
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        MasterUsername="app",
        MasterUserPassword="not-a-secret-moto",
        AllocatedStorage=20,
    )["DBInstance"]["DBInstanceArn"]
    if replica:
        boto3.client("rds", endpoint_url=endpoint, region_name="us-east-1").create_db_instance_read_replica(
            DBInstanceIdentifier=copy, SourceDBInstanceIdentifier=arn, DBInstanceClass="db.t3.micro"
        )
    return source, copy


def _two_regions(endpoint: str, zone: tuple[str, str], west: dict, east: dict, rds: tuple[str, str]) -> FailoverConfig:
    zone_id, name = zone

    def dns(value: str) -> dict:
        return {
            "provider": "route53",
            "zone": zone_id,
            "record_name": f"app.{name}",
            "value": value,
            "endpoint_url": endpoint,
        }

    return FailoverConfig.model_validate(
        {
            "active_region": "us-west-2",
            "failures_before_down": 1,
            "regions": [
                {"name": "us-west-2", "priority": 1, "rds_instance_id": rds[0], "aws_endpoint_url": endpoint, **west}
                | {"dns": dns("lb.us-west-2.example.com")},
                {"name": "us-east-1", "priority": 2, "rds_instance_id": rds[1], "aws_endpoint_url": endpoint, **east}
                | {"dns": dns("lb.us-east-1.example.com")},
            ],
        }
    )


def _writable_pg(server: PostgresServer) -> bool:
    with server.connect() as conn:
        standby, ro = conn.execute(
            "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')"
        ).fetchone()
    return not standby and ro == "off"


# ---------------------------------------------------------------- RDS


def test_promote_rds_on_moto(moto_endpoint):
    source, copy = _rds(moto_endpoint)
    replica = RegionConfig(name="us-east-1", priority=2, rds_instance_id=copy, aws_endpoint_url=moto_endpoint)
    primary = RegionConfig(name="us-west-2", priority=1, rds_instance_id=source, aws_endpoint_url=moto_endpoint)
    before = rds_status(replica)
    assert (before.status, before.role, before.replica_of) == (
        "available",
        "replica",
        f"arn:aws:rds:us-west-2:123456789012:db:{source}",
    )

    step = promote_rds(replica, poll_interval=0.1)
    assert (step.name, step.ok) == ("promote", True)
    assert step.detail == (
        f"rds '{copy}' in us-east-1: promoted from read replica of arn:aws:rds:us-west-2:123456789012:db:{source} "
        "(available)"
    )
    same = promote_rds(primary)
    assert (same.ok, same.detail) == (True, f"rds '{source}' in us-west-2: is a primary already (available)")
    assert rds_status(primary).to_dict()["role"] == "primary"

    missing = RegionConfig(name="us-east-1", priority=2, rds_instance_id="no-such-db", aws_endpoint_url=moto_endpoint)
    failed = promote_rds(missing)
    assert failed.ok is False
    assert failed.detail == (
        "rds 'no-such-db' in us-east-1: promotion failed: DBInstanceNotFound: DBInstance no-such-db not found.; "
        "check rds_instance_id and aws_region of the region"
    )
    unread = rds_status(missing)
    assert (unread.status, unread.role) == (None, None) and "DBInstanceNotFound" in unread.detail


# ---------------------------------------------------------------- full failover


def test_full_failover_raced_by_a_second_run_and_a_dead_old_primary_refenced_when_back(moto_endpoint, tmp_path):
    zone = route53_zone(moto_endpoint)
    rds = _rds(moto_endpoint)
    with started_pg_pair("gdr-pg-run-") as pg, started_mysql_pair((31, 32)) as my, started_redis_pair() as rd:
        config = _two_regions(
            moto_endpoint,
            zone,
            {
                "postgres": _dump(pg.primary.config()),
                "mysql": _dump(my.primary.config()),
                "redis": _dump(rd.primary.config()),
            },
            {
                "postgres": _dump(pg.standby.config()),
                "mysql": _dump(my.replica.config()),
                "redis": _dump(rd.replica.config()),
            },
            rds,
        )
        with pg.primary.connect() as conn:
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, item text)")
            conn.execute("INSERT INTO orders VALUES (1, 'before-failover')")
        with my.primary.connect() as conn, conn.cursor() as cur:
            cur.execute("CREATE DATABASE shop")
            cur.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, item varchar(40))")
            cur.execute("INSERT INTO shop.orders VALUES (1, 'before-failover')")
        rd.primary.client().set("order:1", "before-failover")
        pg.wait_streaming()
        my.wait_caught_up()
        rd.wait_linked()

        store = LocalStore(tmp_path / "vault")
        states = StateStore(store, config)
        assessment = assess(config, Tracker(1), timeout=3)
        plan = plan_failover(config, states.read(), assessment, "us-east-1", reason="planned move to us-east-1")
        # A dry run is the plan: nothing changed anywhere.
        assert plan.render().splitlines()[0] == "failover to us-east-1: from us-west-2 (epoch 0 -> 1)"
        assert len(plan.steps) == 16
        assert not store.exists("failover/state.json") and list(store.list("failover/")) == []
        assert current_value(config.region("us-west-2").dns) == "lb.us-west-2.example.com"
        assert _writable_pg(pg.primary) and rds_status(config.region("us-east-1")).role == "replica"
        assert my.primary.password not in plan.render() + json.dumps(plan.to_dict())

        pg.primary.stop()  # the old PostgreSQL primary is dead: its fence is recorded, not a refusal
        events: list[dict] = []
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def run() -> None:
            barrier.wait()
            try:
                outcomes.append(
                    execute_failover(config, plan, StateStore(store, config), notify=events.append, wait_timeout=20)
                )
            except StaleEpochError as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=run) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reports = [o for o in outcomes if not isinstance(o, StaleEpochError)]
        assert len(reports) == 1 and len(outcomes) == 2, outcomes
        report = reports[0]
        assert [(s.what, s.status) for s in report.steps] == [
            ("fence postgres in us-west-2", "unreachable"),
            ("fence mysql in us-west-2", "ok"),
            ("fence redis in us-west-2", "ok"),
            ("wait_replayed postgres in us-east-1", "ok"),
            ("wait_replayed mysql in us-east-1", "ok"),
            ("wait_replayed redis in us-east-1", "ok"),
            ("promote postgres in us-east-1", "ok"),
            ("promote mysql in us-east-1", "ok"),
            ("promote redis in us-east-1", "ok"),
            ("fence redis in us-west-2", "ok"),
            ("promote rds in us-east-1", "ok"),
            ("prove_writes postgres in us-east-1", "ok"),
            ("prove_writes mysql in us-east-1", "ok"),
            ("prove_writes redis in us-east-1", "ok"),
            ("switch_dns dns in us-east-1", "ok"),
            ("record_state state in us-east-1", "ok"),
        ], report.render()
        assert (report.outcome, report.epoch, report.to_fence_when_back) == ("completed", 1, ["postgres in us-west-2"])
        at_promotion = {c["check"]: c for c in report.data_loss["at_promotion"]}
        assert at_promotion["mysql.replication"]["ok"] and at_promotion["redis.replication"]["lag_s"] == 0.0
        assert report.data_loss["planned"] == {"lag_s": 0.0, "lag_bytes": assessment.regions["us-east-1"].lag_bytes}
        secrets_ = (pg.primary.password, my.primary.password, rd.primary.password)
        assert not any(s in json.dumps(report.to_dict()) + report.render() for s in secrets_)

        # The state, the one report and the one notification.
        state = states.read()
        assert (state.active_region, state.epoch, state.in_progress, state.outcome, state.previous) == (
            "us-east-1",
            1,
            None,
            "completed",
            "us-west-2",
        )
        stored = states.reports()
        assert [r["operation_id"] for r in stored] == [report.operation_id]
        assert stored[0]["plan"] == plan.to_dict() and FailoverReport.from_dict(stored[0]) == report
        assert stored[0]["components"]["postgres"] == (
            "fence unreachable in us-west-2, wait_replayed ok in us-east-1, promote ok in us-east-1, "
            "prove_writes ok in us-east-1"
        )
        assert [(e["severity"], e["outcome"], e["title"]) for e in events] == [
            ("info", "success", "failover to us-east-1: completed")
        ]
        assert "unreachable, fenced when they return: postgres in us-west-2" in events[0]["summary"]

        # The new primaries hold what was written before and take writes; the old ones refuse them.
        assert current_value(config.region("us-east-1").dns) == "lb.us-east-1.example.com"
        assert report.dns["previous"] == "lb.us-west-2.example.com"
        with pg.standby.connect() as conn:
            assert conn.execute("SELECT item FROM orders").fetchall() == [("before-failover",)]
            conn.execute("INSERT INTO orders VALUES (2, 'after-failover')")
        with my.replica.connect() as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO shop.orders VALUES (2, 'after-failover')")
            cur.execute("SELECT item FROM shop.orders ORDER BY id")
            assert cur.fetchall() == (("before-failover",), ("after-failover",))
        with my.primary.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@read_only")
            assert cur.fetchone() == (1,)
        assert rd.replica.client().info("replication")["role"] == "master"
        assert rd.primary.client().info("replication")["role"] == "slave"
        assert rd.replica.client().get("order:1") == b"before-failover"
        assert rds_status(config.region("us-east-1")).status == "available"

        # The dead PostgreSQL primary comes back writable: the monitor's refence fences it, once.
        assert refence_if_returned(config, state) == []
        pg.primary.start()
        assert _writable_pg(pg.primary)
        steps = refence_if_returned(config, state)
        assert [(s.name, s.ok) for s in steps] == [("fence", True)], steps
        assert "postgres 'us-west-2-postgres'" in steps[0].detail
        assert not _writable_pg(pg.primary)
        with pg.primary.connect() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO orders VALUES (3, 'split-brain')")
        assert refence_if_returned(config, state) == []
        # While an operation is in progress, the monitor leaves the fencing to it (here us-west-2 would be fenced).
        with pg.primary.connect() as conn:
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
            conn.execute("SELECT pg_reload_conf()")
        busy = State("us-east-1", 2, AT, "again", in_progress="failover to us-east-1", previous="us-west-2")
        assert refence_if_returned(config, busy) == []


# ---------------------------------------------------------------- stopped halfway, taken over, DNS fails


def test_a_run_stopped_halfway_then_taken_over_whose_dns_switch_fails_keeps_the_old_primary_fenced(
    moto_endpoint, tmp_path
):
    # The RDS replica does not exist yet (promotion fails after PostgreSQL was promoted); the DNS zone never does.
    source, copy = _rds(moto_endpoint, replica=False)
    with started_pg_pair("gdr-pg-run-") as pg:
        config = _two_regions(
            moto_endpoint,
            ("Z0000000NOSUCHZONE", "gdr-missing.test."),
            {"postgres": _dump(pg.primary.config())},
            {"postgres": _dump(pg.standby.config())},
            (source, copy),
        )
        store = LocalStore(tmp_path / "vault")
        states = StateStore(store, config)
        health = {
            "us-west-2": score_region("us-west-2", [Check("postgres.connect", False)], at=AT),
            "us-east-1": score_region("us-east-1", [Check("postgres.replication", True, lag_s=0.0)], at=AT),
        }
        plan = plan_failover(config, states.read(), health, reason="us-west-2 down")
        events: list[dict] = []
        with pytest.raises(FailoverIncompleteError) as caught:
            execute_failover(config, plan, states, notify=events.append, wait_timeout=20)
        assert str(caught.value) == (
            f"failover to us-east-1 stopped at 'promote rds in us-east-1': rds '{copy}' in us-east-1: promotion "
            f"failed: DBInstanceNotFound: DBInstance {copy} not found.; check rds_instance_id and aws_region of the "
            "region; postgres: fence ok in us-west-2, wait_replayed ok in us-east-1, promote ok in us-east-1, "
            "prove_writes not run in us-east-1; rds: promote FAILED in us-east-1; dns: switch_dns not run in "
            "us-east-1; the state stays at epoch 1 in progress; next: fix rds in us-east-1, then run the failover "
            "to us-east-1 again with --force: it takes this run over and repeats each step (done ones are no-ops)"
        )
        assert caught.value.exit_code == 28
        assert caught.value.report["outcome"] == "incomplete"
        assert [e["severity"] for e in events] == ["critical"]
        busy = states.read()
        assert (busy.active_region, busy.epoch, busy.in_progress, busy.previous) == (
            "us-east-1",
            1,
            "failover to us-east-1",
            "us-west-2",
        )
        assert not _writable_pg(pg.primary)  # fenced before anything was promoted

        # Nobody acts on top of it without --force; with it, the same failover runs again.
        with pytest.raises(StaleEpochError, match="in progress"):
            plan_failover(config, busy, health, "us-east-1", reason="retry")
        west = boto3.client("rds", endpoint_url=moto_endpoint, region_name="us-west-2")
        arn = west.describe_db_instances(DBInstanceIdentifier=source)["DBInstances"][0]["DBInstanceArn"]
        boto3.client("rds", endpoint_url=moto_endpoint, region_name="us-east-1").create_db_instance_read_replica(
            DBInstanceIdentifier=copy, SourceDBInstanceIdentifier=arn, DBInstanceClass="db.t3.micro"
        )
        retry = plan_failover(config, busy, health, "us-east-1", force=True, reason="rds replica created")
        with pytest.raises(DnsSwitchError) as dns_failed:
            execute_failover(config, retry, states, notify=events.append, wait_timeout=20)
        message = str(dns_failed.value)
        assert message.startswith(
            "failover to us-east-1: databases promoted and the state moved to us-east-1 (epoch 2), but the DNS "
            "switch failed: route53 zone Z0000000NOSUCHZONE record app.gdr-missing.test. CNAME: route53 refused to "
        )
        assert message.endswith("; the old primary stays fenced; point the record at us-east-1 by hand")
        assert dns_failed.value.exit_code == 25
        done = states.read()
        assert (done.active_region, done.epoch, done.in_progress, done.outcome) == (
            "us-east-1",
            2,
            None,
            "dns_failed: databases promoted in us-east-1, DNS not switched",
        )
        assert done.reason == (
            "rds replica created (forced: took over 'failover to us-east-1' left in progress at epoch 1)"
        )
        last = states.reports(last=1)[0]
        assert [(s["action"], s["component"], s["status"]) for s in last["steps"]] == [
            ("fence", "postgres", "ok"),
            ("wait_replayed", "postgres", "ok"),
            ("promote", "postgres", "ok"),
            ("promote", "rds", "ok"),
            ("prove_writes", "postgres", "ok"),
            ("switch_dns", "dns", "failed"),
            ("record_state", "state", "ok"),
        ]
        assert "is a primary already" in last["steps"][2]["detail"]
        assert (
            last["next_step"]
            == "point app.gdr-missing.test. CNAME at lb.us-east-1.example.com by hand; the old primary stays fenced"
        )
        assert [e["severity"] for e in events] == ["critical", "critical"]
        assert not _writable_pg(pg.primary) and _writable_pg(pg.standby)
        with pg.primary.connect() as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE split_brain (id int)")
        assert len(states.reports()) == 2
