"""Restore drills: daily and weekly validations, monthly and full whole-stack recoveries that
measure RTO and RPO against the stack's objectives, their history, chart and status."""

from __future__ import annotations

from typing import Any

from core.drills.record import TIERS, DrillRecord
from core.drills.status import drill_status, render_status

__all__ = ["TIERS", "DrillRecord", "drill_status", "render_status", "run_drill"]


def __getattr__(name: str) -> Any:
    # The runner pulls in validation, sandboxes and every engine; status and records need none of it
    # ('drill status' reads the history only).
    if name == "run_drill":
        from core.drills.runner import run_drill

        return run_drill
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
