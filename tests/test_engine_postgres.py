"""PostgreSQL engine against real servers, through core.operations and a real vault.

One seeded source database is backed up once per module; each test restores
it somewhere (a new database, an existing empty one, another server, over data
with --force) and compares everything a user would look at.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest

from core.crypto.keys import Keyring
from core.engines import engine_for
from core.engines.base import BackupResult, compare_checks
from core.engines.postgres import checks, roles
from core.engines.postgres.engine import SCHEMA_STREAM, PostgresEngine, data_stream, plan_data_groups
from core.engines.postgres.roles import GLOBALS_STREAM
from core.errors import EngineError, IntegrityError, SourceUnavailableError, TargetNotEmptyError
from core.operations import backup_source, restore_backup
from core.repository.manifest import COMPLETED
from core.repository.vault import Vault
from core.storage.local import LocalStore
from tests.fixtures_postgres import PG_CANARY, PostgresServer, seed_postgres, snapshot_postgres
from tests.servers import child_argvs, free_port


def _snapshot(server: PostgresServer, database: str) -> dict:
    with server.connect(database) as conn:
        return snapshot_postgres(conn)


@pytest.fixture(scope="module")
def seeded(pg_server: PostgresServer, tmp_path_factory):
    """A seeded source database, its snapshot, and one committed backup of it."""
    database = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(database) as conn:
        seed_postgres(conn)
    vault_dir = tmp_path_factory.mktemp("pg-vault") / "vault"
    vault = Vault.open(LocalStore(vault_dir), create=True)
    keyring = Keyring(passphrase="pg-test-passphrase")
    manifest = backup_source(vault, keyring, PostgresEngine(pg_server.config("app-db", database)))
    return SimpleNamespace(
        database=database,
        snapshot=_snapshot(pg_server, database),
        vault=vault,
        vault_dir=vault_dir,
        keyring=keyring,
        manifest=manifest,
    )


def test_backup_records_position_versions_and_one_stream(seeded, pg_server):
    m = seeded.manifest
    assert m.status == COMPLETED
    # A small database: one data stream besides the schema, and the roles it uses.
    assert sorted(s.name for s in m.streams) == [data_stream(0), GLOBALS_STREAM, SCHEMA_STREAM]
    assert m.position["database"] == seeded.database
    assert m.position["lsn"].count("/") == 1
    assert m.position["server_version"].startswith("15")
    assert m.position["database_options"]["encoding"] == "UTF8"
    assert set(m.tool_versions) == {"pg_dump", "server"}
    # The position is in the clear: it must not name tables or hold data.
    assert "customers" not in str(m.position) and PG_CANARY not in str(m.position)


def _siblings(server: PostgresServer, database: str) -> list[str]:
    with server.connect() as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (database[:40] + "%_gdr_%",))
        return [r[0] for r in rows]


def test_round_trip_into_a_new_database(seeded, pg_server):
    target = pg_server.fresh_database_name()
    engine = engine_for(pg_server.config("restore-target", target))
    report = restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)
    assert report.verified_checks > 20
    assert report.method == "in place"  # nothing to protect: a new database is restored into directly
    assert engine.last_restore["database_created"] is True
    # Same server: the roles exist, so owners and grants come back too; nothing to report.
    assert engine.last_restore["owners_and_privileges"] == "kept"
    assert report.notes == []
    assert _snapshot(pg_server, target) == seeded.snapshot
    assert _siblings(pg_server, target) == []


def test_restore_into_an_existing_empty_database_keeps_it(seeded, pg_server):
    target = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect() as conn:
        conn.execute(f"ALTER DATABASE \"{target}\" SET work_mem = '7MB'")
    engine = PostgresEngine(pg_server.config("restore-target", target))
    assert engine.has_data() is False
    restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)
    assert engine.last_restore["database_created"] is False
    assert _snapshot(pg_server, target) == seeded.snapshot
    with pg_server.connect(target) as conn:
        assert conn.execute("SHOW work_mem").fetchone()[0] == "7MB"


def _roles_on(server: PostgresServer, names: list[str]) -> set[str]:
    with server.connect() as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))}


def test_restore_into_another_server_creates_the_roles(seeded, pg_server_b):
    app_roles = ["gdr_app_owner", "gdr_app_reader", "gdr_app_user"]
    existed = _roles_on(pg_server_b, app_roles)
    target = pg_server_b.fresh_database_name()
    engine = PostgresEngine(pg_server_b.config("dr-server", target))
    report = restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)
    # The roles the database uses came with the backup: owners, grants and memberships are all back.
    assert _roles_on(pg_server_b, app_roles) == set(app_roles)
    assert _snapshot(pg_server_b, target) == seeded.snapshot
    # The one thing not as it was: the login role has no password (role_passwords is off by default).
    expected = (
        []
        if "gdr_app_user" in existed
        else [
            "role gdr_app_user was created without a password (the backup holds no password hashes "
            "(role_passwords is off)); set one with ALTER ROLE"
        ]
    )
    assert report.notes == expected


def test_source_down_is_source_unavailable(pg_server, tmp_path):
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    engine = PostgresEngine(pg_server.config("app-db", "postgres", port=free_port()))
    with pytest.raises(SourceUnavailableError) as err:
        backup_source(vault, Keyring(passphrase="pw"), engine)
    message = str(err.value)
    assert "'app-db'" in message and "connection refused" in message and "\n" not in message
    assert "check the server is running" in message


def test_wrong_password_is_source_unavailable_and_never_shown(pg_server, tmp_path):
    wrong = "Wr0ng-" + os.urandom(6).hex()
    engine = PostgresEngine(pg_server.config("app-db", "postgres", password=wrong))
    with pytest.raises(SourceUnavailableError) as err:
        engine.ping_target()
    assert "login refused" in str(err.value)
    assert wrong not in str(err.value) and pg_server.password not in str(err.value)
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    with pytest.raises(SourceUnavailableError) as err:
        backup_source(vault, Keyring(passphrase="pw"), engine)
    assert wrong not in str(err.value)
    failed = vault.list_backups()[0]
    assert wrong not in (failed.error or "")


def test_missing_source_database_is_named(pg_server, tmp_path):
    engine = PostgresEngine(pg_server.config("app-db", "no_such_db"))
    engine.ping_target()  # the server is fine; a restore target may not exist yet
    assert engine.has_data() is False
    with pytest.raises(SourceUnavailableError, match="database 'no_such_db' does not exist"):
        engine.ping()
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    with pytest.raises(SourceUnavailableError, match="database 'no_such_db' does not exist"):
        backup_source(vault, Keyring(passphrase="pw"), engine)


def test_target_with_data_is_refused_and_left_unchanged(seeded, pg_server):
    target = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(target) as conn:
        conn.execute("CREATE TABLE precious (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO precious VALUES (1, 'keep me')")
    before = _snapshot(pg_server, target)
    engine = PostgresEngine(pg_server.config("restore-target", target))
    with pytest.raises(TargetNotEmptyError):
        restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)
    assert _snapshot(pg_server, target) == before


def test_has_data_counts_user_objects_only(pg_server):
    name = pg_server.create_database(pg_server.fresh_database_name())
    engine = PostgresEngine(pg_server.config("t", name))
    assert engine.has_data() is False
    with pg_server.connect(name) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS plpgsql")  # built in: not data
        assert engine.has_data() is False
        conn.execute("CREATE SCHEMA reports")  # the dump's CREATE SCHEMA would collide
        assert engine.has_data() is True


def test_forced_restore_replaces_data_and_keeps_database_settings(seeded, pg_server):
    target = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect() as conn:
        conn.execute(f'ALTER DATABASE "{target}" SET search_path = "$user", public, billing')
        conn.execute(f'REVOKE ALL ON DATABASE "{target}" FROM PUBLIC')
        conn.execute(f'GRANT CONNECT ON DATABASE "{target}" TO gdr_app_reader')
        conn.execute(f"COMMENT ON DATABASE \"{target}\" IS 'production app'")
    with pg_server.connect(target) as conn:
        conn.execute("CREATE TABLE stale (id int)")
        conn.execute("CREATE VIEW stale_view AS SELECT * FROM stale")
    engine = PostgresEngine(pg_server.config("restore-target", target))
    with pg_server.connect(target):  # an application is still connected
        report = restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine, force=True)
    assert report.rollback_backup_id is not None
    assert _snapshot(pg_server, target) == seeded.snapshot
    with pg_server.connect() as conn:
        acl, comment, config = conn.execute(
            "SELECT d.datacl::text, shobj_description(d.oid, 'pg_database'), s.setconfig::text FROM pg_database d "
            "LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0 WHERE d.datname = %s",
            (target,),
        ).fetchone()
    assert "gdr_app_reader=c/" in acl and not acl.startswith("{=")  # PUBLIC still has no access
    assert comment == "production app"
    assert config == '{"search_path=\\"$user\\", public, billing"}'


def test_vault_files_hold_no_plaintext(seeded):
    needle = PG_CANARY.encode()
    files = [p for p in Path(seeded.vault_dir).rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert needle not in path.read_bytes(), path


def test_checks_catch_a_changed_row_and_a_sequence(seeded, pg_server):
    target = pg_server.fresh_database_name()
    engine = PostgresEngine(pg_server.config("restore-target", target))
    restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)
    reader = seeded.vault.open_backup(seeded.manifest.id, seeded.keyring)
    try:
        reference = reader.result.checks
    finally:
        reader.close()
    assert compare_checks(reference, engine.collect_checks(reference)) == []
    with pg_server.connect(target) as conn:
        conn.execute("UPDATE billing.invoices SET total = total + 0.0001 WHERE invoice_no = 5001")
        conn.execute('UPDATE orders SET items = \'{"sku": "x"}\' WHERE id = 7')  # the json table: text hash
        conn.execute("SELECT nextval('orders_id_seq')")
        conn.execute("DROP TRIGGER orders_audit ON orders")
    diffs = "\n".join(compare_checks(reference, engine.collect_checks(reference)))
    assert "tables.billing.invoices.record_hash" in diffs
    assert "tables.public.orders.text_hash" in diffs
    assert "sequences.public.orders_id_seq.last_value" in diffs
    assert "schema.triggers.public.orders.orders_audit: missing after restore" in diffs


def test_backup_under_concurrent_writes_restores_consistently(pg_server, tmp_path, monkeypatch):
    # One stream per table: orders and audit_log are dumped by different pg_dump processes,
    # so only the shared snapshot keeps them consistent with each other.
    monkeypatch.setenv("GENESIS_DR_PG_TABLE_STREAM_MIN_BYTES", "0")
    source = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(source) as conn:
        seed_postgres(conn)
    stop = threading.Event()
    written = []

    def writer():
        with pg_server.connect(source) as conn:
            while not stop.is_set():
                # One order per transaction: the trigger adds an audit row, both sequences move.
                conn.execute("INSERT INTO orders (customer_id, amount) VALUES (1, 1)")
                written.append(1)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 20:
            time.sleep(0.01)
        vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
        keyring = Keyring(passphrase="pw")
        before = len(written)
        manifest = backup_source(vault, keyring, PostgresEngine(pg_server.config("busy", source)))
        during = len(written)
    finally:
        stop.set()
        thread.join()
    target = pg_server.fresh_database_name()
    # Verification inside restore_backup fails if the dump and the checks saw different instants.
    restore_backup(vault, keyring, manifest.id, PostgresEngine(pg_server.config("busy-restore", target)))
    with pg_server.connect(target) as conn:
        orders = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        audits = conn.execute("SELECT count(*) FROM audit_log").fetchone()[0]
    assert 1500 + 20 <= orders <= 1500 + during
    assert audits == orders  # one audit row per order: a consistent snapshot, not a torn one
    reader = vault.open_backup(manifest.id, keyring)
    try:
        recorded = reader.result.checks["sequences"]["public.orders_id_seq"]
    finally:
        reader.close()
    if during - before > 100:  # the sequence surely moved while pg_dump ran: recorded as a range
        assert "last_value_between" in recorded


class _ProcWatchingSink:
    """A plain-file sink that, before draining pg_dump, records the tool's argv from /proc."""

    def __init__(self, root: Path) -> None:
        self.root, self.argv = root, []

    def write_stream(self, name, data):
        self.argv += _child_cmdlines("pg_dump")
        with open(self.root / name, "wb") as out:
            while piece := data.read(1 << 16):
                out.write(piece)
        return (self.root / name).stat().st_size

    @contextmanager
    def open_stream(self, name):
        with open(self.root / name, "wb") as out:
            yield out


