"""PostgreSQL positions: a WAL location (LSN) on a timeline.

A physical backup records ``{"lsn": "0/3000028", "timeline": 1, "physical": true}``
(its start LSN: WAL replay starts there); a logical dump records the LSN of its
snapshot but cannot take a WAL replay.
"""

from __future__ import annotations

from typing import Any


def lsn_int(lsn: str) -> int:
    high, _, low = str(lsn).partition("/")
    return (int(high, 16) << 32) | int(low or "0", 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def text(position: dict[str, Any]) -> str:
    if "lsn" not in position:
        return ""
    tli = f" tli {position['timeline']}" if position.get("timeline") else ""
    kind = "physical " if position.get("physical") else ""
    return f"{kind}lsn {position['lsn']}{tli}"


def order(position: dict[str, Any]) -> tuple:
    return (int(position.get("timeline") or 1), lsn_int(position.get("lsn", "0/0")))


def log_start(position: dict[str, Any]) -> dict[str, Any] | None:
    return {"lsn": position["lsn"], "timeline": position.get("timeline", 1)} if position.get("physical") else None
