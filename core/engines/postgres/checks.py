"""The facts recorded at backup time that prove a PostgreSQL restore.

All queries run inside the caller's transaction: at backup time that is the
REPEATABLE READ transaction whose snapshot pg_dump imported, so the checks and
the dump describe the same instant.

- ``tables``: per ordinary table (leaf partitions included, parents of
  partitions excluded: they hold no rows), the exact row count and an
  order-independent content hash, the sum of one 32-bit hash per row:
  ``hash_record(row)`` (PostgreSQL 14+, the types' own hash functions, which
  are stable across versions because hash indexes and hash partitions rely on
  them), or ``hashtext(row::text)`` for tables with a column type that has no
  hash function (json, xml, geometric types).
  Some types' hash functions hash an OID or a collation's sort key, which
  differ between servers although the values are the same: an enum hashes its
  label's ``pg_enum`` OID, ``regclass`` and the other reg* types hash the
  object's OID, a nondeterministic (ICU) collation hashes the ICU sort key.
  Columns whose type holds one of those (directly, or inside an array, a
  domain, a composite or a range) are hashed through their text form
  (``col::text COLLATE "C"``: labels and qualified names), the others with
  their own hash function: ``hash_record(ROW(a, b::text, ...))``. Tables
  without such columns cost exactly what ``hash_record(t)`` costs (checks
  format 2; format 1 hashed ``hash_record(t)`` always and is still read). The record hash does not see
  differences its types' equality ignores (numeric 1.0 vs 1.00, -0.0 vs 0.0).
  Measured on the 1 GB benchmark database (2 cores): record hash ~2.4 CPU-s,
  text hash ~7.4 CPU-s (text formatting costs as much as pg_dump's own COPY).
  For the text form, output settings are pinned (DateStyle, TimeZone, float
  digits, bytea format...) so it is the same on the target.
  ``GENESIS_DR_PG_ROW_HASH=0`` records row counts only; a restore is then
  checked the same way (the recorded checks decide).
  Materialized views are re-computed at restore (REFRESH): only their
  existence is checked.
- ``sequences``: last_value and is_called. Sequences are not transactional, so
  they are read before pg_dump starts and after it ends; if a sequence moved
  in between, the recorded check is the range (the restored value must lie in
  it), because we cannot know which value pg_dump saw.
- ``schema``: an inventory by kind (schemas, relations with their kind,
  functions, triggers, constraints, types, extensions) of objects pg_dump
  dumps; extension members are left out (``CREATE EXTENSION`` recreates them
  in whatever version the target has).
- ``large_objects``: count and a content hash.
- ``database``: the encoding (the text of every row depends on it).
- ``restore``: not a check but what restore needs (the roles the backup
  references); ``collect_checks`` copies it so the comparison ignores it.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg
from psycopg import Connection, sql

CHECKS_FORMAT = 2

# The text form of a row must not depend on session defaults of either server.
FIXED_OUTPUT_SETTINGS = {
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
    "search_path": "pg_catalog",
    # An RLS policy must make the check fail, never silently filter rows (pg_dump does the same).
    "row_security": "off",
    "statement_timeout": "0",
    "idle_in_transaction_session_timeout": "0",
}

# Not pg_catalog/information_schema/pg_toast/pg_temp_*: user schemas only ("pg_" is reserved).
USER_NS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"


def not_extension_member(catalog: str, oid_expr: str) -> str:
    return (
        f"NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = '{catalog}'::regclass "
        f"AND dep.objid = {oid_expr} AND dep.deptype = 'e')"
    )


_RELKINDS = {
    "r": "table",
    "p": "partitioned table",
    "v": "view",
    "m": "materialized view",
    "S": "sequence",
    "i": "index",
    "I": "partitioned index",
    "f": "foreign table",
    "c": "composite type",
}

_INVENTORY_SQL: dict[str, str] = {
    "schemas": f"SELECT n.nspname, 'schema' FROM pg_namespace n WHERE {USER_NS} "
    f"AND {not_extension_member('pg_namespace', 'n.oid')}",
    "relations": f"SELECT n.nspname || '.' || c.relname, c.relkind::text FROM pg_class c "
    f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_NS} "
    f"AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'i', 'I', 'f', 'c') AND {not_extension_member('pg_class', 'c.oid')}",
    "functions": f"SELECT p.oid::regprocedure::text, p.prokind::text FROM pg_proc p "
    f"JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_NS} AND {not_extension_member('pg_proc', 'p.oid')}",
    "triggers": f"SELECT n.nspname || '.' || c.relname || '.' || t.tgname, 'trigger' FROM pg_trigger t "
    f"JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    f"WHERE NOT t.tgisinternal AND {USER_NS}",
    # NOT NULL constraints ('n') appear in pg_constraint only from PostgreSQL 18: leave them out
    # so a restore onto a newer server compares equal.
    "constraints": f"SELECT n.nspname || '.' || coalesce(c.relname, ty.typname) || '.' || co.conname, "
    f"co.contype::text FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace "
    f"LEFT JOIN pg_class c ON c.oid = co.conrelid LEFT JOIN pg_type ty ON ty.oid = co.contypid "
    f"WHERE {USER_NS} AND co.contype <> 'n'",
    # Domains, enums, ranges (multiranges are implicit, arrays and row types follow their base).
    "types": f"SELECT n.nspname || '.' || t.typname, t.typtype::text FROM pg_type t "
    f"JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {USER_NS} AND t.typtype IN ('d', 'e', 'r') "
    f"AND {not_extension_member('pg_type', 't.oid')}",
    "extensions": "SELECT e.extname, 'extension' FROM pg_extension e",
}


def apply_fixed_settings(conn: Connection) -> None:
    """Pin the session settings the row text depends on (call inside the transaction)."""
    for name, value in FIXED_OUTPUT_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def table_sizes(conn: Connection, in_recovery: bool) -> list[tuple[tuple[str, str], int]]:
    """((schema, table), bytes) of every table whose rows pg_dump dumps."""
    # A standby cannot read unlogged tables; pg_dump skips their data there too.
    unlogged = "" if not in_recovery else "AND c.relpersistence <> 'u'"
    rows = conn.execute(
        f"SELECT n.nspname, c.relname, pg_table_size(c.oid) FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = 'r' AND {USER_NS} {unlogged} AND {not_extension_member('pg_class', 'c.oid')} "
        "ORDER BY 1, 2"
    ).fetchall()
    return [((r[0], r[1]), int(r[2] or 0)) for r in rows]


def list_tables(conn: Connection, in_recovery: bool) -> list[tuple[str, str]]:
    """(schema, table) of every table whose rows pg_dump dumps."""
    return [table for table, _ in table_sizes(conn, in_recovery)]


_HASHES = {
    # Per-column hash functions (PostgreSQL 14+): no text formatting, 3-6x cheaper.
    "record_hash": "hash_record(t)",
    # Any column type (json, xml, point... have no hash function): the row's text form.
    "text_hash": "hashtext(t::text)",
}

# These hash the OID of the object they name, which differs between servers; their text
# form (with search_path pinned to pg_catalog: a qualified name) does not.
_OID_VALUED_TYPES = {
    "regclass",
    "regtype",
    "regproc",
    "regprocedure",
    "regoper",
    "regoperator",
    "regconfig",
    "regdictionary",
    "regnamespace",
    "regrole",
    "regcollation",
}

_TYPES_SQL = """
SELECT t.oid, t.typtype::text, t.typelem, t.typbasetype, t.typrelid, t.typname,
       t.typnamespace = 'pg_catalog'::regnamespace, t.typsubscript = 'array_subscript_handler'::regproc,
       r.rngsubtype, mr.rngtypid
