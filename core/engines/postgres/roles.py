"""Roles, owners and grants: what a database's objects need from its cluster.

Backup
    ``read_globals`` records, as the ``globals.json`` stream, the roles the
    database *uses*: every role that owns one of its objects or is granted a
    privilege on one (the roles the dump names), every role with ``ALTER ROLE
    ... IN DATABASE`` settings for it, and every role that is a member of one
    of those, directly or through other roles (the login roles that use the
    privileges). Roles of other databases are not recorded: a restore
    recreates what this database needs, never a whole cluster. For each role:
    its attributes, comment, ``ALTER ROLE ... SET`` settings and memberships
    among the recorded roles; the password hash only if the source config
    asks (``role_passwords``, reading ``pg_authid`` needs a superuser), like
    ``pg_dumpall --globals-only --no-role-passwords`` otherwise.

    ``privileges`` records every object's owner and grants (in the same
    stream): the reference the restore compares with, so that nothing it did
    not restore as it was goes unreported. The stream also holds the source
    database's own properties (owner, comment, grants, settings, connection
    limit), which a database the restore creates takes over.

Restore
    ``create_missing_roles`` creates recorded roles the target server lacks
    (when the target config allows, ``create_roles``), with their attributes
    (except SUPERUSER, REPLICATION and BYPASSRLS, which a restore never
    grants), settings and memberships; an existing role is never altered. Everything
    else is reported by ``privilege_notes``: an owner replaced, a grant
    missing or added, a role not created, a password not restored.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import Connection, sql

from core.engines.postgres import target
from core.engines.postgres.checks import USER_NS, not_extension_member
from core.engines.tools import last_line
from core.errors import EngineError

GLOBALS_STREAM = "globals.json"
GLOBALS_FORMAT = 1

_ROLES_SQL = """
WITH RECURSIVE used(oid) AS (
    SELECT oid FROM pg_roles WHERE rolname = ANY(%(names)s)
    UNION SELECT s.setrole FROM pg_db_role_setting s
        WHERE s.setrole <> 0 AND s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION SELECT m.member FROM pg_auth_members m JOIN used u ON m.roleid = u.oid
)
SELECT r.oid, r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
       r.rolreplication, r.rolbypassrls, r.rolconnlimit, r.rolvaliduntil::text,
       shobj_description(r.oid, 'pg_authid'), r.rolconfig