class _ProcWatchingSource:
    def __init__(self, root: Path) -> None:
        self.root, self.argv = root, []

    def stream_names(self):
        return [p.name for p in self.root.iterdir()]

    def iter_stream(self, name):
        self.argv += _child_cmdlines("pg_restore")
        with open(self.root / name, "rb") as f:
            while piece := f.read(1 << 16):
                yield piece

    def open_stream(self, name):
        return open(self.root / name, "rb")


def _child_cmdlines(tool: str) -> list[str]:
    return [" ".join(argv) for argv in child_argvs(tool)]


def test_password_never_in_tool_arguments(seeded, pg_server, tmp_path):
    engine = PostgresEngine(pg_server.config("app-db", seeded.database))
    sink = _ProcWatchingSink(tmp_path)
    result = engine.backup(sink)
    assert sink.argv and all(pg_server.password not in argv for argv in sink.argv)
    target = PostgresEngine(pg_server.config("t", pg_server.fresh_database_name()))
    source = _ProcWatchingSource(tmp_path)
    target.restore(source, BackupResult(position=result.position, checks=result.checks, tool_versions={}))
    assert source.argv and all(pg_server.password not in argv for argv in source.argv)
    assert compare_checks(result.checks, target.collect_checks(result.checks)) == []


def _seed_and_back_up(pg_server, tmp_path):
    """A freshly seeded database and a full backup of it in a new vault."""
    source = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(source) as conn:
        seed_postgres(conn)
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keyring = Keyring(passphrase="pw")
    manifest = backup_source(vault, keyring, PostgresEngine(pg_server.config("app-db", source)))
    return source, vault, keyring, manifest


