"""A throw-away MariaDB server for the tests, plus realistic seed data and a snapshot to compare.

One ``mariadbd`` per test session (install + start take a second or two), with
the binlog on (``--log-bin``, ``--server-id``) so dumps carry coordinates, and
real authentication: tests log in as ``dr`` with a password full of characters
that need quoting, over TCP on a free port. ``--no-defaults`` keeps the host's
/etc/mysql configuration out. Each test takes its own database names.
Point-in-time tests get a second server (``mysql_pitr_server``, started only when
asked for): they purge binlogs, which must not happen under the other tests.
"""

from __future__ import annotations

import itertools
import random
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pymysql
import pytest
from pydantic import SecretStr

from core.sources import MySQLSourceConfig
from tests.servers import free_port, require_binary, wait_for_port

DR_USER = "dr"
# Distinctive text seeded into the data; must never appear in plaintext in a vault.
CANARY = "Zürich-canary-Ωmega-4471 ✓"


class MySQLServer:
    """A running mariadbd: connection details and helpers for tests."""

    def __init__(self, root: Path, port: int, password: str) -> None:
        self.root, self.port, self.password = root, port, password
        self.socket = str(root / "mysqld.sock")
        self._names = itertools.count(1)

    def config(self, name: str = "app-db", database: str = "app", **overrides: Any) -> MySQLSourceConfig:
        values: dict[str, Any] = dict(
            name=name,
            host="127.0.0.1",
            port=self.port,
            user=DR_USER,
            password=SecretStr(self.password),
            database=database,
        )
        values.update(overrides)
        return MySQLSourceConfig(**values)

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=DR_USER,
            password=self.password,
            database=database,
            charset="utf8mb4",
            autocommit=True,
        )

    def fresh_database_name(self, prefix: str = "db") -> str:
        """A database name no test has used yet (not created)."""
        return f"{prefix}_{next(self._names)}_{secrets.token_hex(3)}"

    def create_database(self, prefix: str = "src", collation: str = "utf8mb4_unicode_ci") -> str:
        name = self.fresh_database_name(prefix)
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {collation}")
        return name


