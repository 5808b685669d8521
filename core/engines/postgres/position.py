"""PostgreSQL positions: a WAL location (LSN) on a timeline.

A physical backup records ``{"lsn": "0/3000028", "timeline": 1, "physical": true,
"end_lsn": "0/3000100", "end_time": ..., "server_version": ..., "wal_segment_size": ...}``
(``lsn`` is its start: WAL replay starts there; it is consistent from ``end_lsn``);
a logical dump records the LSN of its snapshot but cannot take a WAL replay.
A differential or incremental records ``{"lsn", "timeline"}``: where the WAL
was switched, which the vault's log reaches. Log pieces start and end at
``{"lsn", "timeline"}`` (byte ranges of the WAL, see ``wal.py``).
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
