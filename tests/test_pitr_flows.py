"""Chains and point-in-time restores through the flows (Prefect's test harness) and through genesis-dr.

The files engine's chain is the quickest real chain: a full, then incrementals that
record creations, changes, renames, mode changes and deletions; a restore to a time
between two backups must give exactly the tree of that moment.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from core.errors import ConfigError
from core.repository.manifest import COMPLETED
from tests.servers import free_port
from tests.test_cli import REPO, cli, one_line_error  # noqa: F401  (the command as an operator runs it)
from tests.test_flows import run_logs


def tree(root) -> dict:
    """Every entry below ``root``: bytes, mode and mtime (what a restore must reproduce)."""
    return {
        p.relative_to(root).as_posix(): (
            p.read_bytes() if p.is_file() else None,
            p.stat().st_mode,
            p.stat().st_mtime_ns,
        )
        for p in sorted(root.rglob("*"))
    }


def first_tree(root):
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "app.ini").write_text("[app]\nversion = 1\n")
    (root / "old-name.txt").write_text("renamed later\n")
    (root / "doomed.txt").write_text("deleted later\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o644)
    return root


def change_tree(root, step: int):
    """Each step: a file created, one modified, one renamed, a mode changed, one deleted."""
    (root / f"new-{step}.txt").write_text(f"created at step {step}\n")
    (root / "conf" / "app.ini").write_text(f"[app]\nversion = {step + 1}\n")
    if step == 1:
        (root / "old-name.txt").rename(root / "new-name.txt")
        (root / "run.sh").chmod(0o755)
        (root / "doomed.txt").unlink()
    else:
        (root / "new-1.txt").unlink()
        (root / "new-name.txt").write_text("renamed and then changed\n")


def after(iso_text: str) -> datetime:
    """The first whole second after ``iso_text`` (the source documents' form has whole seconds)."""
    when = datetime.fromisoformat(iso_text.replace("Z", "+00:00"))
    return when.replace(microsecond=0) + timedelta(seconds=1)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_past(when: datetime) -> None:
    """Sleep until the clock is past ``when`` (so the next backup ends after it)."""
    delay = (when - datetime.now(UTC)).total_seconds() + 0.05
    if delay > 0:
        time.sleep(delay)


def test_point_in_time_restore_of_a_mode_through_the_command(cli, tmp_path):  # noqa: F811
    """genesis-dr end to end: backups of each type, list --chains, a dry run that changes nothing, then
    --mode artifacts_only restores both files sources to one instant, with each recovery point and the skew."""
    app = first_tree(tmp_path / "app")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "a.png").write_bytes(b"\x89PNG one")
    stack = tmp_path / "pitr.yaml"
    stack.write_text(
        f"""
stack: pitrcli
vault: {{path: ./vault-pitr}}
encryption: {{passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD}}
sources:
  - {{name: app-files, kind: files, root: {app}}}
  - {{name: uploads, kind: files, root: {uploads}}}
schedules:
  incremental: '*/10 * * * *'
"""
    )
    cli("apply", str(stack))
    cli("backup", "full", "--stack", "pitrcli")
    change_tree(app, 1)
    (uploads / "b.png").write_bytes(b"\x89PNG two")
    out = cli("backup", "differential", "--stack", "pitrcli").stdout
    assert re.search(r"app-files: COMPLETED backup_\S+", out) and re.search(r"uploads: COMPLETED", out), out
    moments = {"app-files": tree(app), "uploads": tree(uploads)}
    listing = json.loads(cli("list", "--stack", "pitrcli", "--json").stdout)
    ended = max(b["ended_at"] for b in listing if b["type"] == "differential")
    target_time = after(ended)
    wait_past(target_time)
    change_tree(app, 2)
    (uploads / "a.png").unlink()
    cli("backup", "incremental", "--stack", "pitrcli", "--source", "app-files")

    chains = cli("list", "--stack", "pitrcli", "--chains").stdout
    assert re.search(r"app-files \(files\)\n  backup_\S+ full .*\n    -> backup_\S+ differential .*\n    -> backup_\S+ "
                     r"incremental", chains), chains  # fmt: skip
    assert re.search(r"uploads \(files\)\n  backup_\S+ full .*\n    -> backup_\S+ differential", chains), chains

    typed = target_time.strftime("%Y-%m-%d %H:%M:%S")
    targets = ["--target", f"app-files.root={tmp_path / 'r-app'}", "--target", f"uploads.root={tmp_path / 'r-up'}"]
    args = ("restore", "--stack", "pitrcli", "--target-time", typed, "--mode", "artifacts_only", *targets)
    plan = cli(*args, "--dry-run").stdout
    assert f"target time: {target_time:%Y-%m-%dT%H:%M:%S}.000Z ('{typed}' has no zone: read as UTC)" in plan, plan
    assert plan.count("Point-in-time restore plan for") == 2 and plan.rstrip().endswith("dry run: nothing was changed")
    assert not (tmp_path / "r-app").exists() and not (tmp_path / "r-up").exists()

    out = cli(*args).stdout
    assert tree(tmp_path / "r-app") == moments["app-files"] and tree(tmp_path / "r-up") == moments["uploads"]
    assert re.search(r"Stack restored to \S+ \('" + re.escape(typed) + r"' has no zone: read as UTC\)", out), out
    rows = {
        line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("  app-files ", "  uploads "))
    }
    assert sorted(rows) == ["app-files", "uploads"], out
    assert re.search(r"largest skew between sources: [\d.]+s", out), out

    # Bad input: a mode without the kind of --source, and a target time in the future: one line each.
    err = one_line_error(cli("restore", "--stack", "pitrcli", "--target-time", typed, "--mode", "redis_only",
                             "--source", "uploads", "--dry-run", expect=2))  # fmt: skip
    assert "--source uploads is a files source, which --mode redis_only does not restore" in err
    err = one_line_error(
        cli("restore", "--stack", "pitrcli", "--target-time", "2999-01-01_00:00:00", "--source", "uploads",
            "--target", f"root={tmp_path / 'r-future'}", "--dry-run", expect=15)
    )  # fmt: skip
    assert "is in the future" in err and not (tmp_path / "r-future").exists()