def _start(root: Path, binlog: bool = True, extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen, MySQLServer]:
    install = require_binary("mariadb-install-db", "mysql_install_db")
    server = require_binary("mariadbd", "/usr/sbin/mariadbd", "mysqld", "/usr/sbin/mysqld")
    datadir = root / "data"
    subprocess.run(
        [
            install,
            "--no-defaults",
            f"--datadir={datadir}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    # Quotes, backslash, '#', ';' and spaces: the option-file quoting must survive them.
    password = f"pw-{secrets.token_hex(6)} #;'\"\\x"
    proc = subprocess.Popen(
        [
            server,
            "--no-defaults",
            f"--datadir={datadir}",
            f"--socket={root / 'mysqld.sock'}",
            f"--tmpdir={root}",  # not the shared /tmp, where other tests' clean-ups could remove its temp tables
            f"--port={port}",
            "--bind-address=127.0.0.1",
            *([f"--log-bin={root / 'binlog'}", "--server-id=1"] if binlog else []),
            "--user=root",
            f"--pid-file={root / 'mysqld.pid'}",
            f"--log-error={root / 'error.log'}",
            "--skip-name-resolve",
            "--event-scheduler=OFF",  # seeded events must not change data under the tests
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",  # throw-away server: skip fsync per commit
            "--sync-binlog=0",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, proc, timeout=60)
    except RuntimeError:
        log = (root / "error.log").read_text(errors="replace")[-2000:]
        proc.kill()
        raise RuntimeError(f"mariadbd did not start:\n{log}") from None
    mysql = MySQLServer(root, port, password)
    # Over the socket as root (no password yet): create the dr account for TCP logins.
    admin = pymysql.connect(unix_socket=mysql.socket, user="root", autocommit=True)
    with admin, admin.cursor() as cur:
        for host in ("127.0.0.1", "localhost"):
            cur.execute(f"CREATE USER '{DR_USER}'@'{host}' IDENTIFIED BY %s", (password,))
            cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{DR_USER}'@'{host}' WITH GRANT OPTION")
        cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (password,))
    return proc, mysql


@contextmanager
def _running(binlog: bool, extra: tuple[str, ...] = ()) -> Iterator[MySQLServer]:
    root = Path(tempfile.mkdtemp(prefix="genesis-dr-mariadb-"))
    proc, server = _start(root, binlog, extra)
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def mysql_server() -> Iterator[MySQLServer]:
    """A MariaDB server with the binlog on, for the whole test session."""
    with _running(binlog=True) as server:
        yield server


@pytest.fixture(scope="session")
def mysql_pitr_server() -> Iterator[MySQLServer]:
    """A MariaDB server of its own for point-in-time tests: they purge binlogs (a gap the
    capture must notice), which must not pull the log from under the other tests' server.
    Server id 7 (not 1): a replay that kept the source's session server_id would show."""
    with _running(binlog=True, extra=("--server-id=7", "--binlog-format=MIXED")) as server:
        yield server


@pytest.fixture(scope="session")
def mysql_server_without_binlog() -> Iterator[MySQLServer]:
    """A MariaDB server with the binlog off (backups must still work, without coordinates)."""
    with _running(binlog=False) as server:
        yield server


# --- data --------------------------------------------------------------------

BINARY_BYTES = bytes(range(256)) + b"\x00\x00'\"\\\r\n\x1a"


def seed_mysql(conn: pymysql.connections.Connection) -> None:
    """Fill the connection's (empty) database with data of every awkward kind.

    InnoDB tables with a foreign key; ints, decimals, unicode varchar/text,
    JSON, BLOBs with every byte value, datetimes, NULLs next to empty strings;
    an AUTO_INCREMENT counter past its rows; a view, a procedure, a function,
    a trigger and an event. Finally the database's default collation changes
    after its routines were written, as happens to long-lived schemas (the
    dump then emits ``ALTER DATABASE`` around each routine).
    """
    with conn.cursor() as cur:
        cur.execute(
            """CREATE TABLE customers (
                id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
                name VARCHAR(120) NOT NULL,
                email VARCHAR(190) NULL UNIQUE,
                balance DECIMAL(14,4) NOT NULL DEFAULT 0,
                notes TEXT NULL,
                created_at DATETIME(6) NOT NULL,
                profile JSON NULL
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"""
        )
        cur.execute(
            """CREATE TABLE orders (
                id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                customer_id INT UNSIGNED NOT NULL,
                total DECIMAL(12,2) NOT NULL,
                status ENUM('new','paid','shipped') NOT NULL DEFAULT 'new',
                placed_on DATE NULL,
                CONSTRAINT fk_orders_customer FOREIGN KEY (customer_id) REFERENCES customers(id)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
        )
        cur.execute(
            """CREATE TABLE attachments (
                id INT NOT NULL PRIMARY KEY,
                body LONGBLOB NULL,
                digest BINARY(16) NULL,
                ratio DOUBLE NULL
            ) ENGINE=InnoDB"""
        )
        cur.execute(
            """CREATE TABLE audit_log (
                id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                customer_id INT UNSIGNED NOT NULL,
                action VARCHAR(40) NOT NULL
            ) ENGINE=InnoDB"""
        )
        cur.execute(
            """CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
            INSERT INTO audit_log (customer_id, action) VALUES (NEW.customer_id, CONCAT('order ', NEW.id))"""
        )
        # No primary key and duplicate rows: an order-independent checksum must not let them cancel.
        cur.execute("CREATE TABLE tags (tag VARCHAR(40) NULL, weight INT NULL) ENGINE=InnoDB")

        customers = [
            ("Ada Lovelace", "ada@example.org", "1234.5678", "first programmer", '{"vip": true, "langs": ["en"]}'),
            ("Jürgen Müller", None, "0", "", '{"note": "Grüße"}'),
            ("李小龙", "lee@example.cn", "-42.0001", None, None),
            (CANARY, "canary@example.org", "7.7", "line1\nline2\ttab 'quoted' \"dq\" \\ back", '{"x": null}'),
            ("Emoji 🎉 Person", "emoji@example.org", "99999999.9999", "multi\r\nline", "[]"),
        ]
        for i, (name, email, balance, notes, profile) in enumerate(customers):
            cur.execute(
                "INSERT INTO customers (name, email, balance, notes, created_at, profile) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (name, email, balance, notes, f"2024-0{i + 1}-1{i} 08:30:0{i}.12345{i}", profile),
            )
        for n in range(1, 61):
            cur.execute(
                "INSERT INTO orders (customer_id, total, status, placed_on) VALUES (%s, %s, %s, %s)",
                (
                    n % 5 + 1,
                    f"{n * 3}.{n % 100:02d}",
                    ("new", "paid", "shipped")[n % 3],
                    None if n % 7 == 0 else "2024-06-01",
                ),
            )
        cur.execute("ALTER TABLE customers AUTO_INCREMENT = 1000")  # counter well past the rows
        cur.execute(
            "INSERT INTO attachments VALUES (1, %s, UNHEX(MD5('x')), 0.1), (2, '', NULL, -1.5e300), (3, NULL, NULL, NULL)",
            (BINARY_BYTES * 50,),
        )
        cur.executemany(
            "INSERT INTO tags VALUES (%s, %s)", [("red", 1), ("red", 1), ("blue", None), (None, None), ("", 0)]
        )

        cur.execute(
            "CREATE VIEW customer_totals AS SELECT c.id, c.name, COUNT(o.id) AS orders, COALESCE(SUM(o.total), 0) AS spent "
            "FROM customers c LEFT JOIN orders o ON o.customer_id = c.id GROUP BY c.id, c.name"
        )
        cur.execute(
            """CREATE PROCEDURE mark_paid(IN order_id BIGINT)
            BEGIN
                UPDATE orders SET status = 'paid' WHERE id = order_id;
            END"""
        )
        cur.execute(
            """CREATE FUNCTION with_tax(amount DECIMAL(12,2)) RETURNS DECIMAL(12,2)
            DETERMINISTIC NO SQL
            RETURN amount * 1.2"""
        )
        cur.execute(
            "CREATE EVENT purge_audit ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 00:00:00' "
            "DO DELETE FROM audit_log WHERE id < 0"
        )
        _seed_real_stack(cur)
        cur.execute("SELECT DATABASE()")
        (database,) = cur.fetchone()
        cur.execute(f"ALTER DATABASE `{database}` COLLATE utf8mb4_bin")


# An account that owns objects, as application schemas have; it exists on the
# test server, so a restore there must keep it as the definer.
OWNER = ("reporting", "%")
LARGE_BLOB = random.Random(4471).randbytes(3 << 20)  # incompressible, one dump line of 6 MiB hex


def _seed_real_stack(cur) -> None:
    """What production schemas hold besides plain InnoDB tables: MyISAM next to
    InnoDB, generated columns, CHECK constraints, cascading foreign keys,
    partitions, a sequence, a latin1 table, a multi-MB blob; views with
    different security and check options; routines, triggers (two on one event,
    ordered) and events owned by another account."""
    cur.execute(f"CREATE USER IF NOT EXISTS '{OWNER[0]}'@'{OWNER[1]}' IDENTIFIED BY 'irrelevant-7'")
    cur.execute("SELECT DATABASE()")
    (database,) = cur.fetchone()
    cur.execute(f"GRANT ALL ON `{database}`.* TO '{OWNER[0]}'@'{OWNER[1]}'")
    owner = f"'{OWNER[0]}'@'{OWNER[1]}'"
    cur.execute(
        """CREATE TABLE page_hits (
            id INT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            path VARCHAR(200) NOT NULL,
            body TEXT,
            hits INT UNSIGNED NOT NULL DEFAULT 0,
            FULLTEXT KEY ft_body (body)
        ) ENGINE=MyISAM DEFAULT CHARSET=utf8mb4 COMMENT='non-transactional counters'"""
    )
    cur.executemany(
        "INSERT INTO page_hits (path, body, hits) VALUES (%s, %s, %s)",
        [(f"/p/{i}", f"page {i} körper 🎉" * (i % 4), i * 7) for i in range(40)],
    )
    cur.execute("ALTER TABLE page_hits AUTO_INCREMENT = 500")
    cur.execute(
        """CREATE TABLE line_items (
            order_id BIGINT NOT NULL,
            line SMALLINT NOT NULL,
            qty INT NOT NULL,
            price DECIMAL(10,2) NOT NULL,
            total DECIMAL(12,2) AS (qty * price) STORED,
            label VARCHAR(64) AS (CONCAT(order_id, '/', line)) VIRTUAL,
            updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
            PRIMARY KEY (order_id, line),
            KEY by_total (total),
            CONSTRAINT qty_positive CHECK (qty > 0),
            CONSTRAINT fk_line_order FOREIGN KEY (order_id) REFERENCES orders (id)
                ON DELETE CASCADE ON UPDATE RESTRICT
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"""
    )
    cur.executemany(
        "INSERT INTO line_items (order_id, line, qty, price, updated_at) VALUES (%s, %s, %s, %s, %s)",
        [(o, n, n + o % 3, f"{o}.{n:02d}", "2024-05-01 10:00:00.123") for o in range(1, 31) for n in range(1, 4)],
    )
    cur.execute(
        """CREATE TABLE legacy_names (
            id INT NOT NULL PRIMARY KEY,
            name VARCHAR(60) CHARACTER SET latin1 COLLATE latin1_german1_ci NOT NULL,
            raw VARBINARY(64) NULL
        ) ENGINE=InnoDB DEFAULT CHARSET=latin1"""
    )
    cur.executemany(
        "INSERT INTO legacy_names VALUES (%s, %s, %s)",
        [(1, "Müller", b"\xff\xfe\x00"), (2, "Straße", None), (3, "Ærø ½ ±", b"")],
    )
    cur.execute(
        """CREATE TABLE measurements (
            taken_on DATE NOT NULL,
            sensor INT NOT NULL,
            value DOUBLE NOT NULL,
            PRIMARY KEY (taken_on, sensor)
        ) ENGINE=InnoDB
        PARTITION BY RANGE COLUMNS (taken_on) (
            PARTITION p2023 VALUES LESS THAN ('2024-01-01'),
            PARTITION p2024 VALUES LESS THAN ('2025-01-01'),
            PARTITION pmax VALUES LESS THAN (MAXVALUE)
        )"""
    )
    cur.executemany(
        "INSERT INTO measurements VALUES (%s, %s, %s)",
        [(f"{2023 + i % 3}-0{1 + i % 9}-1{i % 10}", i, i / 7) for i in range(60)],
    )
    # System-versioned tables keep every past row version: the history is data too.
    cur.execute("CREATE TABLE prices (sku VARCHAR(20) PRIMARY KEY, cents INT NOT NULL) WITH SYSTEM VERSIONING")
    cur.execute(
        """CREATE TABLE contracts (
            id INT PRIMARY KEY,
            terms TEXT,
            valid_from TIMESTAMP(6) GENERATED ALWAYS AS ROW START INVISIBLE,
            valid_to TIMESTAMP(6) GENERATED ALWAYS AS ROW END INVISIBLE,
            PERIOD FOR SYSTEM_TIME (valid_from, valid_to)
        ) WITH SYSTEM VERSIONING"""
    )
    cur.executemany("INSERT INTO prices VALUES (%s, %s)", [("a", 100), ("b", 250), ("c", 999)])
    cur.execute("INSERT INTO contracts (id, terms) VALUES (1, 'v1'), (2, 'draft')")
    cur.execute("UPDATE prices SET cents = cents + 1 WHERE sku <> 'c'")
    cur.execute("DELETE FROM prices WHERE sku = 'c'")
    cur.execute("UPDATE contracts SET terms = 'v2' WHERE id = 1")
    cur.execute("CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB NOT NULL) ENGINE=InnoDB")
    cur.execute("INSERT INTO blobs VALUES (1, %s), (2, %s)", (LARGE_BLOB, LARGE_BLOB[:1000]))
    cur.execute("CREATE SEQUENCE invoice_numbers START WITH 1000 INCREMENT BY 5 CACHE 10")
    for _ in range(3):
        cur.execute("SELECT NEXTVAL(invoice_numbers)")
    # Two triggers on one event, ordered; one owned by the reporting account.
    cur.execute(
        "CREATE TRIGGER line_items_audit AFTER INSERT ON line_items FOR EACH ROW "
        "INSERT INTO audit_log (customer_id, action) VALUES (0, CONCAT('line ', NEW.order_id, '/', NEW.line))"
    )
    cur.execute(
        f"CREATE DEFINER={owner} TRIGGER line_items_audit_2 AFTER INSERT ON line_items FOR EACH ROW "
        "FOLLOWS line_items_audit SET @last_line = NEW.line"
    )
    cur.execute(
        "CREATE TRIGGER line_items_guard BEFORE UPDATE ON line_items FOR EACH ROW "
        "BEGIN IF NEW.qty > 1000 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'qty too large'; END IF; END"
    )
    cur.execute(
        f"CREATE DEFINER={owner} SQL SECURITY DEFINER VIEW big_orders AS "
        "SELECT id, total FROM orders WHERE total > 100 WITH CASCADED CHECK OPTION"
    )
    cur.execute(
        "CREATE ALGORITHM=MERGE SQL SECURITY INVOKER VIEW big_order_count AS SELECT COUNT(*) AS n FROM big_orders"
    )
    cur.execute(
        f"""CREATE DEFINER={owner} PROCEDURE order_stats(IN min_total DECIMAL(12,2), OUT n INT, INOUT label VARCHAR(40))
        READS SQL DATA SQL SECURITY DEFINER COMMENT 'used by the nightly report'
        BEGIN
            SELECT COUNT(*) INTO n FROM orders WHERE total >= min_total;
            SET label = CONCAT(label, ':', n);
        END"""
    )
    cur.execute(
        """CREATE FUNCTION customer_name(cid INT UNSIGNED) RETURNS VARCHAR(120) CHARSET utf8mb4
        READS SQL DATA SQL SECURITY INVOKER
        RETURN (SELECT name FROM customers WHERE id = cid)"""
    )
    # Grants below the database level, as applications use them.
    cur.execute(f"GRANT SELECT, UPDATE ON page_hits TO {owner}")
    cur.execute(f"GRANT SELECT (id, name), UPDATE (notes) ON customers TO {owner}")
    cur.execute(f"GRANT EXECUTE ON PROCEDURE mark_paid TO {owner}")
    cur.execute(
        f"CREATE DEFINER={owner} EVENT rotate_hits ON SCHEDULE EVERY 6 HOUR STARTS '2031-02-03 04:05:06' "
        "ENDS '2035-01-01 00:00:00' ON COMPLETION PRESERVE DISABLE COMMENT 'off until the migration' "
        "DO UPDATE page_hits SET hits = 0"
    )
    cur.execute(
        "CREATE EVENT one_shot ON SCHEDULE AT '2032-06-01 12:00:00' ON COMPLETION PRESERVE "
        "DO DELETE FROM measurements WHERE sensor < 0"
    )


def _normalize(text: str | None, database: str) -> str | None:
    return None if text is None else text.replace(f"`{database}`.", "")


def snapshot_mysql(conn: pymysql.connections.Connection) -> dict[str, Any]:
    """Everything a user would compare: rows (ordered), counters and schema objects, database-name free."""
    snap: dict[str, Any] = {}
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        (db,) = cur.fetchone()
        cur.execute(
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
            (db,),
        )
        snap["database"] = cur.fetchone()
        cur.execute(
            "SELECT TABLE_NAME, TABLE_TYPE, ENGINE, AUTO_INCREMENT, TABLE_COLLATION FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME",
            (db,),
        )
        # A sequence has no text: its table collation is whatever the database's default was when it was created.
        snap["tables"] = tuple(row[:4] + ((None,) if row[1] == "SEQUENCE" else row[4:]) for row in cur.fetchall())
        snap["rows"] = {}
        for name, kind, *_ in snap["tables"]:
            cur.execute(f"SHOW CREATE {'VIEW' if kind == 'VIEW' else 'TABLE'} `{name}`")
            snap[f"create {name}"] = _normalize(cur.fetchone()[1], db)
            cur.execute(f"SELECT * FROM `{name}`")
            snap["rows"][name] = sorted(cur.fetchall(), key=repr)
        cur.execute(
            "SELECT ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_DEFINITION, DATA_TYPE, SQL_MODE, IS_DETERMINISTIC, SQL_DATA_ACCESS, "
            "SECURITY_TYPE, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, DATABASE_COLLATION "
            "FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s ORDER BY ROUTINE_TYPE, ROUTINE_NAME",
            (db,),
        )
        snap["routines"] = cur.fetchall()
        cur.execute(
            "SELECT TRIGGER_NAME, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, ACTION_TIMING, ACTION_STATEMENT, SQL_MODE "
            "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s ORDER BY TRIGGER_NAME",
            (db,),
        )
        snap["triggers"] = cur.fetchall()
        cur.execute(
            "SELECT EVENT_NAME, EVENT_DEFINITION, INTERVAL_VALUE, INTERVAL_FIELD, STARTS, STATUS, ON_COMPLETION "
            "FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s ORDER BY EVENT_NAME",
            (db,),
        )
        snap["events"] = cur.fetchall()
        cur.execute(
            "SELECT CONSTRAINT_NAME, TABLE_NAME, REFERENCED_TABLE_NAME, UPDATE_RULE, DELETE_RULE "
            "FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = %s ORDER BY CONSTRAINT_NAME",
            (db,),
        )
        snap["foreign_keys"] = cur.fetchall()
        cur.execute(
            "SELECT TRIGGER_NAME, ACTION_ORDER, ACTION_ORIENTATION, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, "
            "DATABASE_COLLATION FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s ORDER BY TRIGGER_NAME",
            (db,),
        )
        snap["trigger order"] = cur.fetchall()
        cur.execute(
            "SELECT EVENT_NAME, EVENT_TYPE, EXECUTE_AT, ENDS, EVENT_COMMENT, SQL_MODE, TIME_ZONE "
            "FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s ORDER BY EVENT_NAME",
            (db,),
        )
        snap["event details"] = cur.fetchall()
        # The statements the server would print now (definers, parameters, characteristics).
        for kind, column in (("PROCEDURE", 2), ("FUNCTION", 2), ("TRIGGER", 2), ("EVENT", 3)):
            names = {
                "PROCEDURE": [r[0] for r in snap["routines"] if r[1] == "PROCEDURE"],
                "FUNCTION": [r[0] for r in snap["routines"] if r[1] == "FUNCTION"],
                "TRIGGER": [r[0] for r in snap["triggers"]],
                "EVENT": [r[0] for r in snap["events"]],
            }[kind]
            for name in names:
                cur.execute(f"SHOW CREATE {kind} `{name}`")
                snap[f"create {kind.lower()} {name}"] = _normalize(cur.fetchone()[column], db)
        snap["definers"] = definers(conn)
        snap["grants"] = grants(conn)
        cur.execute(
            "SELECT t.TABLE_NAME, (SELECT GROUP_CONCAT(c.COLUMN_NAME ORDER BY c.GENERATION_EXPRESSION DESC) "
            "FROM information_schema.COLUMNS c WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME "
            "AND c.GENERATION_EXPRESSION IN ('ROW START', 'ROW END')) FROM information_schema.TABLES t "
            "WHERE t.TABLE_SCHEMA = %s AND t.TABLE_TYPE = 'SYSTEM VERSIONED' ORDER BY 1",
            (db,),
        )
        for name, period in cur.fetchall():
            start, end = (period or "row_start,row_end").split(",")
            cur.execute(f"SELECT *, `{start}`, `{end}` FROM `{name}` FOR SYSTEM_TIME ALL")
            snap[f"history {name}"] = sorted(cur.fetchall(), key=repr)
        if any(name == "with_tax" for name, *_ in snap["routines"]):
            cur.execute("SELECT with_tax(10.00)")  # the restored function works, not just exists
            snap["function result"] = cur.fetchone()
    return snap


def definers(conn: pymysql.connections.Connection) -> dict[str, str]:
    """Definer of every view, routine, trigger and event in the connection's database."""
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        (db,) = cur.fetchone()
        out: dict[str, str] = {}
        for kind, sql in (
            ("view", "SELECT TABLE_NAME, DEFINER FROM information_schema.VIEWS WHERE TABLE_SCHEMA = %s"),
            ("routine", "SELECT ROUTINE_NAME, DEFINER FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s"),
            ("trigger", "SELECT TRIGGER_NAME, DEFINER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s"),
            ("event", "SELECT EVENT_NAME, DEFINER FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s"),
        ):
            cur.execute(sql, (db,))
            out.update({f"{kind} {name}": definer for name, definer in cur.fetchall()})
    return out


def grants(conn: pymysql.connections.Connection) -> dict[str, list[str]]:
    """The grants on the connection's database, per account that has any (database name taken out)."""
    with conn.cursor() as cur:
        cur.execute("SELECT DATABASE()")
        (db,) = cur.fetchone()
        cur.execute("SELECT User, Host FROM mysql.user")
        out: dict[str, list[str]] = {}
        for user, host in cur.fetchall():
            try:
                cur.execute("SHOW GRANTS FOR %s@%s", (user, host))
            except pymysql.err.OperationalError:
                continue  # an account without any grant (mariadb-install-db makes some)
            mine = sorted(g.replace(f"`{db}`.", "") for (g,) in cur.fetchall() if f"`{db}`." in g)
            if mine:
                out[f"{user}@{host}"] = mine
    return out
