"""MariaDB point-in-time recovery through captured binlogs, against a real mariadbd.

What an operator relies on: with capture running, a restore to a time between two
batches of writes holds exactly the rows of the earlier batches (rows compared, in
a fresh database); the same through differential and incremental backups, with the
capture stopped and resumed in between; a binlog purged on the server before it was
captured is named, with the remedy.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.chains import plan_chain_restore
from core.crypto.keys import Keyring
from core.engines.base import ChainSteps, StopPoint
from core.engines.mysql import position as mysql_position
from core.engines.mysql import replay as mysql_replay
from core.engines.mysql.engine import MySQLEngine
from core.errors import EngineError, IntegrityError, LogGapError
from core.operations import backup_source, capture_source, count_checks, restore_backup, restore_chain_plan
from core.repository.vault import Vault
from core.storage.local import LocalStore
from tests import capturing as capturing_module
from tests.fixtures_mysql import MySQLServer

SOURCE = "shop-db"


@pytest.fixture(autouse=True)
def spool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GENESIS_DR_SPOOL_DIR", str(tmp_path / "spool"))
    return tmp_path / "spool"


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.open(LocalStore(tmp_path / "vault"), create=True)


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring(passphrase="pw")


class Capturing(capturing_module.Capturing):
    def wait_shipped(self, server: MySQLServer, timeout: float = 15.0) -> None:
        """Until the vault's log holds everything the server has written to its binlog so far."""
        _wait_shipped(self.vault, server, timeout, self)


def _wait_shipped(vault: Vault, server: MySQLServer, timeout: float = 15.0, capture: Capturing | None = None) -> None:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    wanted = mysql_position.order({"binlog_file": file, "binlog_pos": pos})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert capture is None or capture.error is None, capture.error
        pieces = vault.log_pieces(SOURCE)
        if pieces and mysql_position.order(pieces[-1].end) >= wanted:
            return
        time.sleep(0.1)
    raise AssertionError(f"the capture did not ship up to {file}:{pos}")


@pytest.fixture
def capturing(vault: Vault, keyring: Keyring) -> Iterator[Callable[[MySQLEngine], Capturing]]:
    yield from capturing_module.capturing_factory(vault, keyring, Capturing)


def _source(server: MySQLServer) -> tuple[str, MySQLEngine]:
    database = server.create_database("shop")
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE orders (id INT PRIMARY KEY, batch INT NOT NULL, label VARCHAR(40) NOT NULL, "
            "amount DECIMAL(10,2) NULL, placed DATETIME(6) NULL) ENGINE=InnoDB"
        )
        cur.execute("CREATE TABLE counters (name VARCHAR(20) PRIMARY KEY, n INT NOT NULL) ENGINE=MyISAM")
        cur.executemany(
            "INSERT INTO orders VALUES (%s, 0, %s, %s, NOW(6))",
            [(i, f"seed {i} Grüße ✓", i * 1.5) for i in range(1, 6)],
        )
        cur.execute("INSERT INTO counters VALUES ('orders', 5)")
    return database, MySQLEngine(server.config(SOURCE, database, rpo_seconds=1))


def _rows(server: MySQLServer, database: str) -> dict[str, list[tuple]]:
    with server.connect(database) as conn, conn.cursor() as cur:
        out = {}
        for table in ("orders", "counters"):
            cur.execute(f"SELECT * FROM {table} ORDER BY 1")
            out[table] = list(cur.fetchall())
        return out


