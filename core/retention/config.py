"""The stack's ``retention:`` section: how long each source's backups are kept, and why.

Three layers decide a source's policy: the defaults of its kind (the second source
document's table), the stack's per-source overrides, and the data classes the
source carries (compliance minimums and GDPR-style maximums). ``policy_for``
folds them into one ``EffectivePolicy`` that the pure planner reads; nothing here
does I/O.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d{1,6})\s*(mo|m|h|d|w|y)\s*$")
_UNIT = {
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
    # Calendar months and years vary; a fixed length keeps plans reproducible. Months and years are
    # their average calendar lengths, rounded up to whole days (parse_duration): seven years are 2557
    # days, which covers the leap days any seven calendar years hold, so a compliance minimum never
    # runs a day short; a maximum given in months or years may run a day long.
    "mo": timedelta(days=30.4375),
    "y": timedelta(days=365.25),
}
_UNIT_WORD = {"m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}

BACKUP_TYPES = ("full", "differential", "incremental")
STORAGE_CLASSES = ("STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE", "NEARLINE", "COLDLINE", "ARCHIVE")


def parse_duration(text: str) -> timedelta:
    """'90m', '24h', '30d', '2w', '6mo' (183 days: months of 30.4375 days), '7y' (2557 days: years of 365.25
    days), months and years rounded up to whole days."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or int(match.group(1)) == 0:
        raise ValueError(
            f"duration {text!r} is not understood; write a positive number and a unit: m (minutes), h, d, w, "
            "mo (30.44 days), y (365.25 days), e.g. '30d'"
        )
    length = int(match.group(1)) * _UNIT[match.group(2)]
    if match.group(2) in ("mo", "y"):
        length = timedelta(days=math.ceil(length / timedelta(days=1)))
    return length


def duration_words(text: str) -> str:
    """'7y' -> '7 years', for reasons an operator reads."""
    match = _DURATION.match(text)
    if not match:
        return text
    count, unit = int(match.group(1)), match.group(2)
    return f"{count} {_UNIT_WORD[unit]}{'' if count == 1 else 's'}"


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


