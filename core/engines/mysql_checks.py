"""The checks that prove a MariaDB/MySQL restore: computed in SQL on both sides.

Per table: exact row count and an order-independent content checksum. Each
column value is hashed on its own (``MD5(CAST(col AS BINARY))``, NULL as
``-``, which no MD5 hex equals), the column hashes of a row are hashed
together, and the first 64 bits of every row hash are summed. A sum, unlike a
XOR, does not let two identical rows cancel out; hashing per column keeps the
row string small, so a 100 MB BLOB never hits ``max_allowed_packet`` (where
``CONCAT`` would quietly return NULL and drop the row from the checksum).

Schema (``mysql-checks/2``): per table its engine and a digest of its
definition (columns with types, defaults and generation expressions, indexes,
foreign keys, CHECK constraints, partitions, collation, comment); per view a
digest of its definition, check option and security; per routine its body,
parameters and characteristics; per trigger its table, timing, event, order
and body; per event its body, schedule and status; per sequence its state.
Everything is read from information_schema with the database's own name taken
out, so the checks are the same after a restore under another name or into
another server. Left out on purpose: DEFINERs (a restore may have to replace
one that does not exist on the target; that is a restore note, not a
mismatch), creation/alteration times, and anything the server derives rather
than stores (row format defaults, statistics).

``mysql-checks/1`` (older backups) had names and bodies only; it is still
computed when a backup recorded it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pymysql

from core.engines.mysql_dump import quote_name

_UNKNOWN_TABLE = {1109, 1146}  # e.g. information_schema.CHECK_CONSTRAINTS before MySQL 8.0.16 / MariaDB 10.2

ALGORITHM = "mysql-checks/2"
ALGORITHMS = ("mysql-checks/1", ALGORITHM)


def _digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


def _digest_rows(rows) -> str:
    """Digest of a list of rows (already in a stable order), values as their text."""
    return hashlib.sha256(json.dumps([[_text(v) for v in row] for row in rows]).encode()).hexdigest()[:16]


def _text(value: Any) -> Any:
    if value is None or isinstance(value, int | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def _rows(cur, sql: str, args: tuple = (), *, optional: bool = False) -> list[tuple]:
    """All rows; ``optional``: none where the server lacks the information_schema table (older servers)."""
    try:
        cur.execute(sql, args)
    except pymysql.err.MySQLError as exc:
        if optional and exc.args and exc.args[0] in _UNKNOWN_TABLE:
            return []
        raise
    return list(cur.fetchall())


def _strip_db(text: str | None, database: str) -> str | None:
    """``text`` without qualifications by the database's own name (views are stored with them)."""
    return None if text is None else text.replace(quote_name(database) + ".", "")


def inventory(cur, database: str, algorithm: str = ALGORITHM) -> dict[str, Any]:
    """Schema objects of ``database`` and, per base table, its columns and whether it has AUTO_INCREMENT."""
    v2 = algorithm != "mysql-checks/1"
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
    if not v2:
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
    _table_definitions(cur, database, tables)
    for (name,) in _rows(
        cur,
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s AND TABLE_TYPE = 'SYSTEM VERSIONED'",
        (database,),
    ):
        tables[name]["period"] = ["row_start", "row_end"]  # implicit unless named below
        tables[name]["precise"] = False
    for table, column, expression, data_type in _rows(
        cur,
        "SELECT TABLE_NAME, COLUMN_NAME, GENERATION_EXPRESSION, DATA_TYPE FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND GENERATION_EXPRESSION IN ('ROW START', 'ROW END')",
        (database,),
    ):
        if table in tables and "period" in tables[table]:
            tables[table]["period"][0 if expression == "ROW START" else 1] = column
            tables[table]["precise"] = tables[table]["precise"] or data_type == "bigint"
    return {
        "database": {"charset": charset, "collation": collation},
        "tables": tables,
        "views": _views(cur, database),
        "sequences": {
            name: _digest_rows(_rows(cur, f"SELECT * FROM {quote_name(database)}.{quote_name(name)}"))
            for name in sorted(sequences)
        },
        "routines": _routines(cur, database),
        "triggers": {
            name: {"table": table, "timing": timing, "event": event, "order": int(order), "body": _digest_rows([rest])}
            for name, table, timing, event, order, *rest in _rows(
                cur,
                "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_ORDER, "
                "ACTION_STATEMENT, SQL_MODE, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, DATABASE_COLLATION "
                "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = %s",
                (database,),
            )
        },
        "events": {
            name: {"status": status, "body": _digest(body), "schedule": _digest_rows([rest])}
            for name, status, body, *rest in _rows(
                cur,
                "SELECT EVENT_NAME, STATUS, EVENT_DEFINITION, EVENT_TYPE, EXECUTE_AT, INTERVAL_VALUE, INTERVAL_FIELD, "
                "STARTS, ENDS, ON_COMPLETION, SQL_MODE, TIME_ZONE, EVENT_COMMENT "
                "FROM information_schema.EVENTS WHERE EVENT_SCHEMA = %s",
                (database,),
            )
        },
    }


