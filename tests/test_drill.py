"""Drills: RTO and RPO measured on a real recovery of a whole stack, held against the objectives.

What an operator relies on: the figures (pure functions, golden tests) say exactly how far a
recovery was from its objectives; the record, its markdown and the status read back from the vault
give the same figures; the chart is a PNG of them. Against real servers: a monthly drill of a
postgres + mariadb + redis stack restores every source in sandboxes and passes with RTO, RPO and
stage figures; a tiny RTO objective and a tiny RPO objective fail the drill naming the violation;
nothing is left running afterwards.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.chains import parse_iso
from core.drills import drill_status, run_drill
from core.drills.chart import REPORTS_ENV, render_chart, write_local
from core.drills.objectives import check_rpo, check_rto, rpo_seconds
from core.drills.record import DrillRecord, seconds_text
from core.drills.status import render_status, summarize, trend
from core.engines import engine_for
from core.engines.mysql import position as mysql_position
from core.history import History
from core.operations import backup_source
from core.repository.manifest import Manifest
from core.stack import StackConfig
from core.validation.results import CheckResult
from tests.capturing import Capturing
from tests.fixtures_redis import RedisServer
from tests.fixtures_sandbox import assert_no_sandbox_left

# -- pure figures -------------------------------------------------------------------------------


def test_seconds_text_is_readable_at_every_scale():
    assert [seconds_text(v) for v in (None, 0.4213, 9.999, 12.34, 125.0, 7300.0)] == [
        "-",
        "0.42 s",
        "10.00 s",
        "12.3 s",
        "2 min 5 s",
        "2 h 1 min",
    ]


def test_rpo_is_disaster_time_minus_recovery_point():
    disaster = datetime(2026, 12, 6, 3, 0, 0, tzinfo=UTC)
    assert rpo_seconds(disaster, "2026-12-06T02:59:58.500Z") == 1.5
    assert rpo_seconds(disaster, "2026-12-06T03:00:00.000Z") == 0.0
    assert rpo_seconds(disaster, None) is None
    # A naive disaster time is UTC (as every time in a record is).
    assert rpo_seconds(datetime(2026, 12, 6, 4, 0, 0), "2026-12-06T03:00:00Z") == 3600.0


def test_rto_within_and_over_the_objective_golden():
    ok = check_rto(12.345, 900)
    assert (ok.passed, ok.critical, ok.line()) == (
        True,
        True,
        "[passed] RTO: whole-stack recovery took 12.3 s, within the objective of 15 min 0 s",
    )
    over = check_rto(12.345, 0.5, unrecovered=1)
    assert (over.passed, over.critical) == (False, True)
    assert over.line() == (
        "[FAILED] RTO: whole-stack recovery took 12.3 s, over the objective of 0.50 s by 11.8 s; 1 source(s) were "
        "not recovered, see their restore checks; speed up the slowest stage in the drill's table (fetch, load, "
        "replay...) or raise drill.parallel; if the objective itself is wrong, change objectives.rto_seconds"
    )
    assert check_rto(20, 10, vault="eu-copy").name == "RTO from vault eu-copy"


def test_rpo_within_and_over_the_objective_golden():
    ok = check_rpo("app-db", 1.5, 300)
    assert (
        ok.line()
        == "[passed] app-db: RPO: recovered to a point 1.50 s before the disaster, within the objective of 5 min 0 s"
    )
    over = check_rpo("app-db", 3700, 300)
    assert (over.passed, over.critical) == (False, True)
    assert over.line() == (
        "[FAILED] app-db: RPO: recovered to a point 61 min 40 s before the disaster, over the objective of 5 min 0 s by "
        "56 min 40 s; back it up more often, or run its continuous capture ('genesis-dr capture') where the kind "
        "has one; if the objective itself is wrong, change objectives.sources.app-db.rpo_seconds"
    )
    missing = check_rpo("bucket", None, 300)
    assert (missing.checked, missing.failed, missing.status) == (False, False, "not checked")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], {"median": None, "last": None, "direction": "no drills", "drills": 0}),
        ([10.0], {"median": 10.0, "last": 10.0, "direction": "too few drills", "drills": 1}),
        ([10.0, 10.5, 9.5, 10.9], {"median": 10.25, "last": 10.9, "direction": "steady", "drills": 4}),
        ([10.0, 10.0, 10.0, 11.5], {"median": 10.0, "last": 11.5, "direction": "worsening", "drills": 4}),
        ([10.0, 12.0, 11.0, 8.0], {"median": 10.5, "last": 8.0, "direction": "improving", "drills": 4}),
    ],
)
def test_trend_golden(values, expected):
    assert trend(values) == expected


# -- records, markdown, status, chart -----------------------------------------------------------


def _record(n: int, rto: float, rpo_db: float, *, tier: str = "monthly", passed: bool = True) -> DrillRecord:
    results = [CheckResult("data checks", True, "12 tables match", source="app-db", backup_id="b1")]
    if not passed:
        results.append(check_rto(rto, 5.0))
    return DrillRecord(
        id=f"drill_2026120{n}_030000_0000000{n}",
        tier=tier,
        stack="shop",
        disaster_time=f"2026-12-0{n}T03:00:00.000Z",
        started_at=f"2026-12-0{n}T03:00:00.000100Z",
        ended_at=f"2026-12-0{n}T03:00:30.000000Z",
        rto_s=rto if tier in ("monthly", "full") else None,
        rto_objective_s=900.0 if tier in ("monthly", "full") else None,
        sources={
            "app-db": {
                "source": "app-db",
                "kind": "postgres",
                "vault": "primary",
                "backup_id": "b1",
                "recovery_point": "2026-12-06T02:59:58.500Z",
                "rpo_s": rpo_db,
                "rpo_objective_s": 300.0,
                "stages": {"sandbox": 1.2, "fetch": 0.3, "decrypt": 0.1, "load": 2.0, "replay": 0.5, "verify": 0.4},
                "seconds": 4.6,
                "target": "sandbox postgres 127.0.0.1:40001",
                "passed": True,
            }
        }
        if tier in ("monthly", "full")
        else {},
        results=results,
    )


MARKDOWN = """\
# drill drill_20261206_030000_00000006 (monthly, stack shop, vault primary) passed: 1 recoveries, RTO 4.80 s \
(objective 15 min 0 s), worst RPO 1.50 s (app-db, objective 5 min 0 s)

