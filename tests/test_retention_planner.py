"""Golden tests of the pure retention planner: one JSON input and one expected plan per scenario.

Inputs (``tests/data/retention/<name>.json``: catalog, policy, holds, now) are built by the
builders below; expected plans are ``<name>.expected.json``. A mismatch fails with a unified
diff of the two plans. To rewrite both after a deliberate change:

    GENESIS_DR_RETENTION_GOLDENS=write .venv/bin/python -m pytest -q tests/test_retention_planner.py

then read the diff (``git diff tests/data/retention``) decision by decision before committing:
each scenario also asserts its key facts by hand below, so a rewrite cannot quietly bless a bug.
"""

from __future__ import annotations

import difflib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.retention.catalog import BackupItem, Catalog, PieceItem, SourceInfo
from core.retention.config import RetentionConfig
from core.retention.planner import plan_retention
from core.retention.scope import Hold, HoldScope

DATA = Path(__file__).parent / "data" / "retention"
WRITE = os.environ.get("GENESIS_DR_RETENTION_GOLDENS") == "write"
NOW = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)
D, H = timedelta(days=1), timedelta(hours=1)


class Vault:
    """A catalog written by hand: backups at times before NOW, and a source's log as pieces."""

    def __init__(self) -> None:
        self.backups: list[BackupItem] = []
        self.pieces: list[PieceItem] = []
        self.sources: dict[str, SourceInfo] = {}
        self.count = 0
        self.logs: dict[str, tuple[datetime, timedelta]] = {}  # source -> (log origin, piece length)

    def source(self, name: str, kind: str, classes: tuple[str, ...] = ()) -> str:
        self.sources[name] = SourceInfo(name, kind, classes)
        return name

    def position(self, source: str, when: datetime) -> dict:
        """The log position at ``when``: 256 bytes of log a second since the log began."""
        origin = self.logs[source][0] if source in self.logs else NOW - 400 * D
        offset = int((when - origin).total_seconds()) * 256
        kind = self.sources[source].kind
        if kind == "postgres":
            return {"lsn": f"{offset >> 32:X}/{offset & 0xFFFFFFFF:X}", "timeline": 1}
        if kind == "mysql":
            return {"binlog_file": "mysql-bin.000001", "binlog_pos": offset, "gtid": ""}
        if kind == "redis":
            return {"replid": "r1", "offset": offset}
        return {"snapshot_time": when.isoformat()}

    def log(self, source: str, since: timedelta, step: timedelta, *, key_every: int = 0) -> None:
        """Contiguous pieces of ``step`` each from NOW - since to NOW."""
        origin = NOW - since
        self.logs[source] = (origin, step)
        n = int(since / step)
        for seq in range(n):
            a, b = origin + seq * step, origin + (seq + 1) * step
            self.pieces.append(
                PieceItem(
                    source=source,
                    seq=seq,
                    first_time=a + timedelta(minutes=1),
                    last_time=b - timedelta(minutes=1),
                    key_id=f"k{seq // key_every if key_every else 0}",
                    stored_bytes=100,
                    partial=False,
                    start=self.position(source, a),
                    end=self.position(source, b),
                )
            )

    def seq_at(self, source: str, when: datetime) -> int:
        origin, step = self.logs[source]
        return int((when - origin) / step)

    def backup(
        self,
        source: str,
        type: str,
        ago: timedelta,
        *,
        status: str = "COMPLETED",
        on: str | None = None,
        stored: int = 1000,
        **extra,
    ) -> str:
        """A backup ended ``ago`` before NOW (10 minutes long); ``on``: the backup it was taken on."""
        self.count += 1
        started = NOW - ago - timedelta(minutes=10)
        ended = NOW - ago if status in ("COMPLETED", "FAILED") else None
        backup_id = f"backup_{started:%Y%m%d_%H%M%S}_{self.count:08x}"
        kind = self.sources[source].kind
        parent = self.by_id(on) if on else None
        chain = (parent.chain or parent.id) if parent else (backup_id if type == "full" else None)
        position = self.position(source, started) if kind != "files" else {}  # files: a snapshot, no log
        if kind == "postgres":
            position["physical"] = type == "full"
        log_pieces = None
        if type != "full" and kind in ("postgres", "mysql") and parent is not None:
            log_pieces = (self.seq_at(source, parent.ended_at), self.seq_at(source, ended))
        self.backups.append(
            BackupItem(
                id=backup_id,
                source=source,
                kind=kind,
                type=type,
                status=status,
                started_at=started,
                ended_at=ended,
                chain=chain if status == "COMPLETED" or type != "full" else backup_id,
                parent=parent.id if parent else None,
                log_pieces=log_pieces,
                stored_bytes=stored if type == "full" or kind in ("files", "bucket") else 0,
                storage_class=extra.pop("storage_class", None),
                archived_to=extra.pop("archived_to", None),
                labels=extra.pop("labels", {}),
                position=position,
            )
        )
        assert not extra, extra
        return backup_id

    def by_id(self, backup_id: str) -> BackupItem:
        return next(b for b in self.backups if b.id == backup_id)

    def catalog(self) -> Catalog:
        return Catalog(backups=list(self.backups), pieces=list(self.pieces), sources=dict(self.sources))