def test_corrupt_backup_stops_the_restore_and_leaves_no_database(pg_server, tmp_path, monkeypatch):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", str(32 * 1024))  # many chunks: some reach pg_restore first
    source, vault, keyring, manifest = _seed_and_back_up(pg_server, tmp_path)
    biggest = max(manifest.streams, key=lambda s: s.plain_bytes)
    assert len(biggest.chunks) > 3
    chunk = tmp_path / "vault" / "backups" / manifest.id / "streams" / biggest.name / f"{len(biggest.chunks) - 1:08d}"
    blob = bytearray(chunk.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    chunk.write_bytes(bytes(blob))
    target = pg_server.fresh_database_name()
    with pytest.raises(IntegrityError):
        restore_backup(vault, keyring, manifest.id, PostgresEngine(pg_server.config("t", target)))
    assert not pg_server.database_exists(target)


def test_plan_data_groups_gives_big_tables_their_own_stream():
    mb = 1 << 20
    sizes = [(("public", "huge"), 900 * mb), (("public", "big"), 300 * mb)]
    sizes += [(("public", f"small{i}"), 10 * mb) for i in range(30)]
    groups = plan_data_groups(sizes, max_single=7, min_single=32 * mb, max_listed=10)
    assert [g.size for g in groups] == sorted((g.size for g in groups), reverse=True)  # restore order
    assert groups[0].tables == [("public", "huge")] and groups[1].tables == [("public", "big")]
    rest = [g for g in groups if g.rest]
    listed = [g for g in groups if not g.rest and len(g.tables) > 1]
    assert len(rest) == 1 and len(listed) == 1 and len(listed[0].tables) == 10  # capped: argv stays bounded
    assert sorted(t for g in groups for t in g.tables) == sorted(t for t, _ in sizes)
    # Tiny databases: one data stream.
    assert len(plan_data_groups([(("public", "t"), 8192)], min_single=32 * mb)) == 1


def test_many_data_streams_with_awkward_table_names(pg_server, tmp_path, monkeypatch):
    monkeypatch.setenv("GENESIS_DR_PG_TABLE_STREAM_MIN_BYTES", "0")  # every table gets listed by name
    monkeypatch.setenv("GENESIS_DR_PG_TABLE_STREAMS", "6")
    source, vault, keyring, manifest = _seed_and_back_up(pg_server, tmp_path)
    assert len(manifest.streams) == 2 + 6 + 2  # schema, globals, six single tables, the rest split in two
    target = pg_server.fresh_database_name()
    restore_backup(vault, keyring, manifest.id, PostgresEngine(pg_server.config("t", target)))
    assert _snapshot(pg_server, target) == _snapshot(pg_server, source)


def test_restore_as_an_unprivileged_user_with_createdb(seeded, pg_server_b):
    # Managed servers (RDS, Cloud SQL) give no superuser: the restore must still work, and say
    # exactly which owners and grants it could not restore.
    with pg_server_b.connect() as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE gdr_restorer LOGIN CREATEDB PASSWORD 'restorer-pw'; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    target = pg_server_b.fresh_database_name()
    config = pg_server_b.config("managed", target, user="gdr_restorer", password="restorer-pw")
    engine = PostgresEngine(config)
    report = restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)
    assert engine.last_restore["owners_and_privileges"] == "partly"
    restored = _snapshot(pg_server_b, target)
    assert restored["tables"] == seeded.snapshot["tables"]
    assert {owner for _, _, owner, _ in restored["owners"]} == {"gdr_restorer"}
    notes = "\n".join(report.notes)
    for schema, table, owner, _ in seeded.snapshot["owners"]:
        kind = {"order_stats": "materialized view", "customer_totals": "view"}.get(table)
        if kind is None and (table.endswith("_seq") or table in ("invoice_no", "never_used")):
            kind = "sequence"
        name = f"{kind or 'table'} {schema}.{table}" if '"' not in table else None
        if name:
            assert f"{name}: owned by gdr_restorer instead of {owner}" in notes
    # Each with its reason: the roles are missing (run alone) or exist but are not ours to act as.
    reasons = ("(role gdr_app_", "(the restoring user may not act as role gdr_app_owner)")
    owner_note = "table billing.invoices: owned by gdr_restorer instead of gdr_app_owner "
    assert any(note.startswith(owner_note + r) for note in report.notes for r in reasons)
    assert not [n for n in report.notes if n.startswith("column ") and ": owned by" in n]  # reported per table
    default = (
        "default privileges of role gdr_app_owner in schema billing on tables: SELECT to gdr_app_reader not restored "
    )
    assert any(note.startswith(default + r) for note in report.notes for r in reasons)