Disaster declared at **2026-12-06T03:00:00.000Z**; the whole stack was recovered and verified in **4.80 s** \
(RTO objective 15 min 0 s: within).

## Recovery per source and stage

| source | vault | kind | backup | recovery point | RPO | RPO objective | sandbox | fetch | decrypt | load | replay \
| verify | total | result |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| app-db | primary | postgres | b1 | 2026-12-06T02:59:58.500Z | 1.50 s (within) | 5 min 0 s | 1.20 s | 0.30 s \
| 0.10 s | 2.00 s | 0.50 s | 0.40 s | 4.60 s | passed |

Chart of RTO and RPO over the last drills: `history/drills/drill_20261206_030000_00000006.png` in the vault.

## Checks

| source | check | result | detail |
|---|---|---|---|
| app-db | data checks | passed | 12 tables match |"""


def test_markdown_golden_and_round_trip():
    record = _record(6, 4.8, 1.5)
    record.chart = f"history/drills/{record.id}.png"
    assert record.render_markdown() == MARKDOWN.replace(" \\\n", " ").replace("\\\n", "")
    again = DrillRecord.from_dict(record.to_dict())
    assert again == record and again.to_dict()["passed"] is True


def test_markdown_of_a_failed_drill_lists_the_violation_first():
    record = _record(6, 12.0, 1.5, passed=False)
    text = record.render_markdown()
    assert text.splitlines()[0].endswith(
        "FAILED: 1 recoveries, RTO 12.0 s (objective 15 min 0 s), worst RPO 1.50 s (app-db, objective 5 min 0 s)"
    )
    failures = text.split("## Failures\n\n")[1].split("\n\n")[0]
    assert failures == (
        "- [FAILED] RTO: whole-stack recovery took 12.0 s, over the objective of 5.00 s by 7.00 s; speed up the "
        "slowest stage in the drill's table (fetch, load, replay...) or raise drill.parallel; if the objective "
        "itself is wrong, change objectives.rto_seconds"
    )


def test_status_of_records_golden():
    docs = [
        _record(1, 10.0, 2.0).to_dict(),
        _record(2, 0, 0, tier="daily").to_dict(),
        _record(3, 11.0, 2.2).to_dict(),
        _record(4, 14.0, 1.0, passed=False).to_dict(),
        _record(5, 0, 0, tier="weekly").to_dict(),
    ]
    status = {"stack": "shop", "vault": "primary", "records": 5} | summarize(docs, last=30)
    assert status["tiers"]["monthly"] == {
        "id": "drill_20261204_030000_00000004",
        "when": "2026-12-04T03:00:00.000100Z",
        "passed": False,
        "rto_s": 14.0,
        "failures": 1,
        "first_failure": check_rto(14.0, 5.0).line(),
    }
    assert status["trend"]["rto"] == {
        "median": 11.0,
        "last": 14.0,
        "direction": "worsening",
        "drills": 3,
        "objective_s": 900.0,
    }
    assert status["trend"]["rpo"]["app-db"] == {
        "median": 2.0,
        "last": 1.0,
        "direction": "improving",
        "drills": 3,
        "objective_s": 300.0,
    }
    assert render_status(status) == "\n".join(
        [
            "drills of stack shop (vault primary): 5 recorded",
            "  daily    2026-12-02T03:00:00.000100Z  passed  drill_20261202_030000_00000002",
            "  weekly   2026-12-05T03:00:00.000100Z  passed  drill_20261205_030000_00000005",
            "  monthly  2026-12-04T03:00:00.000100Z  FAILED (1 critical), RTO 14.0 s  drill_20261204_030000_00000004",
            f"           first failure: {check_rto(14.0, 5.0).line()}",
            "  full     never run",
            "trend over the last 3 monthly/full drills (median, last, direction):",
            "  RTO median 11.0 s, last 14.0 s, worsening (objective 15 min 0 s)",
            "  RPO app-db: median 2.00 s, last 1.00 s, improving (objective 5 min 0 s)",
        ]
    )
    # Only the last N recoveries make the trend.
    assert summarize(docs, last=2)["trend"]["rto"]["median"] == 12.5


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


def test_chart_is_a_png_of_the_records(tmp_path):
    records = [_record(1, 10.0, 2.0), _record(3, 11.0, 2.2), _record(4, 14.0, 1.0, passed=False)]
    png = render_chart(records)
    assert _png_size(png) == (900, 650)
    # Same records, same bytes (no timestamps in the PNG); other figures, another picture.
    assert render_chart([r.to_dict() for r in records]) == png
    assert render_chart([_record(1, 10.0, 2.0), _record(3, 300.0, 2.2)]) != png
    assert _png_size(render_chart([])) == (900, 650)
    path = write_local("shop", records[-1].id, png, tmp_path)
    assert path == tmp_path / "shop" / f"{records[-1].id}.png" and path.read_bytes() == png


# -- drills of a real stack -----------------------------------------------------------------------

PASSPHRASE = "drill-test-passphrase"


@dataclass
class Stack:
    """A stack of three real sources with their backups in one local vault."""

    config: StackConfig
    vault_path: Path
    backups: dict[str, Manifest]  # source -> the newest backup
    captured_until: str  # the last captured binlog event time of shop-db (its point-in-time recovery point)
    redis: RedisServer

    def with_(self, **fields) -> StackConfig:
        """The same stack with other settings (``sources``: names to keep)."""
        data = self.config.model_dump(mode="json")
        keep = fields.pop("sources", None)
        if keep is not None:
            data["sources"] = [s for s in data["sources"] if s["name"] in keep]
            queries = data["validation"]["smoke_queries"]
            data["validation"]["smoke_queries"] = {k: v for k, v in queries.items() if k in keep}
        for source in self.config.sources:  # model_dump(mode=json) masks SecretStr passwords
            for s in data["sources"]:
                if s["name"] == source.name:
                    s.update(source.model_dump())
        return StackConfig(**(data | fields))


@pytest.fixture(scope="module")
def sandboxes(sandbox_root) -> Path:
    """This module's own sandbox root (other modules' sandboxes are not ours to count)."""
    return sandbox_root


@pytest.fixture(autouse=True)
def reports(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(REPORTS_ENV, str(tmp_path / "reports"))
    return tmp_path / "reports"


def _no_sandbox_left(root: Path) -> None:
    assert_no_sandbox_left(root)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, sandboxes, pg_server, mysql_server, redis_session) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("drill-stack")
    secret = base / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    spool_before = os.environ.get("GENESIS_DR_SPOOL_DIR")
    os.environ["GENESIS_DR_SPOOL_DIR"] = str(base / "spool")

    database = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(database) as conn:
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, label text NOT NULL)")
        conn.execute("INSERT INTO orders VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    shop = mysql_server.create_database("drill")
    with mysql_server.connect(shop) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL) ENGINE=InnoDB")
        cur.execute("INSERT INTO items VALUES (1, 'bolt'), (2, 'nut')")
    cache = redis_session("drill")
    cache.client().flushall()
    cache.client().mset({"session:1": "alice", "session:2": "bob"})

    sources = [
        pg_server.config("app-db", database),
        mysql_server.config("shop-db", shop, rpo_seconds=1),
        cache.config("cache"),
    ]
    config = StackConfig(
        stack="drill-test",
        vault={"path": str(base / "vault")},
        encryption={"passphrase_from": f"file:{secret}"},
        sources=[s.model_dump() for s in sources],
        validation={
            "smoke_queries": {
                "app-db": [{"query": "SELECT count(*) FROM orders", "expect": "3"}],
                # The row written after the full backup arrives through the captured binlog.
                "shop-db": [{"query": "SELECT name FROM items WHERE id = 3", "expect": "washer"}],
                "cache": [{"query": "GET session:2", "expect": "bob"}],
            }
        },
    )
    vault = config.vault.open(create=True)
    keyring = config.keyring()
    backups = {s.name: backup_source(vault, keyring, engine_for(s), "full") for s in config.sources}
    # shop-db: its binlog captured after the full backup, so the drill restores it to a point in time.
    capture = Capturing(vault, keyring, engine_for(config.source("shop-db")))
    time.sleep(1.1)  # binlog times are whole seconds: the row's second must come after the backup's end
    with mysql_server.connect(shop) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO items VALUES (3, 'washer')")
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    wanted = mysql_position.order({"binlog_file": file, "binlog_pos": pos})
    capture.wait_until(lambda p: bool(p) and mysql_position.order(p[-1].end) >= wanted, "the washer row")
    capture.finish()
    pieces = vault.log_pieces("shop-db")
    yield Stack(config, base / "vault", backups, pieces[-1].last_time, cache)
    if spool_before is None:
        os.environ.pop("GENESIS_DR_SPOOL_DIR", None)
    else:
        os.environ["GENESIS_DR_SPOOL_DIR"] = spool_before


def test_monthly_drill_of_a_three_source_stack_passes_with_its_figures(stack, sandboxes, reports):
    lines: list[str] = []
    began = time.monotonic()
    record = run_drill(stack.config, "monthly", progress=lines.append)
    wall = time.monotonic() - began

    assert record.passed, record.render_text()
    assert set(record.sources) == {"app-db", "shop-db", "cache"}
    disaster = parse_iso(record.disaster_time)
    for name, src in record.sources.items():
        backup = stack.backups[name]
        assert src["backup_id"] == backup.id and src["vault"] == "primary" and src["passed"] is True
        assert src["rpo_objective_s"] == 300.0
        # The stages of a restore were measured; the wall-clock ones are parts of the source's wall time
        # (fetch and decrypt are busy time of reader threads, overlapped with the load; small here).
        stages = src["stages"]
        assert {"sandbox", "fetch", "decrypt", "load", "verify"} <= set(stages)
        assert stages["sandbox"] > 0 and stages["load"] > 0 and stages["verify"] > 0, stages
        walls = stages["sandbox"] + stages["load"] + stages.get("replay", 0) + stages["verify"]
        assert walls <= src["seconds"] + 0.01 and 0 < src["seconds"] <= record.rto_s, (stages, src["seconds"])
    # Without a log the recovery point is the backup's end; shop-db's captured binlog reaches further.
    for name in ("app-db", "cache"):
        point = record.sources[name]["recovery_point"]
        assert parse_iso(point) == parse_iso(stack.backups[name].ended_at)
        assert record.sources[name]["rpo_s"] == round((disaster - parse_iso(point)).total_seconds(), 3)
    shop = record.sources["shop-db"]
    assert parse_iso(shop["recovery_point"]) > parse_iso(stack.backups["shop-db"].ended_at)
    assert parse_iso(shop["recovery_point"]) <= parse_iso(stack.captured_until)
    assert shop["rpo_s"] == round((disaster - parse_iso(shop["recovery_point"])).total_seconds(), 3)
    assert shop["stages"]["replay"] > 0
    # End to end: at least the slowest source, at most the drill's own wall time.
    assert max(s["seconds"] for s in record.sources.values()) <= record.rto_s <= wall
    assert record.rto_objective_s == 900.0 and record.vaults_rto_s == {"primary": record.rto_s}

    checks = {(r.source, r.name): r for r in record.results}
    for name in record.sources:
        assert checks[(name, "data checks")].passed and checks[(name, "RPO")].passed
    # The smoke queries ran on the restored sandboxes; the washer row came through the replayed binlog.
    smoke = {r.source: r.detail for r in record.results if r.name.startswith("smoke: ")}
    assert smoke == {
        "app-db": "returned the expected 3",
        "shop-db": "returned the expected washer",
        "cache": "returned the expected bob",
    }
    assert checks[("", "RTO")].line() == (
        f"[passed] RTO: whole-stack recovery took {seconds_text(record.rto_s)}, within the objective of 15 min 0 s"
    )
    assert [r.line() for r in record.results if r.failed] == []

    markdown = record.render_markdown()
    assert f"recovered and verified in **{seconds_text(record.rto_s)}** (RTO objective 15 min 0 s: within)" in markdown
    for name, src in record.sources.items():
        assert f"| {name} | primary | {src['kind']} | {src['backup_id']} | {src['recovery_point']} | " in markdown

    # Kept in the vault, with its chart, also written locally.
    vault = stack.config.vault.open()
    history = History(vault.store)
    assert DrillRecord.from_dict(history.get("drills", record.id)) == record
    assert record.chart == f"history/drills/{record.id}.png"
    png = vault.store.get(record.chart)
    assert Path(record.chart_path) == reports / "drill-test" / f"{record.id}.png"
    assert Path(record.chart_path).read_bytes() == png and _png_size(png) == (900, 650)
    assert lines[-1] == record.summary_line()
    _no_sandbox_left(sandboxes)


def test_a_drill_over_its_rto_objective_fails_naming_the_violation(stack, sandboxes):
    config = stack.with_(sources=["cache"], objectives={"rto_seconds": 0.01})
    kept = History(config.vault.open().store).ids("drills")
    record = run_drill(config, "monthly", record_history=False)

    assert not record.passed
    failed = record.failures(critical_only=True)
    assert [r.name for r in failed] == ["RTO"]
    assert failed[0].line() == (
        f"[FAILED] RTO: whole-stack recovery took {seconds_text(record.rto_s)}, over the objective of 0.01 s by "
        f"{seconds_text(record.rto_s - 0.01)}; speed up the slowest stage in the drill's table (fetch, load, "
        "replay...) or raise drill.parallel; if the objective itself is wrong, change objectives.rto_seconds"
    )
    assert "(RTO objective 0.01 s: **OVER**)" in record.render_markdown()
    # Not kept: no record, no chart.
    assert record.chart is None and History(config.vault.open().store).ids("drills") == kept
    _no_sandbox_left(sandboxes)


def test_a_drill_over_a_source_rpo_fails_naming_the_source(stack, sandboxes):
    config = stack.with_(sources=["cache", "app-db"], objectives={"sources": {"cache": {"rpo_seconds": 0.5}}})
    declared = datetime(2030, 1, 1, tzinfo=UTC).replace(
        **{f: getattr(datetime.now(UTC), f) for f in ("year", "month", "day", "hour", "minute", "second")}
    )
    record = run_drill(config, "monthly", now=declared, record_history=False)

    disaster = parse_iso(record.disaster_time)
    assert disaster == declared  # a whole second: recorded as given
    lost = round((disaster - parse_iso(stack.backups["cache"].ended_at)).total_seconds(), 3)
    assert record.sources["cache"]["rpo_s"] == lost and record.sources["cache"]["rpo_objective_s"] == 0.5
    failed = record.failures(critical_only=True)
    assert [(r.source, r.name) for r in failed] == [("cache", "RPO")]
    assert failed[0].line() == (
        f"[FAILED] cache: RPO: recovered to a point {seconds_text(lost)} before the disaster, over the objective of "
        f"0.50 s by {seconds_text(lost - 0.5)}; back it up more often, or run its continuous capture "
        "('genesis-dr capture') where the kind has one; if the objective itself is wrong, change "
        "objectives.sources.cache.rpo_seconds"
    )
    # app-db keeps the stack's 300 s objective and passes.
    assert next(r for r in record.results if (r.source, r.name) == ("app-db", "RPO")).passed
    _no_sandbox_left(sandboxes)


def test_full_drill_restores_from_the_replica_too_and_leaves_it_untouched(stack, sandboxes, tmp_path):
    replica = tmp_path / "replica"
    shutil.copytree(stack.vault_path, replica)
    before = sorted((p.relative_to(replica), p.stat().st_mtime_ns) for p in replica.rglob("*"))
    config = stack.with_(sources=["cache"], replicas=[{"name": "dr-copy", "vault": {"path": str(replica)}}])
    record = run_drill(config, "full", record_history=False)

    assert record.passed, record.render_text()
    assert set(record.sources) == {"cache", "cache@dr-copy"}
    assert record.sources["cache@dr-copy"]["vault"] == "dr-copy"
    assert record.sources["cache@dr-copy"]["backup_id"] == stack.backups["cache"].id
    assert set(record.vaults_rto_s) == {"primary", "dr-copy"} and record.rto_s == record.vaults_rto_s["primary"]
    checks = {(r.source, r.name): r for r in record.results}
    assert checks[("", "RTO from vault dr-copy")].passed and checks[("cache", "RPO from vault dr-copy")].passed
    assert checks[("", "failover rehearsal")].status == "not checked"
    assert sorted((p.relative_to(replica), p.stat().st_mtime_ns) for p in replica.rglob("*")) == before
    _no_sandbox_left(sandboxes)


def test_status_shows_the_last_drill_of_each_tier_and_the_trend(stack, sandboxes, tmp_path):
    # A vault of its own: copy the stack's backups, no history.
    vault_path = tmp_path / "vault"
    shutil.copytree(stack.vault_path, vault_path, ignore=shutil.ignore_patterns("history"))
    config = stack.with_(sources=["cache"], vault={"path": str(vault_path)})
    daily = run_drill(config, "daily")
    first = run_drill(config, "monthly")
    second = run_drill(config, "monthly")

    assert daily.passed and daily.validation["level"] == "integrity"
    assert daily.validation["backups"] == [stack.backups["cache"].id]
    status = drill_status(config)
    assert status["records"] == 3
    assert status["tiers"]["daily"] == {
        "id": daily.id,
        "when": daily.started_at,
        "passed": True,
        "rto_s": None,
        "failures": 0,
        "first_failure": None,
    }
    assert status["tiers"]["monthly"]["id"] == second.id and status["tiers"]["weekly"] is None
    assert status["trend"]["rto"] == trend([first.rto_s, second.rto_s]) | {"objective_s": 900.0}
    assert status["trend"]["rpo"]["cache"]["last"] == second.sources["cache"]["rpo_s"]
    text = render_status(status)
    assert f"  monthly  {second.started_at}  passed, RTO {seconds_text(second.rto_s)}  {second.id}" in text
    assert "  weekly   never run" in text
    # The second chart plots both monthly drills.
    vault = config.vault.open()
    assert vault.store.get(second.chart) == render_chart([first, second])
    _no_sandbox_left(sandboxes)


def test_a_drill_pointed_at_a_production_source_is_refused_and_fails(stack, sandboxes):
    cache = stack.config.source("cache")
    config = stack.with_(sources=["cache"], drill={"targets": {"cache": {"host": "127.0.0.1", "port": cache.port}}})
    record = run_drill(config, "monthly", record_history=False)

    assert not record.passed
    failed = record.failures(critical_only=True)
    assert [r.source for r in failed] == ["cache"]
    assert "drill target of cache is the production target of source cache (" in failed[0].line()
    assert f"127.0.0.1:{cache.port}" in failed[0].line()
    # Nothing was recovered: no recovery point, no RPO figure, and the RTO says what it does not cover.
    assert record.sources["cache"]["recovery_point"] is None and record.sources["cache"]["rpo_s"] is None
    assert [r.name for r in record.results if r.source == "cache" and r.name == "RPO"] == []
    assert next(r for r in record.results if r.name == "RTO").detail.endswith(
        "; 1 source(s) were not recovered, see their restore checks"
    )
    # The production server still holds its data.
    assert stack.redis.client().get("session:2") == b"bob"
    _no_sandbox_left(sandboxes)


def test_weekly_drill_is_a_restore_level_validation(stack, sandboxes):
    config = stack.with_(sources=["cache"])
    record = run_drill(config, "weekly", record_history=False)

    assert record.passed, record.render_text()
    assert record.validation["level"] == "restore" and record.validation["backups"] == [stack.backups["cache"].id]
    checks = {r.name: r for r in record.results if r.source == "cache"}
    assert checks["data checks"].passed and record.rto_s is None and record.sources == {}
    assert record.summary_line().startswith(f"drill {record.id} (weekly, stack drill-test, vault primary) passed: ")
    _no_sandbox_left(sandboxes)
