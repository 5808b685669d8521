"""One snapshot of a stack, read from its vault(s): what ``genesis-dr status`` shows and the metrics expose.

``build_snapshot`` reads the primary vault once, read-only, and never a chunk: the catalog (each
backup's manifest), each source's log index and piece records (sizes, the newest one's end), the
capture leases, the history (validations, drills, skipped incrementals), the failover state and the
monitor's tracker, the holds, and for each replica a listing of what it holds (its lag is computed here, as the replicate
flow defines it: the age of the oldest committed backup or log piece of the primary the replica lacks,
so a replication that stopped shows a growing lag). No Prefect, no server, no source is contacted.

Records that never change once written (log piece records, history records) are kept in a cache for
the life of the process, so a long-running exporter reads each one once. A part that cannot be read
(a replica out of reach, a damaged record) is named in ``problems``; the rest of the snapshot stands.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from core.chains import iso, parse_iso
from core.errors import DRError
from core.history import History
from core.replication.readonly import ReadOnlyStore
from core.repository.log import parse_piece
from core.repository.manifest import COMPLETED, FAILED, Manifest
from core.repository.vault import DELETING, Vault, VaultMissingError
from core.storage.base import Store

READ_ONLY = "status and metrics only read the vault"
LEVELS = ("quick", "integrity", "restore")
DRILL_TIERS = ("daily", "weekly", "monthly", "full")
SLOW_HISTORY = 20  # the slow flag compares the newest run with the median of up to this many before it
_CACHE_LIMIT = 200_000
_immutable: dict[tuple[str, str], Any] = {}  # (store, key) -> what was parsed from a record written once


@dataclass
class BackupFacts:
    """A backup of one source and type: the newest completed one, or the newest failed one."""

    id: str
    started_at: str
    ended_at: str
    duration_s: float
    plain_bytes: int = 0
    stored_bytes: int = 0
    error_class: str | None = None
    error: str | None = None


@dataclass
class ValidationFacts:
    id: str
    at: str
    passed: bool
    first_failure: str | None = None


@dataclass
class SourceSnapshot:
    name: str
    kind: str
    backup_types: list[str] = field(default_factory=list)  # the types its kind takes
    last_success: dict[str, BackupFacts] = field(default_factory=dict)  # backup type -> newest completed
    last_failure: dict[str, BackupFacts] = field(default_factory=dict)  # backup type -> newest failed
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # type -> {completed: n, failed: n}
    skipped: dict[str, int] = field(default_factory=dict)  # type -> incrementals skipped (overlapping runs)
    interval_s: dict[str, float] = field(default_factory=dict)  # type -> its schedule's longest gap
    captures_log: bool = False
    capture_running: bool = False
    capture_holder: str | None = None
    last_log_time: str | None = None  # the end of the newest shipped log piece
    capture_lag_s: float | None = None
    newest_point: str | None = None  # the newest recoverable point (a backup's end or the log's)
    newest_point_what: str = ""
    rpo_s: float | None = None  # now - newest_point; None when nothing is recoverable
    rpo_objective_s: float = 300.0
    validations: dict[str, ValidationFacts] = field(default_factory=dict)  # level -> last validation
    slow: dict[str, str] = field(default_factory=dict)  # operation -> why it is flagged slow

    @property
    def late(self) -> bool:
        """Past its RPO objective (or nothing recoverable at all)."""
        return self.rpo_s is None or self.rpo_s > self.rpo_objective_s


@dataclass
class DrillFacts:
    tier: str
    id: str
    at: str
    passed: bool
    rto_s: float | None = None
    rpo_s: float | None = None  # the worst source's achieved RPO
    first_failure: str | None = None
    duration_s: float | None = None


@dataclass
class VaultUsage:
    vault: str  # "primary" or the replica's name
    location: str
    used_bytes: int  # the backups and log pieces the vault holds (stored: compressed and encrypted)
    total_bytes: int | None = None  # local: used + the file system's free space (None for cloud stores)


@dataclass
class ReplicaFacts:
    name: str
    location: str
    lag_s: float | None = None
    missing: int = 0
    problem: str | None = None


@dataclass
class FailoverFacts:
    active_region: str
    epoch: int
    regions: list[str]
    healthy_regions: list[str]
    in_progress: str | None = None
    since: str = ""


@dataclass
class Failure:
    source: str
    activity: str  # backup, validation, drill
    error_class: str
    count: int


@dataclass
class StackSnapshot:
    stack: str
    taken_at: str
    vault: str  # the primary's location
    vault_exists: bool
    rto_objective_s: float
    sources: list[SourceSnapshot] = field(default_factory=list)
    drills: dict[str, DrillFacts] = field(default_factory=dict)
    replicas: list[ReplicaFacts] = field(default_factory=list)
    usage: list[VaultUsage] = field(default_factory=list)
    failover: FailoverFacts | None = None
    holds: list[dict[str, str]] = field(default_factory=list)  # the active ones: id, name
    failures: list[Failure] = field(default_factory=list)
    # Stack-wide operations (validate-<level>, drill-<tier>) with timed runs, and those flagged slow (why).
    timed_operations: list[str] = field(default_factory=list)
    slow: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def taken(self) -> datetime:
        return parse_iso(self.taken_at)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for src, out in zip(self.sources, data["sources"], strict=True):
            out["late"] = src.late
        return data


# -- helpers ---------------------------------------------------------------------------------------------


def _seconds(start: str, end: str) -> float:
    return round(max(0.0, (parse_iso(end) - parse_iso(start)).total_seconds()), 3)


def _age(now: datetime, when: str | None) -> float | None:
    return None if when is None else round(max(0.0, (now - parse_iso(when)).total_seconds()), 3)


def error_class(manifest: Manifest) -> str:
    """The class of error a FAILED backup ended with: recorded in its labels by newer writers; else read
    from the message ('OSError: ...'), 'Interrupted' for an abandoned run, and 'DRError' for the one-line
    errors genesis-dr writes without their class."""
    recorded = manifest.labels.get("error_class")
    if recorded:
        return recorded
    message = manifest.error or ""
    head, sep, _ = message.partition(":")
    if sep and head.isidentifier() and head[:1].isupper():
        return head
    if message.startswith("interrupted"):
        return "Interrupted"
    return "DRError"


def _cached(store: Store, key: str, parse):
    memo = (store.describe(), key)
    if memo in _immutable:
        return _immutable[memo]
    value = parse(store.get(key))
    if len(_immutable) >= _CACHE_LIMIT:
        _immutable.clear()
    _immutable[memo] = value
    return value


def _piece(store: Store, source: str, seq: int) -> dict[str, Any]:
    """What a piece record says that the snapshot uses (a record is written once: cached)."""
    key = f"logs/{source}/{seq:012d}.json"

    def parse(raw: bytes) -> dict[str, Any]:
        record = parse_piece(raw, key)
        return {"last_time": record.last_time, "shipped_at": record.shipped_at, "stored": record.stream.stored_bytes}

    return _cached(store, key, parse)


def _records(history: History, kind: str, problems: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(id, record)`` for each history record of ``kind``; one that cannot be read is a problem line."""
    try:
        record_ids = history.ids(kind)
    except ValueError:
        return  # a kind this version does not record yet
    for record_id in record_ids:
        try:
            doc = _cached(history.store, f"history/{kind}/{record_id}.json", json.loads)
        except (DRError, ValueError) as exc:
            problems.append(f"{kind.removesuffix('s')} record {record_id}: {exc}")
            continue
        yield record_id, doc


