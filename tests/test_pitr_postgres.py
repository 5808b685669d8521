"""PostgreSQL point-in-time recovery against a real primary, through core and a real vault.

A physical full (pg_basebackup), WAL captured through a replication slot while
batches of rows are written, then recovered into a new data directory on a free
port to a time between two batches: exactly the earlier batches must be there.
Also: the full alone, a capture killed with SIGKILL and restarted (no gap), and
a dropped slot whose WAL the server removed (LogGapError, a new full needed).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.chains import effective_log, log_gaps, plan_chain_restore
from core.crypto.keys import Keyring
from core.engines.postgres.engine import PostgresEngine
from core.engines.postgres.position import lsn_int
from core.engines.postgres.recovery import port_in_use
from core.errors import EngineError, IntegrityError, LogGapError, TargetNotEmptyError
from core.operations import backup_source, capture_source
from core.repository.vault import Vault
from core.restoring import restore_backup, restore_chain_plan
from core.storage.local import LocalStore
from tests.capturing import Capturing
from tests.fixtures_postgres import PostgresServer, fresh_data_dir, stop_cluster
from tests.servers import child_processes, free_port

PASSPHRASE = "pg-pitr-passphrase"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rows(conn) -> list[tuple]:
    return [tuple(r) for r in conn.execute("SELECT id, batch, note FROM items ORDER BY id").fetchall()]


def _write_batch(server: PostgresServer, database: str, batch: int, size: int = 5) -> tuple[list[tuple], datetime]:
    """Insert one batch in one transaction; returns its rows and the server time after it committed."""
    return _write_batch_timed(server, database, batch, size)[::2]


def _write_batch_timed(server: PostgresServer, database: str, batch: int, size: int = 5):
    """(rows, server time just before the commit, server time after it): the commit time lies between."""
    rows = [(batch * 100 + i, batch, f"batch {batch} row {i}") for i in range(size)]
    with server.connect(database) as conn:
        with conn.transaction():
            for row in rows:
                conn.execute("INSERT INTO items VALUES (%s, %s, %s)", row)
            before = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        return rows, before, conn.execute("SELECT clock_timestamp()").fetchone()[0]


def _source(server: PostgresServer, tmp_path_factory, name: str) -> SimpleNamespace:
    database = server.create_database(server.fresh_database_name())
    with server.connect(database) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, batch int NOT NULL, note text)")
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp(f"{name}-vault") / "vault"), create=True)
    slot = f"gdr_test_{secrets.token_hex(4)}"
    config = server.config(name, database, backup_method="physical", rpo_seconds=1, slot=slot)
    return SimpleNamespace(
        server=server,
        database=database,
        vault=vault,
        keyring=Keyring(passphrase=PASSPHRASE),
        engine=PostgresEngine(config),
        config=config,
        slot=slot,
        name=name,
    )


_TARGETS: list[Path] = []


def _target(source: SimpleNamespace) -> PostgresEngine:
    """A new cluster: a fresh data directory and a free port (removed at the end of the module)."""
    _TARGETS.append(fresh_data_dir())
    return PostgresEngine(source.config.model_copy(update={"data_dir": str(_TARGETS[-1]), "port": free_port()}))


def _restored_rows(target: PostgresEngine) -> list[tuple]:
    with target._connect() as conn:
        return _rows(conn)


def _plan(source: SimpleNamespace, target_time: datetime, target: PostgresEngine) -> dict:
    return plan_chain_restore(
        source.vault.list_backups(source.name),
        source.vault.log_pieces(source.name),
        source.name,
        "postgres",
        target_time,
        datetime.now(UTC),
        target=target.describe(),
        target_has_data=target.has_data(),
        force=False,
    ).to_dict()


@pytest.fixture(autouse=True, scope="module")
def _spool(tmp_path_factory):
    old = os.environ.get("GENESIS_DR_SPOOL_DIR")
    os.environ["GENESIS_DR_SPOOL_DIR"] = str(tmp_path_factory.mktemp("spool"))
    yield
    for data_dir in _TARGETS:
        stop_cluster(data_dir)
    if old is None:
        os.environ.pop("GENESIS_DR_SPOOL_DIR")
    else:
        os.environ["GENESIS_DR_SPOOL_DIR"] = old


@pytest.fixture(scope="module")
def captured(pg_pitr_server, tmp_path_factory):
    """A physical full, then three batches written 1.2 s apart while capture runs (an
    incremental backup taken after batch 2, while the capture runs)."""
    src = _source(pg_pitr_server, tmp_path_factory, "pitr-db")
    before, _ = _write_batch(pg_pitr_server, src.database, 0)
    full = backup_source(src.vault, src.keyring, src.engine, "full")
    capture = Capturing(src.vault, src.keyring, src.engine)
    try:
        batch1, _ = _write_batch(pg_pitr_server, src.database, 1)
        differential = backup_source(src.vault, src.keyring, src.engine, "differential")
        time.sleep(1.2)
        batch2, commit2, after2 = _write_batch_timed(pg_pitr_server, src.database, 2)
        incremental = backup_source(src.vault, src.keyring, src.engine, "incremental")
        time.sleep(1.2)
        with pg_pitr_server.connect(src.database) as conn:
            before3 = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        started = time.monotonic()
        batch3, commit3, after3 = _write_batch_timed(pg_pitr_server, src.database, 3)
        # RPO: how long until the vault holds a piece with batch 3's commit.
        while not any(p.info.last_time >= _iso(commit3) for p in src.vault.log_pieces(src.name)):
            assert time.monotonic() - started < 30
            time.sleep(0.05)
        rpo = max(0.0, (datetime.now(UTC) - after3).total_seconds())
    finally:
        capture.finish()
    yield SimpleNamespace(
        src=src,
        full=full,
        incremental=incremental,
        differential=differential,
        before=before,
        batches=[batch1, batch2, batch3],
        target_time=after2 + (before3 - after2) / 2,
        commit2=(commit2, after2),
        after3=after3,
        rpo=rpo,
        messages=capture.messages,
    )


def test_physical_full_records_its_wal_range_and_the_cluster(captured):
    position = captured.full.position
    assert captured.full.type == "full"
    assert [s.name for s in captured.full.streams] == ["base.tar"]
    assert position["physical"] is True and position["timeline"] == 1
    assert position["lsn"] <= position["end_lsn"] or len(position["lsn"]) < len(position["end_lsn"])
    assert position["server_version"].startswith("15")
    # The chain: a differential and an incremental record WAL positions, no data.
    assert captured.differential.parent == captured.full.id and captured.differential.streams == []
    assert captured.incremental.parent == captured.differential.id and captured.incremental.streams == []
    assert lsn_int(captured.incremental.position["lsn"]) > lsn_int(captured.differential.position["lsn"])


def test_auto_takes_a_physical_full_once_the_capture_slot_exists(captured):
    src = captured.src
    auto = PostgresEngine(src.config.model_copy(update={"backup_method": "auto"}))
    assert [s.name for s in backup_source(src.vault, src.keyring, auto, "full").streams] == ["base.tar"]
    # No slot of that name on the server: the source is not set up for WAL capture, the full stays logical.
    unslotted = PostgresEngine(src.config.model_copy(update={"backup_method": "auto", "slot": "gdr_no_such_slot"}))
    logical = backup_source(src.vault, src.keyring, unslotted, "full")
    assert "base.tar" not in [s.name for s in logical.streams] and logical.position.get("physical") is None
    # WAL cannot be replayed onto a logical dump: an incremental on it is refused, saying what to do.
    with pytest.raises(EngineError, match="take a physical full first"):
        backup_source(src.vault, src.keyring, unslotted, "incremental")


def test_capture_ships_a_gap_free_log_with_commit_times(captured):
    src = captured.src
    pieces = effective_log(src.vault.log_pieces(src.name), "postgres")
    assert log_gaps(pieces, "postgres") == []
    first = pieces[0].info
    full_lsn = int(captured.full.position["lsn"].split("/")[1], 16)
    assert int(first.start["lsn"].split("/")[1], 16) <= full_lsn < int(first.end["lsn"].split("/")[1], 16)
    # The last commit the log holds is batch 3's, to the microsecond order of the server clock.
    last = max(datetime.fromisoformat(p.last_time.replace("Z", "+00:00")) for p in pieces if p.extra["commits"])
    assert captured.target_time < last <= captured.after3
    assert all(p.name == p.info.name and len(p.name) == 24 for p in pieces)


def test_a_commit_is_in_the_vault_within_the_rpo(captured):
    # rpo_seconds is 1: a partial piece follows the commit within a second and a generous margin.
    assert captured.rpo < captured.src.config.rpo_seconds + 3


def test_restore_to_a_time_between_batches_gives_exactly_the_earlier_batches(captured, monkeypatch):
    src = captured.src
    target = _target(src)
    plan = _plan(src, captured.target_time, target)
    assert plan["base_id"] == captured.full.id and plan["pieces"]
    monkeypatch.setenv("GENESIS_DR_PG_WAL_WINDOW", "1")
    said: list[str] = []
    try:
        report = restore_chain_plan(src.vault, src.keyring, plan, target, progress=said.append)
        # Never the whole WAL on disk: the segment asked for, the one before, one ahead.
        (promoted,) = [m for m in said if m.startswith("recovered cluster promoted")]
        assert int(promoted.split("at most ")[1].split()[0]) <= 3
        assert _restored_rows(target) == sorted(captured.before + captured.batches[0] + captured.batches[1])
        point = report.to_dict()["recovery_point"]
        # The recovery point is batch 2's commit, the last one at or before the target.
        reached = datetime.fromisoformat(point["time"].replace("Z", "+00:00"))
        assert captured.commit2[0] <= reached <= captured.commit2[1]
        assert point["proof"].startswith(f"pg_last_xact_replay_timestamp() {point['time']}")
        # The staging window is gone and the recovery settings are reset: a restart is an ordinary start.
        assert not (Path(target.config.data_dir) / "genesis-dr-wal").exists()
        assert "restore_command" not in (Path(target.config.data_dir) / "postgresql.auto.conf").read_text()
        with target._connect() as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
    finally:
        stop_cluster(Path(target.config.data_dir))


def test_the_physical_full_alone_restores_by_backup_id(captured):
    src = captured.src
    target = _target(src)
    try:
        report = restore_backup(src.vault, src.keyring, captured.full.id, target)
        assert _restored_rows(target) == sorted(captured.before)
        assert report.verified_checks == 2  # the cluster's identity: system identifier and major version
    finally:
        stop_cluster(Path(target.config.data_dir))


def test_a_missing_piece_is_a_named_gap(captured, tmp_path):
    src = captured.src
    copy = tmp_path / "vault"
    shutil.copytree(src.vault.store.root, copy)
    pieces = src.vault.log_pieces(src.name)
    missing = pieces[len(pieces) // 2]
    (copy / "logs" / src.name / f"{missing.seq:012d}.json").unlink()
    vault = Vault.open(LocalStore(copy))
    target = _target(src)
    with pytest.raises(LogGapError) as caught:
        plan_chain_restore(
            vault.list_backups(src.name),
            vault.log_pieces(src.name),
            src.name,
            "postgres",
            captured.target_time,
            datetime.now(UTC),
            target=target.describe(),
            target_has_data=False,
            force=False,
        )
    assert f"lsn {missing.start['lsn']}" in str(caught.value) and src.name in str(caught.value)


def test_a_target_directory_that_holds_anything_is_refused(captured):
    target = _target(captured.src)
    Path(target.config.data_dir).mkdir()
    (Path(target.config.data_dir) / "PG_VERSION").write_text("15\n")
    with pytest.raises(TargetNotEmptyError, match="choose another data_dir"):
        restore_backup(captured.src.vault, captured.src.keyring, captured.full.id, target, force=True)
    assert (Path(target.config.data_dir) / "PG_VERSION").read_text() == "15\n"


def test_a_corrupted_wal_piece_fails_the_restore_and_leaves_no_cluster(captured, tmp_path):
    src = captured.src
    copy = tmp_path / "vault"
    shutil.copytree(src.vault.store.root, copy)
    vault = Vault.open(LocalStore(copy))
    target = _target(src)
    plan = _plan(src, captured.target_time, target)
    chunks = sorted((copy / "logdata" / src.name / f"{plan['pieces'][-1]:012d}").iterdir())
    data = bytearray(chunks[0].read_bytes())
    data[len(data) // 2] ^= 0x01
    chunks[0].chmod(0o600)
    chunks[0].write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        restore_chain_plan(vault, src.keyring, plan, target)
    # The server was stopped before it could take the end of the staged WAL for the end of the log.
    assert not Path(target.config.data_dir).exists()
    assert not child_processes("postgres") and not port_in_use("127.0.0.1", target.config.port)


_CAPTURE_CHILD = """
import sys, threading
from core.crypto.keys import Keyring
from core.engines.postgres.engine import PostgresEngine
from core.operations import capture_source
from core.repository.vault import Vault
from core.sources import PostgresSourceConfig
from core.storage.local import LocalStore
config = PostgresSourceConfig.model_validate_json(sys.stdin.read())
vault = Vault.open(LocalStore(sys.argv[1]))
capture_source(vault, Keyring(passphrase=sys.argv[2]), PostgresEngine(config), threading.Event(),
               progress=lambda m: print(m, flush=True))