def test_restore_refused_by_the_server_is_one_clear_engine_error(seeded, pg_server_b):
    with pg_server_b.connect() as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE gdr_weak LOGIN PASSWORD 'weak-secret-pw'; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    target = pg_server_b.create_database(pg_server_b.fresh_database_name())  # owned by postgres
    engine = PostgresEngine(pg_server_b.config("weak", target, user="gdr_weak", password="weak-secret-pw"))
    with pytest.raises(EngineError) as err:
        restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)
    message = str(err.value)
    assert "pg_restore into postgres" in message and "permission denied" in message
    assert "owner or a superuser" in message and "\n" not in message
    assert "weak-secret-pw" not in message
    assert pg_server_b.database_exists(target)  # not ours to drop: it existed before


def test_counts_only_mode_records_and_verifies_row_counts(seeded, pg_server, tmp_path, monkeypatch):
    monkeypatch.setenv("GENESIS_DR_PG_ROW_HASH", "0")
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keyring = Keyring(passphrase="pw")
    manifest = backup_source(vault, keyring, PostgresEngine(pg_server.config("app-db", seeded.database)))
    reader = vault.open_backup(manifest.id, keyring)
    try:
        tables = reader.result.checks["tables"]
    finally:
        reader.close()
    assert tables["public.orders"] == {"rows": 1500}
    monkeypatch.delenv("GENESIS_DR_PG_ROW_HASH")  # the recorded checks decide, not the restoring host
    target = pg_server.fresh_database_name()
    report = restore_backup(vault, keyring, manifest.id, PostgresEngine(pg_server.config("t", target)))
    assert report.verified_checks > 20