def hold(hold_id: str, name: str, scope: dict, released: bool = False) -> Hold:
    return Hold(
        id=hold_id,
        name=name,
        reason="litigation",
        scope=HoldScope(**scope),
        contact="legal@example.com",
        creator="ops@host",
        created_at="2026-12-01T00:00:00Z",
        released_at="2026-12-10T00:00:00Z" if released else None,
        released_by="admin" if released else None,
        release_reason="settled" if released else None,
    )


# -- scenarios: each returns (vault, policy, holds, ids to check by hand) ----------------------


def chains():
    """PostgreSQL: physical fulls with incrementals that are log ranges, and a continuous log."""
    v = Vault()
    v.source("app", "postgres")
    v.log("app", 13 * D, 12 * H, key_every=4)  # a capture session (key) every 4 pieces
    ids = {}
    ids["f1"] = v.backup("app", "full", 12 * D)
    ids["i1"] = v.backup("app", "incremental", 11 * D, on=ids["f1"])
    ids["f2"] = v.backup("app", "full", 8 * D)
    ids["i2a"] = v.backup("app", "incremental", 7 * D + 12 * H, on=ids["f2"])
    ids["i2b"] = v.backup("app", "incremental", 6 * D, on=ids["i2a"])
    ids["i2c"] = v.backup("app", "incremental", 5 * D, on=ids["i2b"])
    ids["f3"] = v.backup("app", "full", 2 * D)
    ids["i3"] = v.backup("app", "incremental", 1 * D, on=ids["f3"])
    policy = {
        "sources": {"app": {"full": {"keep_within": "3d"}, "incremental": {"keep_within": "7d"}, "pitr_window": "1d"}}
    }
    return v, policy, [], ids


def files_chain():
    """Files: a differential and incrementals store data on their parents; a chain is kept whole under a
    retained incremental, and an old chain with nothing retained on it goes whole."""
    v = Vault()
    v.source("www", "files")
    ids = {}
    ids["old_full"] = v.backup("www", "full", 200 * D)
    ids["old_inc"] = v.backup("www", "incremental", 190 * D, on=ids["old_full"])
    ids["full"] = v.backup("www", "full", 120 * D)
    ids["diff"] = v.backup("www", "differential", 100 * D, on=ids["full"])
    ids["inc1"] = v.backup("www", "incremental", 95 * D, on=ids["diff"])
    ids["inc2"] = v.backup("www", "incremental", 60 * D, on=ids["inc1"])
    ids["inc3"] = v.backup("www", "incremental", 30 * D, on=ids["inc2"])
    ids["new_full"] = v.backup("www", "full", 10 * D)
    return v, {}, [], ids


