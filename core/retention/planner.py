"""The retention planner: keep, archive or delete for every backup and log range, with every reason.

``plan_retention`` is a pure function of the catalog, the policy, the holds and the
time (restic's ``ApplyPolicy`` is the model): no I/O, no clock, so its golden tests
are JSON files and ``--dry-run`` prints exactly what a run would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from core.retention.catalog import Catalog
from core.retention.config import RetentionConfig
from core.retention.scope import Hold


@dataclass
class Decision:
    item: str  # backup id, or "log:<source>:<first seq>-<last seq>" for a run of pieces with one action
    kind: str  # "backup" | "log"
    source: str
    type: str | None
    action: str  # "keep" | "archive" | "delete"
    reasons: list[str]
    held_by: list[str] = field(default_factory=list)
    deletable_after: datetime | None = None  # when only time keeps it: the earliest instant a rerun could delete it
    archive_to: str | None = None
    restore_delay: str | None = None
    seqs: tuple[int, int] | None = None
    stored_bytes: int = 0


@dataclass
class RetentionPlan:
    now: datetime
    decisions: list[Decision]
    refused: dict[str, str] = field(default_factory=dict)
    log_keys_to_shred: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def deletions(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "delete"]

    def archives(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "archive"]


def plan_retention(catalog: Catalog, policy: RetentionConfig, holds: list[Hold], now: datetime) -> RetentionPlan:
    raise NotImplementedError("being written (issue 12, H2)")