def _batch(server: MySQLServer, database: str, n: int) -> tuple[float, float]:
    """One batch of writes of every shape the replay must carry: statement- and row-logged inserts,
    a multi-statement transaction with an update and a delete, a non-transactional table, a DDL.
    Returns (time before its last commit, time after it)."""
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO orders VALUES (%s, %s, %s, %s, NOW(6))", (n * 100, n, f"stmt {n} 'q' \\ ✓", n))
        cur.execute("SET SESSION binlog_format = ROW")
        cur.execute("INSERT INTO orders VALUES (%s, %s, %s, NULL, NULL)", (n * 100 + 1, n, f"row {n}"))
        cur.execute("UPDATE counters SET n = n + 2 WHERE name = 'orders'")
        cur.execute(f"ALTER TABLE orders ADD INDEX by_label_{n} (label)")
        before = time.time()
        cur.execute("BEGIN")
        cur.execute("INSERT INTO orders VALUES (%s, %s, 'in trx', 9.99, NOW(6))", (n * 100 + 2, n))
        cur.execute("UPDATE orders SET amount = amount + %s WHERE batch = 0 AND id = %s", (n, n))
        cur.execute("DELETE FROM orders WHERE batch = 0 AND id = %s", (n + 3 if n < 3 else 1,))
        cur.execute("COMMIT")
        return before, time.time()


def _target_between(after_batch: float, next_batch: float) -> datetime:
    """A target after one batch and before the next, in a second of its own: binlog times are whole
    seconds, so the target's second must not be the next batch's second."""
    second = math.ceil(after_batch + 0.001)
    target = second - 0.001
    assert after_batch < target and math.floor(target) < math.floor(next_batch), (after_batch, target, next_batch)
    return datetime.fromtimestamp(target, UTC)


def _restore_to(vault: Vault, keyring: Keyring, server: MySQLServer, when: datetime):
    database = server.fresh_database_name("pitr")
    engine = MySQLEngine(server.config(SOURCE, database))
    plan = plan_chain_restore(
        vault.list_backups(SOURCE),
        vault.log_pieces(SOURCE),
        SOURCE,
        "mysql",
        when,
        datetime.now(UTC),
        target=engine.describe(),
        target_has_data=False,
        force=False,
    )
    return database, plan, restore_chain_plan(vault, keyring, plan.to_dict(), engine)


def _second(ts: float) -> str:
    return datetime.fromtimestamp(math.floor(ts), UTC).isoformat().replace("+00:00", "Z")


def test_restore_to_a_time_between_batches_holds_exactly_the_earlier_batches(
    mysql_pitr_server, vault, keyring, capturing
):
    server = mysql_pitr_server
    database, engine = _source(server)
    full = backup_source(vault, keyring, engine, "full")
    capture = capturing(engine)
    after: dict[int, dict] = {}
    commits: dict[int, tuple[float, float]] = {}
    starts: dict[int, float] = {}
    gtids: dict[int, str] = {}
    for n in (1, 2, 3):
        starts[n] = time.time()
        commits[n] = _batch(server, database, n)
        after[n] = _rows(server, database)
        with server.connect() as conn, conn.cursor() as cur:
            cur.execute("SELECT @@GLOBAL.gtid_binlog_pos")
            gtids[n] = cur.fetchone()[0]
        if n < 3:
            time.sleep(1.5)
    committed = time.monotonic()
    capture.wait_shipped(server)
    # Restorable within the RPO (1 s) plus a heartbeat and the vault write: a generous bound.
    assert time.monotonic() - committed < 5.0
    capture.finish()

    pieces = vault.log_pieces(SOURCE)
    assert pieces[0].start == mysql_position.log_start(full.position)
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))

    target = _target_between(commits[2][1], starts[3])
    restored, plan, report = _restore_to(vault, keyring, server, target)

    assert _rows(server, restored) == after[2]
    assert after[2] != after[1] and after[2] != after[3]
    point = report.recovery_point
    # The last transaction applied is batch 2's last commit; its binlog second is known to the second.
    assert _second(commits[2][0]) <= point["time"] <= _second(commits[2][1])
    assert point["proof"].startswith(f"binlog event time {point['time']} of the last replayed transaction (GTID 0-7-")
    assert plan.base_id == full.id

    # A GTID as the stop point (the engine's own stop, below the time-based plan): batch 1 exactly.
    by_gtid = MySQLEngine(server.config(SOURCE, server.fresh_database_name("gtid")))
    base = vault.open_backup(full.id, keyring)
    log = vault.log_reader(SOURCE, keyring)
    try:
        steps = ChainSteps(base=base, pieces=[(record.info, log.opener(record)) for record in pieces])
        point = by_gtid.restore_chain(steps, StopPoint(position={"gtid": gtids[1]}))
    finally:
        log.close()
        base.close()
    assert _rows(server, by_gtid.config.database) == after[1]
    assert point.position["gtid"] == gtids[1] and f"(GTID {gtids[1]})" in point.proof
    # The source database was only read.
    assert _rows(server, database) == after[3]