FROM pg_type t LEFT JOIN pg_range r ON r.rngtypid = t.oid LEFT JOIN pg_range mr ON mr.rngmultitypid = t.oid
WHERE t.typtype <> 'p'
"""

_ATTRIBUTES_SQL = f"""
SELECT c.oid, n.nspname, c.relname, c.relkind = 'r' AND {USER_NS}, a.attname, a.atttypid,
       coalesce(co.collisdeterministic, true)
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'c')
ORDER BY c.oid, a.attnum
"""


def text_hashed_columns(conn: Connection) -> dict[str, list[tuple[str, bool]]]:
    """Per table ("schema.table") whose hash would depend on OIDs or a collation's sort keys:
    its columns in order, each with True where the column must be hashed as text.

    Tables every column of which hashes the same everywhere are left out (they keep the
    plain, cheapest ``hash_record(t)``). One pass over pg_type and pg_attribute.
    """
    types = {row[0]: row[1:] for row in conn.execute(_TYPES_SQL).fetchall()}
    attributes: dict[int, list[tuple[str, int, bool]]] = {}
    tables: dict[int, str] = {}
    for relid, schema, name, user_table, column, typid, deterministic in conn.execute(_ATTRIBUTES_SQL).fetchall():
        attributes.setdefault(relid, []).append((column, typid, deterministic))
        if user_table:
            tables[relid] = f"{schema}.{name}"
    memo: dict[int, bool] = {}

    def sensitive(typid: int) -> bool:
        if typid in memo:
            return memo[typid]
        memo[typid] = False  # a cycle guard; types cannot contain themselves
        info = types.get(typid)
        result = False
        if info is not None:
            typtype, elem, base, relid, name, in_catalog, is_array, subtype, of_range = info
            if typtype == "e":
                result = True
            elif typtype == "b" and is_array and elem:
                result = sensitive(elem)
            elif typtype == "b":
                result = bool(in_catalog and name in _OID_VALUED_TYPES)
            elif typtype == "d":
                result = sensitive(base)
            elif typtype == "c":
                result = any(sensitive(t) or not det for _, t, det in attributes.get(relid, []))
            elif typtype == "r":
                result = sensitive(subtype)
            elif typtype == "m":
                result = sensitive(of_range)
        memo[typid] = result
        return result

    out = {}
    for relid, key in tables.items():
        columns = [(column, sensitive(typid) or not det) for column, typid, det in attributes[relid]]
        if any(as_text for _, as_text in columns):
            out[key] = columns
    return out


def _record_hash_sql(columns: list[tuple[str, bool]] | None) -> sql.Composable:
    if not columns:
        return sql.SQL(_HASHES["record_hash"])
    parts = [
        sql.SQL('({})::text COLLATE "C"').format(sql.Identifier("t", name)) if as_text else sql.Identifier("t", name)
        for name, as_text in columns
    ]
    return sql.SQL("hash_record(ROW({}))").format(sql.SQL(", ").join(parts))


def _table_hash(
    conn: Connection, schema: str, table: str, method: str, columns: list[tuple[str, bool]] | None = None
) -> tuple[int, int]:
    if method == "count":
        query = sql.SQL("SELECT count(*), 0 FROM ONLY {}").format(sql.Identifier(schema, table))
    else:
        expression = _record_hash_sql(columns) if method == "record_hash" else sql.SQL(_HASHES[method])
        query = sql.SQL("SELECT count(*), coalesce(sum({}), 0) FROM ONLY {} AS t").format(
            expression, sql.Identifier(schema, table)
        )
    rows, digest = conn.execute(query).fetchone()
    return int(rows), int(digest)


def row_hashes_enabled() -> bool:
    """``GENESIS_DR_PG_ROW_HASH=0`` records row counts only (about 1/6 of the hashing cost)."""
    return os.environ.get("GENESIS_DR_PG_ROW_HASH", "1") != "0"


def table_checks(
    conn: Connection,
    tables: list[tuple[str, str]],
    methods: dict[str, str] | None = None,
    checks_format: int = CHECKS_FORMAT,
) -> dict[str, dict[str, int]]:
    """Exact row count and an order-independent content hash per table.

    ``methods`` (from a recorded reference) says which hash each table used
    ("count": none); without it (at backup time) the cheaper record hash is
    tried first and the text hash used where a column type cannot be hashed.
    ``checks_format`` is the reference's: format 1 hashed every column with its
    own hash function (OIDs included).
    """
    record_ok = conn.info.server_version >= 140000
    default = None if row_hashes_enabled() else "count"
    as_text = text_hashed_columns(conn) if record_ok and checks_format >= 2 else {}
    out = {}
    for schema, table in tables:
        key = f"{schema}.{table}"
        method = (methods or {}).get(key, default)
        if method == "count":
            out[key] = {"rows": _table_hash(conn, schema, table, "count")[0]}
            continue
        if method is None and record_ok:
            # A type without a hash function fails on the first row: cheap to try.
            conn.execute("SAVEPOINT gdr_hash")
            try:
                rows, digest = _table_hash(conn, schema, table, "record_hash", as_text.get(key))
                conn.execute("RELEASE SAVEPOINT gdr_hash")
                out[key] = {"rows": rows, "record_hash": digest}
                continue
            except psycopg.errors.UndefinedFunction:
                conn.execute("ROLLBACK TO SAVEPOINT gdr_hash")
        method = method or "text_hash"
        rows, digest = _table_hash(conn, schema, table, method, as_text.get(key))
        out[key] = {"rows": rows, method: digest}
    return out


def read_sequences(conn: Connection) -> dict[str, dict[str, Any]]:
    """Current last_value/is_called of every user sequence (not MVCC: 'now', not the snapshot)."""
    names = conn.execute(
        f"SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = 'S' AND {USER_NS} AND {not_extension_member('pg_class', 'c.oid')} ORDER BY 1, 2"
    ).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(names), 200):  # one round trip per batch, bounded statement size
        batch = names[start : start + 200]
        parts = [
            sql.SQL("SELECT {}::text, last_value, is_called FROM {}").format(
                sql.Literal(f"{schema}.{seq}"), sql.Identifier(schema, seq)
            )
            for schema, seq in batch
        ]
        for key, last_value, is_called in conn.execute(sql.SQL(" UNION ALL ").join(parts)).fetchall():
            out[key] = {"last_value": int(last_value), "is_called": bool(is_called)}
    return out


def sequence_checks(before: dict, after: dict) -> dict[str, dict[str, Any]]:
    """Exact values where a sequence did not move during the dump, else the range it moved in."""
    out = {}
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            # Created or dropped during the dump: pg_dump's view decides; only its existence is certain.
            out[key] = {"moved_during_backup": True}
        elif a == b:
            out[key] = dict(a)
        else:
            low, high = sorted((a["last_value"], b["last_value"]))
            out[key] = {"last_value_between": [low, high]}
    return out


def collect_sequences(conn: Connection, reference: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sequences on the target, shaped like the recorded ``reference`` entries."""
    out = {}
    for key, now in read_sequences(conn).items():
        ref = reference.get(key, {})
        if "last_value_between" in ref:
            low, high = ref["last_value_between"]
            out[key] = {"last_value_between": [low, high] if low <= now["last_value"] <= high else now["last_value"]}
        elif "moved_during_backup" in ref:
            out[key] = {"moved_during_backup": True}
        else:
            out[key] = now
    return out


