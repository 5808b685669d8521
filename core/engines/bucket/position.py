"""Bucket positions: when the listing the backup took started, and a digest of that listing.

A bucket has no log: its chain is its backups, ordered by listing time.
"""

from __future__ import annotations

from typing import Any


def text(position: dict[str, Any]) -> str:
    if "listed_at" not in position:
        return ""
    return f"listing {position['listed_at']}, {position.get('objects', 0)} objects"


def order(position: dict[str, Any]) -> tuple:
    return (str(position.get("listed_at", "")),)


def log_start(position: dict[str, Any]) -> dict[str, Any] | None:
    return None
