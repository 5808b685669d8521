"""MariaDB/MySQL positions: a binlog file and byte offset, with the GTID set at that point."""

from __future__ import annotations

from typing import Any


def text(position: dict[str, Any]) -> str:
    if position.get("binlog_file"):
        gtid = f" gtid {position['gtid']}" if position.get("gtid") else ""
        return f"binlog {position['binlog_file']}:{position.get('binlog_pos')}{gtid}"
    if "binlog_enabled" in position:
        return "binlog disabled (no point-in-time replay)"
    return ""


def order(position: dict[str, Any]) -> tuple:
    # Binlog file names end in a zero-padded sequence number (mysql-bin.000042): ordering by
    # (number, offset) keeps order across a base-name change (log_bin renamed).
    name = str(position.get("binlog_file", ""))
    number = int(name.rsplit(".", 1)[-1]) if name.rsplit(".", 1)[-1].isdigit() else 0
    return (number, int(position.get("binlog_pos") or 0))


def log_start(position: dict[str, Any]) -> dict[str, Any] | None:
    if not position.get("binlog_file"):
        return None
    return {
        "binlog_file": position["binlog_file"],
        "binlog_pos": int(position["binlog_pos"]),
        "gtid": position.get("gtid", ""),
    }