"""


def test_a_killed_capture_resumes_without_a_gap(pg_pitr_server, tmp_path_factory):
    src = _source(pg_pitr_server, tmp_path_factory, "pitr-kill")
    backup_source(src.vault, src.keyring, src.engine, "full")
    config_json = src.config.model_dump_json().replace('"**********"', f'"{pg_pitr_server.password}"')
    child = subprocess.Popen(
        [sys.executable, "-c", _CAPTURE_CHILD, str(src.vault.store.root), PASSPHRASE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    child.stdin.write(config_json)
    child.stdin.close()
    written: list[tuple] = []
    try:
        rows, _ = _write_batch(pg_pitr_server, src.database, 1)
        written += rows
        deadline = time.monotonic() + 30
        while not src.vault.log_pieces(src.name) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert src.vault.log_pieces(src.name), "the child capture shipped nothing"
        rows, _ = _write_batch(pg_pitr_server, src.database, 2)  # in the spool, maybe not in the vault
        written += rows
        time.sleep(0.3)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    rows, _ = _write_batch(pg_pitr_server, src.database, 3)
    written += rows
    capture = Capturing(src.vault, src.keyring, src.engine)
    rows, last = _write_batch(pg_pitr_server, src.database, 4)
    written += rows
    time.sleep(1.5)
    capture.finish()
    pieces = effective_log(src.vault.log_pieces(src.name), "postgres")
    assert log_gaps(pieces, "postgres") == []
    target = _target(src)
    try:
        # Plans carry times in milliseconds: a target a few ms after batch 4's commit includes it.
        plan = _plan(src, last + timedelta(milliseconds=5), target)
        report = restore_chain_plan(src.vault, src.keyring, plan, target)
        assert _restored_rows(target) == sorted(written)
        # No commit after the target in the vault: the server replayed it all, then was promoted.
        assert "no commit after the target" in report.to_dict()["recovery_point"]["proof"]
    finally:
        stop_cluster(Path(target.config.data_dir))


def test_a_dropped_slot_whose_wal_is_gone_is_a_named_gap(pg_pitr_server, tmp_path_factory):
    src = _source(pg_pitr_server, tmp_path_factory, "pitr-gap")
    backup_source(src.vault, src.keyring, src.engine, "full")
    until = src.engine.log_position(switch=True)
    capture_source(src.vault, src.keyring, src.engine, threading.Event(), until=until)
    end = src.vault.log_pieces(src.name)[-1].end["lsn"]
    with pg_pitr_server.connect(src.database) as conn:
        # Every slot keeps WAL: drop ours, and those of tests run before (inactive by now: tests run one
        # after another), so the server really removes it.
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active")
        for _ in range(2):
            for i in range(4):
                conn.execute("INSERT INTO items VALUES (%s, 0, 'x')", (1000 + i + 10 * _,))
                conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
    with pytest.raises(LogGapError) as caught:
        capture_source(src.vault, src.keyring, src.engine, threading.Event(), until=src.engine.log_position(True))
    message = str(caught.value)
    assert end in message and "new full backup" in message and src.slot in message
    assert len(message.splitlines()) == 1
    # The remedy: a new full; the capture then starts a new chain at it, and restores after it are whole.
    backup_source(src.vault, src.keyring, src.engine, "full")
    rows, last = _write_batch(pg_pitr_server, src.database, 5)
    capture_source(src.vault, src.keyring, src.engine, threading.Event(), until=src.engine.log_position(True))
    target = _target(src)
    try:
        restore_chain_plan(src.vault, src.keyring, _plan(src, last + timedelta(milliseconds=5), target), target)
        with pg_pitr_server.connect(src.database) as conn:
            expected = _rows(conn)
        assert _restored_rows(target) == expected and set(rows) <= set(expected)
    finally:
        stop_cluster(Path(target.config.data_dir))