def pitr_window():
    """MariaDB: fulls kept 3 days, a 7-day window, and a partial piece superseded by its successor."""
    v = Vault()
    v.source("shop", "mysql")
    v.log("shop", 21 * D, D)
    # Piece 20 (the last day) was first shipped early as a partial, then again whole.
    last = v.pieces.pop()
    partial = PieceItem(**{**last.__dict__, "seq": 20, "partial": True, "last_time": last.first_time + H})
    partial = PieceItem(**{**partial.__dict__, "end": v.position("shop", NOW - 22 * H)})
    v.pieces.append(partial)
    v.pieces.append(PieceItem(**{**last.__dict__, "seq": 21}))
    ids = {name: v.backup("shop", "full", ago * D) for name, ago in (("f20", 20), ("f13", 13), ("f9", 9), ("f5", 5))}
    ids["f1"] = v.backup("shop", "full", 1 * D)
    policy = {"sources": {"shop": {"full": {"keep_within": "3d"}, "pitr_window": "7d"}}}
    return v, policy, [], ids


def gfs_year():
    """A year and a few days of daily fulls of a files source under daily 7, weekly 4, monthly 12, yearly 3."""
    v = Vault()
    v.source("docs", "files")
    ids = {}
    for day in range(370, 0, -1):
        ids[f"d{day}"] = v.backup("docs", "full", day * D - 3 * H, stored=10)
    policy = {"sources": {"docs": {"full": {"daily": 7, "weekly": 4, "monthly": 12, "yearly": 3}}}}
    return v, policy, [], ids


def compliance_minimum():
    """A SOX source: fulls years old are kept 7 years whatever the 30-day rule says."""
    v = Vault()
    v.source("ledger", "postgres", ("financial",))
    ids = {}
    for name, ago in (("y8", 8 * 365), ("y6", 6 * 365), ("y2", 2 * 365), ("d40", 40), ("d10", 10)):
        ids[name] = v.backup("ledger", "full", ago * D)
    return v, {}, [], ids


def gdpr_maximum():
    """Personal data: fulls kept 60 days by their rule but cut at the GDPR maximum (35 days), except one held."""
    v = Vault()
    v.source("crm", "postgres", ("personal",))
    v.log("crm", 52 * D, 2 * D)
    ids = {}
    ids["f50"] = v.backup("crm", "full", 50 * D)
    ids["f40"] = v.backup("crm", "full", 40 * D)
    ids["i36"] = v.backup("crm", "incremental", 36 * D, on=ids["f40"])
    ids["i34"] = v.backup("crm", "incremental", 34 * D, on=ids["i36"])
    ids["f30"] = v.backup("crm", "full", 30 * D)
    ids["f20"] = v.backup("crm", "full", 20 * D)
    ids["f5"] = v.backup("crm", "full", 5 * D)
    policy = {"sources": {"crm": {"full": {"keep_within": "60d"}, "incremental": {"keep_within": "60d"}}}}
    holds = [hold("hold-20261201-aaaaaaaa", "audit 2026", {"backup_ids": [ids["f50"]]})]
    return v, policy, holds, ids


def holds():
    """A hold by id glob on a files source, a hold by source and time range on a database log, a released hold."""
    v = Vault()
    v.source("docs", "files")
    v.source("app", "postgres")
    v.log("app", 20 * D, D)
    ids = {}
    for ago in (120, 110, 100, 95):
        ids[f"docs{ago}"] = v.backup("docs", "full", ago * D)
    ids["docs10"] = v.backup("docs", "full", 10 * D)
    for ago in (19, 15, 11, 2):
        ids[f"app{ago}"] = v.backup("app", "full", ago * D)
    glob = ids["docs110"][:16] + "*"  # every backup started that day
    rng = {"sources": ["app"], "from_time": (NOW - 14 * D).isoformat(), "to_time": (NOW - 12 * D).isoformat()}
    holds = [
        hold("hold-20261201-11111111", "lawsuit", {"backup_ids": [glob]}),
        hold("hold-20261201-22222222", "incident 4711", rng),
        hold("hold-20261201-33333333", "old case", {"sources": ["docs"]}, released=True),
    ]
    policy = {"sources": {"app": {"pitr_window": "1d"}}}
    return v, policy, holds, ids