class KeepRules(BaseModel):
    """What keeps a backup of one type (restic's policy): the newest N; the newest in each of the last N
    hours/days/weeks/months/years (UTC); everything younger than a duration. A backup any rule keeps is kept."""

    model_config = ConfigDict(extra="forbid")
    keep_last: int | None = Field(None, ge=0, description="The newest N backups.")
    hourly: int | None = Field(None, ge=0, description="The newest backup in each of the last N hours that have one.")
    daily: int | None = Field(None, ge=0, description="The newest backup in each of the last N days that have one.")
    weekly: int | None = Field(None, ge=0, description="The newest in each of the last N ISO weeks that have one.")
    monthly: int | None = Field(None, ge=0, description="The newest in each of the last N months that have one.")
    yearly: int | None = Field(None, ge=0, description="The newest in each of the last N years that have one.")
    keep_within: str | None = Field(None, description="Every backup younger than this duration, e.g. '30d'.")

    _duration = field_validator("keep_within")(_check_duration)

    @model_validator(mode="after")
    def _keeps_something(self) -> KeepRules:
        counts = (self.keep_last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        if not any(counts) and self.keep_within is None:
            raise ValueError(
                "this rule set keeps nothing (every count is 0 or unset and keep_within is unset); set keep_last, "
                "a GFS count or keep_within"
            )
        return self


class SourcePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full: KeepRules | None = None
    differential: KeepRules | None = None
    incremental: KeepRules | None = None
    pitr_window: str | None = Field(
        None, description="The point-in-time window kept restorable: the log and the full under its start."
    )
    archive_after: str | None = Field(None, description="Kept backups older than this move to archive_to.")
    archive_to: str | None = Field(
        None,
        description="A colder storage class (" + ", ".join(STORAGE_CLASSES) + ") or 'vault:<replica name>'.",
    )

    _durations = field_validator("pitr_window", "archive_after")(_check_duration)

    @field_validator("archive_to")
    @classmethod
    def _archive_target(cls, value: str | None) -> str | None:
        if value is None or value in STORAGE_CLASSES or (value.startswith("vault:") and len(value) > 6):
            return value
        raise ValueError(
            f"archive_to {value!r} is neither a storage class ({', '.join(STORAGE_CLASSES)}) nor 'vault:<replica name>'"
        )

    @model_validator(mode="after")
    def _archive_pair(self) -> SourcePolicy:
        if (self.archive_after is None) != (self.archive_to is None):
            raise ValueError("archive_after and archive_to go together; set both or neither")
        return self


class DataClass(BaseModel):
    model_config = ConfigDict(extra="forbid")
    framework: str | None = Field(None, description="The rule it answers to: SOX, HIPAA, PCI DSS, GDPR, ...")
    min_retention: str | None = Field(None, description="Backups holding this class are never deleted younger.")
    online_for: str | None = Field(None, description="Never archived younger than this (PCI DSS: 3 months online).")
    max_retention: str | None = Field(
        None, description="Deleted when older (never over a legal hold, nor the newest backup: reported)."
    )
    description: str = ""

    _durations = field_validator("min_retention", "online_for", "max_retention")(_check_duration)

    @model_validator(mode="after")
    def _bounds(self) -> DataClass:
        if self.min_retention and self.max_retention:
            if parse_duration(self.min_retention) > parse_duration(self.max_retention):
                raise ValueError(
                    f"min_retention {self.min_retention} is longer than max_retention {self.max_retention}"
                )
        return self

    def label(self, name: str) -> str:
        return f"{self.framework} (class {name})" if self.framework else f"class {name}"


class ErasureRule(BaseModel):
    """How a subject is erased from a restored copy of one source ({subject} is always bound or escaped)."""

    model_config = ConfigDict(extra="forbid")
    statements: list[str] = Field(default_factory=list, description="SQL run with {subject} as a bound parameter.")
    redis_patterns: list[str] = Field(default_factory=list, description="Key patterns with {subject}; keys unlinked.")
    paths: list[str] = Field(default_factory=list, description="File globs below the restored root; files removed.")


# The second source document's table, by source kind.
DEFAULT_POLICIES: dict[str, SourcePolicy] = {
    "postgres": SourcePolicy(
        full=KeepRules(keep_within="30d"),
        differential=KeepRules(keep_within="7d"),
        incremental=KeepRules(keep_within="7d"),
        pitr_window="7d",
    ),
    "redis": SourcePolicy(full=KeepRules(keep_within="24h", keep_last=1)),
    "files": SourcePolicy(
        full=KeepRules(keep_within="90d"),
        differential=KeepRules(keep_within="90d"),
        incremental=KeepRules(keep_within="90d"),
    ),
    "bucket": SourcePolicy(
        full=KeepRules(keep_within="30d"),
        differential=KeepRules(keep_within="7d"),
        incremental=KeepRules(keep_within="7d"),
    ),
}
DEFAULT_POLICIES["mysql"] = DEFAULT_POLICIES["postgres"]

BUILTIN_CLASSES: dict[str, DataClass] = {
    "financial": DataClass(framework="SOX", min_retention="7y", description="financial records (SOX section 802)"),
    "health": DataClass(framework="HIPAA", min_retention="6y", description="protected health information"),
    "cardholder": DataClass(
        framework="PCI DSS",
        min_retention="1y",
        online_for="3mo",
        description="cardholder data: 1 year, the last 3 months immediately available",
    ),
    # 35 days, not 30: a database full is kept 30 days, and the backups on it a little after
    # it; a 30-day maximum would cut the full out from under its last incrementals. The
    # erasure deadline (30 days) is met by re-applying erasures on restore meanwhile.
    "personal": DataClass(framework="GDPR", max_retention="35d", description="personal data (GDPR storage limitation)"),
    "secrets": DataClass(max_retention="30d", description="credentials and keys: 30 days"),
    "config": DataClass(description="configuration files (the kind default, 90 days, applies)"),
}


@dataclass(frozen=True)
class EffectivePolicy:
    """One source's policy after kind defaults, overrides and data classes are folded together."""

    source: str
    kind: str
    rules: dict[str, KeepRules]  # by backup type; a type without its own rules follows the full's
    pitr_window: timedelta | None
    archive_after: timedelta | None
    archive_to: str | None
    min_retention: timedelta | None
    min_reason: str | None  # e.g. "SOX (class financial): 7 years"
    online_for: timedelta | None
    max_retention: timedelta | None
    max_reason: str | None

    def rules_for(self, backup_type: str) -> KeepRules | None:
        return self.rules.get(backup_type) or self.rules.get("full")


class RetentionConfig(BaseModel):
    """The stack's ``retention:`` section."""

    model_config = ConfigDict(extra="forbid")
    sources: dict[str, SourcePolicy] = Field(
        default_factory=dict, description="Per-source overrides, merged over the kind's defaults field by field."
    )
    data_classes: dict[str, DataClass] = Field(
        default_factory=dict, description="Data classes, merged over the built-in ones (the same name replaces)."
    )
    erasure: dict[str, ErasureRule] = Field(
        default_factory=dict, description="Per source: how a GDPR erasure is re-applied to a restored copy."
    )
    overwrite_passes: int = Field(3, ge=1, le=35, description="Overwrite passes before unlinking on a local vault.")
    erasure_deadline_days: int = Field(30, ge=1, le=365, description="A GDPR request is due this many days after.")

    def classes(self) -> dict[str, DataClass]:
        return BUILTIN_CLASSES | self.data_classes

    def check_classes(self, source: str, data_classes: list[str]) -> None:
        """ConfigError for an unknown class, or two classes whose minimum and maximum cannot both hold."""
        known = self.classes()
        for name in data_classes:
            if name not in known:
                raise ConfigError(
                    f"source {source!r}: data class {name!r} is not defined (known: {', '.join(sorted(known))}); "
                    "define it under retention.data_classes"
                )
        for a in data_classes:
            for b in data_classes:
                low, high = known[a].min_retention, known[b].max_retention
                if a != b and low and high and parse_duration(low) > parse_duration(high):
                    raise ConfigError(
                        f"source {source!r}: data class {a!r} must be kept at least {low} but class {b!r} at most "
                        f"{high}; split the data into two sources or change one class"
                    )

    def policy_for(self, source: str, kind: str, data_classes: list[str]) -> EffectivePolicy:
        base = DEFAULT_POLICIES.get(kind, DEFAULT_POLICIES["files"])
        override = self.sources.get(source)
        fields = {name: getattr(base, name) for name in SourcePolicy.model_fields}
        if override is not None:
            # An unset (null) field keeps the kind's default: the stack is stored as JSON and read back,
            # and a field that came back null must not silently drop a default (e.g. the PITR window).
            fields |= {
                name: value for name in SourcePolicy.model_fields if (value := getattr(override, name)) is not None
            }
        self.check_classes(source, data_classes)
        known = self.classes()

        def pick(attr: str, longest: bool) -> tuple[timedelta | None, str | None]:
            best: tuple[timedelta, str] | None = None
            for name in sorted(data_classes):
                text = getattr(known[name], attr)
                if text is None:
                    continue
                value = parse_duration(text)
                if best is None or (value > best[0] if longest else value < best[0]):
                    best = (value, f"{known[name].label(name)}: {duration_words(text)}")
            return (best[0], best[1]) if best else (None, None)

        minimum, min_reason = pick("min_retention", longest=True)
        maximum, max_reason = pick("max_retention", longest=False)
        online, _ = pick("online_for", longest=True)

        def dur(text: str | None) -> timedelta | None:
            return parse_duration(text) if text else None

        return EffectivePolicy(
            source=source,
            kind=kind,
            rules={t: fields[t] for t in BACKUP_TYPES if fields[t] is not None},
            pitr_window=dur(fields["pitr_window"]),
            archive_after=dur(fields["archive_after"]),
            archive_to=fields["archive_to"],
            min_retention=minimum,
            min_reason=min_reason,
            online_for=online,
            max_retention=maximum,
            max_reason=max_reason,
        )