def _recorded_checks(seeded) -> dict:
    reader = seeded.vault.open_backup(seeded.manifest.id, seeded.keyring)
    try:
        return reader.result.checks
    finally:
        reader.close()


def _shift_oids(server: PostgresServer) -> None:
    """Create and drop types and tables, so the next objects get OIDs the source never used."""
    scratch = server.create_database(server.fresh_database_name())
    with server.connect(scratch) as conn:
        for i in range(25):
            conn.execute(f"CREATE TYPE junk_{i} AS ENUM ('x', 'y'); CREATE TABLE junk_t{i} (v junk_{i})")
            conn.execute(f"DROP TABLE junk_t{i}; DROP TYPE junk_{i}")
    with server.connect() as conn:
        conn.execute(f'DROP DATABASE "{scratch}"')


def test_checks_hold_on_a_server_whose_oids_are_shifted(seeded, pg_server, pg_server_b):
    _shift_oids(pg_server_b)
    target = pg_server_b.fresh_database_name()
    engine = PostgresEngine(pg_server_b.config("dr-server", target))
    # restore_backup verifies: before checks format 2 this failed ("do not put this target in service").
    restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)
    reference = _recorded_checks(seeded)
    assert compare_checks(reference, engine.collect_checks(reference)) == []
    assert _snapshot(pg_server_b, target)["tables"] == seeded.snapshot["tables"]
    # Every supported column type sits in shipments, which is hashed per column (not as row text)...
    assert set(reference["tables"]["public.shipments"]) == {"rows", "record_hash"}
    assert reference["tables"]["public.shipments"]["rows"] == 240
    enum_oid = "SELECT oid FROM pg_enum WHERE enumlabel = 'paid'"
    table = [("public", "shipments")]
    with pg_server.connect(seeded.database) as a, pg_server_b.connect(target) as b:
        # ...and the values really are stored under other OIDs there,
        assert a.execute(enum_oid).fetchone() != b.execute(enum_oid).fetchone()
        # so the OID-based hash of format 1 differs, while format 2 agrees.
        for conn in (a, b):
            conn.execute("BEGIN")
            checks.apply_fixed_settings(conn)
        assert checks.table_checks(a, table, checks_format=1) != checks.table_checks(b, table, checks_format=1)
        assert checks.table_checks(a, table) == checks.table_checks(b, table)
        assert checks.text_hashed_columns(a)["public.shipments"] == [
            (column, column in {"status", "history", "state", "ship_to", "code", "source_rel", "source_type"})
            for column, *_ in a.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'public.shipments'::regclass "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ).fetchall()
        ]
        for conn in (a, b):
            conn.execute("ROLLBACK")


