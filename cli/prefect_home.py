"""Prefect's home directory and SQLite database, private to their owner.

Prefect creates ``~/.prefect`` with the umask (0755) and ``prefect.db`` 0644, and
the database holds every block: source passwords, and the local API's own key
for block data. ``genesis-dr`` makes the home 0700 before Prefect is imported
(so the database is never readable through it) and the database files 0600
after each command. Plain file-system work: no Prefect import (the fast path
stays fast).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

_DB_SUFFIXES = ("", "-wal", "-shm", "-journal")


def prefect_home() -> Path:
    """PREFECT_HOME, as Prefect resolves it by default (``~/.prefect``)."""
    return Path(os.path.expanduser(os.environ.get("PREFECT_HOME") or "~/.prefect"))


def database_path(home: Path) -> Path | None:
    """The SQLite file Prefect uses by default (None for a server on PostgreSQL)."""
    url = os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or os.environ.get(
        "PREFECT_SERVER_DATABASE_CONNECTION_URL"
    )
    if not url:
        return home / "prefect.db"
    if not url.startswith("sqlite"):
        return None
    path = unquote(urlparse(url).path)
    return Path(path[1:]) if len(path) > 1 else None  # sqlite:///rel.db is relative, sqlite:////abs.db absolute


def _owned(path: Path) -> bool:
    try:
        return path.stat().st_uid == os.geteuid()
    except OSError:
        return False


def secure_prefect_home() -> list[str]:
    """Create the home 0700 if absent, tighten it and its database to 0700/0600; returns what was changed.

    Only paths owned by this user are touched (a shared or root-owned home is the
    administrator's business). Never raises: a command must not fail over this.
    """
    changed: list[str] = []
    home = prefect_home()
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _owned(home) and home.stat().st_mode & 0o077:
            home.chmod(0o700)
            changed.append(str(home))
        db = database_path(home)
        for suffix in _DB_SUFFIXES if db else ():
            path = db.with_name(db.name + suffix)
            if _owned(path) and not path.is_symlink() and path.stat().st_mode & 0o077:
                path.chmod(0o600)
                changed.append(str(path))
    except OSError:
        pass
    return changed