@lru_cache(maxsize=64)
def schedule_interval(cron: str) -> float | None:
    """The longest gap in seconds between two runs of a cron schedule (None for 'off' or an unreadable one):
    what "no backup within twice its interval" is measured against."""
    macros = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
              "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}  # fmt: skip
    cron = macros.get(cron, cron)
    if cron == "off":
        return None
    try:
        from cronsim import CronSim  # Prefect's own cron library (through pydocket)
    except ImportError:
        return None
    start = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: any fixed start gives the same gaps
    try:
        times = CronSim(cron, start)
        previous, longest = next(times), 0.0
        for _ in range(3000):
            current = next(times)
            longest = max(longest, (current - previous).total_seconds())
            previous = current
            if current - start > timedelta(days=400):
                break
    except (ValueError, StopIteration):
        return None
    return longest or None


def _intervals(config: Any, kind: str, types: tuple[str, ...]) -> dict[str, float]:
    schedules = getattr(config, "schedules", None)
    if schedules is None:
        return {}
    out: dict[str, float] = {}
    for backup_type in types:
        crons = [getattr(schedules, backup_type, "off")]
        if backup_type == "full" and kind == "redis":
            crons.append(schedules.redis)  # the redis deployment takes fulls of Redis sources more often
        found = [s for s in (schedule_interval(c) for c in crons) if s]
        if found:
            out[backup_type] = min(found)
    return out