FROM pg_roles r WHERE r.oid IN (SELECT oid FROM used) AND r.rolname NOT LIKE 'pg\\_%%'
ORDER BY r.rolname
"""

_ATTRIBUTES = ("superuser", "inherit", "createrole", "createdb", "login", "replication", "bypassrls")


def read_globals(conn: Connection, referenced: list[str], with_passwords: bool) -> dict[str, Any]:
    """The roles this database uses (see the module docstring), as a JSON-ready dict."""
    rows = conn.execute(_ROLES_SQL, {"names": referenced}).fetchall()
    oids = [row[0] for row in rows]
    roles = []
    for _oid, name, *flags, limit, valid_until, comment, config in rows:
        role: dict[str, Any] = dict(zip(_ATTRIBUTES, flags, strict=True))
        role.update(name=name, connection_limit=limit, valid_until=valid_until, comment=comment, settings=config or [])
        roles.append(role)
    memberships = [
        {"role": role, "member": member, "admin_option": admin}
        for role, member, admin in conn.execute(
            "SELECT pg_get_userbyid(roleid), pg_get_userbyid(member), admin_option FROM pg_auth_members "
            "WHERE roleid = ANY(%s) AND member = ANY(%s) ORDER BY 1, 2",
            (oids, oids),
        ).fetchall()
    ]
    if with_passwords:
        try:
            with conn.transaction():  # a savepoint inside the backup's transaction
                hashes = dict(
                    conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE oid = ANY(%s)", (oids,)).fetchall()
                )
        except psycopg.errors.InsufficientPrivilege:
            raise EngineError(
                "role_passwords is set but the backup user may not read password hashes (pg_authid); "
                "back up as a superuser, or set role_passwords: false"
            ) from None
        for role in roles:
            role["password"] = hashes.get(role["name"])
    database = conn.execute("SELECT current_database()").fetchone()[0]
    return {
        "format": GLOBALS_FORMAT,
        "roles": roles,
        "memberships": memberships,
        "passwords": with_passwords,
        # Restored onto a database the restore creates; an existing target keeps its own.
        "database": target.database_properties(conn, database),
    }


def encode_globals(globals_: dict[str, Any]) -> bytes:
    return json.dumps(globals_, sort_keys=True, indent=1).encode()


def decode_globals(data: bytes) -> dict[str, Any]:
    return json.loads(data.decode())


# Never given to a role a restore creates: a restore must not mint superusers (one without a
# password, on a server whose pg_hba trusts local logins, is a hole). Each is a note instead.
_PRIVILEGED = ("superuser", "replication", "bypassrls")


def _create_role_sql(role: dict[str, Any]) -> sql.Composed:
    options = [sql.SQL(("" if role[a] and a not in _PRIVILEGED else "NO") + a.upper()) for a in _ATTRIBUTES]
    if role.get("connection_limit", -1) != -1:
        options.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(role["connection_limit"])))
    if role.get("valid_until"):
        options.append(sql.SQL("VALID UNTIL {}").format(sql.Literal(role["valid_until"])))
    if role.get("password"):
        options.append(sql.SQL("PASSWORD {}").format(sql.Literal(role["password"])))
    return sql.SQL("CREATE ROLE {} WITH {}").format(sql.Identifier(role["name"]), sql.SQL(" ").join(options))


def existing_roles(conn: Connection, names: list[str]) -> set[str]:
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,)).fetchall()
    return {r[0] for r in rows}


def create_missing_roles(conn: Connection, globals_: dict[str, Any], allowed: bool) -> tuple[list[str], list[str]]:
    """Create the recorded roles this server lacks; returns (created role names, notes).

    ``conn`` is an autocommit connection to the target server. Existing roles are never
    altered; a role that cannot be created is a note (and so is everything that needed it).
    """
    roles = globals_.get("roles", [])
    present = existing_roles(conn, [r["name"] for r in roles])
    created, notes = [], []
    for role in roles:
        name = role["name"]
        if name in present:
            continue
        if not allowed:
            notes.append(f"role {name} does not exist on the target and was not created (create_roles is off)")
            continue
        try:
            with conn.transaction():
                conn.execute(_create_role_sql(role))
                if role.get("comment") is not None:
                    conn.execute(
                        sql.SQL("COMMENT ON ROLE {} IS {}").format(sql.Identifier(name), sql.Literal(role["comment"]))
                    )
                for item in role.get("settings") or []:
                    conn.execute(target.setting_sql(sql.SQL("ALTER ROLE {}").format(sql.Identifier(name)), item))
        except psycopg.Error as exc:
            notes.append(f"role {name} could not be created on the target: {last_line(str(exc))}")
            continue
        created.append(name)
        withheld = [a.upper() for a in _PRIVILEGED if role.get(a)]
        if withheld:
            notes.append(
                f"role {name} was created without {', '.join(withheld)} (never granted by a restore); "
                "grant it with ALTER ROLE if it is still wanted"
            )
        if role.get("login") and not role.get("password"):
            why = "the backup holds no password hashes (role_passwords is off)"
            if globals_.get("passwords"):
                why = "it had none"
            notes.append(f"role {name} was created without a password ({why}); set one with ALTER ROLE")
    exists = present | set(created)
    for grant in globals_.get("memberships", []):
        role, member = grant["role"], grant["member"]
        if role not in created and member not in created:
            continue  # both existed: never alter existing roles
        if role not in exists or member not in exists:
            notes.append(f"membership of role {member} in role {role} not restored (a role is missing)")
            continue
        try:
            conn.execute(
                sql.SQL("GRANT {} TO {}{}").format(
                    sql.Identifier(role),
                    sql.Identifier(member),
                    sql.SQL(" WITH ADMIN OPTION" if grant.get("admin_option") else ""),
                )
            )
        except psycopg.Error as exc:
            notes.append(f"membership of role {member} in role {role} not restored: {last_line(str(exc))}")
    return created, notes


# ------------------------------------------------------------------ owners and grants

_RELATION_KIND = (
    "CASE c.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' "
    "WHEN 'f' THEN 'foreign table' ELSE 'table' END"
)

# (object, owner oid, effective ACL); a NULL ACL is the kind's default (acldefault).
_OBJECTS_SQL = f"""
SELECT {_RELATION_KIND} || ' ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relowner,
       coalesce(c.relacl, acldefault((CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char", c.relowner))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {USER_NS} AND {not_extension_member("pg_class", "c.oid")}
UNION ALL
SELECT 'column ' || quote_ident(n.nspname) || '.' || quote_ident(c.relname) || '.' || quote_ident(a.attname),
       c.relowner, a.attacl
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped AND {USER_NS}
UNION ALL
SELECT 'schema ' || quote_ident(n.nspname), n.nspowner, coalesce(n.nspacl, acldefault('n', n.nspowner))
FROM pg_namespace n WHERE {USER_NS} AND {not_extension_member("pg_namespace", "n.oid")}
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure ' WHEN 'a' THEN 'aggregate ' ELSE 'function ' END
       || p.oid::regprocedure::text, p.proowner, coalesce(p.proacl, acldefault('f', p.proowner))
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {USER_NS} AND {not_extension_member("pg_proc", "p.oid")}
UNION ALL
SELECT 'type ' || format_type(t.oid, NULL), t.typowner, coalesce(t.typacl, acldefault('T', t.typowner))
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {USER_NS} AND {not_extension_member("pg_type", "t.oid")}
  AND (t.typtype IN ('d', 'e', 'r') OR (t.typtype = 'c' AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c'))
UNION ALL
SELECT 'large object ' || l.oid::text, l.lomowner, coalesce(l.lomacl, acldefault('L', l.lomowner))
FROM pg_largeobject_metadata l
UNION ALL
SELECT 'default privileges of role ' || pg_get_userbyid(d.defaclrole)
       || coalesce(' in schema ' || quote_ident(n.nspname), '') || ' on '
       || CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN 'functions'
                               WHEN 'T' THEN 'types' ELSE 'schemas' END,
       d.defaclrole, d.defaclacl
FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace
"""

_PRIVILEGES_SQL = f"""
SELECT o.object, pg_get_userbyid(o.owner),
       coalesce(array_agg(CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
                          || ':' || a.privilege_type || CASE WHEN a.is_grantable THEN '*' ELSE '' END
                          ORDER BY 1) FILTER (WHERE a.grantee IS NOT NULL), '{{}}')
FROM ({_OBJECTS_SQL}) AS o(object, owner, acl)
LEFT JOIN LATERAL aclexplode(o.acl) a
     ON a.grantee <> o.owner OR o.object LIKE 'default privileges %%'
GROUP BY o.object, o.owner
"""


def privileges(conn: Connection) -> dict[str, list[Any]]:
    """{object: [owner, ["grantee:PRIVILEGE" ("*": with grant option), ...]]}.

    The owner's own privileges follow from ownership and are left out (an owner
    that changed is reported once, as the owner).
    """
    with conn.transaction():  # names qualified the same way on every server
        conn.execute("SELECT set_config('search_path', 'pg_catalog', true)")
        rows = conn.execute(_PRIVILEGES_SQL).fetchall()
    return {obj: [owner, sorted(grants)] for obj, owner, grants in rows}


def _grant_text(entry: str) -> tuple[str, str]:
    grantee, _, privilege = entry.rpartition(":")
    grantable = privilege.endswith("*")
    return grantee, privilege.rstrip("*") + (" with grant option" if grantable else "")


def privilege_notes(
    recorded: dict[str, list[Any]],
    actual: dict[str, list[Any]],
    existing: set[str],
    unusable: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """One line per owner or grant that is not as recorded at backup time.

    ``existing``: roles that exist on the target; ``unusable``: roles the restoring
    user may not act as (to say why something is missing).
    """

    def why(role: str) -> str:
        if role == "PUBLIC":
            return ""
        if role not in existing:
            return f" (role {role} does not exist on the target)"
        if role in unusable:
            return f" (the restoring user may not act as role {role})"
        return ""

    notes = []
    for obj in sorted(recorded):
        owner, grants = recorded[obj]
        now = actual.get(obj)
        if now is None and obj.startswith(("column ", "default privileges ")):
            now = [owner, []]  # listed only while they hold grants (owned by the table / the role itself)
        if now is None:
            notes.append(f"{obj}: not restored")
            continue
        now_owner, now_grants = now
        if now_owner != owner and not obj.startswith("column "):  # a column's owner is its table's
            notes.append(f"{obj}: owned by {now_owner} instead of {owner}{why(owner)}")
        for entry in sorted(set(grants) - set(now_grants)):
            grantee, privilege = _grant_text(entry)
            # A grant needs its grantee to exist, and whoever grants to act as the object's owner.
            missing = grantee != "PUBLIC" and grantee not in existing
            notes.append(f"{obj}: {privilege} to {grantee} not restored{why(grantee) if missing else why(owner)}")
        for entry in sorted(set(now_grants) - set(grants)):
            grantee, privilege = _grant_text(entry)
            notes.append(f"{obj}: {privilege} to {grantee} granted on the target but not in the backup")
    return notes
