"""Physical full backups: the whole cluster streamed from ``pg_basebackup``.

``pg_basebackup -D - -Ft -X fetch -c fast`` writes one tar (``base.tar``) to
stdout: the data directory, the WAL from the backup's start to its end
(``-X fetch``: a tar on stdout cannot take ``-X stream``), and the server's
backup manifest. The vault compresses and encrypts it as any stream. The
backup is consistent on its own (restored with no log it stops at its end
LSN), and it is the base a WAL replay starts from: position ``{"lsn": start,
"timeline", "physical": true, "end_lsn", "end_time"}``.

Before the backup the capture's replication slot is made to exist: it holds
every WAL segment from the backup's start on the server until the capture has
shipped it, so the chain can start at this backup (and ``-X fetch`` cannot miss
a segment removed during a long backup).

Checks: a physical copy has no per-table instant to count rows at (the copy is
consistent only at its end LSN, after WAL replay), so it records what proves
the restored cluster is this cluster: the system identifier and the major
version.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import make_conninfo

from core.engines.base import BackupResult, StreamSink
from core.engines.tools import last_line, stream_into
from core.errors import EngineError, LogGapError, redact

if TYPE_CHECKING:
    from core.engines.postgres.engine import PostgresEngine

BASE_STREAM = "base.tar"


def server_tool(name: str, major: int) -> str:
    """A server-side tool (``pg_ctl``, ``postgres``) of exactly ``major``: a physical copy starts
    only under the major version that wrote it. ``GENESIS_DR_PG_BINDIR`` wins when it is that version."""
    candidates = []
    if os.environ.get("GENESIS_DR_PG_BINDIR"):
        candidates.append(Path(os.environ["GENESIS_DR_PG_BINDIR"]) / name)
    candidates.append(Path(f"/usr/lib/postgresql/{major}/bin") / name)
    if shutil.which(name):
        candidates.append(Path(shutil.which(name)))
    from core.engines.postgres.engine import tool_version

    for cand in candidates:
        if os.access(cand, os.X_OK) and int(tool_version(str(cand)).split(".")[0]) == major:
            return str(cand)
    raise EngineError(
        f"{name} of PostgreSQL {major} not found; install the PostgreSQL {major} server package "
        "(a physical backup starts only under the major version that wrote it) or set GENESIS_DR_PG_BINDIR"
    )


def replication_conninfo(engine: PostgresEngine, application: str) -> str:
    """A conninfo for the replication tools (``-d``); the password travels in PGPASSWORD only."""
    c = engine.config
    fields: dict[str, Any] = dict(host=c.host, port=c.port, user=c.user, application_name=application)
    fields.update(engine._tls_params())
    return make_conninfo("", **fields)


def may_replicate(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user").fetchone()
    return bool(row and row[0])


def slot_state(conn: psycopg.Connection, slot: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT slot_type, restart_lsn::text, wal_status, active_pid FROM pg_replication_slots WHERE slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    return {"type": row[0], "restart_lsn": row[1], "wal_status": row[2], "active_pid": row[3]}


def ensure_slot(conn: psycopg.Connection, slot: str, where: str) -> bool:
    """Make the physical slot ``slot`` exist, reserving WAL from now; True if it was created."""
    state = slot_state(conn, slot)
    if state is not None:
        if state["type"] != "physical":
            raise EngineError(
                f"replication slot '{slot}' on {where} is a {state['type']} slot; WAL capture needs a physical one "
                "- set slot in the stack file to another name"
            )
        if state["wal_status"] == "lost":
            raise LogGapError(
                f"replication slot '{slot}' on {where} lost WAL it should have kept (max_slot_wal_keep_size): the "
                f"WAL after {state['restart_lsn']} is gone from the server; drop the slot "
                f"(SELECT pg_drop_replication_slot('{slot}')), take a new full backup and restart capture"
            )
        return False
    try:
        conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
    except psycopg.errors.DuplicateObject:
        return False  # created meanwhile by a concurrent backup or capture
    except psycopg.Error as exc:
        raise EngineError(
            f"cannot create replication slot '{slot}' on {where}: {last_line(str(exc))}; "
            "log in as a role with REPLICATION (or a superuser) and check max_replication_slots"
        ) from None
    return True


def physical_possible(conn: psycopg.Connection, slot: str) -> bool:
    """``backup_method: auto`` takes a physical full once the source is set up for WAL capture:
    the login may replicate, WAL is kept for replicas, and the capture's slot exists (the first
    capture creates it). Until then auto stays logical, as before this option existed."""
    level = conn.execute("SELECT current_setting('wal_level')").fetchone()[0]
    if level not in ("replica", "logical") or not may_replicate(conn):
        return False
    state = slot_state(conn, slot)
    return state is not None and state["type"] == "physical"


def backup_physical(engine: PostgresEngine, sink: StreamSink) -> BackupResult:
    """Stream ``pg_basebackup`` into ``base.tar``; see the module docstring."""
    from core.engines.postgres.engine import find_tool, tool_version

    pg_basebackup = find_tool("pg_basebackup")
    version = tool_version(pg_basebackup)
    where = engine.describe()
    with engine._connect() as conn:
        server_version, sysid, seg_size = conn.execute(
            "SELECT current_setting('server_version'), (SELECT system_identifier::text FROM pg_control_system()), "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
        ).fetchone()
        server_version = server_version.split()[0]
        if int(version.split(".")[0]) < int(server_version.split(".")[0]):
            raise EngineError(
                f"pg_basebackup {version} cannot back up {where} (server {server_version}); install the "
                "server's major version of the client or set GENESIS_DR_PG_BINDIR"
            )
        if not may_replicate(conn):
            raise EngineError(
                f"a physical backup of {where} needs a login with REPLICATION (or a superuser): "
                f"ALTER ROLE {engine.config.user} REPLICATION, or set backup_method: logical"
            )
        ensure_slot(conn, engine.config.slot, where)
    argv = [
        pg_basebackup,
        "-D",
        "-",
        "-Ft",
        "-X",
        "fetch",
        "--checkpoint=fast",  # a spread checkpoint would hold the backup for minutes
        "--verbose",  # prints the start and end points we record
        "--no-password",
        "-d",
        replication_conninfo(engine, "genesis-dr-basebackup"),
    ]
    returncode, stderr = stream_into(sink, BASE_STREAM, argv, env=engine._tool_env())
    text = redact(stderr, engine.config.secrets())
    if returncode != 0:
        if "pg_hba.conf" in text and "replication" in text:
            raise EngineError(
                f"pg_basebackup of {where} was refused: {last_line(text)}; allow replication connections for "
                f"{engine.config.user} in the server's pg_hba.conf, or set backup_method: logical"
            )
        raise engine._tool_error("pg_basebackup", text, "of")
    start = re.search(r"write-ahead log start point: (\S+) on timeline (\d+)", text)
    end = re.search(r"write-ahead log end point: (\S+)", text)
    if not start or not end:
        raise EngineError(f"pg_basebackup of {where} did not print its WAL start and end points; check its version")
    with engine._connect() as conn:
        # Every commit below end_lsn happened before this instant: the backup's own recovery point.
        end_time = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    from core.engines.postgres.walfiles import iso_z

    position = {
        "lsn": start.group(1),
        "timeline": int(start.group(2)),
        "physical": True,
        "end_lsn": end.group(1),
        "end_time": iso_z(end_time),
        "server_version": server_version,
        "wal_segment_size": int(seg_size),
    }
    return BackupResult(
        position=position,
        checks={"cluster": {"system_identifier": sysid, "major": int(server_version.split(".")[0])}},
        tool_versions={"pg_basebackup": version, "server": server_version},
    )


def cluster_checks(conn: psycopg.Connection) -> dict[str, Any]:
    sysid, version = conn.execute(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), current_setting('server_version')"
    ).fetchone()
    return {"system_identifier": sysid, "major": int(version.split()[0].split(".")[0])}