def _grouped(rows: list[tuple]) -> dict[str, list[tuple]]:
    """Rows keyed by their first column (a table or routine name), order kept."""
    out: dict[str, list[tuple]] = {}
    for row in rows:
        out.setdefault(row[0], []).append(row[1:])
    return out


def _table_definitions(cur, database: str, tables: dict[str, dict[str, Any]]) -> None:
    """Add ``engine`` and ``definition`` (a digest of everything SHOW CREATE TABLE says) to each table."""
    meta = _grouped(
        _rows(
            cur,
            "SELECT TABLE_NAME, ENGINE, TABLE_COLLATION, TABLE_COMMENT FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s",
            (database,),
        )
    )
    parts = [
        _grouped(
            _rows(
                cur,
                "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, EXTRA, GENERATION_EXPRESSION, "
                "CHARACTER_SET_NAME, COLLATION_NAME, COLUMN_COMMENT FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, ORDINAL_POSITION",
                (database,),
            )
        ),
        _grouped(
            _rows(
                cur,
                "SELECT TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX, COLUMN_NAME, NON_UNIQUE, SUB_PART, INDEX_TYPE, INDEX_COMMENT "
                "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = %s ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX",
                (database,),
            )
        ),
        _grouped(
            [
                (table, name, update, delete, ref_table, column, position, None if ref_db == database else ref_db, ref)
                for table, name, update, delete, ref_table, column, position, ref_db, ref in _rows(
                    cur,
                    "SELECT rc.TABLE_NAME, rc.CONSTRAINT_NAME, rc.UPDATE_RULE, rc.DELETE_RULE, rc.REFERENCED_TABLE_NAME, "
                    "k.COLUMN_NAME, k.ORDINAL_POSITION, k.REFERENCED_TABLE_SCHEMA, k.REFERENCED_COLUMN_NAME "
                    "FROM information_schema.REFERENTIAL_CONSTRAINTS rc JOIN information_schema.KEY_COLUMN_USAGE k "
                    "ON k.CONSTRAINT_SCHEMA = rc.CONSTRAINT_SCHEMA AND k.CONSTRAINT_NAME = rc.CONSTRAINT_NAME "
                    "AND k.TABLE_NAME = rc.TABLE_NAME WHERE rc.CONSTRAINT_SCHEMA = %s "
                    "ORDER BY rc.TABLE_NAME, rc.CONSTRAINT_NAME, k.ORDINAL_POSITION",
                    (database,),
                )
            ]
        ),
        _grouped(
            _rows(
                cur,
                "SELECT tc.TABLE_NAME, cc.CONSTRAINT_NAME, cc.CHECK_CLAUSE FROM information_schema.TABLE_CONSTRAINTS tc "
                "JOIN information_schema.CHECK_CONSTRAINTS cc ON cc.CONSTRAINT_SCHEMA = tc.CONSTRAINT_SCHEMA "
                "AND cc.CONSTRAINT_NAME = tc.CONSTRAINT_NAME "
                "WHERE tc.CONSTRAINT_SCHEMA = %s AND tc.CONSTRAINT_TYPE = 'CHECK' "
                "ORDER BY tc.TABLE_NAME, cc.CONSTRAINT_NAME",
                (database,),
                optional=True,
            )
        ),
        _grouped(
            _rows(
                cur,
                "SELECT TABLE_NAME, PARTITION_NAME, SUBPARTITION_NAME, PARTITION_METHOD, SUBPARTITION_METHOD, "
                "PARTITION_EXPRESSION, SUBPARTITION_EXPRESSION, PARTITION_DESCRIPTION FROM information_schema.PARTITIONS "
                "WHERE TABLE_SCHEMA = %s AND PARTITION_NAME IS NOT NULL "
                "ORDER BY TABLE_NAME, PARTITION_ORDINAL_POSITION, SUBPARTITION_ORDINAL_POSITION",
                (database,),
            )
        ),
    ]
    for name, info in tables.items():
        engine, collation, comment = meta.get(name, [(None, None, None)])[0]
        info["engine"] = engine
        info["definition"] = _digest_rows(
            [[collation, comment], *[[_digest_rows(part.get(name, []))] for part in parts]]
        )


