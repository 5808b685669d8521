"""``genesis-dr status``: one screen of the stack's state, read from a real vault (core.observe.snapshot).

The stack (``observed_stack``, shared with test_metrics): a files source with a full and incrementals, a
files source whose every backup fails, a Redis source with a full and its captured log, a quick validation,
a monthly drill, a replica one backup behind, a legal hold and a failover state whose monitor counts one
region down. Every figure the screen and ``--json`` show is compared with what the vault itself records.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import time
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from core import stack_description
from core.chains import parse_iso
from core.crypto.keys import Keyring
from core.crypto.signing import SigningKey, generate_signing_key
from core.drills.runner import run_drill
from core.engines import engine_for
from core.errors import DRError
from core.failover.health import Tracker
from core.failover.state import StateStore
from core.history import History
from core.observe.snapshot import build_snapshot
from core.operations import backup_source
from core.replication import replicate
from core.repository.manifest import COMPLETED
from core.retention.catalog import read_catalog
from core.retention.holds import HoldBook
from core.retention.scope import parse_scope
from core.stack import StackConfig
from core.validation.runner import validate
from tests.capturing import Capturing

PASSPHRASE = "observe-test-passphrase"


def run_cli(*argv: str) -> str:
    """``genesis-dr status|metrics ...`` in this process (the commands' own parser entries); their stdout."""
    from cli.metrics import register as register_metrics
    from cli.status import register as register_status

    parser = argparse.ArgumentParser(prog="genesis-dr")
    sub = parser.add_subparsers(dest="command", required=True)
    register_status(sub)
    register_metrics(sub)
    args = parser.parse_args(list(argv))
    out = io.StringIO()
    with redirect_stdout(out):
        assert args.func(args) == 0
    return out.getvalue()


def build_observed_stack(base: Path, redis_server, stack: str) -> SimpleNamespace:
    """The stack of this module's doc, applied on this host (its local description saved)."""
    tree = base / "tree"
    tree.mkdir(parents=True)
    (tree / "a.bin").write_bytes(os.urandom(9000))
    secret = base / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    redis_server.client().flushall()
    redis_server.client().set("session:1", "alice")
    config = StackConfig(
        stack=stack,
        vault={"path": str(base / "vault")},
        encryption={"passphrase_from": f"file:{secret}"},
        sources=[
            {"kind": "files", "name": "app-files", "root": str(tree)},
            {"kind": "files", "name": "broken-files", "root": str(base / "missing")},
            redis_server.config("cache", rpo_seconds=1).model_dump(),
        ],
        replicas=[{"name": "dr-copy", "vault": {"path": str(base / "replica")}}],
        failover={
            "active_region": "us-west-2",
            "failures_before_down": 2,
            "regions": [
                {"name": "us-west-2", "priority": 1},
                {"name": "us-east-1", "priority": 2},
                {"name": "eu-west-1", "priority": 3},
            ],
        },
        objectives={"sources": {"cache": {"rpo_seconds": 600}}},
    )
    keyring = Keyring(passphrase=PASSPHRASE)
    vault = config.vault.open(create=True)

    def backup(name: str, backup_type: str):
        return backup_source(vault, keyring, engine_for(config.source(name)), backup_type)

    full = backup("app-files", "full")
    (tree / "b.bin").write_bytes(os.urandom(3000))
    backup("app-files", "incremental")
    with pytest.raises(DRError):
        backup("broken-files", "full")  # its root is missing: a FAILED record
    backup("cache", "full")
    capture = Capturing(vault, keyring, engine_for(config.source("cache")))
    redis_server.client().set("session:2", "bob")
    capture.wait_until(lambda pieces: bool(pieces), "a first piece")
    capture.finish()

    validate(config, latest=True, level="quick", keyring=keyring)
    drill = run_drill(config.model_copy(update={"sources": config.sources[:1]}), "monthly", keyring=keyring)
    replicate(vault, config.replicas[0].vault.store(), name="dr-copy")
    (tree / "c.bin").write_bytes(os.urandom(2000))
    behind = backup("app-files", "incremental")  # the replica lacks it

    signer = SigningKey.from_b64(generate_signing_key()[0])
    hold = HoldBook(vault.store).create(
        name="lawsuit-acme", reason="discovery", scope=parse_scope(json.dumps({"backup_ids": [full.id]})),
        contact="legal@example.com", creator="ops@host", catalog=read_catalog(vault, config), signer=signer,
    )  # fmt: skip
    # an incremental that found the previous one still running (the backup flow records it, H3)
    History(vault.store).record_skip("app-files", "incremental", datetime.now(UTC), {"host": "h", "pid": 1})
    states = StateStore(vault.store, config.failover)
    claimed = states.claim(0, "us-east-1", "region us-west-2 lost", "failover to us-east-1")
    states.complete(claimed, "completed")
    states.save_tracker(Tracker(2, failures={"us-west-2": 5}, down={"us-west-2": True}))
    stack_description.save(config, "tests")
    return SimpleNamespace(
        config=config, vault=vault, drill=drill, behind=behind, hold=hold, base=base, redis=redis_server
    )


@pytest.fixture(scope="module")
def observed(tmp_path_factory, redis_session, sandbox_root) -> SimpleNamespace:
    return build_observed_stack(tmp_path_factory.mktemp("observe-status"), redis_session("observe"), "observe-status")


def newest(vault, source: str, backup_type: str, status: str = COMPLETED):
    found = [m for m in vault.list_backups(source) if m.type == backup_type and m.status == status]
    return max(found, key=lambda m: m.ended_at)


def test_status_json_holds_the_vaults_facts(observed):
    vault = observed.vault
    data = json.loads(run_cli("status", "--stack", "observe-status", "--json"))
    sources = {s["name"]: s for s in data["sources"]}

    files = sources["app-files"]
    full, incr = newest(vault, "app-files", "full"), newest(vault, "app-files", "incremental")
    assert files["last_success"]["full"]["id"] == full.id
    assert files["last_success"]["full"]["stored_bytes"] == full.stored_bytes
    assert files["last_success"]["incremental"] == {
        "id": incr.id, "started_at": incr.started_at, "ended_at": incr.ended_at,
        "duration_s": round((parse_iso(incr.ended_at) - parse_iso(incr.started_at)).total_seconds(), 3),
        "plain_bytes": incr.plain_bytes, "stored_bytes": incr.stored_bytes, "error_class": None, "error": None,
    }  # fmt: skip
    assert files["counts"] == {"full": {"completed": 1, "failed": 0}, "incremental": {"completed": 2, "failed": 0}}
    taken = parse_iso(data["taken_at"])
    assert files["rpo_s"] == round((taken - parse_iso(incr.ended_at)).total_seconds(), 3)
    assert files["late"] is False and files["validations"]["quick"]["passed"] is True
    assert files["skipped"] == {"incremental": 1}

    broken = sources["broken-files"]
    failed = newest(vault, "broken-files", "full", "FAILED")
    assert broken["last_failure"]["full"]["id"] == failed.id and broken["last_success"] == {}
    assert (
        broken["last_failure"]["full"]["error_class"] == "SourceUnavailableError"
    )  # the class the FAILED manifest records
    assert broken["rpo_s"] is None and broken["late"] is True
    assert broken["validations"]["quick"]["passed"] is False
    assert broken["validations"]["quick"]["first_failure"].startswith("freshness: no completed backup")

    cache = sources["cache"]
    pieces = vault.log_pieces("cache")
    assert cache["captures_log"] is True and cache["capture_running"] is False
    assert cache["last_log_time"] == pieces[-1].last_time
    assert cache["capture_lag_s"] == round((taken - parse_iso(pieces[-1].last_time)).total_seconds(), 3)
    assert cache["newest_point_what"] == "log" and cache["rpo_objective_s"] == 600

    monthly = data["drills"]["monthly"]
    assert (monthly["id"], monthly["passed"], monthly["rto_s"]) == (observed.drill.id, True, observed.drill.rto_s)
    assert monthly["rpo_s"] == observed.drill.sources["app-files"]["rpo_s"]

    [replica] = data["replicas"]
    assert replica["missing"] == 1 and replica["problem"] is None
    assert replica["lag_s"] == round((taken - parse_iso(observed.behind.ended_at)).total_seconds(), 3)

    completed = [m for m in vault.list_backups() if m.status == COMPLETED]
    used = sum(m.stored_bytes for m in completed) + sum(p.stream.stored_bytes for p in pieces)
    primary = data["usage"][0]
    assert (primary["vault"], primary["used_bytes"]) == ("primary", used)
    st = os.statvfs(observed.base / "vault")
    assert abs(primary["total_bytes"] - (used + st.f_bavail * st.f_frsize)) < 64 << 20  # the disk is shared
    assert data["usage"][1]["used_bytes"] == used - observed.behind.stored_bytes  # the replica lacks one

    assert data["holds"] == [{"id": observed.hold.id, "name": "lawsuit-acme"}]
    assert data["failover"] | {"since": None} == {
        "active_region": "us-east-1", "epoch": 1, "regions": ["us-west-2", "us-east-1", "eu-west-1"],
        "healthy_regions": ["us-east-1", "eu-west-1"], "in_progress": None, "since": None,
    }  # fmt: skip
    assert data["failures"] == [
        {"source": "broken-files", "activity": "backup", "error_class": "SourceUnavailableError", "count": 1},
        {"source": "broken-files", "activity": "validation", "error_class": "freshness", "count": 1},
    ]
    assert data["problems"] == []


def test_status_screen_shows_each_part(observed):
    started = time.monotonic()
    text = run_cli("status", "--stack", "observe-status")
    assert time.monotonic() - started < 3  # no Prefect, no server: the vault read in-process
    table = text.split("validations:")[0].splitlines()[1:]
    cells = {c[0]: c for c in (re.split(r"\s{2,}", line.strip()) for line in table) if not c[0].endswith(":")}
    assert cells["SOURCE"][2:5] == ["LAST FULL", "LAST DIFF", "LAST INCR"]
    assert cells["app-files"][3] == "-"  # no differential taken
    assert cells["app-files"][-2:] == ["OK", "-"] and cells["app-files"][5] == "backup"
    assert cells["broken-files"][1:] == ["files", "-", "-", "-", "-", "- / 5 min 0 s", "LATE", "-"]
    assert cells["cache"][5] == "log" and cells["cache"][6].endswith(" / 10 min 0 s")
    assert cells["cache"][-2] == "OK" and cells["cache"][-1].startswith("NOT RUNNING, lag ")
    failed = newest(observed.vault, "broken-files", "full", "FAILED")
    assert "broken-files: last full FAILED" in text and failed.error.splitlines()[0][:60] in text
    assert "  broken-files quick: FAILED (freshness: no completed backup" in text
    assert "  app-files quick: passed" in text
    assert "  app-files: skipped (the previous run was still going): 1 incremental" in text
    assert f"RTO {observed.drill.rto_s:.2f} s" in text and "  daily    never run" in text
    assert "  dr-copy: lag " in text and "(1 backups or log pieces missing)" in text
    assert "failover: active region us-east-1 (epoch 1), healthy regions 2/3: us-east-1, eu-west-1" in text
    assert f"holds: 1 active: {observed.hold.id} (lawsuit-acme)" in text
    assert "vault usage: primary " in text and "; dr-copy " in text


def test_a_source_past_its_rpo_is_late_and_a_running_capture_shows(observed):
    incr = newest(observed.vault, "app-files", "incremental")
    later = parse_iso(incr.ended_at) + timedelta(seconds=301)  # the default RPO objective is 300 s
    snap = build_snapshot(stack_description.load("observe-status"), now=later)
    files = {s.name: s for s in snap.sources}["app-files"]
    assert (files.late, files.rpo_s) == (True, 301.0)
    from cli.status import render_status

    row = next(line for line in render_status(snap).splitlines() if line.startswith("  app-files "))
    assert re.split(r"\s{2,}", row.strip())[-3:] == ["5 min 1 s / 5 min 0 s", "LATE", "-"]

    capture = Capturing(observed.vault, Keyring(passphrase=PASSPHRASE), engine_for(observed.config.source("cache")))
    try:
        capture.wait_until(lambda _p: observed.vault.capture_running("cache") is not None, "its lease")
        data = json.loads(run_cli("status", "--stack", "observe-status", "--json"))
        cache = {s["name"]: s for s in data["sources"]}["cache"]
        assert cache["capture_running"] is True and "pid" in cache["capture_holder"]
    finally:
        capture.finish()


def test_a_backup_over_twice_its_median_is_flagged_slow(tmp_path):
    """The slow flag (core.scheduling.slow) over the vault's own durations: three small incrementals, then
    one that stores far more data."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.bin").write_bytes(b"a")
    config = StackConfig(stack="slow", vault={"path": str(tmp_path / "vault")},
                         sources=[{"kind": "files", "name": "app-files", "root": str(tree)}])  # fmt: skip
    vault, keyring = config.vault.open(create=True), Keyring(passphrase=PASSPHRASE)
    engine = engine_for(config.source("app-files"))
    backup_source(vault, keyring, engine, "full")
    for i in range(3):
        (tree / f"small{i}.bin").write_bytes(b"x")
        backup_source(vault, keyring, engine, "incremental")
    (tree / "big.bin").write_bytes(os.urandom(24 << 20))
    big = backup_source(vault, keyring, engine, "incremental")
    incrementals = sorted(
        (m for m in vault.list_backups("app-files") if m.type == "incremental"), key=lambda m: m.started_at
    )
    durations = [(parse_iso(m.ended_at) - parse_iso(m.started_at)).total_seconds() for m in incrementals]
    assert durations[-1] > 2 * sorted(durations[:-1])[1], durations  # the premise: over twice the median

    files = build_snapshot(config).sources[0]
    assert list(files.slow) == ["incremental"] and files.last_success["incremental"].id == big.id
    assert files.slow["incremental"].startswith("took ") and "over the last 3 runs" in files.slow["incremental"]
    from core.observe.metrics import families

    slow = {tuple(s.labels.values()): s.value for f in families(build_snapshot(config)) for s in f.samples
            if s.name == "genesis_dr_operation_slow"}  # fmt: skip
    assert slow == {("slow", "app-files", "full"): 0.0, ("slow", "app-files", "incremental"): 1.0}


def test_a_drill_or_validation_over_twice_its_median_is_flagged_slow(tmp_path):
    """Stack-wide operations: the slow flag over the durations of the history's drill and validation records
    (written as the runners write them), per tier and per level; the metric carries them without a source."""
    from core.observe.metrics import families
    from core.validation.results import new_run_id

    config = StackConfig(stack="slow-ops", vault={"path": str(tmp_path / "vault")},
                         sources=[{"kind": "files", "name": "app-files", "root": str(tmp_path)}])  # fmt: skip
    history = History(config.vault.open(create=True).store)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    runs = {("drills", "tier", "weekly"): [60, 62, 58, 190], ("validations", "level", "integrity"): [30, 31, 29, 33]}
    for (kind, field, name), seconds in runs.items():
        for i, took in enumerate(seconds):
            began = start + timedelta(days=i, minutes=len(field))
            doc = {
                field: name,
                "started_at": began.isoformat(),
                "ended_at": (began + timedelta(seconds=took)).isoformat(),
            }
            history.put(kind, new_run_id(kind.removesuffix("s"), began), doc | {"results": []})

    snap = build_snapshot(config)
    assert snap.timed_operations == ["drill-weekly", "validate-integrity"]
    assert list(snap.slow) == ["drill-weekly"]
    assert snap.slow["drill-weekly"] == "took 190 s, 3.2x its median 60 s over the last 3 runs"
    slow = {tuple(s.labels.values()): s.value for f in families(snap) for s in f.samples
            if s.name == "genesis_dr_operation_slow"}  # fmt: skip
    assert slow == {("slow-ops", "", "drill-weekly"): 1.0, ("slow-ops", "", "validate-integrity"): 0.0}
