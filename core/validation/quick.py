"""Quick validation: what the catalog and object listings alone can prove, without reading data.

Per backup: the manifest is one this genesis-dr reads, the backup COMPLETED, every object it
names is in the store with its recorded size (keys.json with its recorded SHA-256), and what a
restore of it needs besides itself is there: the backups it was taken on and the range of the
source's log it records, piece by piece without a gap. Per source: the newest recoverable point
is within the source's RPO. Stores answer a stat per object, so a quick run costs one request
per object and never a chunk's transfer.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime
from typing import Any

from core.chains import effective_log, log_gaps, parse_iso
from core.engines import engine_class, position_order, position_text
from core.errors import DRError
from core.repository.log import PieceRecord
from core.repository.manifest import (
    COMPLETED,
    MANIFEST_FORMAT,
    READABLE_MANIFEST_VERSIONS,
    ChunkRecord,
    Manifest,
)
from core.repository.streams import chunk_key
from core.repository.vault import Vault
from core.storage.base import ObjectNotFound
from core.validation.results import CheckResult

REMEDY_REPLICA = "restore the backup's objects from a replica, or take a new full backup"
REMEDY_NEW_FULL = "take a new full backup of the source"
_SHOWN = 3  # missing/damaged objects named in a detail line; the count says how many more


def _result(manifest: Manifest, name: str, passed: bool, detail: str, remedy: str = "", **kw: Any) -> CheckResult:
    return CheckResult(
        name=name,
        passed=passed,
        detail=detail,
        remedy="" if passed else remedy,
        source=manifest.source,
        backup_id=manifest.id,
        **kw,
    )


def first_part(message: str) -> str:
    """The finding of a core error message without its own remedy (a check carries its remedy apart)."""
    return message.split("; ")[0]


def listed(keys: list[str]) -> str:
    """``a, b, c and 4 more``: a detail line names a few objects, never hundreds."""
    head = ", ".join(keys[:_SHOWN])
    return head + (f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else "")


def chunk_keys(manifest: Manifest) -> list[tuple[str, ChunkRecord]]:
    """(object key, its record: stored size and SHA-256) of every chunk of the backup, in stream order."""
    return [
        (chunk_key(manifest.id, stream.name, i), chunk)
        for stream in manifest.streams
        for i, chunk in enumerate(stream.chunks)
    ]


def piece_keys(record: PieceRecord) -> list[tuple[str, ChunkRecord]]:
    """(object key, its record) of every chunk of one log piece."""
    prefix = f"logdata/{record.source}/{record.seq:012d}"
    return [(chunk_key("", "log", i, prefix), c) for i, c in enumerate(record.stream.chunks)]


def manifest_format(manifest: Manifest) -> CheckResult:
    # A manifest that did not parse never gets here: the runner reports it as a failed "manifest" check.
    known = manifest.format == MANIFEST_FORMAT and manifest.version in READABLE_MANIFEST_VERSIONS
    return _result(
        manifest,
        "manifest",
        known,
        f"{manifest.format} version {manifest.version}, {manifest.kind} {manifest.type}"
        + ("" if known else " is not a format this genesis-dr reads"),
        "upgrade genesis-dr",
    )


def status(manifest: Manifest) -> CheckResult:
    """A FAILED (or abandoned) backup is reported, not critical: it was never a recovery point."""
    if manifest.status == COMPLETED:
        return _result(manifest, "status", True, f"COMPLETED at {manifest.ended_at}")
    return _result(
        manifest,
        "status",
        False,
        f"{manifest.status}: {manifest.error or 'no error recorded'}",
        "look at the failed run's log; the next successful backup replaces it",
        critical=False,
    )


def objects_present(vault: Vault, manifest: Manifest) -> CheckResult:
    """Every chunk is in the store with its recorded size, and keys.json with its recorded SHA-256."""
    started = time.monotonic()
    store = vault.store
    problems: list[str] = []
    try:
        keys_raw = store.get(f"backups/{manifest.id}/keys.json")
    except ObjectNotFound:
        keys_raw = None
        problems.append("keys.json missing (crypto-shredded or lost)")
    if keys_raw is not None and hashlib.sha256(keys_raw).hexdigest() != manifest.keys_sha256:
        # A rotation that re-wrapped the keys but has not re-signed the manifest yet names the
        # digest it replaced; opening it (integrity) proves it holds the right key.
        try:
            rewrapped_from = json.loads(keys_raw).get("rewrapped_from")
        except (ValueError, AttributeError):
            rewrapped_from = None
        if rewrapped_from != manifest.keys_sha256:
            problems.append("keys.json does not match its SHA-256 in the manifest")
    missing, wrong_size = [], []
    chunks = chunk_keys(manifest)
    for key, chunk in chunks:
        info = store.stat(key)
        if info is None:
            missing.append(key)
        elif info.size != chunk.stored:
            wrong_size.append(f"{key} ({info.size} bytes, recorded {chunk.stored})")
    if missing:
        problems.append(f"{len(missing)} of {len(chunks)} chunks missing: {listed(missing)}")
    if wrong_size:
        problems.append(f"{len(wrong_size)} chunks of the wrong size: {listed(wrong_size)}")
    seconds = time.monotonic() - started
    if problems:
        return _result(manifest, "objects present", False, "; ".join(problems), REMEDY_REPLICA, seconds=seconds)
    detail = (
        f"{len(chunks)} chunks and keys.json present with their recorded sizes ({manifest.stored_bytes} bytes)"
        if chunks
        else "keys.json present; no chunks of its own (its data is its log range)"
    )
    return _result(manifest, "objects present", True, detail, seconds=seconds)


def _backup_state(vault: Vault, backup_id: str) -> str:
    entry = vault.entry(backup_id)
    return entry.state if entry.manifest is None else entry.manifest.status


def chain(vault: Vault, manifest: Manifest) -> CheckResult:
    """The backups this one was taken on (its parent and its chain's full) are there and COMPLETED."""
    needed = []
    if manifest.parent:
        needed.append(("parent", manifest.parent))
    full = manifest.chain if manifest.chain and manifest.chain != manifest.id else None
    if full and full != manifest.parent:
        needed.append(("chain full", full))
    if not needed:
        return _result(manifest, "chain", True, f"a {manifest.type} backup: needs no other backup")
    problems = []
    for role, backup_id in needed:
        if not vault.store.exists(f"backups/{backup_id}/manifest.json"):
            problems.append(f"its {role} {backup_id} is not in the vault (deleted or lost)")
            continue
        state = _backup_state(vault, backup_id)
        if state != COMPLETED:
            problems.append(f"its {role} {backup_id} is {state}")
    if problems:
        return _result(
            manifest,
            "chain",
            False,
            "; ".join(problems),
            f"restore the missing backup from a replica, or {REMEDY_NEW_FULL}",
        )
    return _result(manifest, "chain", True, "on " + ", ".join(f"{role} {bid}" for role, bid in needed) + " (COMPLETED)")


def log_records(vault: Vault, manifest: Manifest) -> tuple[list[PieceRecord], list[str]]:
    """The piece records of the log range ``manifest.log`` names, and what is missing or unreadable."""
    pieces = (manifest.log or {}).get("pieces") or []
    if not pieces:
        return [], []
    index = vault.log_index(manifest.source)
    records, problems = [], []
    for seq in range(int(pieces[0]), int(pieces[-1]) + 1):
        try:
            records.append(index.record(seq))
        except DRError as exc:
            problems.append(first_part(str(exc)))
    return records, problems


def log_range(vault: Vault, manifest: Manifest) -> CheckResult | None:
    """The log range the backup records is covered by pieces without a gap, each piece's objects there.

    None for a backup that records no log range (a full, or a kind whose backups carry their data)."""
    if not manifest.log:
        return None
    started = time.monotonic()
    kind, log = manifest.kind, manifest.log
    span = f"{position_text(kind, log.get('from') or {})} -> {position_text(kind, log.get('to') or {})}"
    if not log.get("pieces"):
        return _result(manifest, "log range", True, f"{span}: no log needed (nothing changed since its base)")
    records, problems = log_records(vault, manifest)
    order = lambda p: position_order(kind, p)  # noqa: E731
    walked = effective_log(records, kind)
    for before, after in log_gaps(walked, kind):
        problems.append(
            f"gap between pieces {before.seq} and {after.seq} ({position_text(kind, before.end)} -> "
            f"{position_text(kind, after.start)})"
        )
    if walked and not problems:
        if log.get("from") and order(walked[0].start) > order(log["from"]):
            problems.append(f"the first piece starts at {position_text(kind, walked[0].start)}, after the range")
        if log.get("to") and order(walked[-1].end) < order(log["to"]):
            problems.append(f"the last piece ends at {position_text(kind, walked[-1].end)}, before the range ends")
    missing = [key for record in records for key, chunk in piece_keys(record) if _size_of(vault, key) != chunk.stored]
    if missing:
        problems.append(f"{len(missing)} piece objects missing or of the wrong size: {listed(missing)}")
    seconds = time.monotonic() - started
    first, last = log["pieces"][0], log["pieces"][-1]
    if problems:
        return _result(
            manifest,
            "log range",
            False,
            f"{span} (pieces {first}..{last}): " + "; ".join(problems),
            f"restore the log pieces from a replica, or {REMEDY_NEW_FULL}",
            seconds=seconds,
        )
    return _result(
        manifest, "log range", True, f"{span}: pieces {first}..{last} present, without a gap", seconds=seconds
    )


def _size_of(vault: Vault, key: str) -> int | None:
    info = vault.store.stat(key)
    return None if info is None else info.size


def check_backup(vault: Vault, manifest: Manifest) -> list[CheckResult]:
    """Every quick check of one backup. A FAILED backup gets its status only (it holds no data)."""
    results = [manifest_format(manifest), status(manifest)]
    if manifest.status != COMPLETED:
        return results
    results += [objects_present(vault, manifest), chain(vault, manifest)]
    ranged = log_range(vault, manifest)
    if ranged is not None:
        results.append(ranged)
    return results


def _captures_log(kind: str) -> bool:
    try:
        return engine_class(kind).captures_log
    except KeyError:
        return False


def newest_point(vault: Vault, source: str, kind: str) -> tuple[datetime | None, str]:
    """The newest recoverable point of ``source`` and what it is (a backup, or a log piece)."""
    completed = [
        m
        for m in vault.list_backups(source)
        if m.status == COMPLETED and m.labels.get("purpose") != "rollback" and m.source == source
    ]
    newest = max(completed, key=lambda m: m.ended_at, default=None)
    when = parse_iso(newest.ended_at) if newest else None
    what = f"backup {newest.id}" if newest else ""
    if _captures_log(kind) and newest is not None:
        # The log counts only once there is a backup to replay it on.
        index = vault.log_index(source)
        seqs = index.seqs()
        try:
            last = index.record(seqs[-1]) if seqs else None
        except DRError:
            last = None  # a damaged newest record: the backups still say how fresh the source is
        if last is not None and (when is None or parse_iso(last.last_time) > when):
            when, what = parse_iso(last.last_time), f"log piece {last.seq}"
    return when, what


def freshness(vault: Vault, source: str, kind: str, rpo_seconds: float, now: datetime) -> CheckResult:
    """The newest recoverable point of ``source`` is within its RPO."""
    when, what = newest_point(vault, source, kind)
    remedy = (
        f"check the backup schedule and the last runs of {source!r} (and its capture); take one now with "
        f"'genesis-dr backup full --source {source}'"
    )
    if when is None:
        return CheckResult("freshness", False, f"no completed backup of {source!r} in the vault", remedy, source=source)
    age = (now - when).total_seconds()
    detail = f"newest recoverable point {when.isoformat().replace('+00:00', 'Z')} ({what}) is {age:.0f} s old"
    if age > rpo_seconds:
        return CheckResult(
            "freshness", False, f"{detail}, older than its RPO of {rpo_seconds:.0f} s", remedy, source=source
        )
    return CheckResult("freshness", True, f"{detail}, within its RPO of {rpo_seconds:.0f} s", source=source)