def refusal():
    """A files source whose backups stopped 100 days ago is refused whole; a Redis source beside it proceeds."""
    v = Vault()
    v.source("web", "files")
    v.source("cache", "redis")
    ids = {f"web{ago}": v.backup("web", "full", ago * D) for ago in (130, 115, 100)}
    for hours in (60, 42, 30, 18, 6):
        ids[f"cache{hours}"] = v.backup("cache", "full", hours * H)
    return v, {}, [], ids


def failed_remains():
    """Remains of failed, abandoned and corrupt runs, a run in progress, a deletion in progress, a rollback."""
    v = Vault()
    v.source("site", "files")
    ids = {}
    ids["ok120"] = v.backup("site", "full", 120 * D)
    ids["failed100"] = v.backup("site", "full", 100 * D, status="FAILED")
    ids["abandoned95"] = v.backup("site", "full", 95 * D, status="ABANDONED")
    ids["rollback93"] = v.backup("site", "full", 93 * D, labels={"purpose": "rollback"})
    ids["corrupt92"] = v.backup("site", "full", 92 * D, status="CORRUPT")
    ids["deleting91"] = v.backup("site", "full", 91 * D, status="DELETING")
    ids["ok30"] = v.backup("site", "full", 30 * D)
    ids["failed3"] = v.backup("site", "full", 3 * D, status="FAILED")
    ids["ok2"] = v.backup("site", "full", 2 * D)
    ids["running"] = v.backup("site", "full", 0 * D, status="IN_PROGRESS")
    return v, {}, [], ids


def archive_online():
    """PCI DSS data archived to GLACIER after 30 days but never before its 3 months online; files to a vault."""
    v = Vault()
    v.source("payments", "mysql", ("cardholder",))
    v.source("assets", "files")
    ids = {}
    ids["p300"] = v.backup("payments", "full", 300 * D, storage_class="GLACIER")
    for ago in (200, 100, 60, 20, 1):
        ids[f"p{ago}"] = v.backup("payments", "full", ago * D, storage_class="STANDARD")
    ids["a80"] = v.backup("assets", "full", 80 * D, archived_to="vault:cold")
    ids["a70"] = v.backup("assets", "full", 70 * D)
    ids["a5"] = v.backup("assets", "full", 5 * D)
    policy = {
        "sources": {
            "payments": {"archive_after": "30d", "archive_to": "GLACIER"},
            "assets": {"archive_after": "60d", "archive_to": "vault:cold"},
        }
    }
    return v, policy, [], ids


SCENARIOS = {
    f.__name__: f
    for f in (
        chains,
        files_chain,
        pitr_window,
        gfs_year,
        compliance_minimum,
        gdpr_maximum,
        holds,
        refusal,
        failed_remains,
    )
    + (archive_online,)
}


# -- the golden machinery -----------------------------------------------------------------------


def _hold_dict(h: Hold) -> dict:
    return {**h.__dict__, "scope": h.scope.model_dump(exclude_defaults=True)}


def _input(name: str) -> dict:
    v, policy, hs, ids = SCENARIOS[name]()
    return {
        "now": NOW.isoformat(),
        "policy": policy,
        "holds": [_hold_dict(h) for h in hs],
        "catalog": v.catalog().to_dict(),
        "ids": ids,
    }


def _plan(data: dict):
    catalog = Catalog.from_dict(data["catalog"])
    holds = [Hold(**{**h, "scope": HoldScope(**h["scope"])}) for h in data["holds"]]
    return plan_retention(
        catalog, RetentionConfig.model_validate(data["policy"]), holds, datetime.fromisoformat(data["now"])
    )


def _json(value, indent: str = "") -> str:
    """Objects spread one key a line two levels deep; a list of objects one object a line: a diff names
    the decision (or backup) that changed, and a year of dailies stays a small file."""
    inner = indent + " "
    if isinstance(value, dict) and value and len(indent) < 2:
        body = ",\n".join(f"{inner}{json.dumps(k)}: {_json(v, inner)}" for k, v in sorted(value.items()))
        return "{\n" + body + "\n" + indent + "}"
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        body = ",\n".join(inner + json.dumps(x, sort_keys=True, separators=(",", ":")) for x in value)
        return "[\n" + body + "\n" + indent + "]"
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _dump(data: dict) -> str:
    return _json(data) + "\n"


