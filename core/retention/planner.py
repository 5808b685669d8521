"""The retention planner: keep, archive or delete for every backup and log range, with every reason.

``plan_retention`` is a pure function of the catalog, the policy, the holds and the
time (restic's ``ApplyPolicy`` is the model): no I/O, no clock, so its golden tests
are JSON files and ``--dry-run`` prints exactly what a run would do.

What it never deletes: anything under an active legal hold; anything a retained
backup or the retained point-in-time window needs (the full of a chain, every
parent of a data layer, the log from a full's start through a retained point);
the newest valid backup of a source and the log after the newest full (the newest
restorable point); anything younger than its data classes' compliance minimum.
A source whose rules would keep none of its completed backups is refused whole:
backups that stopped running look exactly like that, and deleting all but one of
them would hide it.
"""

from __future__ import annotations

import gc
from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress, count, repeat
from operator import attrgetter, eq, le, ne, sub
from typing import Any

from core.engines import log_start, position_order, position_order_key
from core.errors import ConfigError
from core.repository.manifest import ABANDONED, CORRUPT, FAILED, IN_PROGRESS
from core.retention.catalog import DELETING, BackupItem, Catalog, PieceItem
from core.retention.config import BACKUP_TYPES, EffectivePolicy, KeepRules, RetentionConfig, parse_duration
from core.retention.scope import Hold

REMAINS = (FAILED, CORRUPT, ABANDONED)  # records of runs that did not commit: never counted as valid
# When no rule of a source says how long, failed remains wait this long (a day to look at them).
REMAINS_GRACE = timedelta(days=1)
GFS = (
    ("hourly", lambda t: t.strftime("%Y-%m-%dT%Hh")),
    ("daily", lambda t: t.strftime("%Y-%m-%d")),
    ("weekly", lambda t: "{}-W{:02d}".format(*t.isocalendar()[:2])),
    ("monthly", lambda t: t.strftime("%Y-%m")),
    ("yearly", lambda t: t.strftime("%Y")),
)
# How long a restore from where the data sits waits before the first byte (the plan says it).
RESTORE_DELAYS = {
    "STANDARD_IA": "immediate",
    "GLACIER_IR": "milliseconds (Glacier Instant Retrieval)",
    "GLACIER": "3-5 hours (Standard retrieval) after 'genesis-dr archive thaw'",
    "DEEP_ARCHIVE": "12 hours (Standard retrieval) after 'genesis-dr archive thaw'",
    "NEARLINE": "immediate (GCS)",
    "COLDLINE": "immediate (GCS)",
    "ARCHIVE": "immediate (GCS)",
}


def restore_delay(where: str | None) -> str | None:
    if not where:
        return None
    if where.startswith("vault:"):
        return f"immediate: restore with --vault {where.removeprefix('vault:')}"
    return RESTORE_DELAYS.get(where)


