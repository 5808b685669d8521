"""File-tree positions: the time the walk started (a tree has no log; its chain is its backups)."""

from __future__ import annotations

from typing import Any


def text(position: dict[str, Any]) -> str:
    return f"snapshot {position['snapshot_time']}" if "snapshot_time" in position else ""


def order(position: dict[str, Any]) -> tuple:
    return (str(position.get("snapshot_time", "")),)


def log_start(position: dict[str, Any]) -> dict[str, Any] | None:
    return None