def _engine_traits(kind: str) -> tuple[tuple[str, ...], bool]:
    try:
        from core.engines import engine_class

        engine = engine_class(kind)
    except (KeyError, ImportError):
        return ("full",), False
    return tuple(engine.backup_types), bool(getattr(engine, "captures_log", False))


def _slow_flag():
    try:
        from core.scheduling.slow import slow_flag
    except ImportError:
        return None
    return slow_flag


# -- the parts ---------------------------------------------------------------------------------------------


def _backups(src: SourceSnapshot, manifests: list[Manifest], factor: float) -> None:
    completed: dict[str, list[Manifest]] = {}
    for m in manifests:  # oldest first
        counts = src.counts.setdefault(m.type, {"completed": 0, "failed": 0})
        facts = BackupFacts(m.id, m.started_at, m.ended_at, _seconds(m.started_at, m.ended_at))
        if m.status == COMPLETED:
            counts["completed"] += 1
            facts.plain_bytes, facts.stored_bytes = m.plain_bytes, m.stored_bytes
            src.last_success[m.type] = facts
            completed.setdefault(m.type, []).append(m)
        elif m.status == FAILED:
            counts["failed"] += 1
            facts.error_class, facts.error = error_class(m), m.error
            src.last_failure[m.type] = facts
    src.slow = _slow({t: [_seconds(m.started_at, m.ended_at) for m in done] for t, done in completed.items()}, factor)


def _slow(durations: dict[str, list[float]], factor: float) -> dict[str, str]:
    """operation -> why its newest run (the last of its durations, oldest first) is slow, for those that are."""
    slow_flag = _slow_flag()
    out: dict[str, str] = {}
    for operation, seconds in durations.items() if slow_flag else ():
        recent = seconds[-SLOW_HISTORY - 1 :]
        reason = slow_flag(recent[:-1], recent[-1], factor) if recent else None
        if reason:
            out[operation] = reason
    return out


def _timed(durations: dict[str, list[float]], operation: str, doc: dict) -> None:
    started, ended = doc.get("started_at") or "", doc.get("ended_at") or ""
    if started and ended:
        durations.setdefault(operation, []).append(_seconds(started, ended))


def _log(src: SourceSnapshot, store: Store, seqs: list[int], now: datetime, problems: list[str]) -> int:
    """The source's log: when its newest piece ends, the capture lag; returns the log's stored bytes."""
    stored = 0
    for seq in seqs:
        try:
            piece = _piece(store, src.name, seq)
        except (DRError, ValueError) as exc:
            problems.append(f"{src.name}: log piece {seq}: {exc}")
            continue
        stored += piece["stored"]
        if seq == seqs[-1]:
            src.last_log_time = piece["last_time"]
            src.capture_lag_s = _age(now, piece["last_time"])
    return stored


def _newest_point(src: SourceSnapshot, now: datetime) -> None:
    newest = max(src.last_success.values(), key=lambda b: b.ended_at, default=None)
    if newest is None:
        return  # the log counts only once there is a backup to replay it on
    src.newest_point, src.newest_point_what = newest.ended_at, f"backup {newest.id}"
    if src.last_log_time and parse_iso(src.last_log_time) > parse_iso(newest.ended_at):
        src.newest_point, src.newest_point_what = src.last_log_time, "log"
    src.rpo_s = _age(now, src.newest_point)


def _validations(
    history: History, sources: dict[str, SourceSnapshot], failures: Counter, problems: list, durations: dict
) -> None:
    for record_id, doc in _records(history, "validations", problems):
        level, at = doc.get("level", "quick"), doc.get("ended_at") or doc.get("started_at") or ""
        _timed(durations, f"validate-{level}", doc)
        by_source: dict[str, list[dict]] = {}
        for result in doc.get("results") or []:
            if result.get("source"):
                by_source.setdefault(result["source"], []).append(result)
        for name, results in by_source.items():
            failed = [r for r in results if r.get("checked", True) and not r.get("passed") and r.get("critical", True)]
            if name in sources:
                first = failed[0] if failed else None
                line = f"{first.get('name')}: {first.get('detail')}" if first else None
                sources[name].validations[level] = ValidationFacts(record_id, at, not failed, line)
            if failed:
                failures[(name, "validation", failed[0].get("name") or "check")] += 1