def iso(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def span(delta: timedelta) -> str:
    """A duration as the config writes it: '30d', '24h', '7y'."""
    seconds = int(delta.total_seconds())
    for unit, size in (("y", 365 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def rules_text(rules: KeepRules | None) -> str:
    if rules is None:
        return "no keep rules"
    parts = [f"{name} {getattr(rules, name)}" for name in ("keep_last", *dict(GFS)) if getattr(rules, name)]
    if rules.keep_within:
        parts.append(f"keep_within {rules.keep_within}")
    return ", ".join(parts)


def _ids(ids: list[str], limit: int = 3) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


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

    def to_dict(self) -> dict:
        return {
            "item": self.item,
            "kind": self.kind,
            "source": self.source,
            "type": self.type,
            "action": self.action,
            "reasons": list(self.reasons),
            "held_by": list(self.held_by),
            "deletable_after": iso(self.deletable_after),
            "archive_to": self.archive_to,
            "restore_delay": self.restore_delay,
            "seqs": list(self.seqs) if self.seqs else None,
            "stored_bytes": self.stored_bytes,
        }


@dataclass
class RetentionPlan:
    now: datetime
    decisions: list[Decision]
    refused: dict[str, str] = field(default_factory=dict)  # source -> why nothing of it is deleted
    log_keys_to_shred: dict[str, list[str]] = field(default_factory=dict)  # capture keys whose every piece goes
    warnings: list[str] = field(default_factory=list)
    tiers: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> where its kept bytes sit -> bytes

    def deletions(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "delete"]

    def archives(self) -> list[Decision]:
        return [d for d in self.decisions if d.action == "archive"]

    def to_dict(self) -> dict:
        return {
            "now": iso(self.now),
            "decisions": [d.to_dict() for d in self.decisions],
            "refused": dict(sorted(self.refused.items())),
            "log_keys_to_shred": {k: sorted(v) for k, v in sorted(self.log_keys_to_shred.items())},
            "warnings": list(self.warnings),
            "tiers": {s: dict(sorted(t.items())) for s, t in sorted(self.tiers.items())},
        }

    def text(self) -> str:
        lines = [f"Retention plan at {iso(self.now)}"]
        by_source: dict[str, list[Decision]] = defaultdict(list)
        for d in self.decisions:
            by_source[d.source].append(d)
        for source in sorted(by_source):
            decisions = by_source[source]
            counts = {a: sum(1 for d in decisions if d.action == a) for a in ("keep", "archive", "delete")}
            freed = sum(d.stored_bytes for d in decisions if d.action == "delete")
            lines.append(
                f"{source}: keep {counts['keep']}, archive {counts['archive']}, delete {counts['delete']} "
                f"({freed} bytes freed)"
            )
            if source in self.refused:
                lines.append(f"  REFUSED: {self.refused[source]}")
            tiers = self.tiers.get(source)
            if tiers:
                lines.append("  stored: " + ", ".join(f"{tier} {size} bytes" for tier, size in sorted(tiers.items())))
            for d in decisions:
                extra = []
                if d.held_by:
                    extra.append("held by " + ", ".join(d.held_by))
                if d.deletable_after:
                    extra.append(f"expires {iso(d.deletable_after)}")
                if d.archive_to:
                    extra.append(f"to {d.archive_to}")
                if d.restore_delay:
                    extra.append(f"restore delay: {d.restore_delay}")
                label = f"{d.item} {d.type}" if d.type else d.item
                lines.append(f"  {d.action.upper():7} {label}" + (f" [{'; '.join(extra)}]" if extra else ""))
                lines += [f"          {reason}" for reason in d.reasons]
        for warning in self.warnings:
            lines.append(f"WARNING: {warning}")
        if not self.decisions:
            lines.append("nothing in the vault")
        return "\n".join(lines)


def plan_retention(catalog: Catalog, policy: RetentionConfig, holds: list[Hold], now: datetime) -> RetentionPlan:
    """Every backup and log range of the catalog with its action and reasons (see the module's doc)."""
    # The plan holds a few hundred thousand decisions for a year of a busy stack, all alive until it
    # returns and none in a cycle: the cyclic collector would only rescan the whole catalog for them
    # (a third of the time), so it waits until the plan is made.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _plan(catalog, policy, holds, now)
    finally:
        if collecting:
            gc.enable()


def _plan(catalog: Catalog, policy: RetentionConfig, holds: list[Hold], now: datetime) -> RetentionPlan:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    active = [h for h in holds if h.active]
    plan = RetentionPlan(now=now, decisions=[])
    by_source: dict[str, list[BackupItem]] = defaultdict(list)
    for item in catalog.backups:
        by_source[item.source].append(item)
    pieces_by: dict[str, list[PieceItem]] = defaultdict(list)
    for piece in catalog.pieces:
        pieces_by[piece.source].append(piece)
    for source in sorted(set(by_source) | set(pieces_by) | set(catalog.sources)):
        _SourcePlanner(source, catalog, policy, active, now, plan).run(by_source[source], pieces_by[source])
    return plan


def _ascending(values: list) -> bool:
    return all(map(le, values, values[1:]))


def _holds(ascending: list, value: Any) -> bool:
    i = bisect_left(ascending, value)
    return i < len(ascending) and ascending[i] == value


def _point(item: BackupItem) -> datetime:
    """The instant a backup stands for (its end: a database backup's consistency point is at or near it)."""
    return item.ended_at or item.started_at


class _Marks:
    """Why each thing is kept, and until when time alone keeps it."""

    def __init__(self) -> None:
        self.reasons: dict[Any, list[str]] = defaultdict(list)
        self.expiry: dict[Any, list[datetime | None]] = defaultdict(list)  # None: kept by something but time
        self.held: dict[Any, list[str]] = defaultdict(list)

    def add(self, key: Any, reason: str, until: datetime | None = None) -> None:
        if reason not in self.reasons[key]:
            self.reasons[key].append(reason)
            self.expiry[key].append(until)

    def kept(self, key: Any) -> bool:
        return bool(self.reasons.get(key))

    def deletable_after(self, key: Any) -> datetime | None:
        ends = self.expiry.get(key) or [None]
        return None if any(e is None for e in ends) else max(ends)


class _SourcePlanner:
    def __init__(
        self, source: str, catalog: Catalog, config: RetentionConfig, holds: list[Hold], now: datetime, plan
    ) -> None:
        self.source, self.catalog, self.holds, self.now, self.plan = source, catalog, holds, now, plan
        self.config = config
        info = catalog.sources.get(source)
        self.classes = list(info.data_classes) if info else []
        self.kind = info.kind if info else None
        self.policy: EffectivePolicy | None = None

    # -- the source's items ------------------------------------------------------------

    def run(self, backups: list[BackupItem], pieces: list[PieceItem]) -> None:
        backups = sorted(backups, key=lambda b: (_point(b), b.id))
        self.kind = self.kind or next((b.kind for b in backups), None) or "files"
        try:
            self.policy = self.config.policy_for(self.source, self.kind, self.classes)
        except ConfigError as exc:
            self._refuse_all(backups, pieces, f"its policy cannot be applied: {exc}")
            return
        self.by_id = {b.id: b for b in backups}
        self.valid = [b for b in backups if b.valid]
        self.pieces = sorted(pieces, key=attrgetter("seq"))
        self.log = self._effective_log(self.pieces)
        self._log_seqs = list(map(attrgetter("seq"), self.log))  # ascending: the log is in seq order
        self._superseded_set = set(self._superseded)
        marks = _Marks()
        self.marks = marks
        # What the policy itself keeps; the safety rules below (newest, bases, dependencies) come on top.
        policy_kept = self._rules(marks) | self._minimum(backups, marks) | self._held(backups, marks)
        policy_kept &= {b.id for b in self.valid}
        newest = self.valid[-1] if self.valid else None
        self.online: set[str] = set()  # never archived: a restore of the newest point starts from them
        if newest is not None:
            marks.add(newest.id, f"keep: newest valid backup of {self.source}")
            self.online.add(newest.id)
        forced = self._maximum(backups, newest, marks)
        policy_kept -= set(forced)
        needs = self._log_needs(marks, forced, newest)
        self._dependencies(backups, marks, forced)
        if self.valid and not policy_kept:
            self._refuse(backups, pieces, newest, forced, marks)
            return
        self._decide_backups(backups, marks, forced)
        self._decide_pieces(pieces, needs, forced)

    def _effective_log(self, pieces: list[PieceItem]) -> list[PieceItem]:
        out: list[PieceItem] = []
        self._superseded: list[int] = []  # seqs of the partial pieces a later one replaces
        for piece in pieces:  # in seq order
            if out and out[-1].partial and piece.start and self._order(piece.start) == self._order(out[-1].start):
                self._superseded.append(out[-1].seq)
                out[-1] = piece
                continue
            out.append(piece)
        return out

    def _order(self, position: dict) -> tuple:
        return position_order(self.kind, position)

    # -- what keeps a backup -----------------------------------------------------------

    def _rules(self, marks: _Marks) -> set[str]:
        """Keep rules per backup type over the valid backups; returns the ids they keep."""
        kept: set[str] = set()
        for backup_type in sorted({b.type for b in self.valid}, key=lambda t: (t not in BACKUP_TYPES, t)):
            rules = self.policy.rules_for(backup_type)
            group = [b for b in reversed(self.valid) if b.type == backup_type]  # newest first
            if rules is None:
                continue
            if rules.keep_last:
                for i, b in enumerate(group[: rules.keep_last], 1):
                    marks.add(b.id, f"keep: last {i} of {rules.keep_last}")
                    kept.add(b.id)
            for name, bucket in GFS:
                count = getattr(rules, name) or 0
                last, n = None, 0
                for b in group:
                    if n >= count:
                        break
                    label = bucket(_point(b).astimezone(UTC))
                    if label != last:
                        n += 1
                        last = label
                        marks.add(b.id, f"keep: {name} {n} of {count} ({label})")
                        kept.add(b.id)
            if rules.keep_within:
                within = parse_duration(rules.keep_within)
                for b in group:
                    until = _point(b) + within
                    if until <= self.now:
                        break  # newest first: every older one is out of the window too
                    marks.add(b.id, f"keep: within {rules.keep_within} (until {iso(until)})", until)
                    kept.add(b.id)
        return kept

    def _minimum(self, backups: list[BackupItem], marks: _Marks) -> set[str]:
        minimum, kept = self.policy.min_retention, set()
        if minimum is None:
            return kept
        for b in backups:
            until = _point(b) + minimum
            if until > self.now:
                marks.add(b.id, f"keep: {self.policy.min_reason} minimum (until {iso(until)})", until)
                kept.add(b.id)
        return kept

    def _held(self, backups: list[BackupItem], marks: _Marks) -> set[str]:
        kept = set()
        for b in backups:
            for hold in self.holds:
                if hold.covers_backup(b, self.classes):
                    marks.add(b.id, f"keep: legal hold {hold.id} {hold.name!r}")
                    marks.held[b.id].append(hold.id)
                    kept.add(b.id)
        return kept

    def _maximum(self, backups: list[BackupItem], newest: BackupItem | None, marks: _Marks) -> dict[str, str]:
        """Backups a class maximum deletes (id -> reason), with the backups built on them; never a held one
        nor the newest valid backup (those are kept, with a warning)."""
        maximum = self.policy.max_retention
        forced: dict[str, str] = {}
        if maximum is None:
            return forced
        protected = {newest.id} if newest else set()
        for b in backups:
            if _point(b) + maximum <= self.now:
                if marks.held.get(b.id) or b.id in protected:
                    why = (
                        f"held by {', '.join(marks.held[b.id])}" if marks.held.get(b.id) else "the newest valid backup"
                    )
                    self.plan.warnings.append(
                        f"{self.source}: backup {b.id} is past its {self.policy.max_reason} maximum but is {why}; "
                        "kept" + ("" if marks.held.get(b.id) else ": take a new backup")
                    )
                    continue
                forced[b.id] = f"delete: {self.policy.max_reason} maximum passed (ended {iso(_point(b))})"
        changed = True
        while changed:  # a backup built on a deleted one cannot be restored: it goes too, or keeps its base
            changed = False
            for b in backups:
                if b.id in forced:
                    continue
                base = next((d for d in self._bases(b) if d in forced), None)
                if base is None:
                    continue
                if marks.held.get(b.id) or b.id in protected:
                    forced.pop(base)
                    self.plan.warnings.append(
                        f"{self.source}: backup {base} is past its {self.policy.max_reason} maximum but {b.id} "
                        "(kept) is built on it; kept"
                    )
                else:
                    forced[b.id] = (
                        f"delete: built on {base}, which is deleted past its {self.policy.max_reason} maximum"
                    )
                changed = True
        return forced

    def _bases(self, b: BackupItem) -> list[str]:
        """Ids of the backups ``b`` cannot be restored without: its full, and for a data layer every parent."""
        out: list[str] = []
        if b.chain and b.chain != b.id:
            out.append(b.chain)
        if b.type != "full" and b.log_pieces is None:
            node, seen = b, {b.id}
            while node.parent and node.parent not in seen and node.parent != b.chain:
                out.append(node.parent)
                seen.add(node.parent)
                node = self.by_id.get(node.parent)
                if node is None:
                    break
        return out

    def _dependencies(self, backups: list[BackupItem], marks: _Marks, forced: dict[str, str]) -> None:
        fulls: dict[str, list[str]] = defaultdict(list)
        parents: dict[str, list[str]] = defaultdict(list)
        for b in backups:
            if not marks.kept(b.id) or b.id in forced:
                continue
            for base in self._bases(b):
                if base not in self.by_id:
                    self.plan.warnings.append(
                        f"{self.source}: backup {b.id} is built on {base}, which is not in the vault: it cannot be "
                        "restored (its chain is broken)"
                    )
                    continue
                (fulls if base == b.chain else parents)[base].append(f"{b.type} {b.id}")
        for base, users in fulls.items():
            marks.add(base, f"keep: full of retained {_ids(users)}")
        for base, users in parents.items():
            marks.add(base, f"keep: parent of retained {_ids(users)}")

    # -- the log -----------------------------------------------------------------------

    def _start_index(self, full: BackupItem) -> int | None:
        """Index in the effective log of the piece a replay on ``full`` starts with (None: it takes no replay)."""
        if not self.log:
            return None
        if not full.position or not self.log[0].start:
            # Without positions (an old record), the piece being written when the full started.
            times = self._log_times()
            if times is not None:
                return max(bisect_right(times, full.started_at) - 1, 0)
            before = [i for i, p in enumerate(self.log) if p.first_time <= full.started_at]
            return before[-1] if before else 0
        start = log_start(self.kind, full.position)
        if start is None:
            return None
        key = self._order(start)
        keys = self._log_keys()
        if keys is not None:
            # The first piece that holds the key or starts at or after it (a gap after the full: the
            # pieces after it are all a replay on it can use); the log's length when it has not reached it.
            starts, ends = keys
            return min(bisect_left(starts, key), bisect_right(ends, key))
        for i, p in enumerate(self.log):
            if self._order(p.start) <= key < self._order(p.end) or self._order(p.start) == key:
                return i
            if self._order(p.start) > key:
                return i
        return len(self.log)

    def _log_keys(self) -> tuple[list[tuple], list[tuple]] | None:
        """The effective log's start and end order keys, computed once per source; None when they do not
        both run in log order (odd records): the linear scan above then answers as it always did."""
        if not hasattr(self, "_keys"):
            self._keys = None
            try:
                order = position_order_key(self.kind)
                start_at = list(map(attrgetter("start"), self.log))
                end_at = list(map(attrgetter("end"), self.log))
                starts = list(map(order, start_at))
                if all(map(eq, end_at[:-1], start_at[1:])):  # each piece ends where the next starts: same keys
                    ends = [*starts[1:], order(end_at[-1])]
                else:
                    ends = list(map(order, end_at))
                if _ascending(starts) and _ascending(ends):
                    self._keys = (starts, ends)
            except Exception:  # noqa: BLE001 - a piece the scan might never reach; the scan raises if it does
                return None
        return self._keys

    def _log_times(self) -> list[datetime] | None:
        if not hasattr(self, "_times"):
            times = [p.first_time for p in self.log]
            self._times = times if _ascending(times) else None
        return self._times

    def _index_of(self, seq: int) -> int:
        """Effective-log index of the piece holding piece ``seq``'s log (a superseded partial's is its successor)."""
        superseded = seq in self._superseded_set and not _holds(self._log_seqs, seq)
        i = bisect_left(self._log_seqs, seq)
        if i == len(self._log_seqs):
            return len(self.log) - 1
        return i if self._log_seqs[i] == seq or superseded else i - 1

    def _log_needs(self, marks: _Marks, forced: dict[str, str], newest: BackupItem | None) -> dict[int, list[str]]:
        """Effective-log index -> why a retained point needs that piece; marks the fulls they replay on."""
        needs: dict[int, list[str]] = defaultdict(list)
        if not self.log:
            return needs
        replayable = [
            b for b in self.valid if b.type == "full" and b.id not in forced and self._start_index(b) is not None
        ]

        def need(first: int, last: int, reason: str) -> None:
            for i in range(max(first, 0), min(last, len(self.log) - 1) + 1):
                if reason not in needs[i]:
                    needs[i].append(reason)

        # Retained backups that stand for a log range: their full's start through their last piece.
        users: dict[str, list[BackupItem]] = defaultdict(list)
        for b in self.valid:
            if b.log_pieces and marks.kept(b.id) and b.id not in forced and b.chain in self.by_id:
                users[b.chain].append(b)
        for full_id, members in users.items():
            start = self._start_index(self.by_id[full_id])
            if start is not None:
                need(
                    start,
                    max(self._index_of(m.log_pieces[1]) for m in members),
                    f"keep: replayed by retained backups on full {full_id}",
                )
        # The point-in-time window: the newest full at or before its start, and the log from it on.
        window = self.policy.pitr_window
        if window is not None and replayable:
            opens = self.now - window
            before = [b for b in replayable if _point(b) <= opens]
            base = before[-1] if before else replayable[0]
            marks.add(
                base.id, f"keep: base of the {span(window)} point-in-time window (from {iso(max(opens, _point(base)))})"
            )
            self.online.add(base.id)
            need(
                self._start_index(base),
                len(self.log) - 1,
                f"keep: the {span(window)} point-in-time window (replayed on full {base.id})",
            )
        # The newest restorable point: the log after the newest full that takes a replay.
        if replayable:
            base = replayable[-1]
            start = self._start_index(base)
            if start < len(self.log):
                marks.add(base.id, "keep: base of the log after it (the newest restorable point)")
                self.online.add(base.id)
                need(
                    start, len(self.log) - 1, f"keep: log after the newest full {base.id} (the newest restorable point)"
                )
        else:
            need(0, len(self.log) - 1, "keep: no valid full takes a replay of it yet (kept until one exists)")
        # Held pieces, and the full they replay on.
        for p in self.pieces if self.holds else ():
            for hold in self.holds:
                if hold.covers_piece(p, self.classes):
                    marks.held[("log", p.seq)].append(hold.id)
                    marks.add(("log", p.seq), f"keep: legal hold {hold.id} {hold.name!r}")
        held_seqs = {k[1] for k, ids in marks.held.items() if ids and isinstance(k, tuple) and k[0] == "log"}
        held = [i for i, p in enumerate(self.log) if p.seq in held_seqs] if held_seqs else []
        if held:
            bases = [b for b in replayable if self._start_index(b) <= held[0]]
            if bases:
                marks.add(bases[-1].id, "keep: base of held log pieces")
                need(self._start_index(bases[-1]), held[-1], f"keep: replays held pieces on full {bases[-1].id}")
        return needs

    # -- decisions ----------------------------------------------------------------------

    def _remains_grace(self) -> timedelta:
        withins = [parse_duration(r.keep_within) for r in self.policy.rules.values() if r.keep_within]
        return min(withins) if withins else REMAINS_GRACE

    def _decide_backups(self, backups: list[BackupItem], marks: _Marks, forced: dict[str, str]) -> None:
        grace = self._remains_grace()
        online = self.policy.online_for
        outside: dict[str, str] = {}  # backup type -> the text of its rules (one per type, not per backup)
        for b in backups:
            decision = Decision(
                item=b.id,
                kind="backup",
                source=self.source,
                type=b.type,
                action="keep",
                reasons=[],
                held_by=list(marks.held.get(b.id, [])),
                stored_bytes=b.stored_bytes,
            )
            where = b.archived_to or (b.storage_class if b.storage_class in RESTORE_DELAYS else None)
            decision.restore_delay = restore_delay(where)
            if b.status == DELETING and decision.held_by:
                self.plan.warnings.append(
                    f"{self.source}: backup {b.id} is being deleted (an earlier run started) but {', '.join(decision.held_by)} "
                    "now holds it; what is left of it must not be deleted until the hold is released"
                )
            if b.status in (IN_PROGRESS, DELETING):
                decision.reasons = [
                    "keep: a run is writing it (in progress)"
                    if b.status == IN_PROGRESS
                    else "keep: its deletion was started by an earlier run; the executor finishes it"
                ]
            elif b.id in forced and not decision.held_by:
                decision.action, decision.reasons = "delete", [forced[b.id]]
            elif marks.kept(b.id):
                decision.reasons = list(marks.reasons[b.id])
                decision.deletable_after = marks.deletable_after(b.id)
                if self.policy.max_retention is not None and b.valid and not decision.held_by:
                    # The class maximum overrides every rule but a hold: that is when it goes at the latest.
                    cut = _point(b) + self.policy.max_retention
                    decision.deletable_after = min(decision.deletable_after or cut, cut)
                    decision.reasons.append(f"limit: {self.policy.max_reason} maximum, deleted after {iso(cut)}")
                self._archive(b, decision, online)
            elif b.status in REMAINS or not b.valid:
                # Remains of runs that never committed, and rollback backups taken before a forced restore:
                # never counted as valid, kept as long as the source's shortest keep_within to look at or undo.
                what = f"{b.status} remains" if b.status in REMAINS else f"{b.labels.get('purpose')} backup"
                until = _point(b) + grace
                if until > self.now:
                    decision.reasons = [f"keep: {what} younger than {span(grace)} (until {iso(until)})"]
                    decision.deletable_after = until
                else:
                    decision.action = "delete"
                    decision.reasons = [f"delete: {what} older than {span(grace)} (not a valid backup)"]
            else:
                decision.action = "delete"
                if b.type not in outside:
                    outside[b.type] = rules_text(self.policy.rules_for(b.type))
                decision.reasons = [
                    f"delete: outside its {b.type} rules ({outside[b.type]}); nothing retained needs it"
                ]
            self.plan.decisions.append(decision)
            if decision.action != "delete":
                tier = b.archived_to or b.storage_class or "STANDARD"
                tiers = self.plan.tiers.setdefault(self.source, {})
                tiers[tier] = tiers.get(tier, 0) + b.stored_bytes

    def _archive(self, b: BackupItem, decision: Decision, online: timedelta | None) -> None:
        policy = self.policy
        # Already in a cold class (whichever): moving it to the configured one could only warm it up.
        if policy.archive_after is None or not b.valid or b.archived_to or b.storage_class in RESTORE_DELAYS:
            return
        age = self.now - _point(b)
        if age < policy.archive_after:
            return
        if b.id in self.online:
            decision.reasons.append("online: the newest restorable point starts from it; not archived")
            return
        if online is not None and age < online:
            decision.reasons.append(
                f"online: its data classes keep it online {span(online)} (until {iso(_point(b) + online)})"
            )
            return
        decision.action = "archive"
        decision.archive_to = policy.archive_to
        decision.restore_delay = restore_delay(policy.archive_to)
        decision.reasons.append(f"archive: older than {span(policy.archive_after)}, to {policy.archive_to}")

    def _decide_pieces(self, pieces: list[PieceItem], needs: dict[int, list[str]], forced: dict[str, str]) -> None:
        """The pieces' decisions, a run of pieces at a time: only the pieces something names one by one (a hold,
        a retained point's need, a superseded partial) are looked at alone; the stretches between them decide
        alike but for the class minimum and maximum, whose cut-offs are found by binary search."""
        ordered = self.pieces
        if not ordered:
            return
        maximum, minimum = self.policy.max_retention, self.policy.min_retention
        seqs = list(map(attrgetter("seq"), ordered))
        timed = minimum is not None or maximum is not None
        if timed and not _ascending([p.last_time for p in ordered]):
            special = range(len(ordered))  # odd records: every piece alone, as the cut-offs need an order
        else:
            named = {k[1] for k in (*self.marks.reasons, *self.marks.held) if isinstance(k, tuple) and k[0] == "log"}
            named.update(self._superseded)
            named.update(self.log[i].seq for i, why in needs.items() if why and 0 <= i < len(self.log))
            special = sorted({k for s in named for k in range(bisect_left(seqs, s), bisect_right(seqs, s))})
        runs = _Runs(ordered, seqs)
        kept_past_max: list[int] = []
        at = 0
        for k in (*special, len(ordered)):
            if at < k:
                self._decide_stretch(at, k, runs, kept_past_max)
            if k < len(ordered):
                self._decide_piece(k, needs, runs, kept_past_max)
            at = k + 1
        if kept_past_max:
            self.plan.warnings.append(
                f"{self.source}: log pieces {kept_past_max[0]}..{kept_past_max[-1]} ({len(kept_past_max)}) are past "
                f"the {self.policy.max_reason} maximum but a retained point or a hold needs them; kept"
            )
        self._log_runs(runs)

    def _decide_stretch(self, first: int, stop: int, runs: _Runs, kept_past_max: list[int]) -> None:
        """Pieces ``first``..``stop - 1``, none of which anything names: only their age tells them apart."""
        ordered, now = self.pieces, self.now
        maximum, minimum = self.policy.max_retention, self.policy.min_retention
        cuts = {first, stop}
        if minimum is not None:  # young enough from here on (the pieces' last times ascend)
            cuts.add(bisect_left(ordered, True, first, stop, key=lambda p: p.last_time + minimum > now))
        if maximum is not None:  # past the maximum up to here
            cuts.add(bisect_left(ordered, True, first, stop, key=lambda p: p.last_time + maximum > now))
        bounds = sorted(cuts)
        for a, b in zip(bounds, bounds[1:], strict=False):
            if a == b:
                continue
            young = minimum is not None and ordered[a].last_time + minimum > now
            past_max = maximum is not None and ordered[a].last_time + maximum <= now
            if young:
                if past_max:
                    kept_past_max.extend(runs.seqs[a:b])
                runs.add(a, b, "keep", [f"keep: {self.policy.min_reason} minimum"], [], young=minimum)
            elif past_max:
                runs.add(a, b, "delete", [f"delete: {self.policy.max_reason} maximum passed"], [], None)
            else:
                runs.add(a, b, "delete", ["delete: no retained backup or window replays it"], [], None)

    def _decide_piece(self, k: int, needs: dict[int, list[str]], runs: _Runs, kept_past_max: list[int]) -> None:
        p = self.pieces[k]
        marks = self.marks
        maximum, minimum = self.policy.max_retention, self.policy.min_retention
        key = ("log", p.seq)
        held = list(marks.held.get(key, []))
        reasons = list(marks.reasons.get(key, []))
        last = bisect_right(self._log_seqs, p.seq) - 1
        i = last if last >= 0 and self._log_seqs[last] == p.seq else None  # the last log entry with its seq
        if i is not None:
            reasons += needs.get(i, [])
        until = None
        if minimum is not None and p.last_time + minimum > self.now:
            reasons.append(f"keep: {self.policy.min_reason} minimum")
            until = p.last_time + minimum
        past_max = maximum is not None and p.last_time + maximum <= self.now
        if reasons:
            # A retained point within the maximum may still need a piece just past it (its full's
            # start): the restore wins over the maximum by that margin, and the plan says so.
            if past_max:
                kept_past_max.append(p.seq)
            only_time = not held and all(r == f"keep: {self.policy.min_reason} minimum" for r in reasons)
            runs.add(k, k + 1, "keep", reasons, held, until if only_time else None)
        elif i is None:
            after = bisect_right(self._log_seqs, p.seq)
            successor = self._log_seqs[after] if after < len(self._log_seqs) else None
            runs.add(k, k + 1, "delete", [f"delete: partial piece superseded by piece {successor}"], held, None)
        elif past_max:
            runs.add(k, k + 1, "delete", [f"delete: {self.policy.max_reason} maximum passed"], held, None)
        else:
            runs.add(k, k + 1, "delete", ["delete: no retained backup or window replays it"], held, None)

    def _log_runs(self, runs: _Runs) -> None:
        ordered = self.pieces
        seen: set[str] = set()
        alive: set[str] = set()
        for a, b, action, reasons, held, until in runs.runs:
            members = ordered[a:b]
            first, last = members[0].seq, members[-1].seq
            self.plan.decisions.append(
                Decision(
                    item=f"log:{self.source}:{first}-{last}",
                    kind="log",
                    source=self.source,
                    type=None,
                    action=action,
                    reasons=list(reasons),
                    held_by=list(held),
                    deletable_after=until,
                    seqs=(first, last),
                    stored_bytes=sum(map(attrgetter("stored_bytes"), members)),
                )
            )
            keys = set(map(attrgetter("key_id"), members))
            seen |= keys
            if action != "delete":
                alive |= keys
        # The newest piece's session may still be shipping under that key: never shred it.
        alive.add(ordered[-1].key_id)
        shred = sorted(seen - alive)
        if shred:
            self.plan.log_keys_to_shred[self.source] = shred

    # -- refusal -------------------------------------------------------------------------

    def _refuse(self, backups, pieces, newest, forced, marks) -> None:
        why = (
            f"its policy would delete every completed backup of {self.source} (the newest ended "
            f"{iso(_point(newest))}); nothing of it is deleted: check that its backups still run, or add keep_last"
        )
        self._refuse_all(backups, pieces, why)

    def _refuse_all(self, backups: list[BackupItem], pieces: list[PieceItem], why: str) -> None:
        self.plan.refused[self.source] = why
        for b in backups:
            tiers = self.plan.tiers.setdefault(self.source, {})
            tier = b.archived_to or b.storage_class or "STANDARD"
            tiers[tier] = tiers.get(tier, 0) + b.stored_bytes
            self.plan.decisions.append(
                Decision(
                    item=b.id,
                    kind="backup",
                    source=self.source,
                    type=b.type,
                    action="keep",
                    reasons=["refused: " + why],
                    stored_bytes=b.stored_bytes,
                )
            )
        if pieces:
            ordered = sorted(pieces, key=lambda p: p.seq)
            self.plan.decisions.append(
                Decision(
                    item=f"log:{self.source}:{ordered[0].seq}-{ordered[-1].seq}",
                    kind="log",
                    source=self.source,
                    type=None,
                    action="keep",
                    reasons=["refused: " + why],
                    seqs=(ordered[0].seq, ordered[-1].seq),
                    stored_bytes=sum(p.stored_bytes for p in ordered),
                )
            )


class _Runs:
    """Runs of consecutive pieces (by seq) with one action, the same reasons and holds: one decision each.

    Stretches of pieces that decide alike come in whole (``add(first, stop, ...)``); a run breaks where they
    differ or where a seq does not follow on, exactly as if every piece had come in alone."""

    def __init__(self, ordered: list[PieceItem], seqs: list[int]) -> None:
        self.ordered, self.seqs = ordered, seqs
        self.runs: list[list] = []  # [first, stop, action, reasons, held, until]
        # Indices after which the next piece's seq does not follow on (a gap, or a repeated seq).
        self.breaks = list(compress(count(), map(ne, map(sub, seqs[1:], seqs), repeat(1))))

    def add(
        self,
        first: int,
        stop: int,
        action: str,
        reasons: list[str],
        held: list[str],
        until: datetime | None = None,
        young: timedelta | None = None,
    ) -> None:
        """Pieces ``first``..``stop - 1``; ``young``: time alone keeps them, each until its last time plus it."""
        cuts = [g + 1 for g in self.breaks[bisect_left(self.breaks, first) : bisect_left(self.breaks, stop - 1)]]
        for a, b in zip((first, *cuts), (*cuts, stop), strict=False):
            part_until = until if young is None else max(p.last_time for p in self.ordered[a:b]) + young
            last = self.runs[-1] if self.runs else None
            if (
                last
                and last[1] == a
                and last[2] == action
                and last[3] == reasons
                and last[4] == held
                and self.seqs[a - 1] + 1 == self.seqs[a]
                and (last[5] is None) == (part_until is None)
            ):
                last[1] = b
                if part_until is not None:
                    last[5] = max(last[5], part_until)
                continue
            self.runs.append([a, b, action, reasons, held, part_until])
