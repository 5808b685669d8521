"""The checks that prove a MariaDB/MySQL restore: computed in SQL on both sides.

Per table: exact row count and an order-independent content checksum. Each
column value is hashed on its own (``MD5(CAST(col AS BINARY))``, NULL as
``-``, which no MD5 hex equals), the column hashes of a row are hashed
together, and the first 64 bits of every row hash are summed. A sum, unlike a
XOR, does not let two identical rows cancel out; hashing per column keeps the
row string small, so a 100 MB BLOB never hits ``max_allowed_packet`` (where
``CONCAT`` would quietly return NULL and drop the row from the checksum).

Schema inventory: tables, views, sequences, routines, triggers and events by
name, with a digest of each routine/trigger/event body (stored verbatim by the
server, so equal after a faithful restore). View definitions and DEFINERs are
left out on purpose: the server re-renders views (with the database name in
them) and a restore may change a definer that does not exist on the target.
"""

from __future__ import annotations

import hashlib
from typing import Any

from core.engines.mysql_dump import quote_name

ALGORITHM = "mysql-checks/1"


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


def _rows(cur, sql: str, args: tuple = ()) -> list[tuple]:
    cur.execute(sql, args)
    return list(cur.fetchall())


def inventory(cur, database: str) -> dict[str, Any]:
    """Schema objects of ``database`` and, per base table, its columns and whether it has AUTO_INCREMENT."""
    schema = _rows(
        cur,
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = %s",
        (database,),
    )
    charset, collation = schema[0] if schema else (None, None)
    tables: dict[str, dict[str, Any]] = {}
    views, sequences = [], []
    for name, kind in _rows(
        cur, "SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s", (database,)
    ):
        if kind == "VIEW":
            views.append(name)
        elif kind == "SEQUENCE":  # MariaDB sequences: state, not rows; dumped with SETVAL
            sequences.append(name)
        else:  # BASE TABLE, SYSTEM VERSIONED
            tables[name] = {"columns": [], "auto_increment": False}
    for table, column, extra in _rows(
        cur,
        "SELECT TABLE_NAME, COLUMN_NAME, EXTRA FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s "
        "ORDER BY TABLE_NAME, ORDINAL_POSITION",
        (database,),
    ):
        if table in tables:
            tables[table]["columns"].append(column)
            if "auto_increment" in (extra or "").lower():
                tables[table]["auto_increment"] = True
    routines = {
        f"{kind} {name}": _digest(body)
        for name, kind, body in _rows(
            cur,
            "SELECT ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_DEFINITION FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
            (database,),
        )
    }
    triggers = {
        name: {"table": table, "timing": timing, "event": event, "body": _digest(body)}
        for name, table, timing, event, body in _rows(
            cur,
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_STATEMENT "
            "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
            (database,),
        )
    }
    events = {
        name: {"status": status, "body": _digest(body)}
        for name, status, body in _rows(
            cur,
            "SELECT EVENT_NAME, STATUS, EVENT_DEFINITION FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
            (database,),
        )
    }
    return {
        "database": {"charset": charset, "collation": collation},
        "tables": tables,
        "views": sorted(views),
        "sequences": sorted(sequences),
        "routines": routines,
        "triggers": triggers,
        "events": events,
    }


def table_checksum(cur, database: str, table: str, columns: list[str]) -> tuple[int, str]:
    """(exact row count, content checksum) of one table, read in the cursor's transaction."""
    column_hashes = ",".join(f"COALESCE(MD5(CAST({quote_name(c)} AS BINARY)),'-')" for c in columns)
    row_hash = f"MD5(CONCAT_WS(',',{column_hashes}))"
    cur.execute(
        f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT({row_hash},16),16,10) AS UNSIGNED)),0) "
        f"FROM {quote_name(database)}.{quote_name(table)}"
    )
    count, total = cur.fetchone()
    return int(count), str(total)


def live_auto_increments(cur, database: str, flavor: str) -> dict[str, int]:
    """Current AUTO_INCREMENT counters of ``database``'s tables, from information_schema."""
    if flavor == "mysql":
        # MySQL 8 caches table statistics for a day by default; ask for the live value.
        cur.execute("SET SESSION information_schema_stats_expiry = 0")
    return {
        name: int(value)
        for name, value in _rows(
            cur,
            "SELECT TABLE_NAME, AUTO_INCREMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s "
            "AND AUTO_INCREMENT IS NOT NULL",
            (database,),
        )
    }


def build_checks(
    cur, database: str, inv: dict[str, Any], auto_increment: dict[str, int], *, default_auto_increment: int | None
) -> dict[str, Any]:
    """The checks dict: inventory plus per-table rows/checksum/AUTO_INCREMENT.

    ``auto_increment`` maps tables to counters; a table with an AUTO_INCREMENT
    column missing from it gets ``default_auto_increment`` (a dump omits the
    clause while the counter is still at its start value, 1).
    """
    tables = {}
    for name, info in sorted(inv["tables"].items()):
        rows, checksum = table_checksum(cur, database, name, info["columns"])
        entry: dict[str, Any] = {"rows": rows, "checksum": checksum}
        if info["auto_increment"]:
            entry["auto_increment"] = auto_increment.get(name, default_auto_increment)
        tables[name] = entry
    return {
        "algorithm": ALGORITHM,
        "database": inv["database"],
        "tables": tables,
        "views": inv["views"],
        "sequences": inv["sequences"],
        "routines": inv["routines"],
        "triggers": inv["triggers"],
        "events": inv["events"],
    }