def test_chain_of_differential_and_incrementals_with_the_capture_resumed(mysql_pitr_server, vault, keyring, capturing):
    server = mysql_pitr_server
    database, engine = _source(server)
    full = backup_source(vault, keyring, engine, "full")
    first = capturing(engine)
    _batch(server, database, 1)
    first.wait_shipped(server)
    first.finish()  # stopped: the differential captures up to its own position itself
    diff = backup_source(vault, keyring, engine, "differential")
    second = capturing(engine)  # resumes after the last shipped piece
    starts: dict[int, float] = {}
    commits: dict[int, tuple[float, float]] = {}
    after: dict[int, dict] = {}
    parent = diff.id
    time.sleep(1.5)
    for n in (2, 3):
        starts[n] = time.time()
        commits[n] = _batch(server, database, n)
        after[n] = _rows(server, database)
        # The running capture ships the log up to the incremental's position (the backup waits for it).
        incremental = backup_source(vault, keyring, engine, "incremental")
        assert incremental.type == "incremental" and incremental.parent == parent
        parent = incremental.id
        if n == 2:
            time.sleep(1.5)
    second.wait_shipped(server)
    second.finish()

    assert diff.streams == [] and diff.position["binlog_pos"] >= 4
    pieces = vault.log_pieces(SOURCE)
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))

    restored, plan, report = _restore_to(vault, keyring, server, _target_between(commits[2][1], starts[3]))
    assert _rows(server, restored) == after[2]
    # The backups on the full hold no data: the chain is the full and the binlog replayed on it.
    assert plan.base_id == full.id and plan.layers == []
    assert diff.log["from"] == mysql_position.log_start(full.position)
    assert (diff.log["to"]["binlog_file"], diff.log["to"]["binlog_pos"]) == (
        diff.position["binlog_file"],
        diff.position["binlog_pos"],
    )

    latest, _, _ = _restore_to(vault, keyring, server, datetime.now(UTC))
    assert _rows(server, latest) == after[3]


_CAPTURE_CHILD = """
import os, sys, threading
from pydantic import SecretStr
from core.crypto.keys import Keyring
from core.engines.mysql.engine import MySQLEngine
from core.operations import capture_source
from core.repository.vault import Vault
from core.sources import MySQLSourceConfig
from core.storage.local import LocalStore
config = MySQLSourceConfig.model_validate_json(os.environ["CHILD_CONFIG"])
config = config.model_copy(update={"password": SecretStr(os.environ["CHILD_PASSWORD"])})
vault = Vault.open(LocalStore(sys.argv[1]))
print("capturing", flush=True)
capture_source(vault, Keyring(passphrase="pw"), MySQLEngine(config), threading.Event())
"""


def test_capture_killed_mid_transaction_resumes_without_a_gap(
    mysql_pitr_server, vault, keyring, capturing, tmp_path, monkeypatch
):
    """SIGKILL right after a large transaction committed, before the capture could ship it (the
    RPO is 1 s): nothing half-shipped is presented, the restarted capture takes over the dead
    one's lease and continues from the last piece, and the restore holds every row once."""
    server = mysql_pitr_server
    database, engine = _source(server)
    backup_source(vault, keyring, engine, "full")
    env = {
        **os.environ,
        "CHILD_CONFIG": engine.config.model_dump_json(exclude={"password"}),
        "CHILD_PASSWORD": server.password,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", _CAPTURE_CHILD, str(tmp_path / "vault")],
        env=env,
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    try:
        assert child.stdout.readline().strip() == b"capturing"
        _batch(server, database, 1)
        _wait_shipped(vault, server)  # the killed capture had shipped batch 1
        with server.connect(database) as conn, conn.cursor() as cur:
            cur.execute("SET SESSION binlog_format = ROW")
            cur.execute("BEGIN")
            cur.executemany(
                "INSERT INTO orders VALUES (%s, 5, %s, 1.00, NULL)", [(5000 + i, "x" * 30) for i in range(2000)]
            )
            cur.execute("COMMIT")  # a large transaction reaches the capture while it is killed
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            cur.execute("INSERT INTO orders VALUES (9999, 6, 'after the kill', 2.00, NULL)")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    resumed = capturing(engine)
    resumed.wait_shipped(server)
    resumed.finish()

    pieces = vault.log_pieces(SOURCE)
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:], strict=False))
    # The large transaction is held on disk, not in memory, until its commit is read.
    monkeypatch.setattr(mysql_replay, "HOLD_IN_MEMORY", 4096)
    restored, _, _ = _restore_to(vault, keyring, server, datetime.now(UTC))
    assert _rows(server, restored) == _rows(server, database)