def golden(name: str) -> tuple[dict, dict]:
    """The scenario's input and its plan (as dict), checked against the committed goldens."""
    src, expected_path = DATA / f"{name}.json", DATA / f"{name}.expected.json"
    if WRITE:
        DATA.mkdir(parents=True, exist_ok=True)
        src.write_text(_dump(_input(name)))
    data = json.loads(src.read_text())
    assert _dump(data) == _dump(_input(name)), f"{src} differs from its builder; rewrite it (see the module doc)"
    plan = _plan(data).to_dict()
    if WRITE:
        expected_path.write_text(_dump(plan))
    expected = expected_path.read_text()
    if _dump(plan) != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                _dump(plan).splitlines(keepends=True),
                str(expected_path),
                "plan_retention now",
                n=2,
            )
        )
        pytest.fail(f"plan differs from {expected_path.name}:\n{diff}", pytrace=False)
    return data, plan


def actions(plan: dict) -> dict[str, str]:
    return {d["item"]: d["action"] for d in plan["decisions"]}


def reasons(plan: dict, item: str) -> list[str]:
    return next(d["reasons"] for d in plan["decisions"] if d["item"] == item)


def logs(plan: dict, source: str) -> list[tuple[int, int, str]]:
    return [(*d["seqs"], d["action"]) for d in plan["decisions"] if d["kind"] == "log" and d["source"] == source]


# -- the scenarios' key facts, reasoned by hand ------------------------------------------------


def test_chains_keep_the_full_and_log_under_retained_incrementals():
    data, plan = golden("chains")
    ids, act = data["ids"], actions(plan)
    assert {k: act[v] for k, v in ids.items()} == {
        "f1": "delete",  # 12 days: past 3d, nothing retained is built on it
        "i1": "delete",
        "f2": "keep",  # 8 days, past 3d, but i2b and i2c (within 7d) replay on it
        "i2a": "delete",  # 7.5 days: past 7d; i2b is built on it but needs only f2 and the log
        "i2b": "keep",
        "i2c": "keep",
        "f3": "keep",  # within 3d, the window's base and the newest full
        "i3": "keep",  # within 7d and the newest valid backup
    }
    assert any(r.startswith("keep: full of retained incremental") for r in reasons(plan, ids["f2"]))
    # Pieces are 12 hours from 13 days ago (piece n starts 13d - 12h*n ago). f2 started 8 days and 10 minutes
    # ago: in piece 9. i2c ended 5 days ago, where piece 16 starts (its recorded range ends there). f3 started
    # 2 days and 10 minutes ago: piece 21; i3's range (on f3) ends with piece 24; the window and the newest
    # point take the rest (25) from f3's start.
    assert logs(plan, "app") == [
        (0, 8, "delete"),
        (9, 16, "keep"),
        (17, 20, "delete"),
        (21, 24, "keep"),
        (25, 25, "keep"),
    ]
    assert reasons(plan, "log:app:9-16") == [f"keep: replayed by retained backups on full {ids['f2']}"]
    # Keys k0 (pieces 0-3) and k1 (4-7) seal only deleted pieces; k2 (8-11) seals piece 9, kept.
    assert plan["log_keys_to_shred"] == {"app": ["k0", "k1"]}


