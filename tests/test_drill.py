"""Drills: RTO and RPO measured on a real recovery of a whole stack, held against the objectives.

What an operator relies on: the figures (pure functions, golden tests) say exactly how far a
recovery was from its objectives; the record, its markdown and the status read back from the vault
give the same figures; the chart is a PNG of them. Against real servers: a monthly drill of a
postgres + mariadb + redis stack restores every source in sandboxes and passes with RTO, RPO and
stage figures; a tiny RTO objective and a tiny RPO objective fail the drill naming the violation;
nothing is left running afterwards.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from core.drills.chart import render_chart, write_local
from core.drills.objectives import check_rpo, check_rto, rpo_seconds
from core.drills.record import DrillRecord, seconds_text
from core.drills.status import render_status, summarize, trend
from core.validation.results import CheckResult

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