def test_a_corrupted_binlog_piece_stops_the_replay_and_is_named(mysql_pitr_server, vault, keyring, capturing, tmp_path):
    server = mysql_pitr_server
    database, engine = _source(server)
    backup_source(vault, keyring, engine, "full")
    capture = capturing(engine)
    _batch(server, database, 1)
    capture.wait_shipped(server)
    capture.finish()
    piece = vault.log_pieces(SOURCE)[-1]
    chunk = sorted((tmp_path / "vault" / "logdata" / SOURCE / f"{piece.seq:012d}").iterdir())[0]
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.chmod(0o600)
    chunk.write_bytes(bytes(data))

    with pytest.raises(IntegrityError) as err:
        _restore_to(vault, keyring, server, datetime.now(UTC))

    assert f"{piece.seq:012d}" in str(err.value), str(err.value)


def test_a_statement_naming_another_database_stops_the_replay_before_it_writes_there(
    mysql_pitr_server, vault, keyring, capturing
):
    """--rewrite-db changes only a statement's USE: a statement-logged write qualified with another
    database would land in that database on the target server. The replay stops before it, named."""
    server = mysql_pitr_server
    database, engine = _source(server)
    other = server.create_database("elsewhere")
    with server.connect(other) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE audit (id INT PRIMARY KEY)")
    backup_source(vault, keyring, engine, "full")
    capture = capturing(engine)
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SET SESSION binlog_format = STATEMENT")
        cur.execute("INSERT INTO orders VALUES (77, 1, 'kept', 1.00, NULL)")
        cur.execute(f"INSERT INTO `{other}`.audit VALUES (1)")
    capture.wait_shipped(server)
    capture.finish()
    with server.connect(other) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM audit")  # what the replay must not put back

    with pytest.raises(EngineError) as err:
        _restore_to(vault, keyring, server, datetime.now(UTC))

    assert f"names database {other}, so replaying it would write outside" in str(err.value)
    assert "binlog_format=ROW" in str(err.value)
    with server.connect(other) as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM audit")
        assert cur.fetchone() == (0,)


def _master(server: MySQLServer) -> dict:
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    return {"binlog_file": file, "binlog_pos": pos}


def test_binlog_purged_before_it_was_captured_is_a_named_gap(mysql_pitr_server, vault, keyring):
    server = mysql_pitr_server
    database, engine = _source(server)
    backup_source(vault, keyring, engine, "full")
    _batch(server, database, 1)
    capture_source(vault, keyring, engine, threading.Event(), until=_master(server))
    shipped = vault.log_pieces(SOURCE)
    end = shipped[-1].end
    _batch(server, database, 2)  # written while no capture runs, then purged
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        current = cur.fetchone()[0]
        # The server keeps a binlog until InnoDB has checkpointed past it: purge until it is gone.
        deadline = time.monotonic() + 20
        while True:
            cur.execute(f"PURGE BINARY LOGS TO '{current}'")
            cur.execute("SHOW BINARY LOGS")
            if cur.fetchone()[0] == current or time.monotonic() > deadline:
                break
            time.sleep(0.2)

    with pytest.raises(LogGapError) as err:
        capture_source(vault, keyring, engine, threading.Event(), until=_master(server))

    message = str(err.value)
    assert f"binlog {end['binlog_file']} was purged on the server before it was captured" in message
    assert f"the oldest binlog there is {current}" in message
    assert f"{end['binlog_file']}:{end['binlog_pos']}" in message
    assert "take a new full backup" in message
    assert err.value.exit_code == 14
    assert [p.seq for p in vault.log_pieces(SOURCE)] == [p.seq for p in shipped]

    # The remedy works: a new full starts the log again (a new chain after the named gap), and
    # restores after it are whole.
    again = backup_source(vault, keyring, engine, "full")
    _batch(server, database, 3)
    capture_source(vault, keyring, engine, threading.Event(), until=_master(server))
    resumed = vault.log_pieces(SOURCE)[len(shipped)]
    assert resumed.start == mysql_position.log_start(again.position)
    restored, plan, _ = _restore_to(vault, keyring, server, datetime.now(UTC))
    assert plan.base_id == again.id and _rows(server, restored) == _rows(server, database)