def _drills(history: History, failures: Counter, problems: list, durations: dict) -> dict[str, DrillFacts]:
    out: dict[str, DrillFacts] = {}
    for record_id, doc in _records(history, "drills", problems):
        _timed(durations, f"drill-{doc.get('tier', '?')}", doc)
        failed = [r for r in doc.get("results") or [] if r.get("checked", True) and not r.get("passed")]
        failed = [r for r in failed if r.get("critical", True)]
        rpos = [
            s["rpo_s"]
            for s in (doc.get("sources") or {}).values()
            if s.get("rpo_s") is not None and s.get("vault", doc.get("vault")) == doc.get("vault")
        ]
        started, ended = doc.get("started_at") or "", doc.get("ended_at") or ""
        first = failed[0] if failed else None
        tier = doc.get("tier", "?")
        out[tier] = DrillFacts(
            tier=tier,
            id=record_id,
            at=ended or started,
            passed=not failed,
            rto_s=doc.get("rto_s"),
            rpo_s=max(rpos) if rpos else None,
            first_failure=f"{first.get('name')}: {first.get('detail')}" if first else None,
            duration_s=_seconds(started, ended) if started and ended else None,
        )
        if first:
            failures[(first.get("source") or "", "drill", first.get("name") or "check")] += 1
    return out


def _skips(history: History, sources: dict[str, SourceSnapshot], problems: list) -> None:
    for _, doc in _records(history, "skips", problems):
        src = sources.get(doc.get("source", ""))
        if src is not None:
            backup_type = doc.get("backup_type") or doc.get("type") or "incremental"
            src.skipped[backup_type] = src.skipped.get(backup_type, 0) + 1


def _local_total(vault_config: Any, used: int) -> int | None:
    """A local vault's room: what it holds plus the free space of its file system (reaches used when full)."""
    if getattr(vault_config, "type", None) != "local" or not vault_config.path:
        return None
    path = os.path.abspath(os.path.expanduser(vault_config.path))
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)  # not created yet: the file system it will be created on
    st = os.statvfs(path)
    return used + st.f_bavail * st.f_frsize


def _replica(replica: Any, completed: dict[str, Manifest], pieces: dict[str, list[int]], primary: Store,
             now: datetime) -> tuple[ReplicaFacts, VaultUsage | None]:  # fmt: skip
    location = replica.vault.location()
    facts = ReplicaFacts(replica.name, location)
    try:
        store = ReadOnlyStore(replica.vault.store(), READ_ONLY)
        held = {
            name.removesuffix(".json")
            for source in store.children("catalog/")
            for name in store.children(f"catalog/{source}/")
        }
        committed: list[str] = []  # when each backup or piece the replica lacks was committed on the primary
        used = 0
        for backup_id, m in completed.items():
            if backup_id in held or store.exists(f"backups/{backup_id}/manifest.json"):
                used += m.stored_bytes
            else:
                committed.append(m.ended_at)
                facts.missing += 1
        for source, seqs in pieces.items():
            there = set(store.children(f"logs/{source}/"))
            lacking = [seq for seq in seqs if f"{seq:012d}.json" not in there]
            for seq in seqs:
                if f"{seq:012d}.json" in there:
                    try:
                        used += _piece(primary, source, seq)["stored"]
                    except (DRError, ValueError):
                        pass  # named once in the primary's problems
            if lacking:
                facts.missing += len(lacking)
                try:
                    committed.append(_piece(primary, source, lacking[0])["shipped_at"])
                except (DRError, ValueError):
                    pass
        facts.lag_s = max((_age(now, when) or 0.0 for when in committed), default=0.0)
    except DRError as exc:
        facts.problem = str(exc)
        return facts, None
    return facts, VaultUsage(replica.name, location, used, _local_total(replica.vault, used))


def _failover(config: Any, store: Store) -> FailoverFacts:
    from core.failover.state import StateStore

    states = StateStore(store, config.failover)
    state = states.read()
    tracker = states.load_tracker()
    regions = [r.name for r in config.failover.by_priority()]
    return FailoverFacts(
        active_region=state.active_region,
        epoch=state.epoch,
        regions=regions,
        healthy_regions=[r for r in regions if not tracker.down.get(r, False)],
        in_progress=state.in_progress,
        since=iso(state.changed_at),
    )