def test_files_chain_keeps_every_parent_of_a_retained_layer():
    data, plan = golden("files_chain")
    ids, act = data["ids"], actions(plan)
    # The default 90d for files: inc2 (60d) and inc3 (30d) are retained, and restoring either applies
    # full, diff, inc1 and inc2 in turn; the old chain has nothing within 90 days.
    assert {k: act[v] for k, v in ids.items()} == {
        "old_full": "delete",
        "old_inc": "delete",
        "full": "keep",
        "diff": "keep",
        "inc1": "keep",
        "inc2": "keep",
        "inc3": "keep",
        "new_full": "keep",
    }
    assert reasons(plan, ids["full"]) == [
        f"keep: full of retained incremental {ids['inc2']}, incremental {ids['inc3']}"
    ]
    assert reasons(plan, ids["diff"]) == [
        f"keep: parent of retained incremental {ids['inc2']}, incremental {ids['inc3']}"
    ]
    assert reasons(plan, ids["inc1"]) == reasons(plan, ids["diff"])
    assert reasons(plan, ids["inc2"])[0].startswith("keep: within 90d (until ")
    assert next(d for d in plan["decisions"] if d["item"] == ids["inc1"])["deletable_after"] is None


def test_pitr_window_keeps_the_full_under_its_start_and_drops_a_superseded_partial():
    data, plan = golden("pitr_window")
    ids, act = data["ids"], actions(plan)
    assert {k: act[v] for k, v in ids.items()} == {
        "f20": "delete",
        "f13": "delete",
        "f9": "keep",  # the newest full ended at or before the window's start (7 days ago)
        "f5": "delete",  # inside the window but past 3d: the log from f9 covers its instant
        "f1": "keep",
    }
    assert reasons(plan, ids["f9"]) == [f"keep: base of the 7d point-in-time window (from {iso_s(NOW - 7 * D)})"]
    # Daily pieces from 21 days ago: f9 started 9 days and 10 minutes ago, in piece 11; f1 (the newest point's
    # base) in piece 19; piece 20 was a partial superseded by piece 21 (same start).
    assert logs(plan, "shop") == [
        (0, 10, "delete"),
        (11, 18, "keep"),
        (19, 19, "keep"),
        (20, 20, "delete"),
        (21, 21, "keep"),
    ]
    assert reasons(plan, "log:shop:20-20") == ["delete: partial piece superseded by piece 21"]


