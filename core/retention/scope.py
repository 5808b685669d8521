"""What a legal hold covers: backup ids or globs, sources, data classes and a time range.

Pure (no I/O): the hold book stores holds, the planner asks them what they cover.
Fields of a scope are AND'ed, the values within one field OR'ed, so
``{"sources": ["app"], "from_time": "2024-12-01"}`` holds app's backups since
December and nothing of any other source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from core.errors import HoldError

if TYPE_CHECKING:
    from core.retention.catalog import BackupItem, PieceItem

SCOPE_EXAMPLE = '{"backup_ids": ["backup_20241215_*"]}'


def _when(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class HoldScope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backup_ids: list[str] = []  # exact ids or fnmatch globs ("backup_20241215_*")
    sources: list[str] = []
    data_classes: list[str] = []
    from_time: str | None = None  # ISO-8601 (no zone: UTC)
    to_time: str | None = None

    @field_validator("from_time", "to_time")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _when(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO-8601 time, e.g. '2024-12-15T00:00:00Z'") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> HoldScope:
        if not (self.backup_ids or self.sources or self.data_classes or self.from_time or self.to_time):
            raise ValueError("the scope names nothing; give backup_ids, sources, data_classes or from_time/to_time")
        if self.from_time and self.to_time and _when(self.from_time) > _when(self.to_time):
            raise ValueError(f"from_time {self.from_time} is after to_time {self.to_time}")
        return self

    @property
    def has_time_range(self) -> bool:
        return self.from_time is not None or self.to_time is not None

    def overlaps(self, start: datetime, end: datetime | None) -> bool:
        """Whether [start, end] overlaps the scope's range (an open end counts as start)."""
        end = end or start
        if self.from_time and end < _when(self.from_time):
            return False
        return not (self.to_time and start > _when(self.to_time))

    def text(self) -> str:
        return json.dumps(self.model_dump(exclude_defaults=True), sort_keys=True)


def parse_scope(text: str) -> HoldScope:
    """The scope JSON an operator typed, or HoldError saying what to fix."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise HoldError(f"hold scope: not JSON ({exc}); write it like '{SCOPE_EXAMPLE}'") from None
    if not isinstance(data, dict):
        raise HoldError(
            f"hold scope: expected a JSON object, got {type(data).__name__}; write it like '{SCOPE_EXAMPLE}'"
        )
    try:
        return HoldScope.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            message = "unknown field; known: backup_ids, sources, data_classes, from_time, to_time"
        else:
            message = first["msg"].removeprefix("Value error, ")
        raise HoldError(f"hold scope: {field + ': ' if field else ''}{message}") from None


@dataclass(frozen=True)
class Hold:
    id: str
    name: str
    reason: str
    scope: HoldScope
    contact: str
    creator: str
    created_at: str
    released_at: str | None = None
    released_by: str | None = None
    release_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.released_at is None

    def label(self) -> str:
        return f"{self.id} {self.name!r}"

    def _common(self, source: str, data_classes: list[str]) -> bool:
        scope = self.scope
        if scope.sources and source not in scope.sources:
            return False
        return not (scope.data_classes and not set(scope.data_classes) & set(data_classes))

    def covers_backup(self, item: BackupItem, data_classes: list[str]) -> bool:
        scope = self.scope
        if scope.backup_ids and not any(fnmatchcase(item.id, pattern) for pattern in scope.backup_ids):
            return False
        if not self._common(item.source, data_classes):
            return False
        return not (scope.has_time_range and not scope.overlaps(item.started_at, item.ended_at))

    def covers_piece(self, piece: PieceItem, data_classes: list[str]) -> bool:
        # A piece has no id: an id scope covers the pieces its backups need (the planner keeps those
        # through dependencies); only a time range names pieces by themselves.
        scope = self.scope
        if scope.backup_ids or not scope.has_time_range:
            return False
        return self._common(piece.source, data_classes) and scope.overlaps(piece.first_time, piece.last_time)
