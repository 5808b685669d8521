"""Restore-level checks: each kind restored into a sandbox started by our code, compared with the
checks recorded at backup time, smoke queries run; failures are check results with one line each.

Real servers throughout: the sources are the session's test servers, the sandboxes are
new ``postgres`` / ``mariadbd`` / ``redis-server`` processes (or directories) that
``check_restore`` starts and removes. After every test no sandbox is left.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from core.crypto.keys import Keyring
from core.engines import engine_for
from core.operations import backup_source
from core.repository.vault import Vault
from core.sources import FilesSourceConfig
from core.stack import StackConfig
from core.storage.local import LocalStore
from core.timing import STAGES, StageClock
from core.validation.restore_check import check_restore
from tests.fixtures_sandbox import assert_no_sandbox_left

PASSPHRASE = "restore-check-passphrase"


@pytest.fixture(autouse=True, scope="module")
def _module_env(tmp_path_factory, sandbox_root):
    saved = os.environ.get("GENESIS_DR_SPOOL_DIR")
    os.environ["GENESIS_DR_SPOOL_DIR"] = str(tmp_path_factory.mktemp("spool"))
    yield
    if saved is None:
        os.environ.pop("GENESIS_DR_SPOOL_DIR", None)
    else:
        os.environ["GENESIS_DR_SPOOL_DIR"] = saved


@pytest.fixture(autouse=True)
def _no_sandbox_left(sandbox_root):
    yield
    assert_no_sandbox_left(sandbox_root)


def _stack(vault_dir: Path, sources: list, **extra) -> StackConfig:
    return StackConfig(
        stack="restore-check",
        vault={"path": str(vault_dir)},
        encryption={"passphrase_from": "env:GDR_UNUSED_PASSPHRASE"},
        sources=[s.model_dump() for s in sources],
        **extra,
    )


def _by_name(recovery) -> dict:
    return {r.name: r for r in recovery.results}


def _assert_stages(recovery, busy: bool = False) -> None:
    assert set(recovery.stages) == set(STAGES)
    assert recovery.stages["sandbox"] > 0 or recovery.kind == "files"
    assert recovery.stages["load"] > 0
    if busy:  # busy seconds of the reader threads: measurable with a few MiB (small data rounds to 0)
        assert recovery.stages["fetch"] > 0 and recovery.stages["decrypt"] > 0
    assert recovery.stages["verify"] > 0
    assert recovery.seconds >= recovery.stages["load"]


# -- PostgreSQL logical ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_source(pg_server, tmp_path_factory):
    database = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(database) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, note text NOT NULL)")
        conn.execute("INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 250) AS i")
        conn.execute("CREATE SEQUENCE invoice_no START 900")
    config = pg_server.config("app-db", database, backup_method="logical")
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp("pg-vault") / "vault"), create=True)
    keyring = Keyring(passphrase=PASSPHRASE)
    manifest = backup_source(vault, keyring, engine_for(config))
    return SimpleNamespace(config=config, vault=vault, keyring=keyring, backup=manifest, database=database)


def test_postgres_logical_restores_into_a_sandbox_and_passes(pg_source, tmp_path):
    stack = _stack(
        tmp_path,
        [pg_source.config],
        validation={"smoke_queries": {"app-db": [{"query": "SELECT count(*) FROM items", "expect": "250"}]}},
    )
    lines: list[str] = []
    recovery = check_restore(stack, pg_source.vault, pg_source.keyring, "app-db", progress=lines.append)
    results = _by_name(recovery)
    assert recovery.passed, [r.line() for r in recovery.results]
    assert [r.name for r in recovery.results] == ["restore", "data checks", "smoke: SELECT count(*) FROM items"]
    assert all(r.checked and r.passed for r in recovery.results)
    assert results["smoke: SELECT count(*) FROM items"].detail == "returned the expected 250"
    assert results["data checks"].detail.endswith("checks recorded at backup time matched the restored data")
    assert (recovery.backup_id, recovery.kind) == (pg_source.backup.id, "postgres")
    assert recovery.recovery_point == pg_source.backup.ended_at
    assert recovery.target.startswith("sandbox postgres on 127.0.0.1:")
    assert recovery.report["verified_checks"] == 0  # the restore's own verification was skipped: we compared
    assert recovery.report["source"] == "app-db"
    _assert_stages(recovery)
    assert any(line.startswith("app-db: sandbox postgres on 127.0.0.1:") for line in lines)
    # The source was never touched: its data is still there, and the restore went to the sandbox.
    with engine_for(pg_source.config)._connect() as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 250


def test_row_count_altered_before_the_comparison_fails_data_checks(pg_source, tmp_path):
    def drop_rows(engine):
        with engine._connect() as conn:
            conn.execute("DELETE FROM items WHERE id > 247")

    stack = _stack(tmp_path, [pg_source.config])
    recovery = check_restore(stack, pg_source.vault, pg_source.keyring, "app-db", before_compare=drop_rows)
    checks = _by_name(recovery)["data checks"]
    assert not recovery.passed and checks.failed and checks.critical
    assert "rows: expected 250, found 247" in checks.detail
    assert checks.line().startswith(f"[FAILED] {pg_source.backup.id} app-db: data checks: ")
    assert "\n" not in checks.line()
    assert _by_name(recovery)["restore"].passed


def test_failing_smoke_queries_fail_the_check(pg_source, tmp_path):
    stack = _stack(
        tmp_path,
        [pg_source.config],
        validation={
            "smoke_queries": {
                "app-db": [
                    "SELECT count(*) FROM missing_table",
                    {"query": "SELECT max(id) FROM items", "expect": "251"},
                    "SELECT nextval('invoice_no')",
                ]
            }
        },
    )
    recovery = check_restore(stack, pg_source.vault, pg_source.keyring, "app-db")
    smoke = [r for r in recovery.results if r.name.startswith("smoke: ")]
    assert [r.status for r in smoke] == ["FAILED", "FAILED", "passed"]
    assert smoke[0].detail == 'failed: relation "missing_table" does not exist'
    assert smoke[1].detail == "returned 250, expected 251"
    assert not recovery.passed and _by_name(recovery)["data checks"].passed


def test_a_damaged_backup_is_a_failed_restore_check_not_an_exception(pg_source, tmp_path):
    vault_dir = tmp_path / "copy"
    shutil.copytree(pg_source.vault.store.root, vault_dir)
    vault = Vault.open(LocalStore(vault_dir))
    chunk = next(p for p in sorted((vault_dir / "backups" / pg_source.backup.id / "streams").rglob("*")) if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    recovery = check_restore(_stack(tmp_path, [pg_source.config]), vault, pg_source.keyring, "app-db")
    (restore,) = recovery.results
    assert restore.name == "restore" and restore.failed and restore.critical
    assert "does not match its SHA-256 in the manifest (corrupt)" in restore.detail
    assert restore.detail.startswith(f"restore of {pg_source.backup.id} into sandbox postgres on 127.0.0.1:")


def test_drill_target_that_is_a_production_source_is_refused(pg_source, tmp_path):
    other = pg_source.config.model_copy(update={"name": "reporting-db", "database": "reporting"})
    target = {"host": "localhost", "database": "reporting"}  # the same server and database as reporting-db
    stack = _stack(tmp_path, [pg_source.config, other], drill={"targets": {"app-db": target}})
    recovery = check_restore(stack, pg_source.vault, pg_source.keyring, "app-db")
    (sandbox,) = recovery.results
    assert sandbox.name == "sandbox" and sandbox.failed
    assert sandbox.detail == (
        f"drill target of app-db is the production target of source reporting-db (postgres "
        f"127.0.0.1:{other.port}/reporting); point drill.targets.app-db at a test environment"
    )


def test_drill_target_that_holds_data_is_refused(pg_source, pg_server, tmp_path):
    test_env = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(test_env) as conn:
        conn.execute("CREATE TABLE leftover (id int)")
    stack = _stack(tmp_path, [pg_source.config], drill={"targets": {"app-db": {"database": test_env}}})
    recovery = check_restore(stack, pg_source.vault, pg_source.keyring, "app-db")
    (sandbox,) = recovery.results
    assert sandbox.failed and sandbox.detail.startswith(f"drill target postgres 127.0.0.1:{pg_server.port}/{test_env}")
    assert "is not empty" in sandbox.detail


def test_an_empty_drill_target_is_restored_into(pg_source, pg_server, tmp_path):
    test_env = pg_server.fresh_database_name()
    stack = _stack(tmp_path, [pg_source.config], drill={"targets": {"app-db": {"database": test_env}}})
    recovery = check_restore(stack, pg_source.vault, pg_source.keyring, "app-db")
    assert recovery.passed, [r.line() for r in recovery.results]
    assert recovery.target == f"postgres 127.0.0.1:{pg_server.port}/{test_env}"
    with pg_server.connect(test_env) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 250


def test_sandbox_binary_missing_is_a_failed_sandbox_check(pg_source, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("GENESIS_DR_PG_BINDIR", str(tmp_path))
    import core.sandbox.servers as servers

    monkeypatch.setattr(servers, "PG_BINDIRS", ())  # the fallback directories: none here either
    recovery = check_restore(_stack(tmp_path, [pg_source.config]), pg_source.vault, pg_source.keyring, "app-db")
    (sandbox,) = recovery.results
    assert sandbox.name == "sandbox" and sandbox.failed
    assert sandbox.detail == (
        "sandbox for app-db: initdb not found on PATH; install the Debian package postgresql (or put initdb on PATH)"
    )


def test_cancelled_run_still_tears_the_sandbox_down(pg_source, tmp_path):
    def interrupt(engine):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        check_restore(
            _stack(tmp_path, [pg_source.config]), pg_source.vault, pg_source.keyring, "app-db", before_compare=interrupt
        )
    # _no_sandbox_left asserts the sandbox and its server are gone


# -- files -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("files-src")
    (root / "docs").mkdir()
    for i in range(20):
        (root / "docs" / f"f{i}.txt").write_text(f"file {i}\n" * (i + 1))
    (root / "VERSION").write_text("4.2\n")
    (root / "blob.bin").write_bytes(os.urandom(4 << 20))  # a few chunks: fetch and decrypt take measurable time
    config = FilesSourceConfig(name="uploads", root=str(root))
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp("files-vault") / "vault"), create=True)
    keyring = Keyring(passphrase=PASSPHRASE)
    full = backup_source(vault, keyring, engine_for(config))
    (root / "docs" / "new.txt").write_text("after the full\n")
    incremental = backup_source(vault, keyring, engine_for(config), "incremental")
    return SimpleNamespace(config=config, vault=vault, keyring=keyring, full=full, incremental=incremental, root=root)


def test_files_restore_into_a_fresh_directory_passes(files_source, tmp_path):
    stack = _stack(
        tmp_path,
        [files_source.config],
        validation={"smoke_queries": {"uploads": [{"query": "VERSION", "expect": "4.2"}, "docs/f3.txt"]}},
    )
    recovery = check_restore(stack, files_source.vault, files_source.keyring, "uploads", backup_id=files_source.full.id)
    assert recovery.passed, [r.line() for r in recovery.results]
    assert [r.status for r in recovery.results] == ["passed"] * 4
    assert recovery.target.startswith("sandbox directory ")
    _assert_stages(recovery, busy=True)


def test_files_chain_to_its_incremental_and_a_missing_path(files_source, tmp_path):
    stack = _stack(
        tmp_path, [files_source.config], validation={"smoke_queries": {"uploads": ["docs/new.txt", "docs/nope.txt"]}}
    )
    recovery = check_restore(stack, files_source.vault, files_source.keyring, "uploads")  # newest: the incremental
    results = _by_name(recovery)
    assert recovery.backup_id == files_source.incremental.id
    assert results["data checks"].passed and results["smoke: docs/new.txt"].passed
    assert results["smoke: docs/nope.txt"].detail == "failed: docs/nope.txt does not exist below the restored root"
    at = datetime.now(UTC)
    by_time = check_restore(stack, files_source.vault, files_source.keyring, "uploads", target_time=at)
    assert _by_name(by_time)["data checks"].passed
    # The files engine proves the instant its incremental's tree was read (just before the backup ended).
    assert files_source.incremental.started_at <= by_time.recovery_point <= files_source.incremental.ended_at


def test_shared_clock_and_parallel_checks(pg_source, files_source, tmp_path):
    """A drill runs sources at once, each with its own clock; each gets its own sandbox."""
    stack = _stack(tmp_path, [pg_source.config, files_source.config])
    out: dict[str, object] = {}

    def run(name, vault, keyring):
        out[name] = check_restore(stack, vault, keyring, name, clock=StageClock())

    threads = [
        threading.Thread(target=run, args=("app-db", pg_source.vault, pg_source.keyring)),
        threading.Thread(target=run, args=("uploads", files_source.vault, files_source.keyring)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.passed for r in out.values()), {k: [x.line() for x in v.results] for k, v in out.items()}


def test_bucket_sources_are_not_checked(tmp_path):
    from core.sources import BucketSourceConfig
    from core.validation.restore_check import check_restore as check

    stack = _stack(tmp_path, [BucketSourceConfig(name="assets", bucket="assets-" + secrets.token_hex(3))])
    recovery = check(stack, None, None, "assets")
    (result,) = recovery.results
    assert (result.name, result.checked, result.detail) == ("restore", False, "no sandbox for bucket sources")
    assert recovery.passed


# -- MariaDB ---------------------------------------------------------------------------------


def test_mysql_restores_into_a_mariadbd_sandbox(mysql_server, tmp_path):
    database = mysql_server.create_database("shop")
    with mysql_server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE orders (id INT PRIMARY KEY, note VARCHAR(40)) ENGINE=InnoDB")
        cur.executemany("INSERT INTO orders VALUES (%s, %s)", [(i, f"order {i}") for i in range(1, 121)])
    config = mysql_server.config("shop-db", database)
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keyring = Keyring(passphrase=PASSPHRASE)
    manifest = backup_source(vault, keyring, engine_for(config))
    stack = _stack(
        tmp_path,
        [config],
        validation={"smoke_queries": {"shop-db": [{"query": "SELECT count(*) FROM orders", "expect": "120"}]}},
    )

    def drop_one(engine):
        with engine._connect(database) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM orders WHERE id = 7")

    recovery = check_restore(stack, vault, keyring, "shop-db")
    assert recovery.passed, [r.line() for r in recovery.results]
    assert [r.status for r in recovery.results] == ["passed"] * 3
    assert recovery.target.startswith("sandbox mariadbd on 127.0.0.1:") and recovery.backup_id == manifest.id
    _assert_stages(recovery)
    altered = check_restore(stack, vault, keyring, "shop-db", before_compare=drop_one)
    assert _by_name(altered)["data checks"].failed
    assert _by_name(altered)["smoke: SELECT count(*) FROM orders"].detail == "returned 119, expected 120"


# -- Redis -----------------------------------------------------------------------------------


def test_redis_restores_into_a_redis_sandbox(redis_factory, tmp_path):
    server = redis_factory()
    client = server.client()
    for i in range(300):
        client.set(f"session:{i}", f"user {i}")
    client.hset("config", mapping={"a": "1", "b": "2"})
    config = server.config("cache")
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keyring = Keyring(passphrase=PASSPHRASE)
    backup_source(vault, keyring, engine_for(config))
    stack = _stack(
        tmp_path,
        [config],
        validation={"smoke_queries": {"cache": [{"query": "DBSIZE", "expect": "301"}, "HGET config b"]}},
    )
    recovery = check_restore(stack, vault, keyring, "cache", target_time=datetime.now(UTC))
    assert recovery.passed, [r.line() for r in recovery.results]
    assert [r.status for r in recovery.results] == ["passed"] * 4
    assert recovery.target.startswith("sandbox redis-server on 127.0.0.1:")
    _assert_stages(recovery)
    assert client.dbsize() == 301  # the source is untouched


# -- PostgreSQL physical: a full, then WAL replayed to an incremental and to a time ---------------


@pytest.fixture(scope="module")
def pg_physical(pg_pitr_server, tmp_path_factory):
    server = pg_pitr_server
    database = server.create_database(server.fresh_database_name())
    with server.connect(database) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, batch int NOT NULL)")
        conn.execute("INSERT INTO items SELECT i, 1 FROM generate_series(1, 40) AS i")
    config = server.config(
        "ledger", database, backup_method="physical", rpo_seconds=1, slot=f"gdr_rc_{secrets.token_hex(4)}"
    )
    vault = Vault.open(LocalStore(tmp_path_factory.mktemp("pg-physical-vault") / "vault"), create=True)
    keyring = Keyring(passphrase=PASSPHRASE)
    full = backup_source(vault, keyring, engine_for(config))
    with server.connect(database) as conn:
        conn.execute("INSERT INTO items SELECT i, 2 FROM generate_series(41, 55) AS i")
    incremental = backup_source(vault, keyring, engine_for(config), "incremental")  # ships the WAL up to here
    yield SimpleNamespace(config=config, vault=vault, keyring=keyring, full=full, incremental=incremental)
    with server.connect() as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s", (config.slot,)
        )


def _count_query(expect: str) -> dict:
    return {"smoke_queries": {"ledger": [{"query": "SELECT count(*) FROM items", "expect": expect}]}}


def test_postgres_physical_full_restores_into_a_new_cluster(pg_physical, tmp_path):
    stack = _stack(tmp_path, [pg_physical.config], validation=_count_query("40"))
    recovery = check_restore(stack, pg_physical.vault, pg_physical.keyring, "ledger", backup_id=pg_physical.full.id)
    assert recovery.passed, [r.line() for r in recovery.results]
    assert [r.status for r in recovery.results] == ["passed"] * 3
    assert recovery.target.startswith("sandbox postgres cluster ") and "/data on 127.0.0.1:" in recovery.target
    port = int(recovery.target.rsplit(":", 1)[1])
    assert not _listening(port)  # the cluster the restore started was stopped at teardown


def test_postgres_chain_to_an_incremental_and_to_a_time_replays_wal(pg_physical, tmp_path):
    stack = _stack(tmp_path, [pg_physical.config], validation=_count_query("55"))
    asked = [
        ({"backup_id": pg_physical.incremental.id}, pg_physical.incremental.id),  # the backup asked for
        ({"target_time": datetime.now(UTC)}, pg_physical.full.id),  # the full the point-in-time plan starts from
    ]
    for kwargs, backup_id in asked:
        recovery = check_restore(stack, pg_physical.vault, pg_physical.keyring, "ledger", **kwargs)
        results = _by_name(recovery)
        assert recovery.passed, [r.line() for r in recovery.results]
        assert results["smoke: SELECT count(*) FROM items"].detail == "returned the expected 55"
        # Replayed past the last backup: its recorded checks describe an earlier instant, so they are
        # not compared (not checked, never "passed"); the recovery point is proven by the server.
        assert (
            not results["data checks"].checked and "log pieces were replayed after it" in results["data checks"].detail
        )
        assert recovery.backup_id == backup_id
        assert recovery.recovery_point is not None and recovery.recovery_point >= pg_physical.full.ended_at
        assert recovery.stages["replay"] > 0 and recovery.stages["load"] > 0
        assert "pg_last_xact_replay_timestamp()" in recovery.report["recovery_point"]["proof"]


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0
