"""MariaDB engine against a real mariadbd and a real vault: what an operator relies on.

A backup restores into another database with every row, counter and schema
object intact; it records where in the binlog it was taken; it is consistent
while the application keeps writing; bad logins and dead servers give one clear
line; a restore never silently overwrites data; nothing readable lands in the vault.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from core.crypto.keys import Keyring
from core.engines import engine_for
from core.engines.base import BackupResult, compare_checks
from core.engines.mysql.dump import MAX_LINE_HEAD, DumpInspector, DumpRewriter
from core.engines.mysql.engine import MySQLEngine
from core.errors import EngineError, IntegrityError, SourceUnavailableError, TargetNotEmptyError
from core.operations import backup_source, count_checks, restore_backup, verify_target
from core.repository.manifest import COMPLETED
from core.repository.vault import Vault
from core.storage.local import LocalStore
from tests.fixtures_mysql import CANARY, definers, seed_mysql, snapshot_mysql
from tests.servers import child_argvs, child_processes, free_port


def _vault(path: Path) -> Vault:
    return Vault.open(LocalStore(path), create=True)


def _restore_with_engine(vault, keyring, backup_id, engine):
    """engine.restore as the orchestration calls it; returns (notes, recorded checks)."""
    reader = vault.open_backup(backup_id, keyring)
    try:
        return engine.restore(reader, reader.result), reader.result.checks
    finally:
        reader.close()


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(passphrase="pw")


@pytest.fixture(scope="module")
def seeded(mysql_server, tmp_path_factory, keyring):
    """One seeded source database, backed up once into a vault, shared by the tests below."""
    database = mysql_server.create_database("src")
    with mysql_server.connect(database) as conn:
        seed_mysql(conn)
        before = snapshot_mysql(conn)
    vault_dir = tmp_path_factory.mktemp("vault")
    vault = _vault(vault_dir)
    engine = MySQLEngine(mysql_server.config("app-db", database))
    manifest = backup_source(vault, keyring, engine, "full")
    with mysql_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        binlog_after = cur.fetchone()[:2]
        cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
        binlog_after += cur.fetchone()
    return {
        "database": database,
        "snapshot": before,
        "vault": vault,
        "vault_dir": vault_dir,
        "manifest": manifest,
        "binlog_after": binlog_after,
    }


def test_round_trip_into_a_fresh_database_restores_everything(mysql_server, seeded, keyring):
    target_db = mysql_server.fresh_database_name("restored")
    target = engine_for(mysql_server.config("app-db", target_db))

    report = restore_backup(seeded["vault"], keyring, seeded["manifest"].id, target)

    assert report.verified_checks > 20
    with mysql_server.connect(target_db) as conn:
        assert snapshot_mysql(conn) == seeded["snapshot"]
    # The dump's ALTER DATABASE lines were pointed at the target: the source is untouched.
    with mysql_server.connect(seeded["database"]) as conn:
        assert snapshot_mysql(conn) == seeded["snapshot"]


def test_backup_records_binlog_position_and_gtid(mysql_server, seeded):
    manifest = seeded["manifest"]
    assert manifest.status == COMPLETED
    pos = manifest.position
    assert pos["flavor"] == "mariadb" and "MariaDB" in pos["server_version"]
    assert pos["binlog_enabled"] is True
    assert re.fullmatch(r"binlog\.\d{6}", pos["binlog_file"]) and pos["binlog_pos"] > 4
    assert re.fullmatch(r"\d+-\d+-\d+(,\d+-\d+-\d+)*", pos["gtid"]) and pos["gtid_variable"] == "gtid_binlog_pos"
    assert "mariadb-dump" in manifest.tool_versions and "server" in manifest.tool_versions
    # Nothing was written during the backup: the recorded position is where the binlog ended.
    assert seeded["binlog_after"] == (pos["binlog_file"], pos["binlog_pos"], pos["gtid"])


def test_vault_holds_no_plaintext(mysql_server, seeded):
    needles = [CANARY.encode(), mysql_server.password.encode(), b"first programmer", b"CREATE TABLE"]
    files = [p for p in seeded["vault_dir"].rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"{needle!r} in plaintext in {path}"


def test_checks_catch_a_changed_row(mysql_server, seeded, keyring):
    target_db = mysql_server.fresh_database_name("tampered")
    target = MySQLEngine(mysql_server.config("app-db", target_db))
    restore_backup(seeded["vault"], keyring, seeded["manifest"].id, target)
    expected = seeded["vault"].open_backup(seeded["manifest"].id, keyring).result.checks
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("UPDATE tags SET weight = 2 WHERE tag = 'red' LIMIT 1")  # same count, one value
        cur.execute("UPDATE customers SET notes = NULL WHERE notes = ''")  # '' and NULL must differ
    diffs = compare_checks(expected, target.collect_checks(expected))
    assert any(d.startswith("tables.tags.checksum") for d in diffs)
    assert any(d.startswith("tables.customers.checksum") for d in diffs)
    assert not any("rows" in d for d in diffs)


def test_non_empty_target_is_refused_and_left_unchanged(mysql_server, seeded, keyring):
    target_db = mysql_server.create_database("busy")
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE precious (id INT PRIMARY KEY, v VARCHAR(10))")
        cur.execute("INSERT INTO precious VALUES (1, 'keep me')")
        before = snapshot_mysql(conn)
    target = MySQLEngine(mysql_server.config("busy-db", target_db))

    with pytest.raises(TargetNotEmptyError) as err:
        restore_backup(seeded["vault"], keyring, seeded["manifest"].id, target)

    assert target_db in str(err.value) and "--force" in str(err.value)
    with mysql_server.connect(target_db) as conn:
        assert snapshot_mysql(conn) == before


def test_forced_restore_replaces_the_target_after_a_rollback_backup(mysql_server, seeded, keyring):
    target_db = mysql_server.create_database("replace")
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE stale (id INT PRIMARY KEY)")
        cur.execute("CREATE PROCEDURE stale_proc() SELECT 1")
    # Over the unix socket this time: the tools get --socket instead of host/port.
    target = MySQLEngine(mysql_server.config("replace-db", target_db, socket=mysql_server.socket))

    report = restore_backup(seeded["vault"], keyring, seeded["manifest"].id, target, force=True)

    assert report.rollback_backup_id
    with mysql_server.connect(target_db) as conn:
        assert snapshot_mysql(conn) == seeded["snapshot"]  # no stale table or procedure left


def test_corrupt_chunk_mid_stream_stops_the_restore_with_an_integrity_error(
    mysql_server, seeded, tmp_path, keyring, monkeypatch
):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "4096")  # many chunks, so damage lands mid-restore
    vault = _vault(tmp_path / "v")
    manifest = backup_source(vault, keyring, MySQLEngine(mysql_server.config("app-db", seeded["database"])))
    chunks = sorted((tmp_path / "v" / "backups" / manifest.id / "streams" / "dump.sql").iterdir())
    assert len(chunks) > 5
    victim = chunks[len(chunks) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))

    target = MySQLEngine(mysql_server.config("app-db", mysql_server.fresh_database_name("damaged")))
    with pytest.raises(IntegrityError) as err:
        restore_backup(vault, keyring, manifest.id, target)
    assert manifest.id in str(err.value) and "\n" not in str(err.value)


class _Watching:
    """Delegates to the real vault writer/reader; while a tool is running, records what
    /proc (``ps``) shows of it, and what and how private the option file it was given is."""

    def __init__(self, inner, tool: str) -> None:
        self.inner, self.tool, self.seen = inner, tool, []

    def _look(self) -> None:
        for pid, argv in child_processes(self.tool):
            fd = argv[1].removeprefix("--defaults-extra-file=/dev/fd/")
            option = f"/proc/{pid}/fd/{fd}"  # the tool's own descriptor, as it opens /dev/fd/N
            self.seen.append((argv, os.readlink(option), os.stat(option).st_mode & 0o777))

    def write_stream(self, name, data):
        self._look()
        return self.inner.write_stream(name, data)

    def iter_stream(self, name):
        for i, piece in enumerate(self.inner.iter_stream(name)):
            yield piece
            if i == 0:
                self._look()  # the client is reading its stdin by now

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_password_reaches_the_tools_only_through_a_private_option_file(mysql_server, seeded, keyring):
    vault = seeded["vault"]
    source = MySQLEngine(mysql_server.config("app-db", seeded["database"]))
    writer = _Watching(
        vault.begin_backup(
            source="app-db", kind="mysql", backup_type="full", target=source.describe(), keyring=keyring
        ),
        "mariadb-dump",
    )
    manifest = writer.commit(source.backup(writer))
    reader = _Watching(vault.open_backup(manifest.id, keyring), "mariadb")
    target = MySQLEngine(mysql_server.config("app-db", mysql_server.fresh_database_name("argv")))
    target.restore(reader, reader.result)

    seen = writer.seen + reader.seen
    assert {Path(argv[0]).name for argv, _, _ in seen} == {"mariadb", "mariadb-dump"}
    for argv, target, mode in seen:
        assert mysql_server.password not in " ".join(argv)
        assert argv[1].startswith("--defaults-extra-file=/dev/fd/")  # must be the first option
        assert target.startswith("/memfd:genesis-dr-mysql-options")  # in memory: nothing on disk, even if killed
        assert mode == 0o600


def test_source_down_is_source_unavailable(mysql_server, tmp_path, keyring):
    engine = MySQLEngine(mysql_server.config("down-db", "app", port=free_port()))
    with pytest.raises(SourceUnavailableError) as err:
        backup_source(_vault(tmp_path / "v"), keyring, engine)
    message = str(err.value)
    assert "down-db" in message and "check the server is running" in message and "\n" not in message


def test_wrong_password_is_source_unavailable_without_the_password(mysql_server, keyring, tmp_path):
    wrong = "Wr0ng-pa55word-xyz"
    engine = MySQLEngine(mysql_server.config("app-db", "app", password=wrong))
    with pytest.raises(SourceUnavailableError) as err:
        engine.ping()
    message = str(err.value)
    assert "login refused" in message and "app-db" in message
    assert wrong not in message and mysql_server.password not in message
    with pytest.raises(SourceUnavailableError):
        backup_source(_vault(tmp_path / "v"), keyring, engine)
    for path in (tmp_path / "v").rglob("*"):
        if path.is_file():
            assert wrong.encode() not in path.read_bytes()


def test_backup_is_consistent_while_the_application_writes(mysql_server, tmp_path, keyring):
    """Rows committed during the backup must be either wholly in the dump and the checks, or in neither."""
    database = mysql_server.create_database("busy_src")
    with mysql_server.connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, account INT, amount DECIMAL(10,2), memo TEXT)"
        )
        cur.execute("CREATE TABLE balances (account INT PRIMARY KEY, total DECIMAL(12,2))")
        cur.executemany("INSERT INTO balances VALUES (%s, 0)", [(a,) for a in range(50)])
        memo = "x" * 400
        for _ in range(20):
            cur.executemany(
                "INSERT INTO ledger (account, amount, memo) VALUES (%s, 1.00, %s)",
                [(a % 50, memo) for a in range(1000)],
            )
    stop = threading.Event()
    written = [0]

    def application() -> None:
        with mysql_server.connect(database) as conn, conn.cursor() as cur:
            while not stop.is_set():
                account = written[0] % 50
                cur.execute("START TRANSACTION")
                cur.execute("INSERT INTO ledger (account, amount, memo) VALUES (%s, 2.50, 'live')", (account,))
                cur.execute("UPDATE balances SET total = total + 2.50 WHERE account = %s", (account,))
                cur.execute("COMMIT")
                written[0] += 1

    writer = threading.Thread(target=application)
    writer.start()
    try:
        vault = _vault(tmp_path / "v")
        manifest = backup_source(vault, keyring, MySQLEngine(mysql_server.config("busy", database)))
    finally:
        stop.set()
        writer.join()
    assert written[0] > 0

    target_db = mysql_server.fresh_database_name("busy_copy")
    restore_backup(vault, keyring, manifest.id, MySQLEngine(mysql_server.config("busy", target_db)))  # verifies checks
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT (SELECT COUNT(*) FROM ledger WHERE memo = 'live') * 2.50 = (SELECT SUM(total) FROM balances)"
        )
        assert cur.fetchone()[0] == 1  # each transaction entirely in the backup, or entirely not


def test_missing_definers_become_the_restoring_user(mysql_server, tmp_path, keyring):
    database = mysql_server.create_database("owned")
    with mysql_server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER 'app_owner'@'%' IDENTIFIED BY 'irrelevant-9'")
        cur.execute(f"GRANT ALL ON `{database}`.* TO 'app_owner'@'%'")
        cur.execute(f"CREATE TABLE `{database}`.t (id INT PRIMARY KEY)")
        cur.execute(f"INSERT INTO `{database}`.t VALUES (1), (2)")
        cur.execute(f"CREATE DEFINER='app_owner'@'%' VIEW `{database}`.v AS SELECT COUNT(*) AS n FROM `{database}`.t")
        cur.execute(f"CREATE DEFINER='app_owner'@'%' PROCEDURE `{database}`.p() SELECT COUNT(*) FROM t")
        cur.execute(f"CREATE DEFINER='dr'@'127.0.0.1' FUNCTION `{database}`.f() RETURNS INT DETERMINISTIC RETURN 7")
    vault = _vault(tmp_path / "v")
    manifest = backup_source(vault, keyring, MySQLEngine(mysql_server.config("owned", database)))
    with mysql_server.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP USER 'app_owner'@'%'")  # as on a fresh DR server without that account

    target_db = mysql_server.fresh_database_name("owned_copy")
    notes, checks = _restore_with_engine(
        vault, keyring, manifest.id, MySQLEngine(mysql_server.config("owned", target_db))
    )
    verify_target(MySQLEngine(mysql_server.config("owned", target_db)), checks, manifest.id)
    me = "'dr'@'127.0.0.1'"
    assert notes[:2] == [
        f"procedure p: definer app_owner@% does not exist on the target; it now runs as {me}",
        f"view v: definer app_owner@% does not exist on the target; it now runs as {me}",
    ]
    assert len(notes) == 3 and notes[2].endswith(
        "to 'app_owner'@'%' not restored: the account does not exist on the target"
    )

    with mysql_server.connect(target_db) as conn:
        assert definers(conn) == {"view v": "dr@127.0.0.1", "routine p": "dr@127.0.0.1", "routine f": "dr@127.0.0.1"}
        with conn.cursor() as cur:
            cur.execute("SELECT n FROM v")  # would fail if the definer did not exist
            assert cur.fetchone() == (2,)
            cur.execute("CALL p()")
            assert cur.fetchone() == (2,)


def test_backup_without_binlog_records_that_and_restores(mysql_server_without_binlog, tmp_path, keyring):
    server = mysql_server_without_binlog
    database = server.create_database("nobin")
    with server.connect(database) as conn:
        seed_mysql(conn)
        before = snapshot_mysql(conn)
    vault = _vault(tmp_path / "v")
    manifest = backup_source(vault, keyring, MySQLEngine(server.config("nobin", database)))
    assert manifest.position["binlog_enabled"] is False and manifest.position["binlog"] == "disabled"

    target_db = server.fresh_database_name("nobin_copy")
    restore_backup(vault, keyring, manifest.id, MySQLEngine(server.config("nobin", target_db)))
    with server.connect(target_db) as conn:
        assert snapshot_mysql(conn) == before


def test_has_data(mysql_server):
    name = mysql_server.fresh_database_name("probe")
    engine = MySQLEngine(mysql_server.config("probe", name))
    assert engine.has_data() is False  # missing database
    with mysql_server.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
        assert engine.has_data() is False  # empty database
        cur.execute(f"CREATE FUNCTION `{name}`.one() RETURNS INT DETERMINISTIC RETURN 1")
        assert engine.has_data() is True  # a routine alone is data a restore would destroy


# --- the stream helpers, at every piece boundary -------------------------------

DUMP = (
    b"/*M!999999\\- enable the sandbox mode */ \n"
    b"-- CHANGE MASTER TO MASTER_LOG_FILE='binlog.000042', MASTER_LOG_POS=4711;\n"
    b"CREATE TABLE `we``ird` (\n  `id` int NOT NULL AUTO_INCREMENT,\n"
    b") ENGINE=InnoDB AUTO_INCREMENT=1234 DEFAULT CHARSET=utf8mb4;\n"
    b"INSERT INTO `we``ird` VALUES\n(1,'CREATE DEFINER=`ghost`@`%` PROCEDURE x'),\n(2,'"
    + b"y"
    * (MAX_LINE_HEAD * 2)
    + b"');\n"
    b"CREATE DEFINER=`ghost`@`%` PROCEDURE `p`()\nselect 1\n;;\n"
    b"/*!50003 CREATE*/ /*!50017 DEFINER=`dr`@`127.0.0.1`*/ /*!50003 trigger t before insert on x for each row set @a=1 */;;\n"
    b"/*!50013 DEFINER=`gho``st`@`localhost` SQL SECURITY DEFINER */\n"
    b"/*!50001 VIEW `v``1` AS select 1 AS `x` */;\n"
    b"/*!50106 CREATE*/ /*!50117 DEFINER=`ghost`@`%`*/ /*!50106 EVENT `nightly` ON SCHEDULE EVERY 1 DAY DO SET @a=1 */ ;;\n"
    b"ALTER DATABASE `src` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin ;\n"
    b"-- SET GLOBAL gtid_slave_pos='0-1-99';\n"
)


@pytest.mark.parametrize("piece", [1, 7, 100, MAX_LINE_HEAD + 3, len(DUMP)])
def test_dump_inspector_and_rewriter_ignore_piece_boundaries(piece):
    pieces = [DUMP[i : i + piece] for i in range(0, len(DUMP), piece)]
    started = []
    inspector = DumpInspector(on_snapshot=lambda: started.append(True))
    for p in pieces:
        inspector.feed(p)
    inspector.finish()
    facts = inspector.facts
    assert (facts.binlog_file, facts.binlog_pos, facts.gtid) == ("binlog.000042", 4711, "0-1-99")
    assert facts.auto_increment == {"we`ird": 1234} and started == [True]

    rewriter = DumpRewriter("src", "dst", {("dr", "127.0.0.1")})
    out = b"".join(rewriter.feed(p) for p in pieces) + rewriter.finish()
    assert out == (
        DUMP.replace(b"CREATE DEFINER=`ghost`@`%` PROCEDURE `p`", b"CREATE DEFINER=CURRENT_USER PROCEDURE `p`")
        .replace(b"/*!50013 DEFINER=`gho``st`@`localhost`", b"/*!50013 DEFINER=CURRENT_USER")
        .replace(b"/*!50117 DEFINER=`ghost`@`%`*/", b"/*!50117 DEFINER=CURRENT_USER*/")
        .replace(b"ALTER DATABASE `src`", b"ALTER DATABASE `dst`")
    )
    assert b"(1,'CREATE DEFINER=`ghost`@`%` PROCEDURE x')" in out  # data is never edited
    assert rewriter.rewritten == {"ghost@%", "gho`st@localhost"}
    # Each replaced definer is reported with its object (a view's name is on the next line).
    assert rewriter.objects == [
        ("procedure", "p", "ghost@%"),
        ("view", "v`1", "gho`st@localhost"),
        ("event", "nightly", "ghost@%"),
    ]


# --- fidelity: what the checks cover, what a restore reports --------------------


def test_seeded_round_trip_is_exact_and_says_so(mysql_server, seeded, keyring):
    target_db = mysql_server.fresh_database_name("exact")
    engine = MySQLEngine(mysql_server.config("app-db", target_db))
    notes, checks = _restore_with_engine(seeded["vault"], keyring, seeded["manifest"].id, engine)
    assert notes == []
    assert checks["algorithm"] == "mysql-checks/3"
    assert verify_target(engine, checks, seeded["manifest"].id) == count_checks(checks)
    with mysql_server.connect(target_db) as conn:
        snap = snapshot_mysql(conn)
    assert snap == seeded["snapshot"]
    assert snap["definers"]["view big_orders"] == "reporting@%"  # existing definers are kept


@pytest.mark.parametrize(
    ("change", "caught"),
    [
        ("DROP TRIGGER line_items_audit_2", "triggers.line_items_audit_2: missing"),
        (
            "CREATE OR REPLACE DEFINER=`reporting`@`%` VIEW big_orders AS SELECT id, total FROM orders WHERE total > 99",
            "views.big_orders",
        ),
        ("ALTER EVENT rotate_hits ON SCHEDULE EVERY 7 HOUR", "events.rotate_hits.schedule"),
        ("ALTER EVENT rotate_hits ENABLE", "events.rotate_hits.status"),
        ("ALTER PROCEDURE order_stats COMMENT 'changed'", "routines.PROCEDURE order_stats"),
        ("DROP FUNCTION customer_name", "routines.FUNCTION customer_name: missing"),
        ("ALTER TABLE page_hits ENGINE=InnoDB", "tables.page_hits.engine"),
        (
            "ALTER TABLE line_items MODIFY label VARCHAR(64) AS (CONCAT(order_id, '-', line)) VIRTUAL",
            "tables.line_items.definition",
        ),
        ("ALTER TABLE line_items DROP CONSTRAINT qty_positive", "tables.line_items.definition"),
        ("ALTER TABLE line_items DROP FOREIGN KEY fk_line_order", "tables.line_items.definition"),
        ("ALTER TABLE measurements REMOVE PARTITIONING", "tables.measurements.definition"),
        ("SELECT SETVAL(invoice_numbers, 5000)", "sequences.invoice_numbers"),
        ("UPDATE blobs SET data = CONCAT(data, 'x') WHERE id = 1", "tables.blobs.checksum"),
        # A DOUBLE enters the row hash as its IEEE 754 bits: a change of a few units in the last place counts.
        ("UPDATE measurements SET value = value + 1e-16 WHERE sensor = 1", "tables.measurements.checksum"),
        ("DELETE HISTORY FROM prices", "tables.prices.rows"),
        ("DELETE HISTORY FROM contracts", "tables.contracts.rows"),
    ],
    ids=lambda v: "-".join(v.split()[:3]),
)
def test_checks_catch_every_kind_of_lost_or_changed_object(mysql_server, seeded, keyring, change, caught):
    target_db = mysql_server.fresh_database_name("changed")
    engine = MySQLEngine(mysql_server.config("app-db", target_db))
    _, checks = _restore_with_engine(seeded["vault"], keyring, seeded["manifest"].id, engine)
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute(change)
    diffs = compare_checks(checks, engine.collect_checks(checks))
    assert any(d.startswith(caught) for d in diffs), diffs


def test_restore_into_another_server_verifies_and_notes_what_it_could_not_keep(
    mysql_server, mysql_server_without_binlog, seeded, keyring
):
    other = mysql_server_without_binlog
    with other.connect() as conn, conn.cursor() as cur:
        cur.execute("DROP USER IF EXISTS 'reporting'@'%'")  # a DR server without the application's accounts
        cur.execute("CREATE DATABASE shift_ids")  # the target's internal ids differ from the source's
        cur.execute("CREATE TABLE shift_ids.t (id INT PRIMARY KEY, v TEXT) ENGINE=MyISAM")
        cur.execute("DROP DATABASE shift_ids")
    target_db = other.fresh_database_name("elsewhere")
    engine = MySQLEngine(other.config("app-db", target_db))

    notes, checks = _restore_with_engine(seeded["vault"], keyring, seeded["manifest"].id, engine)

    verify_target(engine, checks, seeded["manifest"].id)  # every check holds on another server
    me = "'dr'@'127.0.0.1'"
    assert notes[:4] == [
        f"event rotate_hits: definer reporting@% does not exist on the target; it now runs as {me}",
        f"procedure order_stats: definer reporting@% does not exist on the target; it now runs as {me}",
        f"trigger line_items_audit_2: definer reporting@% does not exist on the target; it now runs as {me}",
        f"view big_orders: definer reporting@% does not exist on the target; it now runs as {me}",
    ]
    missing = "to 'reporting'@'%' not restored: the account does not exist on the target"
    db = f"`{target_db}`"
    assert notes[4:] == [
        f"grant of EXECUTE on PROCEDURE {db}.`mark_paid` {missing}",
        notes[5],
        f"grant of SELECT (`id`), SELECT (`name`), UPDATE (`notes`) on {db}.`customers` {missing}",
        f"grant of SELECT, UPDATE on {db}.`page_hits` {missing}",
    ]
    assert re.fullmatch(rf"grant of ALTER ROUTINE, ALTER, .*SELECT.* on {db}\.\* {re.escape(missing)}", notes[5])
    with other.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM big_orders")  # usable: runs as the restoring account
        assert cur.fetchone()[0] > 0


def test_enabled_events_on_a_target_whose_scheduler_is_off_are_noted(mysql_server, tmp_path, keyring):
    database = mysql_server.create_database("sched")
    with mysql_server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id INT PRIMARY KEY)")
        cur.execute("CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2031-01-01' DO DELETE FROM t")
        cur.execute("CREATE EVENT parked ON SCHEDULE EVERY 1 DAY STARTS '2031-01-01' DISABLE DO DELETE FROM t")
        cur.execute("SET GLOBAL event_scheduler = ON")
    try:
        vault = _vault(tmp_path / "v")
        manifest = backup_source(vault, keyring, MySQLEngine(mysql_server.config("sched", database)))
    finally:
        with mysql_server.connect() as conn, conn.cursor() as cur:
            cur.execute("SET GLOBAL event_scheduler = OFF")
    assert manifest.position["event_scheduler"] == "ON"

    engine = MySQLEngine(mysql_server.config("sched", mysql_server.fresh_database_name("sched_copy")))
    notes, _ = _restore_with_engine(vault, keyring, manifest.id, engine)

    assert notes == ["event nightly: event_scheduler is OFF on the target (ON on the source), so it will not run"]


def test_checks_recorded_by_older_versions_are_still_computed(mysql_server, seeded, keyring):
    from core.engines.mysql import checks as mysql_checks

    with mysql_server.connect(seeded["database"]) as conn, conn.cursor() as cur:
        inventory = mysql_checks.inventory(cur, seeded["database"], "mysql-checks/1")
        counters = mysql_checks.live_auto_increments(cur, seeded["database"], "mariadb")
        v1 = mysql_checks.build_checks(cur, seeded["database"], inventory, counters, default_auto_increment=None)
        inventory = mysql_checks.inventory(cur, seeded["database"], "mysql-checks/2")
        v2 = mysql_checks.build_checks(
            cur, seeded["database"], inventory, counters, default_auto_increment=None, algorithm="mysql-checks/2"
        )
    assert v1["algorithm"] == "mysql-checks/1" and isinstance(v1["views"], list)
    assert v2["algorithm"] == "mysql-checks/2"
    source = MySQLEngine(mysql_server.config("app-db", seeded["database"]))
    assert compare_checks(v1, source.collect_checks(v1)) == []
    assert compare_checks(v2, source.collect_checks(v2)) == []
    # /3 hashes rows differently: the same rows, other checksums, same counts.
    v3 = source.collect_checks({"algorithm": "mysql-checks/3"})
    assert v3["tables"]["customers"]["checksum"] != v2["tables"]["customers"]["checksum"]
    assert v3["tables"]["customers"]["rows"] == v2["tables"]["customers"]["rows"]


# --- failures during a restore in place ------------------------------------------


def test_corrupt_chunk_kills_the_client_and_says_the_target_was_changed(
    mysql_server, seeded, tmp_path, keyring, monkeypatch
):
    monkeypatch.setenv("GENESIS_DR_CHUNK_SIZE", "4096")
    vault = _vault(tmp_path / "v")
    manifest = backup_source(vault, keyring, MySQLEngine(mysql_server.config("app-db", seeded["database"])))
    chunks = sorted((tmp_path / "v" / "backups" / manifest.id / "streams" / "dump.sql").iterdir())
    victim = chunks[len(chunks) // 2]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    target_db = mysql_server.create_database("was_here")
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE old (id INT PRIMARY KEY)")
    engine = MySQLEngine(mysql_server.config("app-db", target_db))

    started = time.monotonic()
    with pytest.raises(IntegrityError) as err:
        _restore_with_engine(vault, keyring, manifest.id, engine)

    assert time.monotonic() - started < 30
    message = str(err.value)
    assert "\n" not in message and manifest.id in message
    assert f"{engine.describe()} was left partially restored" in message
    assert child_argvs("mariadb") == []  # the client was killed, not left applying the rest


class _Script:
    """A StreamSource holding a hand-written dump."""

    def __init__(self, sql: bytes) -> None:
        self.sql = sql

    def stream_names(self):
        return ["dump.sql"]

    def iter_stream(self, name):
        yield self.sql


def test_client_failure_mid_dump_says_the_target_was_left_partially_restored(mysql_server):
    engine = MySQLEngine(mysql_server.config("app-db", mysql_server.fresh_database_name("half")))
    script = _Script(b"CREATE TABLE first (id INT PRIMARY KEY);\nINSERT INTO nowhere VALUES (1);\n")
    with pytest.raises(EngineError) as err:
        engine.restore(script, BackupResult(position={}, checks={}))
    message = str(err.value)
    assert "\n" not in message and "nowhere" in message
    assert message.endswith(f"the target database {engine.describe()} was left partially restored")


def test_restore_blocked_by_a_lock_fails_instead_of_hanging(mysql_server, monkeypatch):
    from core.engines.mysql import engine as mysql_module

    monkeypatch.setattr(mysql_module, "LOCK_WAIT_TIMEOUT", 2)
    target_db = mysql_server.create_database("locked")
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE busy (id INT PRIMARY KEY)")
        cur.execute("START TRANSACTION")
        cur.execute("SELECT * FROM busy")  # holds a metadata lock: DROP DATABASE must wait for it
        engine = MySQLEngine(mysql_server.config("app-db", target_db))
        started = time.monotonic()
        with pytest.raises(EngineError, match="Lock wait timeout"):
            engine.restore(_Script(b"SELECT 1;\n"), BackupResult(position={}, checks={}))
        assert time.monotonic() - started < 20
        cur.execute("ROLLBACK")


def test_history_that_cannot_be_dumped_is_listed_as_skipped_and_noted(mysql_server, tmp_path, keyring):
    database = mysql_server.create_database("precise")
    with mysql_server.connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE ledger (id INT PRIMARY KEY, amount INT, "
            "s BIGINT UNSIGNED GENERATED ALWAYS AS ROW START, e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END, "
            "PERIOD FOR SYSTEM_TIME (s, e)) ENGINE=InnoDB WITH SYSTEM VERSIONING"
        )
        cur.execute("CREATE TABLE prices (sku INT PRIMARY KEY, cents INT) WITH SYSTEM VERSIONING")
        cur.execute("INSERT INTO ledger (id, amount) VALUES (1, 10), (2, 20)")
        cur.execute("UPDATE ledger SET amount = 11 WHERE id = 1")
        cur.execute("INSERT INTO prices VALUES (1, 5)")
    vault = _vault(tmp_path / "v")
    manifest = backup_source(vault, keyring, MySQLEngine(mysql_server.config("precise", database)))
    expected = [
        "table ledger: system-versioning history not backed up "
        "(transaction-precise history (table ledger) cannot be dumped)",
        "table prices: system-versioning history not backed up "
        "(transaction-precise history (table ledger) cannot be dumped)",
    ]
    assert manifest.skipped == expected

    engine = MySQLEngine(mysql_server.config("precise", mysql_server.fresh_database_name("precise_copy")))
    reader = vault.open_backup(manifest.id, keyring)
    result = BackupResult(position=reader.result.position, checks=reader.result.checks, skipped=manifest.skipped)
    notes = engine.restore(reader, result)
    reader.close()

    assert notes == expected
    verify_target(engine, result.checks, manifest.id)  # current rows verified, without the period columns


def test_float_columns_are_named_as_rounded_by_the_dump_in_the_backup_and_the_restore(mysql_server, tmp_path, keyring):
    database = mysql_server.create_database("floats")
    with mysql_server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE readings (id INT PRIMARY KEY, exact DOUBLE, approx FLOAT)")
        cur.execute("INSERT INTO readings VALUES (1, 16777216, 16777216), (2, 0.12345678, 0.12345678)")
    vault = _vault(tmp_path / "v")
    manifest = backup_source(vault, keyring, MySQLEngine(mysql_server.config("floats", database)))
    assert len(manifest.skipped) == 1
    assert manifest.skipped[0].startswith("table readings column approx: FLOAT values are kept to 6 significant")

    target = mysql_server.fresh_database_name("floats_copy")
    report = restore_backup(vault, keyring, manifest.id, MySQLEngine(mysql_server.config("floats", target)))
    assert report.skipped_at_backup == manifest.skipped
    with mysql_server.connect(target) as conn, conn.cursor() as cur:
        cur.execute("SELECT exact, approx FROM readings ORDER BY id")
        rows = cur.fetchall()
    assert [r[0] for r in rows] == [16777216.0, 0.12345678]  # DOUBLE: exact
    assert rows[0][1] != 16777216.0  # FLOAT: rounded by the dump, as the note says


# --- the per-table layout (large databases) -------------------------------------------


@pytest.fixture(scope="module")
def split_backup(mysql_server, seeded, keyring, tmp_path_factory):
    """The seeded database backed up in the per-table layout (the size threshold lowered to 1 byte)."""
    # Test knobs: split even this small database, and cut tables into parts of ~2 KB.
    os.environ["GENESIS_DR_MYSQL_SPLIT_MIN_BYTES"] = "1"
    os.environ["GENESIS_DR_MYSQL_PART_BYTES"] = "2000"
    try:
        vault_dir = tmp_path_factory.mktemp("split-vault")
        vault = _vault(vault_dir)
        manifest = backup_source(vault, keyring, MySQLEngine(mysql_server.config("app-db", seeded["database"])))
    finally:
        del os.environ["GENESIS_DR_MYSQL_SPLIT_MIN_BYTES"]
        del os.environ["GENESIS_DR_MYSQL_PART_BYTES"]
    with mysql_server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        binlog_after = cur.fetchone()[:2]
    return {"vault": vault, "vault_dir": vault_dir, "manifest": manifest, "binlog_after": binlog_after}


def test_large_database_is_split_per_table_and_round_trips_exactly(mysql_server, seeded, split_backup, keyring):
    manifest = split_backup["manifest"]
    names = {s.name for s in manifest.streams}
    assert {"layout.json", "schema.sql", "post.sql", "grants.json"} <= names and "dump.sql" not in names
    data = sorted(n for n in names if n.startswith("data-"))
    base_tables = [t for t, kind, *_ in seeded["snapshot"]["tables"] if kind not in ("VIEW", "SEQUENCE")]
    reader = split_backup["vault"].open_backup(manifest.id, keyring)
    layout = json.loads(b"".join(reader.iter_stream("layout.json")))["tables"]
    reader.close()
    assert sorted(layout) == data and sorted(set(layout.values())) == sorted(base_tables)  # every table, own streams
    parts = {t: sum(1 for v in layout.values() if v == t) for t in base_tables}
    assert parts["blobs"] > 1  # a big table in parts, loaded in parallel (one part per INSERT statement here)
    # One instant: the position is where the binlog stood, as for the single stream.
    assert (manifest.position["binlog_file"], manifest.position["binlog_pos"]) == split_backup["binlog_after"]

    target_db = mysql_server.fresh_database_name("split")
    engine = MySQLEngine(mysql_server.config("app-db", target_db))
    report = restore_backup(split_backup["vault"], keyring, manifest.id, engine)

    assert report.verified_checks > 20 and report.notes == []
    with mysql_server.connect(target_db) as conn:
        assert snapshot_mysql(conn) == seeded["snapshot"]  # tables, views, triggers, routines, events, grants


def test_split_restore_verifies_tables_while_loading_and_still_sees_later_changes(
    mysql_server, split_backup, keyring, monkeypatch
):
    from core.engines.mysql import checks as mysql_checks

    target_db = mysql_server.fresh_database_name("split_verify")
    engine = MySQLEngine(mysql_server.config("app-db", target_db))
    notes, checks = _restore_with_engine(split_backup["vault"], keyring, split_backup["manifest"].id, engine)
    read_again = []
    real = mysql_checks.table_entry
    monkeypatch.setattr(
        mysql_checks, "table_entry", lambda cur, db, name, *a: read_again.append(name) or real(cur, db, name, *a)
    )
    assert compare_checks(checks, engine.collect_checks(checks)) == []
    engines = {t.get("engine") for t in checks["tables"].values()}
    assert {"InnoDB", "MyISAM"} <= engines and read_again == []  # checked during the load: no second pass

    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("UPDATE tags SET weight = weight + 1 WHERE tag = 'red' LIMIT 1")
    diffs = compare_checks(checks, engine.collect_checks(checks))
    assert any(d.startswith("tables.tags.checksum") for d in diffs), diffs
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("UPDATE tags SET weight = weight - 1 WHERE tag = 'red' LIMIT 1")
        cur.execute("DELETE FROM tags WHERE tag = 'red' LIMIT 1")
    diffs = compare_checks(checks, engine.collect_checks(checks))
    assert any(d.startswith("tables.tags.rows") for d in diffs), diffs


def test_tampered_table_stream_is_rejected_before_the_target_is_dropped(mysql_server, split_backup, keyring, tmp_path):
    import shutil

    vault_dir = tmp_path / "v"
    shutil.copytree(split_backup["vault_dir"], vault_dir)
    manifest = split_backup["manifest"]
    stream = sorted(s.name for s in manifest.streams if s.name.startswith("data-"))[0]
    chunk = sorted((vault_dir / "backups" / manifest.id / "streams" / stream).iterdir())[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    target_db = mysql_server.create_database("keep")
    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE precious (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO precious VALUES (7)")

    with pytest.raises(IntegrityError):
        restore_backup(
            _vault(vault_dir), keyring, manifest.id, engine_for(mysql_server.config("a", target_db)), force=True
        )

    with mysql_server.connect(target_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM precious")
        assert cur.fetchall() == ((7,),)


def test_table_splitter_ignores_piece_boundaries():
    from contextlib import contextmanager

    from core.engines.mysql.split import TableSplitter

    header = b"/*!40101 SET NAMES utf8mb4 */;\n\n--\n"  # everything before the first table's comment
    preamble = b"-- Dumping data for table `h`\n--\n\n/*M!101100 SET system_versioning_insert_history=1 */;\n"
    dump = (
        header
        + b"-- Dumping data for table `a`\n--\n\nINSERT INTO `a` VALUES\n(1,'-- Dumping data for table `b`'),\n(2,'x');\n"
        + b"INSERT INTO `a` VALUES\n(3,'\\nINSERT INTO `a`');\n"
        + b"\n--\n"
        + preamble
        + b"INSERT INTO `h` VALUES (1);\nINSERT INTO `h` VALUES (2);\n-- Dump completed\n"
    )

    class Sink:
        def __init__(self):
            self.streams = {}

        @contextmanager
        def open_stream(self, name):
            parts = []

            class W:
                def write(self, b):
                    parts.append(bytes(b))

            yield W()
            self.streams[name] = b"".join(parts)

    class Pipe:
        def __init__(self, size):
            self.pos, self.size = 0, size

        def read(self, n):
            out = dump[self.pos : self.pos + self.size]
            self.pos += self.size
            return out

    for piece in (1, 3, 17, len(dump)):
        sink, started = Sink(), []
        splitter = TableSplitter(sink, {"a": "data-0000", "h": "data-0001"}, part_bytes=20)
        splitter.consume(Pipe(piece), lambda s=started: s.append(1))
        assert splitter.tables == ["a", "h"] and started
        streams = sink.streams
        assert sorted(streams) == [
            "data-0000-0000.sql",
            "data-0000-0001.sql",
            "data-0001-0000.sql",
            "data-0001-0001.sql",
        ]
        assert splitter.streams == {name: name[5:9] == "0000" and "a" or "h" for name in streams}
        a0, a1, h0, h1 = (streams[n] for n in sorted(streams))
        assert a0.startswith(header + b"-- Dumping data for table `a`")
        assert b"(1,'-- Dumping data for table `b`')," in a0  # data never cuts
        assert (
            a1
            == header
            + b"-- Dumping data for table `a`\n--\n\nINSERT INTO `a` VALUES\n(3,'\\nINSERT INTO `a`');\n\n--\n"
        )
        # A later part of a table repeats its preamble: each part loads on its own.
        assert h0 == header + preamble + b"INSERT INTO `h` VALUES (1);\n"
        assert h1 == header + preamble + b"INSERT INTO `h` VALUES (2);\n-- Dump completed\n"


def test_single_stream_backup_with_older_checks_still_restores_and_verifies(mysql_server, seeded, keyring):
    """A backup as taken before the per-table layout and mysql-checks/3: one dump.sql, /2 checks."""
    from core.engines.mysql import checks as mysql_checks

    with mysql_server.connect(seeded["database"]) as conn, conn.cursor() as cur:
        inventory = mysql_checks.inventory(cur, seeded["database"], "mysql-checks/2")
        counters = mysql_checks.live_auto_increments(cur, seeded["database"], "mariadb")
        v2 = mysql_checks.build_checks(
            cur, seeded["database"], inventory, counters, default_auto_increment=None, algorithm="mysql-checks/2"
        )
    reader = seeded["vault"].open_backup(seeded["manifest"].id, keyring)
    try:
        assert sorted(reader.stream_names()) == ["dump.sql", "grants.json"]
        engine = MySQLEngine(mysql_server.config("app-db", mysql_server.fresh_database_name("old_layout")))
        notes = engine.restore(reader, BackupResult(position=reader.result.position, checks=v2))
    finally:
        reader.close()
    assert notes == []
    assert verify_target(engine, v2, seeded["manifest"].id) == count_checks(v2)


def test_corrupt_table_stream_mid_restore_stops_every_load_and_says_the_target_was_changed(
    mysql_server, split_backup, keyring, tmp_path
):
    import shutil

    vault_dir = tmp_path / "v"
    shutil.copytree(split_backup["vault_dir"], vault_dir)
    manifest = split_backup["manifest"]
    stream = sorted(s.name for s in manifest.streams if s.name.startswith("data-"))[-1]  # loaded last
    chunk = sorted((vault_dir / "backups" / manifest.id / "streams" / stream).iterdir())[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    engine = MySQLEngine(mysql_server.config("app-db", mysql_server.fresh_database_name("split_corrupt")))

    with pytest.raises(IntegrityError) as err:
        _restore_with_engine(_vault(vault_dir), keyring, manifest.id, engine)

    message = str(err.value)
    assert "\n" not in message and manifest.id in message
    assert f"{engine.describe()} was left partially restored" in message
    assert child_argvs("mariadb") == []  # no load left running
