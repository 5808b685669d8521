"""The restore target database: create it, or clear it for a forced restore.

A forced restore drops and re-creates the database - the only clean that
leaves exactly the backup's objects behind - and keeps what belongs to the
database rather than to the backup: owner, connection limit, comment, grants
and ``ALTER DATABASE/ROLE ... IN DATABASE ... SET`` settings.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from core.engines.postgres import checks
from core.engines.tools import last_line
from core.errors import EngineError

# ALTER DATABASE/ROLE SET values of these are stored as SQL lists; re-quoting them would
# change them (pg_dump knows the same list).
_LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
}

_HOLDS_DATA_SQL = f"""
SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c') AND {checks.USER_NS}
               AND {checks.not_extension_member("pg_class", "c.oid")})
    OR EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
               WHERE {checks.USER_NS} AND {checks.not_extension_member("pg_proc", "p.oid")})
    OR EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
               WHERE t.typtype IN ('d', 'e', 'r') AND {checks.USER_NS}
               AND {checks.not_extension_member("pg_type", "t.oid")})
    OR EXISTS (SELECT 1 FROM pg_namespace n WHERE {checks.USER_NS} AND n.nspname <> 'public'
               AND {checks.not_extension_member("pg_namespace", "n.oid")})
    OR EXISTS (SELECT 1 FROM pg_largeobject_metadata)
"""


def holds_data(conn: psycopg.Connection) -> bool:
    # User schemas count too: the dump's CREATE SCHEMA would fail on them.
    return bool(conn.execute(_HOLDS_DATA_SQL).fetchone()[0])


def database_properties(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """What a forced restore keeps of the database it replaces."""
    owner, limit, has_acl, comment, allow = conn.execute(
        "SELECT pg_get_userbyid(d.datdba), d.datconnlimit, d.datacl IS NOT NULL, "
        "shobj_description(d.oid, 'pg_database'), d.datallowconn FROM pg_database d WHERE d.datname = %s",
        (name,),
    ).fetchone()
    grants = conn.execute(
        "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, "
        "a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
        (name,),
    ).fetchall()
    settings = conn.execute(
        "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END, s.setconfig "
        "FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s",
        (name,),
    ).fetchall()
    return {
        "owner": owner,
        "connection_limit": limit,
        "has_acl": has_acl,
        "grants": grants,
        "settings": settings,
        "comment": comment,
        "allow_connections": allow,
    }


def restore_properties_sql(name: str, props: dict[str, Any]) -> list[sql.Composed]:
    db = sql.Identifier(name)
    out = []
    if props["comment"] is not None:
        out.append(sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(props["comment"])))
    if props["has_acl"]:
        # An explicit ACL replaces the default one (PUBLIC may CONNECT/TEMP): start from nothing.
        out.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        for grantee, privilege, grantable in props["grants"]:
            out.append(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),
                    db,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
    for role, config in props["settings"]:
        target = (
            sql.SQL("ALTER DATABASE {}").format(db)
            if role is None
            else sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), db)
        )
        for item in config or []:
            out.append(setting_sql(target, item))
    return out


def setting_sql(target: sql.Composable, item: str) -> sql.Composed:
    """``<target> SET key = value`` for one stored ``key=value`` of setdatabase/rolconfig."""
    key, _, value = item.partition("=")
    # List settings are stored already quoted as SQL; others are one literal.
    listed = key.lower() in _LIST_SETTINGS and value != '""'
    rendered = sql.SQL(value) if listed else sql.Literal("" if value == '""' else value)
    return sql.SQL("{} SET {} = {}").format(target, sql.Identifier(key), rendered)


def create_database_sql(
    conn: psycopg.Connection, name: str, options: dict[str, Any], props: dict[str, Any]
) -> sql.Composed:
    """CREATE DATABASE from template0 with the backup's encoding/locale (``options``)."""
    parts = [sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))]
    if props.get("owner"):
        parts.append(sql.SQL("OWNER {}").format(sql.Identifier(props["owner"])))
    if props.get("connection_limit", -1) != -1:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(props["connection_limit"])))
    if options.get("encoding"):
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(options["encoding"])))
    for key, clause in (("lc_collate", "LC_COLLATE"), ("lc_ctype", "LC_CTYPE")):
        if options.get(key):
            parts.append(sql.SQL(clause + " {}").format(sql.Literal(options[key])))
    provider, locale = options.get("locale_provider"), options.get("locale")
    if provider == "libc" and conn.info.server_version >= 150000:
        # Otherwise the target's template0 decides, and it may use ICU.
        parts.append(sql.SQL("LOCALE_PROVIDER libc"))
    elif provider in ("icu", "builtin") and locale:
        keyword = "ICU_LOCALE" if provider == "icu" else "BUILTIN_LOCALE"
        parts.append(
            sql.SQL("LOCALE_PROVIDER {} {} {}").format(sql.SQL(provider), sql.SQL(keyword), sql.Literal(locale))
        )
    return sql.SQL(" ").join(parts)


