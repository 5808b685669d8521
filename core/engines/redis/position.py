"""Redis positions: a replication id and offset (the snapshot's, or a point in the stream)."""

from __future__ import annotations

from typing import Any


def text(position: dict[str, Any]) -> str:
    if "replid" in position:
        return f"repl offset {position.get('offset')} ({str(position['replid'])[:8]})"
    if position.get("mode") == "logical":
        return f"logical scan, {position.get('keys', '?')} keys"
    return ""


def order(position: dict[str, Any]) -> tuple:
    return (int(position.get("offset") or 0),)


def log_start(position: dict[str, Any]) -> dict[str, Any] | None:
    if "replid" not in position:
        return None
    return {"replid": position["replid"], "offset": int(position["offset"])}