def test_roles_are_created_or_every_missing_grant_and_owner_reported(pg_server, pg_server_b, tmp_path):
    tag = os.urandom(3).hex()
    owner, reader, login, admin = f"gdr_own_{tag}", f"gdr_read_{tag}", f"gdr_login_{tag}", f"gdr_adm_{tag}"
    for server in (pg_server, pg_server_b):  # a role both servers have, with different attributes
        with server.connect() as conn:
            conn.execute(
                "DO $$ BEGIN CREATE ROLE gdr_shared NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
    source = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(source) as conn:
        conn.execute(f"CREATE ROLE {owner} NOLOGIN; CREATE ROLE {reader} NOLOGIN CONNECTION LIMIT 7")
        conn.execute(f"CREATE ROLE {login} LOGIN PASSWORD 'login-pw' IN ROLE {reader}")
        conn.execute(f"ALTER ROLE {login} SET work_mem = '3MB'; COMMENT ON ROLE {login} IS 'the app'")
        conn.execute(f"CREATE SCHEMA app AUTHORIZATION {owner}")
        conn.execute(f"CREATE TABLE app.items (id int PRIMARY KEY, name text); ALTER TABLE app.items OWNER TO {owner}")
        conn.execute("INSERT INTO app.items SELECT i, 'item ' || i FROM generate_series(1, 20) AS i")
        conn.execute(f"GRANT USAGE ON SCHEMA app TO {reader}, gdr_shared")
        conn.execute(f"GRANT SELECT ON app.items TO {reader}, gdr_shared")
        conn.execute(f"GRANT UPDATE (name) ON app.items TO {login}")
        conn.execute(f"CREATE ROLE {admin} SUPERUSER NOLOGIN")
        conn.execute(
            f"CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 1'; ALTER FUNCTION app.f() OWNER TO {admin}"
        )
    with pg_server.connect() as conn:  # database-level properties: a new target database takes them over
        conn.execute(f"COMMENT ON DATABASE \"{source}\" IS 'app data'")
        conn.execute(f'REVOKE ALL ON DATABASE "{source}" FROM PUBLIC')
        conn.execute(f'GRANT CONNECT ON DATABASE "{source}" TO {reader}')
        conn.execute(f"ALTER DATABASE \"{source}\" SET work_mem = '6MB'")
        conn.execute(f"ALTER ROLE {login} IN DATABASE \"{source}\" SET statement_timeout = '5s'")
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keyring = Keyring(passphrase="pw")
    manifest = backup_source(vault, keyring, PostgresEngine(pg_server.config("app", source, role_passwords=True)))
    assert not _roles_on(pg_server_b, [owner, reader, login, admin])

    # Not allowed to create roles: the data is restored, and every owner and grant that is not is a note.
    target = pg_server_b.fresh_database_name()
    engine = PostgresEngine(pg_server_b.config("dr", target, create_roles=False))
    report = restore_backup(vault, keyring, manifest.id, engine)
    missing = "does not exist on the target"
    assert report.notes[:10] == [
        f"role {admin} does not exist on the target and was not created (create_roles is off)",
        f"role {login} does not exist on the target and was not created (create_roles is off)",
        f"role {owner} does not exist on the target and was not created (create_roles is off)",
        f"role {reader} does not exist on the target and was not created (create_roles is off)",
        f"column app.items.name: UPDATE to {login} not restored (role {login} {missing})",
        f"function app.f(): owned by postgres instead of {admin} (role {admin} {missing})",
        f"schema app: owned by postgres instead of {owner} (role {owner} {missing})",
        f"schema app: USAGE to {reader} not restored (role {reader} {missing})",
        f"table app.items: owned by postgres instead of {owner} (role {owner} {missing})",
        f"table app.items: SELECT to {reader} not restored (role {reader} {missing})",
    ]
    assert report.notes[10:] == [
        f'database {target}: GRANT CONNECT ON DATABASE "{target}" TO "{reader}" not restored '
        f'(role "{reader}" does not exist)',
        f'database {target}: ALTER ROLE "{login}" IN DATABASE "{target}" SET "statement_timeout" = \'5s\' '
        f'not restored (role "{login}" does not exist)',
    ]
    assert not _roles_on(pg_server_b, [owner, reader, login, admin])
    with pg_server_b.connect(target) as conn:
        # The grant to the role that exists is kept, although it shares its object with a missing one.
        assert conn.execute("SELECT has_table_privilege('gdr_shared', 'app.items', 'SELECT')").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM app.items").fetchone()[0] == 20

    # Allowed (the default): the roles come back as they were, password hash included; the one thing
    # to report is that a restore never mints a superuser.
    target = pg_server_b.fresh_database_name()
    report = restore_backup(vault, keyring, manifest.id, PostgresEngine(pg_server_b.config("dr", target)))
    assert report.notes == [
        f"role {admin} was created without SUPERUSER (never granted by a restore); "
        "grant it with ALTER ROLE if it is still wanted"
    ]
    query = (
        "SELECT r.rolname, r.rolcanlogin, r.rolconnlimit, r.rolconfig::text, shobj_description(r.oid, 'pg_authid'), "
        "a.rolpassword, array(SELECT pg_get_userbyid(m.roleid) FROM pg_auth_members m WHERE m.member = r.oid)::text "
        "FROM pg_roles r JOIN pg_authid a ON a.oid = r.oid WHERE r.rolname = ANY(%s) ORDER BY 1"
    )
    with pg_server.connect() as a, pg_server_b.connect() as b:
        names = [owner, reader, login]
        assert b.execute(query, (names,)).fetchall() == a.execute(query, (names,)).fetchall()
        assert b.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (admin,)).fetchone()[0] is False
        # An existing role is never altered (gdr_shared stays as the target had it).
        assert b.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'gdr_shared'").fetchone()[0] is False
    with pg_server.connect(source) as a, pg_server_b.connect(target) as b:
        assert roles.privileges(b) == roles.privileges(a)
    database_settings = (
        "SELECT coalesce(pg_get_userbyid(nullif(s.setrole, 0)), ''), s.setconfig::text FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s ORDER BY 1"
    )
    with pg_server.connect() as a, pg_server_b.connect() as b:
        assert b.execute(database_settings, (target,)).fetchall() == a.execute(database_settings, (source,)).fetchall()
    assert _database_properties(pg_server_b, target) == _database_properties(pg_server, source)