def prepare_database(conn: psycopg.Connection, name: str, options: dict[str, Any], has_data: bool, where: str) -> bool:
    """Make database ``name`` exist and be empty; True if it was created from nothing.

    ``conn`` is an autocommit connection to another (maintenance) database;
    ``has_data`` is the caller's ``has_data()`` of the target.
    """
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    if exists and not has_data:
        return False  # an empty database the operator prepared: keep it as it is
    props: dict[str, Any] = {}
    if exists:
        props = database_properties(conn, name)
        try:
            drop_database(conn, name)
        except psycopg.Error as exc:
            raise EngineError(
                f"cannot clear {where} for the forced restore: {last_line(str(exc))}; "
                "connect as the database owner or a superuser"
            ) from None
    create_database(conn, name, options, props, where)
    for statement in restore_properties_sql(name, props) if props else []:
        conn.execute(statement)
    return not exists


def create_database(
    conn: psycopg.Connection, name: str, options: dict[str, Any], props: dict[str, Any], where: str
) -> None:
    """CREATE DATABASE ``name`` (see ``create_database_sql``); failures name the remedy."""
    try:
        conn.execute(create_database_sql(conn, name, options, props))
    except psycopg.Error as exc:
        text = last_line(str(exc))
        remedy = (
            "create the database yourself (empty, with a locale this server has) and restore again"
            if "locale" in text.lower() or "collation" in text.lower()
            else "connect as a user with CREATEDB, or create the empty database yourself"
        )
        raise EngineError(f"cannot create the database of {where}: {text}; {remedy}") from None


def sibling_name(database: str, kind: str, tag: str) -> str:
    """``<database>_gdr[_old]_<tag>``, the database name cut (on a character boundary) so the
    whole name fits PostgreSQL's 63-byte limit (a longer name would be truncated silently)."""
    suffix = f"_gdr_{tag}" if kind == "staged" else f"_gdr_{kind}_{tag}"
    room = 63 - len(suffix.encode())
    prefix = database.encode()[:room].decode("utf-8", "ignore")
    return prefix + suffix


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def may_swap(conn: psycopg.Connection, name: str) -> bool:
    """True if the current user may create a sibling of database ``name`` and rename it into
    place: a superuser, or CREATEDB and (``name`` missing, or owned by a role we are a member of)."""
    row = conn.execute(
        "SELECT r.rolsuper, r.rolcreatedb, (SELECT pg_has_role(current_user, d.datdba, 'MEMBER') "
        "FROM pg_database d WHERE d.datname = %s) FROM pg_roles r WHERE r.rolname = current_user",
        (name,),
    ).fetchone()
    superuser, createdb, owns = row
    return bool(superuser or (createdb and owns is not False))


def swap_properties_sql(name: str, props: dict[str, Any]) -> list[sql.Composed]:
    """What a swapped-in database takes over from the one it replaces (beyond its owner,
    set at CREATE DATABASE): comment, grants, settings, connection limit, allowing connections."""
    db = sql.Identifier(name)
    out = restore_properties_sql(name, props)
    if props.get("connection_limit", -1) != -1:
        out.append(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(db, sql.Literal(props["connection_limit"])))
    if props.get("allow_connections") is False:
        out.append(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(db))
    return out


def apply_recorded_properties(conn: psycopg.Connection, name: str, props: dict[str, Any], shown: str) -> list[str]:
    """Give database ``name`` (a new one, restored as ``shown``) the properties recorded at
    backup time: owner, comment, grants, settings, connection limit. Returns one note per
    property it could not set (a role missing on this server, a privilege we lack)."""
    props = dict(props, grants=[tuple(g) for g in props.get("grants", [])])
    props["settings"] = [tuple(s) for s in props.get("settings", [])]
    steps = list(zip(swap_properties_sql(shown, props), swap_properties_sql(name, props), strict=True))
    if props.get("owner"):
        alter = "ALTER DATABASE {} OWNER TO {}"
        owner = sql.Identifier(props["owner"])
        steps.insert(
            0,
            (sql.SQL(alter).format(sql.Identifier(shown), owner), sql.SQL(alter).format(sql.Identifier(name), owner)),
        )
    notes = []
    for text, statement in steps:
        try:
            with conn.transaction():
                conn.execute(statement)
        except psycopg.Error as exc:
            notes.append(f"database {shown}: {text.as_string(conn)} not restored ({last_line(str(exc))})")
    return notes


def rename_database(conn: psycopg.Connection, old: str, new: str, attempts: int = 20) -> None:
    """ALTER DATABASE ... RENAME, disconnecting its sessions first (retried: a client may
    reconnect between the two)."""
    statement = sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    for attempt in range(attempts):
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (old,),
        )
        try:
            conn.execute(statement)
            return
        except psycopg.errors.ObjectInUse:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def drop_database(conn: psycopg.Connection, name: str) -> None:
    """Drop ``name``, disconnecting its sessions (an application may still be connected)."""
    if conn.info.server_version >= 130000:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        return
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def unusable_roles(conn: psycopg.Connection, roles: list[str]) -> list[str]:
    """Roles the dump names that do not exist here, or that the current user may not act as."""
    if not roles:
        return []
    rows = conn.execute(
        # CASE: pg_has_role raises for a role that does not exist, so test existence first.
        "SELECT r, CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) "
        "THEN pg_has_role(current_user, r, 'MEMBER') ELSE false END FROM unnest(%s::text[]) AS r",
        (roles,),
    ).fetchall()
    return sorted(r for r, usable in rows if not usable)