def test_capture_runs_until_interrupted_and_a_mode_restore_reaches_a_point_between_writes(
    cli,  # noqa: F811
    redis_session,
    prefect_api,
    tmp_path,
    monkeypatch,
):
    """genesis-dr capture ships the Redis replication stream (taking the full it starts from) until SIGINT,
    then exits 0 with nothing cut short; the restore flow's redis_only mode reaches a moment between two
    batches of writes, and the report says how that point was proven."""
    from prefect.settings import PREFECT_API_URL

    from core.repository.vault import Vault, VaultMissingError
    from core.storage.local import LocalStore
    from flows.restore import restore
    from tests.fixtures_redis import assert_same_redis, snapshot_redis

    source, target = redis_session("pitr-flows-source"), redis_session("pitr-flows-target")
    source.client().flushall()
    target.client().flushall()
    source.client().set("before", "the capture")
    stack = tmp_path / "cap.yaml"
    stack.write_text(
        f"stack: pitrcap\nvault: {{path: {tmp_path / 'vault'}}}\n"
        "encryption: {passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD}\nsources:\n"
        f"  - {{name: cache, kind: redis, port: {source.port}, mode: rdb, rpo_seconds: 1}}\n"
        f"  - {{name: app-files, kind: files, root: {tmp_path}}}\n"
    )
    cli("apply", str(stack))
    err = one_line_error(cli("capture", "--stack", "pitrcap", "--source", "app-files", expect=2))
    assert "app-files (files): no log to capture" in err

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env |= {
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "BACKUP_ENCRYPTION_PASSWORD": "cli-test-passphrase-Zq9",
        "PYTHONPATH": str(REPO),
        "GENESIS_DR_SPOOL_DIR": str(tmp_path / "spool"),
    }
    capture = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "capture", "--stack", "pitrcap"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def wait_for(done, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert capture.poll() is None, capture.communicate()
            try:
                if done(Vault.open(LocalStore(tmp_path / "vault"))):
                    return
            except VaultMissingError:  # created by the full the capture takes first
                pass
            time.sleep(0.2)
        raise AssertionError(f"the capture did not {what} within {timeout}s")

    def shipped_to_now() -> None:
        wanted = int(source.client().info("replication")["master_repl_offset"])
        wait_for(lambda v: (p := v.log_pieces("cache")) and int(p[-1].end["offset"]) >= wanted, f"ship to {wanted}")

    try:
        # No full yet: the capture takes one through its own replication link, then streams on from it.
        wait_for(lambda v: [m.status for m in v.list_backups("cache")] == [COMPLETED], "take its full")
        source.client().mset({"b1:a": "1", "b1:b": "2"})
        state1 = snapshot_redis(source.client)
        t1 = datetime.now(UTC)
        time.sleep(1.2)
        source.client().set("b2:c", "3")
        source.client().delete("b1:a")
        shipped_to_now()
    finally:
        capture.send_signal(signal.SIGINT)
        out, err = capture.communicate(timeout=60)
    assert capture.returncode == 0, f"{out}\n{err}"
    # SIGINT lands between pieces (the summary says where the vault's log ends) or while one is being
    # shipped (that piece is left to the next capture); either way everything up to `wanted` was shipped
    # above, and the restore below proves it.
    assert re.search(
        r"cache: capture stopped; \d+ pieces shipped this run(, the vault.s log ends at repl offset \d+| \(the "
        r"piece it was shipping is shipped by the next capture\))",
        out,
    ), out
    assert "run it again to resume" in out, out
    assert "Traceback" not in err, err

    when = t1 + timedelta(seconds=0.6)
    monkeypatch.setenv("BACKUP_ENCRYPTION_PASSWORD", env["BACKUP_ENCRYPTION_PASSWORD"])
    out = restore(stack="pitrcap", mode="redis_only", target_time=when.isoformat(), target={"cache.port": target.port})
    assert_same_redis(state1, snapshot_redis(target.client), ttl_slack=30)
    (point,) = out["summary"]["sources"]
    reached = datetime.fromisoformat(point["time"].replace("Z", "+00:00"))
    assert point["source"] == "cache" and t1 - timedelta(seconds=1) < reached <= when, (point, t1)
    assert point["proof"].startswith("receive time over the replication link"), point


def test_a_failing_capture_stops_the_others_and_fails_the_run_in_one_line(cli, redis_session, tmp_path):  # noqa: F811
    """A capture that fails ends the whole run Failed at once, naming the source (exit code of its error):
    the healthy capture beside it is stopped rather than left running in a run that could never fail."""
    up = redis_session("pitr-flows-up")
    up.client().flushall()
    stack = tmp_path / "fail.yaml"
    stack.write_text(
        f"stack: pitrfail\nvault: {{path: {tmp_path / 'vault'}}}\n"
        "encryption: {passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD}\nsources:\n"
        f"  - {{name: cache, kind: redis, port: {up.port}, rpo_seconds: 1}}\n"
        f"  - {{name: lost, kind: redis, port: {free_port()}, rpo_seconds: 1}}\n"
    )
    cli("apply", str(stack))
    started = time.monotonic()
    proc = cli(
        "capture",
        "--stack",
        "pitrfail",
        expect=7,
        extra_env={"GENESIS_DR_TASK_RETRIES": "0", "GENESIS_DR_SPOOL_DIR": str(tmp_path / "spool")},
    )
    err = one_line_error(proc)
    assert "lost" in err and "cache" not in err, err
    assert "lost: capture failed" in proc.stderr + proc.stdout and "stopping the other captures" in proc.stderr
    assert time.monotonic() - started < 60


def test_mode_full_restores_every_kind_to_one_instant(
    make_stack, pg_pitr_server, mysql_pitr_server, redis_session, tmp_path, monkeypatch
):
    """The stack at one instant: PostgreSQL, MariaDB and Redis captured by the capture flow, files by an
    incremental; `--mode full` restores all four to a time between two batches of writes, each into a new
    target, and each source's recovery point lies between the batches."""
    import math
    import threading

    from core import cancel
    from core.engines.postgres.engine import PostgresEngine
    from core.sources import FilesSourceConfig
    from flows.backup import backup
    from flows.capture import capture
    from flows.restore import restore
    from tests.fixtures_postgres import fresh_data_dir, stop_cluster
    from tests.fixtures_redis import assert_same_redis, snapshot_redis

    monkeypatch.setenv("GENESIS_DR_SPOOL_DIR", str(tmp_path / "spool"))
    pg_db = pg_pitr_server.create_database(pg_pitr_server.fresh_database_name())
    my_db = mysql_pitr_server.create_database("stack")
    with pg_pitr_server.connect(pg_db) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, batch int NOT NULL)")
    with mysql_pitr_server.connect(my_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE items (id INT PRIMARY KEY, batch INT NOT NULL) ENGINE=InnoDB")
    cache, cache_target = redis_session("pitr-mode-source"), redis_session("pitr-mode-target")
    cache.client().flushall()
    cache_target.client().flushall()
    files = first_tree(tmp_path / "app")
    slot = f"gdr_flows_{secrets.token_hex(4)}"
    stack = make_stack(
        [
            pg_pitr_server.config("app-db", pg_db, backup_method="physical", rpo_seconds=1, slot=slot),
            mysql_pitr_server.config("app-mysql", my_db, rpo_seconds=1),
            cache.config("cache", "rdb", rpo_seconds=1),
            FilesSourceConfig(name="app-files", root=str(files)),
        ]
    )

    def batch(n: int) -> None:
        with pg_pitr_server.connect(pg_db) as conn:
            conn.execute(
                "INSERT INTO items SELECT g, %s::int FROM generate_series(%s::int, %s::int) g", (n, n * 10, n * 10 + 4)
            )
        with mysql_pitr_server.connect(my_db) as conn, conn.cursor() as cur:
            cur.executemany("INSERT INTO items VALUES (%s, %s)", [(n * 10 + i, n) for i in range(5)])
        cache.client().mset({f"b{n}:{i}": i for i in range(5)})
        change_tree(files, n)

    def rows() -> tuple[list, list]:
        with pg_pitr_server.connect(pg_db) as conn:
            pg = [tuple(r) for r in conn.execute("SELECT id, batch FROM items ORDER BY id").fetchall()]
        with mysql_pitr_server.connect(my_db) as conn, conn.cursor() as cur:
            cur.execute("SELECT id, batch FROM items ORDER BY id")
            return pg, [tuple(r) for r in cur.fetchall()]

    assert {r["status"] for r in backup(stack=stack.name)} == {COMPLETED}
    running: dict = {}
    capturing = threading.Thread(target=lambda: running.update(state=capture(stack=stack.name, return_state=True)))
    capturing.start()
    try:
        batch(1)
        # Every kind's incremental but Redis's (fulls only: left out, and the run says so), while the capture runs.
        state = backup(stack=stack.name, backup_type="incremental", return_state=True)
        assert any("incremental backup: left out cache (redis)" in m for m in run_logs(state.state_details.flow_run_id))
        taken = state.result()
        assert sorted((r["source"], r["type"]) for r in taken) == [
            ("app-db", "incremental"), ("app-files", "incremental"), ("app-mysql", "incremental")
        ]  # fmt: skip
        moment = (rows(), snapshot_redis(cache.client), tree(files))
        # A source named explicitly is backed up or fails loudly: Redis has no incrementals.
        with pytest.raises(ConfigError, match="cache: a redis source takes full backups, not incremental"):
            backup(stack=stack.name, backup_type="incremental", sources=["cache"])
        # Binlog event times are whole seconds: the target is the last instant of a second of its own.
        target_time = datetime.fromtimestamp(math.ceil(time.time() + 0.001) - 0.001, UTC)
        wait_past(target_time + timedelta(seconds=0.1))
        batch(2)
        deadline = time.monotonic() + 60
        vault = stack.vault()
        while not all(
            (pieces := vault.log_pieces(name)) and parse(pieces[-1].info.last_time) > target_time
            for name in ("app-db", "app-mysql", "cache")
        ):
            assert capturing.is_alive() and time.monotonic() < deadline, running
            time.sleep(0.2)
    finally:
        cancel.request("stopped by the test")
        capturing.join(60)
        cancel.reset()
    assert running["state"].is_completed(), running["state"].message

    data_dir = fresh_data_dir()
    pg_port = free_port()
    my_target = mysql_pitr_server.fresh_database_name("stackpitr")
    try:
        out = restore(
            stack=stack.name,
            mode="full",
            # The source documents' form (no zone: UTC), to the microsecond.
            target_time=target_time.strftime("%Y-%m-%d_%H:%M:%S.%f"),
            target={
                "app-db.data_dir": str(data_dir),
                "app-db.port": pg_port,
                "app-mysql.database": my_target,
                "cache.port": cache_target.port,
                "app-files.root": str(tmp_path / "restored"),
            },
        )
        restored_pg = PostgresEngine(pg_pitr_server.config("app-db", pg_db, data_dir=str(data_dir), port=pg_port))
        with restored_pg._connect() as conn:
            pg = [tuple(r) for r in conn.execute("SELECT id, batch FROM items ORDER BY id").fetchall()]
    finally:
        stop_cluster(data_dir)
        with pg_pitr_server.connect() as conn:
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (slot,))  # fmt: skip
    with mysql_pitr_server.connect(my_target) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, batch FROM items ORDER BY id")
        mysql = [tuple(r) for r in cur.fetchall()]
    (pg_then, mysql_then), redis_then, files_then = moment
    assert pg == pg_then == [(10 + i, 1) for i in range(5)]
    assert mysql == mysql_then == [(10 + i, 1) for i in range(5)]
    assert_same_redis(redis_then, snapshot_redis(cache_target.client), ttl_slack=30)
    assert tree(tmp_path / "restored") == files_then

    summary = out["summary"]
    assert summary["note"] == f"'{target_time:%Y-%m-%d_%H:%M:%S.%f}' has no zone: read as UTC"
    assert {plan["note"] for plan in out["plans"].values()} == {summary["note"]}
    points = {p["source"]: datetime.fromisoformat(p["time"].replace("Z", "+00:00")) for p in summary["sources"]}
    assert sorted(points) == ["app-db", "app-files", "app-mysql", "cache"]
    assert all(when <= target_time for when in points.values()), (points, target_time)
    assert summary["skew_s"] == round((max(points.values()) - min(points.values())).total_seconds(), 3)
    assert {name: report["recovery_point"] is not None for name, report in out["reports"].items()} == dict.fromkeys(
        points, True
    )