def _precious_target(server: PostgresServer) -> str:
    """A database holding data, with database-level settings a swap must carry over."""
    target = server.create_database(server.fresh_database_name())
    with server.connect() as conn:
        conn.execute(f"ALTER DATABASE \"{target}\" SET work_mem = '5MB'")
        conn.execute(f'ALTER DATABASE "{target}" CONNECTION LIMIT 40')
        conn.execute(f'REVOKE ALL ON DATABASE "{target}" FROM PUBLIC')
        conn.execute(f'GRANT CONNECT ON DATABASE "{target}" TO gdr_app_reader')
        conn.execute(f"COMMENT ON DATABASE \"{target}\" IS 'production app'")
    with server.connect(target) as conn:
        conn.execute("CREATE TABLE precious (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO precious VALUES (1, 'keep me')")
    return target


def _database_properties(server: PostgresServer, database: str) -> tuple:
    with server.connect() as conn:
        return conn.execute(
            "SELECT pg_get_userbyid(d.datdba), d.datconnlimit, d.datacl::text, d.datallowconn, "
            "shobj_description(d.oid, 'pg_database'), s.setconfig::text FROM pg_database d "
            "LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0 WHERE d.datname = %s",
            (database,),
        ).fetchone()


def test_staged_restore_leaves_the_target_untouched_until_the_swap(seeded, pg_server):
    target = _precious_target(pg_server)
    before, properties = _snapshot(pg_server, target), _database_properties(pg_server, target)
    engine = PostgresEngine(pg_server.config("restore-target", target))
    reference = _recorded_checks(seeded)

    # Abandoned: discard() drops the staged copy; the target never changed.
    staged = engine.stage("0badc0de")
    assert staged.config.database == f"{target}_gdr_0badc0de"
    reader = seeded.vault.open_backup(seeded.manifest.id, seeded.keyring)
    try:
        assert staged.restore(reader, reader.result) == []
    finally:
        reader.close()
    assert pg_server.database_exists(staged.config.database)
    assert _snapshot(pg_server, target) == before
    staged.discard()
    assert _siblings(pg_server, target) == [] and _snapshot(pg_server, target) == before

    # Verified, then swapped in while an application is connected to the target.
    staged = engine.stage("5ca1ab1e")
    reader = seeded.vault.open_backup(seeded.manifest.id, seeded.keyring)
    try:
        staged.restore(reader, reader.result)
    finally:
        reader.close()
    assert compare_checks(reference, staged.collect_checks(reference)) == []  # checks name no database
    assert _snapshot(pg_server, target) == before
    app = pg_server.connect(target)
    try:
        engine.swap_in(staged)
        assert _session_killed(app)  # its session was ended: the old database is gone
    finally:
        app.close()
    assert _snapshot(pg_server, target) == seeded.snapshot
    assert _database_properties(pg_server, target) == properties  # owner, limit, grants, comment, settings
    assert _siblings(pg_server, target) == []
    assert engine.last_restore["database_created"] is False