def _holds(config: Any, store: Store) -> list[dict[str, str]]:
    from core.retention.holds import HoldBook

    signing = getattr(config, "signing", None)
    book = HoldBook.for_stack(store, signing) if signing is not None else HoldBook(store)
    admins = list(signing.admin_public_keys) if signing is not None else []
    return [{"id": h.id, "name": h.name} for h in book.list(admins) if h.active]


# -- the snapshot ------------------------------------------------------------------------------------------


def build_snapshot(config: Any, now: datetime | None = None) -> StackSnapshot:
    """The state of stack ``config`` (a StackConfig, or the local description ``genesis-dr status`` reads)
    as of ``now``, from its vaults, read-only; no chunk is read and nothing is written."""
    now = parse_iso(iso(now or datetime.now(UTC)))  # to the millisecond: the figures add up from taken_at
    objectives = config.objectives
    operations = getattr(config, "operations", None)
    factor = getattr(operations, "slow_factor", 2.0)
    store = ReadOnlyStore(config.vault.store(), READ_ONLY)
    snap = StackSnapshot(
        stack=config.stack,
        taken_at=iso(now),
        vault=config.vault.location(),
        vault_exists=True,
        rto_objective_s=objectives.rto_seconds,
    )
    sources: dict[str, SourceSnapshot] = {}
    for source in config.sources:
        types, captures = _engine_traits(source.kind)
        sources[source.name] = SourceSnapshot(
            name=source.name,
            kind=source.kind,
            backup_types=list(types),
            interval_s=_intervals(config, source.kind, types),
            captures_log=captures,
            rpo_objective_s=objectives.rpo_for(source.name),
        )
    snap.sources = list(sources.values())
    if getattr(config, "failover", None) is not None:
        try:
            snap.failover = _failover(config, store)
        except DRError as exc:  # a damaged state file: named, and the rest still shown
            snap.problems.append(f"failover: {exc}")
    try:
        vault = Vault.open(store)
    except VaultMissingError:
        snap.vault_exists = False
        snap.usage.append(VaultUsage("primary", snap.vault, 0, _local_total(config.vault, 0)))
        return snap

    failures: Counter = Counter()
    by_source: dict[str, list[Manifest]] = {}
    completed: dict[str, Manifest] = {}
    for entry in vault.entries(partial=False):  # one listing of the catalog; each manifest read once
        m = entry.manifest
        if m is None or entry.state == DELETING or m.labels.get("purpose") == "rollback":
            continue
        by_source.setdefault(m.source, []).append(m)
        if m.status == COMPLETED:
            completed[m.id] = m
        elif m.status == FAILED:
            failures[(m.source, "backup", error_class(m))] += 1
    used = sum(m.stored_bytes for m in completed.values())
    pieces: dict[str, list[int]] = {}
    for name, src in sources.items():
        _backups(src, sorted(by_source.get(name, []), key=lambda m: (m.ended_at, m.id)), factor)
        if src.captures_log:
            pieces[name] = vault.log_index(name).seqs()
            used += _log(src, store, pieces[name], now, snap.problems)
            holder = vault.capture_running(name)
            src.capture_running, src.capture_holder = holder is not None, _holder_text(holder)
        _newest_point(src, now)
    snap.usage.append(VaultUsage("primary", snap.vault, used, _local_total(config.vault, used)))

    history = History(store)
    durations: dict[str, list[float]] = {}  # oldest first, as the history lists its records
    _validations(history, sources, failures, snap.problems, durations)
    snap.drills = _drills(history, failures, snap.problems, durations)
    snap.timed_operations, snap.slow = sorted(durations), _slow(durations, factor)
    _skips(history, sources, snap.problems)
    snap.failures = [Failure(s, a, c, n) for (s, a, c), n in sorted(failures.items())]
    try:
        snap.holds = _holds(config, store)
    except DRError as exc:
        snap.problems.append(f"holds: {exc}")
    for replica in getattr(config, "replicas", None) or []:
        facts, usage = _replica(replica, completed, pieces, store, now)
        snap.replicas.append(facts)
        if usage is not None:
            snap.usage.append(usage)
        if facts.problem:
            snap.problems.append(f"replica {replica.name}: {facts.problem}")
    return snap


def _holder_text(holder: dict | None) -> str | None:
    if holder is None:
        return None
    from core.repository.lock import describe_holder

    return describe_holder(holder)
