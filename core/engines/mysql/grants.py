"""Privileges granted on one MariaDB/MySQL database: recorded at backup, re-granted on restore.

A dump of one database carries its objects but not who may use them: the
grants live in the server's ``mysql`` schema. Without them a restored view or
routine whose DEFINER exists but has no rights on the restored database fails
on first use, and the application accounts cannot read their own tables. We
record the database-, table-, column- and routine-level grants naming the
database exactly (wildcard patterns such as ``app\\_%`` are server policy, not
part of the database) as a small JSON stream, and grant them again on the
target database when the account exists there. Global grants (``*.*``) and the
accounts themselves belong to the server and are never touched.

Whatever cannot be granted again (the account is missing, the restoring user
may not grant) becomes a restore note, one per grant.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pymysql

from core.engines.mysql.dump import quote_name

STREAM = "grants.json"
FORMAT = 1

# Privilege names as the server spells them ("SELECT", "SHOW VIEW", "DELETE HISTORY"): never SQL.
_PRIVILEGE = re.compile(r"[A-Z][A-Z ]*")
_GRANTEE = re.compile(r"'((?:[^']|'')*)'@'((?:[^']|'')*)'")


def _grantee(text: str) -> tuple[str, str] | None:
    found = _GRANTEE.fullmatch(text)
    return (found.group(1).replace("''", "'"), found.group(2).replace("''", "'")) if found else None


def _rows(cur, sql: str, args: tuple) -> list[tuple]:
    try:
        cur.execute(sql, args)
    except pymysql.err.MySQLError as exc:
        if exc.args and exc.args[0] in (1142, 1227, 1044):  # may not read the grant tables: nothing to record
            return []
        raise
    return list(cur.fetchall())


def collect(cur, database: str) -> dict[str, Any]:
    """The grants on ``database`` visible to this session, as a JSON-able dict."""
    grants: list[dict[str, Any]] = []

    def add(grantee: tuple[str, str] | None, on: dict[str, str], privilege: str, grantable: bool) -> None:
        if grantee is None or not _PRIVILEGE.fullmatch(privilege):
            return
        grants.append({"user": grantee[0], "host": grantee[1], **on, "privilege": privilege, "grantable": grantable})

    for grantee, privilege, grantable in _rows(
        cur,
        "SELECT GRANTEE, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.SCHEMA_PRIVILEGES WHERE TABLE_SCHEMA = %s",
        (database,),
    ):
        add(_grantee(grantee), {"level": "database"}, privilege, grantable == "YES")
    for grantee, table, privilege, grantable in _rows(
        cur,
        "SELECT GRANTEE, TABLE_NAME, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.TABLE_PRIVILEGES "
        "WHERE TABLE_SCHEMA = %s",
        (database,),
    ):
        add(_grantee(grantee), {"level": "table", "table": table}, privilege, grantable == "YES")
    for grantee, table, column, privilege, grantable in _rows(
        cur,
        "SELECT GRANTEE, TABLE_NAME, COLUMN_NAME, PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.COLUMN_PRIVILEGES "
        "WHERE TABLE_SCHEMA = %s",
        (database,),
    ):
        add(_grantee(grantee), {"level": "column", "table": table, "column": column}, privilege, grantable == "YES")
    for user, host, routine, kind, privileges in _rows(
        cur, "SELECT User, Host, Routine_name, Routine_type, Proc_priv FROM mysql.procs_priv WHERE Db = %s", (database,)
    ):
        for privilege in str(privileges).split(","):
            privilege = privilege.strip().upper()
            if privilege == "GRANT":
                continue  # shown as grantable on the others
            grantable = "grant" in str(privileges).lower()
            add((user, host), {"level": "routine", "routine": routine, "kind": str(kind).upper()}, privilege, grantable)
    grants.sort(key=lambda g: json.dumps(g, sort_keys=True))
    return {"format": FORMAT, "grants": grants}


def encode(grants: dict[str, Any]) -> bytes:
    return json.dumps(grants, sort_keys=True).encode()


def _object(g: dict[str, Any], database: str) -> str | None:
    """The ON clause of a grant, for ``database``; None if not understood."""
    db = quote_name(database)
    level = g.get("level")
    if level == "database":
        return f"{db}.*"
    if level in ("table", "column"):
        return f"{db}.{quote_name(str(g.get('table')))}"
    if level == "routine" and g.get("kind") in ("PROCEDURE", "FUNCTION", "PACKAGE", "PACKAGE BODY"):
        return f"{g['kind']} {db}.{quote_name(str(g.get('routine')))}"
    return None


def _privilege(g: dict[str, Any]) -> str | None:
    privilege = str(g.get("privilege", ""))
    if not _PRIVILEGE.fullmatch(privilege):
        return None
    return f"{privilege} ({quote_name(str(g.get('column')))})" if g.get("level") == "column" else privilege


def apply(cur, data: bytes, database: str, accounts: set[tuple[str, str]]) -> list[str]:
    """Grant ``data``'s privileges on ``database`` again, one GRANT per account and object;
    returns a note per GRANT not restored."""
    try:
        recorded = json.loads(data)
    except ValueError:
        return ["the backup's grants stream is not valid JSON; no grants were restored"]
    if recorded.get("format") != FORMAT:
        return [
            f"the backup's grants use format {recorded.get('format')!r}; no grants were restored (upgrade genesis-dr)"
        ]
    groups: dict[tuple[str, str, str, bool], list[str]] = {}
    notes = []
    for g in recorded.get("grants", []):
        on, privilege = _object(g, database), _privilege(g)
        if on is None or privilege is None:
            notes.append(f"grant {g!r} not restored: not understood by this genesis-dr version")
            continue
        key = (str(g.get("user")), str(g.get("host")), on, bool(g.get("grantable")))
        groups.setdefault(key, []).append(privilege)
    for (user, host, on, grantable), privileges in sorted(groups.items()):
        what = f"grant of {', '.join(privileges)} on {on} to '{user}'@'{host}'"
        if (user, host) not in accounts:
            notes.append(f"{what} not restored: the account does not exist on the target")
            continue
        account = f"{cur.connection.escape(user)}@{cur.connection.escape(host)}"
        try:
            cur.execute(
                f"GRANT {', '.join(privileges)} ON {on} TO {account}{' WITH GRANT OPTION' if grantable else ''}"
            )
        except pymysql.err.MySQLError as exc:
            detail = exc.args[-1] if exc.args else exc
            notes.append(f"{what} not restored: {detail}")
    return notes
