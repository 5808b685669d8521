"""Real, throw-away PostgreSQL servers for tests, plus seed and snapshot helpers.

``pg_server`` (and ``pg_server_b``, a second independent instance for
"restore into another server") are session-scoped: ``initdb`` as the
``postgres`` user with SCRAM password auth on TCP (so wrong-password tests
are real) and trust on the unix socket, started with ``fsync=off`` on a free
port under a shared temp dir, and stopped at session end.

``seed_postgres(conn)`` creates realistic data (many types, NULLs, sequences
advanced past their rows, a view, functions, a trigger, indexes, FKs, enums,
domains, composite and range types, a nondeterministic collation, generated
columns, range and list partitions, an unlogged table, a materialized view,
reg* columns, a second schema, large objects, owners, role memberships and
grants of every kind) containing ``PG_CANARY``;
``snapshot_postgres(conn)`` returns everything a user would compare between
the original and the restored database.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from core.sources import PostgresSourceConfig
from tests.servers import free_port, require_binary, shared_tmpdir

PG_CANARY = "GENESIS-PG-CANARY-e41c7d9b"
"""A distinctive string seeded into the data; must never appear in vault files."""

_names = itertools.count(1)


def _as_postgres(*argv: str) -> subprocess.CompletedProcess:
    """Run a server tool as ``postgres`` (the server refuses root); its stderr is in the error."""
    proc = subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@dataclass
class PostgresServer:
    """A running throw-away server; connect over TCP with ``password``."""

    port: int
    password: str
    root: Path
    pg_ctl: str
    user: str = "postgres"
    host: str = "127.0.0.1"
    # Extra server settings (``-c name=value ...``), e.g. the point-in-time server's WAL settings.
    options: str = ""

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def config(self, name: str = "pg", database: str = "postgres", **overrides) -> PostgresSourceConfig:
        """A source/target config for ``database`` on this server."""
        fields = dict(
            name=name, host=self.host, port=self.port, user=self.user, password=self.password, database=database
        )
        fields.update(overrides)
        return PostgresSourceConfig(**fields)

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        """An autocommit connection (caller closes it; use as a context manager)."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name: str) -> str:
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def database_exists(self, name: str) -> bool:
        with self.connect() as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def fresh_database_name(self) -> str:
        """A database name not used before in this session (not created)."""
        return f"t{next(_names)}_{secrets.token_hex(3)}"

    def start(self) -> None:
        log = self.root / "server.log"
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root}"
            " -c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        if self.options:
            opts += " " + self.options  # later settings win
        _as_postgres(self.pg_ctl, "-D", str(self.datadir), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        _as_postgres(self.pg_ctl, "-D", str(self.datadir), "-m", "immediate", "-w", "stop")


def start_postgres_server(prefix: str = "gdr-pg-", options: str = "") -> PostgresServer:
    """initdb + start a server as the ``postgres`` user; the caller stops it."""
    initdb = require_binary("initdb", "/usr/lib/postgresql/15/bin/initdb")
    pg_ctl = require_binary("pg_ctl", "/usr/lib/postgresql/15/bin/pg_ctl")
    require_binary("postgres", "/usr/lib/postgresql/15/bin/postgres")
    root = shared_tmpdir(prefix)
    password = "pw-" + secrets.token_hex(8)
    pwfile = root / "pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    shutil.chown(pwfile, "postgres")
    try:
        _as_postgres(
            initdb,
            "-D",
            str(root / "data"),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
            "--no-instructions",
        )
    finally:
        pwfile.unlink()
    server = PostgresServer(port=free_port(), password=password, root=root, pg_ctl=pg_ctl, options=options)
    server.start()
    return server


def _server_fixture(prefix: str, options: str = "", conf_dir: Path | None = None):
    """Yield a started server, stop it and remove its data (and ``conf_dir``, files its options name)."""
    server = start_postgres_server(prefix, options)
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            if not os.environ.get("GENESIS_DR_KEEP_TEST_SERVERS"):
                shutil.rmtree(server.root, ignore_errors=True)
                if conf_dir is not None:
                    shutil.rmtree(conf_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server():
    """The main throw-away PostgreSQL server of the test session."""
    yield from _server_fixture("gdr-pg-a-")


@pytest.fixture(scope="session")
def pg_server_b():
    """A second, independent server (its own roles): restores 'into another server'."""
    yield from _server_fixture("gdr-pg-b-")


# Point-in-time recovery needs what a production primary has: full-page writes (a base backup
# taken while pages change is repaired by them), synchronous commits (a committed row is in the
# WAL the capture streams), replication connections (initdb's pg_hba.conf allows them from
# 127.0.0.1 with the host auth method). Small WAL limits let a test get WAL removed quickly.
PITR_SERVER_OPTIONS = (
    "-c wal_level=replica -c full_page_writes=on -c synchronous_commit=on -c max_wal_senders=10"
    " -c max_replication_slots=10 -c min_wal_size=32MB -c max_wal_size=64MB -c wal_keep_size=0"
)


@pytest.fixture(scope="session")
def pg_pitr_server():
    """A server set up like a primary that ships its WAL: physical backups and WAL capture."""
    yield from _server_fixture("gdr-pg-pitr-", PITR_SERVER_OPTIONS)


def fresh_data_dir(prefix: str = "gdr-pg-restored-") -> Path:
    """A path for a new data directory (not created) that the ``postgres`` user may create and enter."""
    return shared_tmpdir(prefix) / "data"


def stop_cluster(data_dir: Path) -> None:
    """Stop a cluster a point-in-time restore started in ``data_dir`` (a missing one is fine) and
    remove it with the directory ``fresh_data_dir`` made for it."""
    pg_ctl = require_binary("pg_ctl", "/usr/lib/postgresql/15/bin/pg_ctl")
    data_dir = Path(data_dir)
    try:
        if (data_dir / "postmaster.pid").exists():
            _as_postgres(pg_ctl, "-D", str(data_dir), "-m", "immediate", "-w", "stop")
    finally:
        if not os.environ.get("GENESIS_DR_KEEP_TEST_SERVERS"):
            shutil.rmtree(data_dir.parent if data_dir.parent.name.startswith("gdr-pg-") else data_dir, True)


@pytest.fixture
def pg_database_name(pg_server: PostgresServer) -> str:
    """A fresh database name on ``pg_server`` (not yet created)."""
    return pg_server.fresh_database_name()


# ---------------------------------------------------------------- seed / snapshot

_SEED_SQL = """
DO $$ BEGIN CREATE ROLE gdr_app_owner NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN CREATE ROLE gdr_app_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');

CREATE TABLE customers (
    id          integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    email       text UNIQUE,
    balance     numeric(12, 2) NOT NULL DEFAULT 0,
    ratio       double precision,
    created_at  timestamptz NOT NULL,
    birthday    date,
    notes       text,
    profile     jsonb
);

CREATE TABLE orders (
    id          serial PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    amount      numeric NOT NULL CHECK (amount >= 0),
    status      order_status NOT NULL DEFAULT 'new',
    items       json,
    payload     bytea,
    placed_at   timestamp without time zone,
    tags        text[]
);
CREATE INDEX orders_placed_at_idx ON orders (placed_at);
CREATE INDEX orders_customer_status_idx ON orders (customer_id, status) WHERE status <> 'cancelled';

CREATE TABLE audit_log (
    id         bigserial PRIMARY KEY,
    order_id   integer,
    action     text NOT NULL,
    logged_at  timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);

CREATE FUNCTION log_order() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO audit_log (order_id, action) VALUES (NEW.id, TG_OP);
    RETURN NEW;
END
$f$;
CREATE TRIGGER orders_audit AFTER INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION log_order();

CREATE FUNCTION customer_total(cust integer) RETURNS numeric LANGUAGE sql STABLE AS $f$
    SELECT coalesce(sum(amount), 0) FROM orders WHERE customer_id = cust
$f$;

CREATE VIEW customer_totals AS
    SELECT c.id, c.name, customer_total(c.id) AS total FROM customers c;

CREATE SEQUENCE invoice_no START 5000;

CREATE SCHEMA billing;
CREATE TABLE billing.invoices (
    invoice_no bigint PRIMARY KEY DEFAULT nextval('invoice_no'),
    order_id   integer REFERENCES orders (id),
    issued_on  date NOT NULL,
    total      numeric(14, 4),
    meta       jsonb
);
CREATE TABLE billing.empty_table (id int PRIMARY KEY, note text);
CREATE SEQUENCE billing.never_used;
ALTER TABLE billing.invoices OWNER TO gdr_app_owner;
GRANT USAGE ON SCHEMA billing TO gdr_app_reader;
GRANT SELECT ON billing.invoices TO gdr_app_reader;
COMMENT ON TABLE customers IS 'people who buy things';

-- Names that need quoting everywhere (pg_dump patterns included).
CREATE TABLE billing."Odd ""Name"".With.Dots*" (id int PRIMARY KEY, "Value" text);
INSERT INTO billing."Odd ""Name"".With.Dots*" SELECT i, 'v' || i FROM generate_series(1, 50) AS i;

CREATE TABLE measurements (id int, taken_on date NOT NULL, reading numeric) PARTITION BY RANGE (taken_on);
CREATE TABLE measurements_2024 PARTITION OF measurements FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
INSERT INTO measurements SELECT i, date '2024-06-01' + i, i / 3.0 FROM generate_series(1, 400) AS i;

INSERT INTO customers (name, email, balance, ratio, created_at, birthday, notes, profile)
SELECT 'customer ' || i,
       CASE WHEN i % 17 = 0 THEN NULL ELSE 'c' || i || '@example.com' END,
       round((i * 37.13) % 10000, 2),
       CASE WHEN i % 5 = 0 THEN NULL ELSE i / 7.0::float8 END,
       timestamptz '2024-01-01 00:00:00+00' + i * interval '37 minutes',
       CASE WHEN i % 3 = 0 THEN NULL ELSE date '1970-01-01' + i * 11 END,
       CASE WHEN i % 4 = 0 THEN NULL ELSE md5(i::text) || E' line\\nbreak \\\\ "quoted" ''single'' \u00e9\u00fc\u4e2d' END,
       jsonb_build_object('tier', i % 3, 'tags', jsonb_build_array('a', i), 'nested', jsonb_build_object('x', i * 1.5))
FROM generate_series(1, 300) AS i;

INSERT INTO customers (name, email, created_at, notes, ratio)
VALUES ('canary', 'canary@example.com', '2024-02-29 12:34:56.789+00', '{canary} note', 1e-300),
       ('extremes', NULL, '1999-12-31 23:59:59.999999+00', '', 'Infinity');

INSERT INTO orders (customer_id, amount, status, items, payload, placed_at, tags)
SELECT 1 + (i % 300),
       (i * 3.7)::numeric(10, 2),
       (ARRAY['new', 'paid', 'shipped', 'cancelled']::order_status[])[1 + i % 4],
       CASE WHEN i % 6 = 0 THEN NULL ELSE json_build_object('sku', 'SKU-' || i, 'qty', i % 9) END,
       CASE WHEN i % 7 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') || '\\x00ff00'::bytea END,
       timestamp '2024-03-01 08:00:00' + i * interval '5 minutes',
       CASE WHEN i % 10 = 0 THEN NULL ELSE ARRAY['t' || (i % 4), 'x,y', NULL] END
FROM generate_series(1, 1500) AS i;

INSERT INTO billing.invoices (order_id, issued_on, total, meta)
SELECT i, date '2024-03-02' + (i % 40), i * 1.2345, CASE WHEN i % 2 = 0 THEN '{"paid": true}'::jsonb END
FROM generate_series(1, 400) AS i;

-- Sequences advanced past their rows (a restore must not reuse ids).
SELECT setval('orders_id_seq', 2000);
SELECT setval(pg_get_serial_sequence('customers', 'id'), 777);
SELECT nextval('invoice_no') FROM generate_series(1, 3);

CREATE MATERIALIZED VIEW order_stats AS SELECT status, count(*) AS n, sum(amount) AS total FROM orders GROUP BY status;

SELECT lo_from_bytea(0, convert_to('large object {canary}', 'UTF8'));

-- What real stacks hold besides: domains, composite and range types, a nondeterministic
-- collation, generated columns, an unlogged table, OID-valued columns, role memberships,
-- column/function/sequence/type/default/large-object grants.
DO $$ BEGIN CREATE ROLE gdr_app_user LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
GRANT gdr_app_reader TO gdr_app_user;
CREATE DOMAIN positive_amount AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE DOMAIN shipment_state AS order_status NOT NULL;
CREATE TYPE address AS (street text, city text, zone order_status);
CREATE TYPE price_range AS RANGE (subtype = numeric);
CREATE COLLATION case_insensitive (provider = icu, locale = 'und-u-ks-level2', deterministic = false);

-- No json column: hashed with the types' own hash functions, not the row text.
CREATE TABLE shipments (
    id          int PRIMARY KEY,
    status      order_status NOT NULL,
    history     order_status[],
    state       shipment_state,
    ship_to     address,
    weight      positive_amount,
    in_transit  tstzrange,
    price       price_range,
    parcels     int4multirange,
    code        text COLLATE case_insensitive,
    label       text COLLATE "C",
    source_rel  regclass,
    source_type regtype,
    doc         jsonb,
    raw         bytea,
    amount      numeric,
    doubled     numeric GENERATED ALWAYS AS (amount * 2) STORED,
    sent_at     timestamptz,
    uid         uuid,
    ip          inet,
    ratio       float8
);
INSERT INTO shipments (id, status, history, state, ship_to, weight, in_transit, price, parcels, code, label,
                       source_rel, source_type, doc, raw, amount, sent_at, uid, ip, ratio)
SELECT i,
       (ARRAY['new', 'paid', 'shipped', 'cancelled']::order_status[])[1 + i % 4],
       CASE WHEN i % 5 = 0 THEN NULL ELSE ARRAY['new', 'paid']::order_status[] END,
       (ARRAY['paid', 'shipped']::shipment_state[])[1 + i % 2],
       ROW('street ' || i, CASE WHEN i % 3 = 0 THEN 'Zürich' ELSE 'Oslo' END, 'shipped')::address,
       (i * 1.25)::numeric(12, 2),
       tstzrange(timestamptz '2024-05-01 00:00+00' + i * interval '1 hour', NULL),
       numrange(i, i + 10.5)::text::price_range,
       int4multirange(int4range(i, i + 2), int4range(i + 5, i + 9)),
       CASE WHEN i % 2 = 0 THEN 'Code-' || i ELSE 'CODE-' || i END,
       'label ' || i,
       (ARRAY['customers', 'billing.invoices', 'orders'])[1 + i % 3]::regclass,
       (ARRAY['order_status', 'address', 'integer'])[1 + i % 3]::regtype,
       jsonb_build_object('i', i, 'ok', i % 2 = 0),
       decode(md5(i::text), 'hex'),
       CASE WHEN i % 11 = 0 THEN 'NaN'::numeric ELSE i / 7.0 END,
       timestamptz '2024-05-01 00:00+00' + i * interval '13 minutes',
       md5(i::text)::uuid,
       ('10.0.' || (i % 255) || '.1')::inet,
       CASE WHEN i % 13 = 0 THEN '-0'::float8 ELSE i / 3.0::float8 END
FROM generate_series(1, 240) AS i;

-- bit varying has no hash function: this table is hashed through its row text.
CREATE UNLOGGED TABLE session_cache (key text PRIMARY KEY, value bytea, expires_at timestamptz, flags bit varying(8));
INSERT INTO session_cache
SELECT 'session:' || i, decode(md5(i::text), 'hex'), timestamptz '2030-01-01 00:00+00', (i % 256)::bit(8)::varbit
FROM generate_series(1, 60) AS i;

CREATE TABLE events (id bigint, at date NOT NULL, kind order_status) PARTITION BY LIST (kind);
CREATE TABLE events_open PARTITION OF events FOR VALUES IN ('new', 'paid');
CREATE TABLE events_done PARTITION OF events DEFAULT;
INSERT INTO events SELECT i, date '2024-01-01' + i % 90, (ARRAY['new', 'paid', 'shipped'])[1 + i % 3]::order_status
FROM generate_series(1, 300) AS i;

GRANT SELECT, INSERT ON shipments TO gdr_app_reader;
GRANT SELECT (id, status), UPDATE (label) ON shipments TO gdr_app_user;
GRANT USAGE, SELECT ON SEQUENCE invoice_no TO gdr_app_user;
REVOKE EXECUTE ON FUNCTION customer_total(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION customer_total(integer) TO gdr_app_reader;
REVOKE USAGE ON TYPE address FROM PUBLIC;
GRANT USAGE ON TYPE address TO gdr_app_user;
GRANT SELECT ON order_stats TO gdr_app_reader;
GRANT SELECT ON orders TO gdr_app_owner;  -- the view's owner refreshes it at restore
ALTER MATERIALIZED VIEW order_stats OWNER TO gdr_app_owner;
ALTER TABLE session_cache OWNER TO gdr_app_owner;
ALTER DEFAULT PRIVILEGES FOR ROLE gdr_app_owner IN SCHEMA billing GRANT SELECT ON TABLES TO gdr_app_reader;
DO $$
DECLARE lo oid;
BEGIN
    lo := lo_from_bytea(0, decode(repeat('00ff', 5000), 'hex'));
    EXECUTE format('ALTER LARGE OBJECT %s OWNER TO gdr_app_owner', lo);
    EXECUTE format('GRANT SELECT ON LARGE OBJECT %s TO gdr_app_reader', lo);
END $$;
"""


def seed_postgres(conn: psycopg.Connection) -> None:
    """Create realistic data (see module docstring) in the connected database."""
    with conn.transaction():
        conn.execute(_SEED_SQL.replace("{canary}", PG_CANARY))


_FIXED_OUTPUT = (
    "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET extra_float_digits = 1; "
    "SET bytea_output = 'hex'; SET IntervalStyle = 'postgres'; SET search_path = public"
)
_USER_NS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"


def _rows(conn, query: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(query).fetchall()]


def snapshot_postgres(conn: psycopg.Connection) -> dict:
    """Everything a user would compare after a restore: rows, sequences, schema, owners, grants.

    Rows are compared through their text form (exact, and NaN-safe), sorted.
    """
    conn.execute(_FIXED_OUTPUT)
    out: dict = {"tables": {}, "sequences": {}}
    tables = _rows(
        conn,
        f"SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind IN ('r', 'm') AND {_USER_NS} ORDER BY 1, 2",
    )
    for schema, table in tables:
        ident = sql.Identifier(schema, table)
        query = sql.SQL('SELECT t::text FROM ONLY {} t ORDER BY t::text COLLATE "C"').format(ident)
        out["tables"][f"{schema}.{table}"] = [r[0] for r in conn.execute(query).fetchall()]
    for schema, seq in _rows(
        conn,
        f"SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = 'S' AND {_USER_NS} ORDER BY 1, 2",
    ):
        query = sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, seq))
        out["sequences"][f"{schema}.{seq}"] = tuple(conn.execute(query).fetchone())
    out["views"] = _rows(
        conn,
        f"SELECT n.nspname, c.relname, pg_get_viewdef(c.oid) FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') AND {_USER_NS} ORDER BY 1, 2",
    )
    out["functions"] = _rows(
        conn,
        f"SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p "
        f"JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_NS} ORDER BY 1",
    )
    out["indexes"] = _rows(
        conn,
        f"SELECT n.nspname, c.relname, pg_get_indexdef(c.oid) FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'i' AND {_USER_NS} ORDER BY 1, 2",
    )
    out["constraints"] = _rows(
        conn,
        f"SELECT n.nspname, co.conrelid::regclass::text, co.conname, pg_get_constraintdef(co.oid) "
        f"FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace WHERE {_USER_NS} ORDER BY 1, 2, 3",
    )
    out["triggers"] = _rows(
        conn, "SELECT pg_get_triggerdef(t.oid) FROM pg_trigger t WHERE NOT t.tgisinternal ORDER BY 1"
    )
    out["types"] = _rows(
        conn,
        "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text FROM pg_type t "
        "JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY 1 ORDER BY 1",
    )
    out["comments"] = _rows(
        conn,
        "SELECT c.relname, d.description FROM pg_description d JOIN pg_class c ON c.oid = d.objoid "
        "WHERE d.classoid = 'pg_class'::regclass ORDER BY 1",
    )
    out["large_objects"] = _rows(
        conn, "SELECT oid::bigint, encode(lo_get(oid), 'escape') FROM pg_largeobject_metadata ORDER BY 1"
    )
    out["owners"] = _rows(
        conn,
        f"SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner), c.relacl::text FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') AND {_USER_NS} "
        "ORDER BY 1, 2",
    )
    out["relations"] = _rows(
        conn,
        f"SELECT n.nspname, c.relname, c.relkind::text, c.relpersistence::text, pg_get_expr(c.relpartbound, c.oid) "
        f"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS} ORDER BY 1, 2",
    )
    out["columns"] = _rows(
        conn,
        f"SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod), co.collname, "
        f"a.attgenerated::text, pg_get_expr(d.adbin, d.adrelid), a.attnotnull, a.attacl::text "
        f"FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100 "
        f"LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        f"WHERE c.relkind IN ('r', 'p', 'v', 'm') AND a.attnum > 0 AND NOT a.attisdropped AND {_USER_NS} "
        "ORDER BY 1, 2, a.attnum",
    )
    out["types_and_domains"] = _rows(
        conn,
        f"SELECT n.nspname, t.typname, t.typtype::text, format_type(t.typbasetype, t.typtypmod), "
        f"pg_get_userbyid(t.typowner), t.typacl::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        f"WHERE {_USER_NS} AND t.typtype IN ('d', 'e', 'r', 'c') "
        "AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c') ORDER BY 1, 2",
    )
    out["collations"] = _rows(
        conn,
        "SELECT c.collname, c.collprovider::text, c.collisdeterministic, "
        "coalesce(c.colliculocale, c.collcollate) FROM pg_collation c "
        "JOIN pg_namespace n ON n.oid = c.collnamespace WHERE n.nspname = 'public' ORDER BY 1",
    )
    out["acls"] = _rows(
        conn,
        f"SELECT 'schema', n.nspname, pg_get_userbyid(n.nspowner), n.nspacl::text FROM pg_namespace n "
        f"WHERE {_USER_NS} UNION ALL "
        f"SELECT 'function', p.oid::regprocedure::text, pg_get_userbyid(p.proowner), p.proacl::text FROM pg_proc p "
        f"JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_NS} UNION ALL "
        "SELECT 'large object', encode(lo_get(l.oid), 'escape'), pg_get_userbyid(l.lomowner), l.lomacl::text "
        "FROM pg_largeobject_metadata l UNION ALL "
        "SELECT 'default acl', coalesce(n.nspname, ''), pg_get_userbyid(d.defaclrole), d.defaclacl::text "
        "FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace ORDER BY 1, 2",
    )
    # Cluster-wide, but what the database's grants rely on: memberships among the application roles.
    out["memberships"] = _rows(
        conn,
        "SELECT pg_get_userbyid(roleid), pg_get_userbyid(member), admin_option FROM pg_auth_members "
        "WHERE pg_get_userbyid(roleid) LIKE 'gdr\\_app\\_%' ORDER BY 1, 2",
    )
    return out