def _views(cur, database: str) -> dict[str, str]:
    return {
        name: _digest_rows([[_strip_db(definition, database), check, security]])
        for name, definition, check, security in _rows(
            cur,
            "SELECT TABLE_NAME, VIEW_DEFINITION, CHECK_OPTION, SECURITY_TYPE FROM information_schema.VIEWS "
            "WHERE TABLE_SCHEMA = %s",
            (database,),
        )
    }


def _routines(cur, database: str) -> dict[str, str]:
    params = _grouped(
        [
            (f"{kind} {name}", mode, pname, dtd)
            for name, kind, mode, pname, dtd in _rows(
                cur,
                "SELECT SPECIFIC_NAME, ROUTINE_TYPE, PARAMETER_MODE, PARAMETER_NAME, DTD_IDENTIFIER "
                "FROM information_schema.PARAMETERS WHERE SPECIFIC_SCHEMA = %s "
                "ORDER BY SPECIFIC_NAME, ROUTINE_TYPE, ORDINAL_POSITION",
                (database,),
            )
        ]
    )
    return {
        f"{kind} {name}": _digest_rows([rest, *params.get(f"{kind} {name}", [])])
        for name, kind, *rest in _rows(
            cur,
            "SELECT ROUTINE_NAME, ROUTINE_TYPE, ROUTINE_DEFINITION, DTD_IDENTIFIER, IS_DETERMINISTIC, SQL_DATA_ACCESS, "
            "SECURITY_TYPE, SQL_MODE, ROUTINE_COMMENT, CHARACTER_SET_CLIENT, COLLATION_CONNECTION, DATABASE_COLLATION "
            "FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = %s",
            (database,),
        )
    }


def table_checksum(cur, database: str, table: str, columns: list[str], all_versions: bool = False) -> tuple[int, str]:
    """(exact row count, content checksum) of one table, read in the cursor's transaction;
    ``all_versions``: every row version of a system-versioned table (FOR SYSTEM_TIME ALL)."""
    column_hashes = ",".join(f"COALESCE(MD5(CAST({quote_name(c)} AS BINARY)),'-')" for c in columns)
    row_hash = f"MD5(CONCAT_WS(',',{column_hashes}))"
    cur.execute(
        f"SELECT COUNT(*), COALESCE(SUM(CAST(CONV(LEFT({row_hash},16),16,10) AS UNSIGNED)),0) "
        f"FROM {quote_name(database)}.{quote_name(table)}{' FOR SYSTEM_TIME ALL' if all_versions else ''}"
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
    cur,
    database: str,
    inv: dict[str, Any],
    auto_increment: dict[str, int],
    *,
    default_auto_increment: int | None,
    history: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Any]:
    """The checks dict: inventory plus per-table rows/checksum/AUTO_INCREMENT.

    ``auto_increment`` maps tables to counters; a table with an AUTO_INCREMENT
    column missing from it gets ``default_auto_increment`` (a dump omits the
    clause while the counter is still at its start value, 1). ``history``:
    system-versioned tables whose history is in the dump; their checksum
    covers every row version with its period, marked ``"history": true``.
    The current rows of other versioned tables are checked without their
    period columns, which a restore sets anew.
    """
    tables = {}
    for name, info in sorted(inv["tables"].items()):
        period = info.get("period")
        columns = info["columns"]
        if period and name in history:
            columns = columns + [c for c in period if c not in columns]
        elif period:
            columns = [c for c in columns if c not in period]
        rows, checksum = table_checksum(cur, database, name, columns, all_versions=bool(period) and name in history)
        entry: dict[str, Any] = {"rows": rows, "checksum": checksum}
        if period and name in history:
            entry["history"] = True
        if info["auto_increment"]:
            entry["auto_increment"] = auto_increment.get(name, default_auto_increment)
        if "definition" in info:
            entry.update(engine=info["engine"], definition=info["definition"])
        tables[name] = entry
    return {
        "algorithm": ALGORITHM if isinstance(inv["views"], dict) else "mysql-checks/1",
        "database": inv["database"],
        "tables": tables,
        "views": inv["views"],
        "sequences": inv["sequences"],
        "routines": inv["routines"],
        "triggers": inv["triggers"],
        "events": inv["events"],
    }