def inventory(conn: Connection) -> dict[str, dict[str, str]]:
    """Schema objects by kind: {kind: {qualified name: sub-kind}}."""
    out = {}
    for kind, query in _INVENTORY_SQL.items():
        rows = conn.execute(query).fetchall()
        if kind == "relations":
            out[kind] = {name: _RELKINDS.get(code, code) for name, code in rows}
        else:
            out[kind] = {name: code for name, code in rows}
    return out


def large_object_checks(conn: Connection) -> dict[str, int]:
    count, digest = conn.execute(
        "SELECT count(*), coalesce(sum(hashtext(md5(lo_get(oid)))), 0) FROM pg_largeobject_metadata"
    ).fetchone()
    return {"count": int(count), "hash": int(digest)}


def database_checks(conn: Connection) -> dict[str, str]:
    return {
        "encoding": conn.execute(
            "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
    }


def referenced_roles(conn: Connection) -> list[str]:
    """Roles the dump will name as owners or grantees (they must exist on the target to keep them)."""
    rows = conn.execute(
        "SELECT r.rolname FROM pg_roles r WHERE r.oid IN ("
        " SELECT refobjid FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass"
        "  AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        # The bootstrap superuser's ownership is not recorded in pg_shdepend (it is pinned).
        f" UNION SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_NS}"
        f" UNION SELECT p.proowner FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_NS}"
        f" UNION SELECT t.typowner FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE {USER_NS}"
        f" UNION SELECT n.nspowner FROM pg_namespace n WHERE {USER_NS}"
        " UNION SELECT lomowner FROM pg_largeobject_metadata"
        ") ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def content_checks(conn: Connection, in_recovery: bool, reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything except sequences (which need the before/after reads around the dump).

    With ``reference`` (the recorded checks), each table is hashed the way it was then.
    """
    methods = None
    checks_format = CHECKS_FORMAT
    if reference is not None:
        methods = {
            key: next((m for m in _HASHES if m in entry), "count") for key, entry in reference.get("tables", {}).items()
        }
        checks_format = reference.get("format", 1)
    return {
        "format": checks_format,
        "database": database_checks(conn),
        "tables": table_checks(conn, list_tables(conn, in_recovery), methods, checks_format),
        "large_objects": large_object_checks(conn),
        "schema": inventory(conn),
    }