def iso_s(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def test_gfs_over_a_year_of_dailies():
    data, plan = golden("gfs_year")
    ids, act = data["ids"], actions(plan)
    kept = {name for name, i in ids.items() if act[i] == "keep"}
    # Computed here without the planner: the newest daily of each period, newest periods first.
    points = {name: NOW - int(name[1:]) * D + 3 * H for name in ids}
    newest_first = sorted(points, key=points.get, reverse=True)
    expect: set[str] = set()
    for count, key in (
        (7, lambda t: t.date()),
        (4, lambda t: t.isocalendar()[:2]),
        (12, lambda t: (t.year, t.month)),
        (3, lambda t: t.year),
    ):
        seen: list = []
        for name in newest_first:
            if key(points[name]) not in seen and len(seen) < count:
                seen.append(key(points[name]))
                expect.add(name)
    assert kept == expect
    # NOW is Tuesday 2026-12-15; backups at 15:00. Daily: Dec 14..8. Weekly: W51 and W50 are already kept,
    # then Dec 6 (W49) and Nov 29 (W48). Monthly: Dec is kept, then Nov 30 back to Jan 31 (11). Yearly:
    # 2026 is kept, then Dec 31 2025; the oldest backup (d370, December 2025) leaves no third year.
    assert len(kept) == 7 + 2 + 11 + 1
    assert reasons(plan, ids["d9"]) == ["keep: weekly 3 of 4 (2026-W49)"]
    assert reasons(plan, ids["d15"]) == ["keep: monthly 2 of 12 (2026-11)"]
    assert reasons(plan, ids["d349"]) == ["keep: yearly 2 of 3 (2025)"]
    assert actions(plan)[ids["d370"]] == "delete"


def test_compliance_minimum_outlasts_the_keep_rule():
    data, plan = golden("compliance_minimum")
    ids, act = data["ids"], actions(plan)
    assert {k: act[v] for k, v in ids.items()} == {
        "y8": "delete",
        "y6": "keep",
        "y2": "keep",
        "d40": "keep",
        "d10": "keep",
    }
    y6 = next(d for d in plan["decisions"] if d["item"] == ids["y6"])
    assert y6["reasons"] == [
        f"keep: SOX (class financial): 7 years minimum (until {iso_s(NOW - 6 * 365 * D + 2557 * D)})"
    ]
    assert y6["deletable_after"] == iso_s(NOW - 6 * 365 * D + 2557 * D)


def test_gdpr_maximum_cuts_kept_backups_but_never_a_held_one():
    data, plan = golden("gdpr_maximum")
    ids, act = data["ids"], actions(plan)
    assert {k: act[v] for k, v in ids.items()} == {
        "f50": "keep",  # past 35d but held
        "f40": "delete",  # past 35d
        "i36": "delete",  # past 35d
        "i34": "delete",  # within 35d, but built on f40, deleted past the maximum
        "f30": "keep",
        "f20": "keep",
        "f5": "keep",
    }
    assert reasons(plan, ids["i34"]) == [
        f"delete: built on {ids['f40']}, which is deleted past its GDPR (class personal): 35 days maximum"
    ]
    assert any("is past its GDPR (class personal): 35 days maximum but is held" in w for w in plan["warnings"])
    # f30 is kept 60 days by its rule, but the maximum takes it 35 days after it ended.
    f30 = next(d for d in plan["decisions"] if d["item"] == ids["f30"])
    assert f30["deletable_after"] == iso_s(NOW + 5 * D)
    # 2-day pieces from 52 days ago: piece n's last event is 52 - 2(n+1) days ago (+1 minute), so 0..7 are
    # past 35 days. The default 7d window's base is f20 (the newest full ended before it), started in piece 15;
    # f5, the newest point's base, in piece 23. Nothing needs 8..14.
    assert logs(plan, "crm") == [(0, 7, "delete"), (8, 14, "delete"), (15, 22, "keep"), (23, 25, "keep")]
    assert reasons(plan, "log:crm:0-7") == ["delete: GDPR (class personal): 35 days maximum passed"]


def test_holds_keep_by_glob_and_by_time_range_and_a_released_hold_keeps_nothing():
    data, plan = golden("holds")
    ids, act = data["ids"], actions(plan)
    docs = {k: act[v] for k, v in ids.items() if k.startswith("docs")}
    assert docs == {"docs120": "delete", "docs110": "keep", "docs100": "delete", "docs95": "delete", "docs10": "keep"}
    held = next(d for d in plan["decisions"] if d["item"] == ids["docs110"])
    assert held["held_by"] == ["hold-20261201-11111111"] and held["deletable_after"] is None
    app = {k: act[v] for k, v in ids.items() if k.startswith("app")}
    # app15 ended 15 days ago, before the held range (14..12 days ago), and is the full its pieces replay on.
    assert app == {"app19": "keep", "app15": "keep", "app11": "keep", "app2": "keep"}
    assert reasons(plan, ids["app15"]) == [
        "keep: within 30d (until " + iso_s(NOW + 15 * D) + ")",
        "keep: base of held log pieces",
    ]
    # Daily pieces from 20 days ago (piece n: events from 20-n days ago to 19-n). The range (14..12 days ago)
    # overlaps pieces 6 and 7; app15 started 15 days and 10 minutes ago, in piece 4, so 4..5 replay up to them.
    # app2, the base of the 1d window and of the newest point, started in piece 17.
    log = logs(plan, "app")
    assert log == [(0, 3, "delete"), (4, 5, "keep"), (6, 7, "keep"), (8, 16, "delete"), (17, 19, "keep")]
    assert next(d for d in plan["decisions"] if d["item"] == "log:app:6-7")["held_by"] == ["hold-20261201-22222222"]


def test_refusal_when_every_completed_backup_would_go():
    data, plan = golden("refusal")
    ids, act = data["ids"], actions(plan)
    assert set(plan["refused"]) == {"web"}
    assert all(act[ids[f"web{a}"]] == "keep" for a in (130, 115, 100))
    assert reasons(plan, ids["web100"])[0].startswith("refused: its policy would delete every completed backup of web")
    # Redis beside it: 24 hours plus the newest one.
    assert {k: act[v] for k, v in ids.items() if k.startswith("cache")} == {
        "cache60": "delete",
        "cache42": "delete",
        "cache30": "delete",
        "cache18": "keep",
        "cache6": "keep",
    }


def test_failed_remains_go_after_the_shortest_keep_within():
    data, plan = golden("failed_remains")
    ids, act = data["ids"], actions(plan)
    assert {k: act[v] for k, v in ids.items()} == {
        "ok120": "delete",
        "failed100": "delete",
        "abandoned95": "delete",
        "rollback93": "delete",
        "corrupt92": "delete",
        "deleting91": "keep",  # the executor finishes it, not the plan
        "ok30": "keep",
        "failed3": "keep",
        "ok2": "keep",
        "running": "keep",
    }
    assert reasons(plan, ids["failed100"]) == ["delete: FAILED remains older than 90d (not a valid backup)"]


def test_archive_after_and_online_for():
    data, plan = golden("archive_online")
    ids = data["ids"]
    by = {k: next(d for d in plan["decisions"] if d["item"] == v) for k, v in ids.items()}
    assert {k: d["action"] for k, d in by.items()} == {
        "p300": "keep",  # already in GLACIER
        "p200": "archive",
        "p100": "archive",
        "p60": "keep",  # PCI DSS: 3 months online
        "p20": "keep",  # younger than archive_after
        "p1": "keep",
        "a80": "keep",  # already in the archive vault
        "a70": "archive",
        "a5": "keep",
    }
    assert by["p300"]["restore_delay"].startswith("3-5 hours")
    assert by["p200"]["archive_to"] == "GLACIER"
    assert by["a70"]["restore_delay"] == "immediate: restore with --vault cold"
    assert by["p60"]["reasons"][-1].startswith("online: its data classes keep it online 92d")


def test_the_newest_pieces_key_is_never_shredded_and_a_superseded_partial_counts_as_its_successor():
    v = Vault()
    v.source("db", "postgres")
    v.log("db", 4 * D, D)
    v.pieces.pop()  # pieces 0..2 under one key, all shipped before the full below started (the log is behind)
    full = v.backup("db", "full", timedelta(minutes=1))
    plan = plan_retention(v.catalog(), RetentionConfig(), [], NOW)
    assert logs(plan.to_dict(), "db") == [(0, 2, "delete")]  # the full (taken after them) needs none of them
    assert plan.log_keys_to_shred == {}  # but a running capture may still ship under that key
    assert actions(plan.to_dict())[full] == "keep"

    # An incremental whose recorded range ends with a partial piece that was later superseded needs the
    # piece that superseded it (the partial's log is in it), not only the one before.
    v = Vault()
    v.source("db", "mysql")
    v.log("db", 4 * D, D)
    f = v.backup("db", "full", 3 * D + 12 * H)  # started in piece 0
    p3 = v.pieces.pop()
    v.pieces.append(PieceItem(**{**p3.__dict__, "partial": True, "last_time": p3.first_time}))
    v.pieces.append(PieceItem(**{**p3.__dict__, "seq": 4}))
    inc = v.backup("db", "incremental", 2 * H, on=f)
    assert v.by_id(inc).log_pieces == (0, 3)
    config = RetentionConfig.model_validate({"sources": {"db": {"full": {"keep_last": 1}, "pitr_window": "1h"}}})
    plan = plan_retention(v.catalog(), config, [], NOW).to_dict()
    assert logs(plan, "db") == [(0, 2, "keep"), (3, 3, "delete"), (4, 4, "keep")]
    assert f"keep: replayed by retained backups on full {f}" in reasons(plan, "log:db:4-4")


def test_every_golden_has_a_scenario_and_the_plan_text_names_each_source():
    names = {p.name.removesuffix(".expected.json") for p in DATA.glob("*.expected.json")}
    assert names == set(SCENARIOS)
    text = _plan(json.loads((DATA / "holds.json").read_text())).text()
    assert "docs: keep 2, archive 0, delete 3" in text and "held by hold-20261201-11111111" in text
