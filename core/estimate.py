"""How many plaintext bytes a full backup of a source will write, roughly: the total a progress bar
counts towards (percent and time left). None when the source cannot say cheaply; the display then
shows bytes and rate only.

An estimate is a hint, never a check: it is asked before the backup starts, costs one query (or a
stat walk of at most ``FILES_BUDGET_S``), and a source that cannot answer gets None here and
fails, if it is down, in the backup itself with the engine's own one-line error. Backups on a base
(differential, incremental) write what changed since, which no source reports: None.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from core.engines.base import Engine

FILES_BUDGET_S = 1.0  # a tree too large to stat in this time is shown without a total
TAR_BLOCK = 512
# Per entry: its tar header, a PAX header (header and data block: sub-second times), its tree.jsonl line.
ENTRY_BYTES = 3 * TAR_BLOCK + 256


def estimate_bytes(engine: Engine, backup_type: str) -> int | None:
    """The expected plaintext size of a ``backup_type`` backup of ``engine``'s source, or None."""
    if backup_type != "full":
        return None
    measure = _MEASURES.get(engine.kind)
    if measure is None:
        return None
    try:
        size = measure(engine)
    except Exception:  # a hint only: the backup that follows reports why the source does not answer
        return None
    return int(size) if size else None


def _postgres(engine) -> int | None:
    # A physical backup copies the cluster's files; a dump writes rows, roughly the tables' heap (no indexes).
    if engine._physical():
        query = "SELECT sum(pg_database_size(datname)) FROM pg_database WHERE datallowconn"
    else:
        query = (
            "SELECT sum(pg_table_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%'"
        )
    with engine._connect() as conn:
        return conn.execute(query).fetchone()[0]


def _mysql(engine) -> int | None:
    with engine._session(None, "estimating the size of the dump") as (_, cur):
        cur.execute(
            "SELECT SUM(DATA_LENGTH) FROM information_schema.TABLES WHERE TABLE_SCHEMA = %s",
            (engine.config.database,),
        )
        return cur.fetchone()[0]


def _redis(engine) -> int | None:
    # The dataset's memory: an RDB (compressed) is smaller, so the bar runs ahead of the end at worst.
    client = engine._client()
    try:
        info = client.info("memory")
    finally:
        client.close()
    return info.get("used_memory_dataset") or info.get("used_memory")


def _files(engine) -> int | None:
    """The tar's size (each regular file rounded up to tar blocks, the headers of each entry) and the tree's."""
    root = Path(engine.config.root)
    deadline = time.monotonic() + FILES_BUDGET_S
    total = 0
    pending = [root / p for p in engine.config.paths]
    while pending:
        if time.monotonic() > deadline:
            return None
        path = pending.pop()
        try:
            entries = list(os.scandir(path)) if path.is_dir() and not path.is_symlink() else None
        except OSError:
            continue
        if entries is None:
            total += _entry_size(path.lstat().st_size if path.exists() else 0)
            continue
        total += ENTRY_BYTES
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            else:
                size = entry.stat(follow_symlinks=False).st_size if entry.is_file(follow_symlinks=False) else 0
                total += _entry_size(size)
    return total


def _entry_size(size: int) -> int:
    return ENTRY_BYTES + -(-size // TAR_BLOCK) * TAR_BLOCK


_MEASURES = {"postgres": _postgres, "mysql": _mysql, "redis": _redis, "files": _files}