def _session_killed(conn) -> bool:
    try:
        conn.execute("SELECT 1")
    except Exception:
        return True
    return False


def test_an_interrupted_swap_is_undone_by_discard(seeded, pg_server):
    target = _precious_target(pg_server)
    before = _snapshot(pg_server, target)
    engine = PostgresEngine(pg_server.config("restore-target", target))
    staged = engine.stage("feedf00d")
    reader = seeded.vault.open_backup(seeded.manifest.id, seeded.keyring)
    try:
        staged.restore(reader, reader.result)
    finally:
        reader.close()
    with pg_server.connect() as conn:  # killed between the two renames of swap_in
        conn.execute(f'ALTER DATABASE "{target}" RENAME TO "{target}_gdr_old_feedf00d"')
    engine.stage("feedf00d").discard()  # what the next restore does with the mark the killed one left
    assert _snapshot(pg_server, target) == before
    assert _siblings(pg_server, target) == []


def test_long_database_names_stay_within_the_limit(seeded, pg_server):
    from core.engines.postgres.target import sibling_name

    long_name = "é" * 30 + "app"  # 63 bytes, the most PostgreSQL keeps
    assert len(long_name.encode()) == 63
    for kind in ("staged", "old"):
        sibling = sibling_name(long_name, kind, "0123abcd")
        assert len(sibling.encode()) <= 63 and sibling.startswith("é" * 20) and sibling.endswith("0123abcd")
    engine = PostgresEngine(pg_server.config("t", long_name))
    restore_backup(seeded.vault, seeded.keyring, seeded.manifest.id, engine)  # stage + swap create it
    assert _snapshot(pg_server, long_name)["tables"] == seeded.snapshot["tables"]


def test_failed_staged_restore_says_the_target_was_not_changed(pg_server, pg_server_b, tmp_path):
    # An extension only a superuser may create: pg_restore stops in pre-data, in the staged copy.
    source = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(source) as conn:
        conn.execute("CREATE EXTENSION file_fdw; CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keyring = Keyring(passphrase="pw")
    manifest = backup_source(vault, keyring, PostgresEngine(pg_server.config("app", source)))
    with pg_server_b.connect() as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE gdr_dbowner LOGIN CREATEDB PASSWORD 'dbowner-pw'; "
            "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        target = pg_server_b.fresh_database_name()
        conn.execute(f'CREATE DATABASE "{target}" OWNER gdr_dbowner')
    config = pg_server_b.config("owned", target, user="gdr_dbowner", password="dbowner-pw")
    with psycopg.connect(**PostgresEngine(config)._connect_kwargs(target), autocommit=True) as conn:
        conn.execute("CREATE TABLE precious (id int PRIMARY KEY, v text); INSERT INTO precious VALUES (1, 'keep')")
    before = _snapshot(pg_server_b, target)
    engine = PostgresEngine(config)
    with pytest.raises(EngineError) as err:
        restore_backup(vault, keyring, manifest.id, engine, force=True)
    message = str(err.value)
    assert "permission denied to create extension" in message and "\n" not in message
    assert f"the target database '{target}' was not changed" in message
    assert _snapshot(pg_server_b, target) == before
    assert _siblings(pg_server_b, target) == []


def test_discarding_a_staged_restore_removes_the_roles_it_created(pg_server, pg_server_b, tmp_path):
    role = f"gdr_owner_{os.urandom(3).hex()}"
    source = pg_server.create_database(pg_server.fresh_database_name())
    with pg_server.connect(source) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN; CREATE TABLE t (id int); ALTER TABLE t OWNER TO {role}")
    vault = Vault.open(LocalStore(tmp_path / "vault"), create=True)
    keyring = Keyring(passphrase="pw")
    manifest = backup_source(vault, keyring, PostgresEngine(pg_server.config("app", source)))
    target = pg_server_b.fresh_database_name()
    staged = PostgresEngine(pg_server_b.config("dr", target)).stage("abcd0123")
    reader = vault.open_backup(manifest.id, keyring)
    try:
        assert staged.restore(reader, reader.result) == []
    finally:
        reader.close()
    assert _roles_on(pg_server_b, [role]) == {role}
    staged.discard()  # e.g. verification failed: the server is as before, roles included
    assert _roles_on(pg_server_b, [role]) == set()
    assert not pg_server_b.database_exists(staged.config.database) and not pg_server_b.database_exists(target)