def test_full_without_reload_is_a_gtid_snapshot_exact_under_writes(mysql_pitr_server, vault, keyring, capturing):
    """A managed server's account: no RELOAD, no SUPER. The full takes the gtid snapshot (no global
    lock) while the application keeps writing to the database and to another one; its checks match
    its dump, and a replay from its recorded position loses and repeats no row."""
    server = mysql_pitr_server
    database, _ = _source(server)
    other = server.create_database("busy")
    password = "no-reload pw ;#"
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'managed'@'127.0.0.1' IDENTIFIED BY %s", (password,))
        cur.execute(
            "GRANT SELECT, SHOW VIEW, TRIGGER, EVENT, LOCK TABLES, BINLOG MONITOR, REPLICATION SLAVE "
            "ON *.* TO 'managed'@'127.0.0.1'"
        )
        cur.execute(f"CREATE TABLE `{other}`.noise (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
    config = server.config(SOURCE, database, user="managed", password=SecretStr(password), rpo_seconds=1)
    engine = MySQLEngine(config)
    writing = threading.Event()
    written: list[int] = []

    def write() -> None:
        with server.connect(database) as conn, conn.cursor() as cur, server.connect(other) as busy:
            n = 1000
            while not writing.is_set():
                cur.execute("INSERT INTO orders VALUES (%s, 9, 'live', 1.00, NOW(6))", (n,))
                busy.cursor().execute("INSERT INTO noise (v) VALUES (%s)", (n,))
                written.append(n)
                n += 1
                time.sleep(0.005)

    # A quiet moment: no lock at all, the dump's coordinates are the checks snapshot's.
    quiet = backup_source(vault, keyring, engine, "full")
    assert (quiet.position["snapshot"], quiet.position["lock"]) == ("gtid", "none")
    alone = server.fresh_database_name("quiet")
    report = restore_backup(vault, keyring, quiet.id, MySQLEngine(server.config(SOURCE, alone)))
    assert report.verified_checks == count_checks(vault.open_backup(quiet.id, keyring).result.checks)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        time.sleep(0.3)
        full = backup_source(vault, keyring, engine, "full")
        capture = capturing(engine)
        time.sleep(0.5)
        incremental = backup_source(vault, keyring, engine, "incremental")  # no RELOAD: no rotation either
    finally:
        writing.set()
        writer.join()
    capture.wait_shipped(server)
    capture.finish()

    # Under writes the lock-free pair rarely lines up; then this database alone is READ-locked.
    assert full.position["snapshot"] == "gtid" and full.position["lock"] in ("none", "database read lock")
    assert incremental.position["binlog_pos"] > 4
    assert len(written) > 20  # the writer really ran across the backup
    # The full alone: its checks are those of its dump.
    alone = server.fresh_database_name("alone")
    report = restore_backup(vault, keyring, full.id, MySQLEngine(server.config(SOURCE, alone)))
    assert report.verified_checks == count_checks(vault.open_backup(full.id, keyring).result.checks)
    # The full and the binlog from its position: every row once, none missing.
    restored, _, _ = _restore_to(vault, keyring, server, datetime.now(UTC))
    assert _rows(server, restored) == _rows(server, database)
