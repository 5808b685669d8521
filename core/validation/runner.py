"""``genesis-dr validate``: choose the backups, run the checks of a level, keep the record.

Levels build on each other: quick (catalog and listings), integrity (every object read back,
decrypted when a key is at hand, and the engines' tools on the plaintext), restore (a restore
into a throw-away sandbox compared with the checks recorded at backup time). A failed check is
a result, never an exception: the caller (flow, drill) decides what a failure means. Only a run
that cannot start at all (no vault, an unknown backup id) raises.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from core.chains import parse_iso
from core.crypto.keys import Keyring
from core.errors import ConfigError, DRError, FormatError, IntegrityError
from core.history import History
from core.repository.manifest import ABANDONED, COMPLETED, CORRUPT, FAILED, Manifest
from core.repository.vault import BackupEntry, Vault
from core.validation import quick
from core.validation.integrity import IntegrityRun
from core.validation.quick import first_part
from core.validation.results import LEVELS, CheckResult, ValidationRecord, new_run_id, now_iso


def _newest_completed(manifests: list[Manifest]) -> dict[str, Manifest]:
    """Each source's newest COMPLETED backup (a restore's rollback snapshot is not a recovery point)."""
    newest: dict[str, Manifest] = {}
    for m in manifests:
        if m.status != COMPLETED or m.labels.get("purpose") == "rollback":
            continue
        if m.source not in newest or m.ended_at > newest[m.source].ended_at:
            newest[m.source] = m
    return newest


def select_backups(
    vault: Vault,
    target: str | None,
    *,
    latest: bool = False,
    all: bool = False,  # noqa: A002 - the CLI's --all
    sources: list[str] | None = None,
) -> list[Manifest]:
    """The backups a validation covers, oldest first.

    ``target``: that backup (BackupNotFoundError naming it if the vault has no such backup);
    ``all``: every COMPLETED backup; ``latest`` (also the default): the newest COMPLETED
    backup of each source. ``sources`` narrows ``all`` and ``latest`` to those sources.
    """
    if target:
        return [vault.manifest(target)]  # BackupNotFoundError names the id and 'genesis-dr list'
    wanted = set(sources) if sources else None
    manifests = [m for m in vault.list_backups() if wanted is None or m.source in wanted]
    if all:
        chosen = [m for m in manifests if m.status == COMPLETED]
    else:
        chosen = list(_newest_completed(manifests).values())
    return sorted(chosen, key=lambda m: (m.ended_at, m.id))


def _when(entry: BackupEntry) -> datetime:
    """When a backup attempt ended (or started, for one that never wrote a manifest)."""
    if entry.manifest is not None:
        return parse_iso(entry.manifest.ended_at)
    if entry.start is not None:
        return parse_iso(entry.start.started_at)
    return datetime.strptime(entry.id[7:22], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)


def _unusable_entries(vault: Vault, chosen: list[Manifest], all_: bool, wanted: set[str] | None) -> list[CheckResult]:
    """Backup directories no restore could use, reported beside the chosen backups: with ``--all``
    every one, else those newer than each source's chosen backup (the latest attempts failed)."""
    newest = {m.source: parse_iso(m.ended_at) for m in chosen}
    results = []
    for entry in vault.entries(partial=True):
        if entry.state not in (FAILED, ABANDONED, CORRUPT):
            continue
        if wanted is not None and entry.source not in wanted:
            continue
        chosen_at = newest.get(entry.source or "")
        if not all_ and chosen_at is not None and _when(entry) <= chosen_at:
            continue
        if entry.state == CORRUPT:
            results.append(
                CheckResult(
                    "manifest",
                    False,
                    first_part(entry.reason or "unreadable"),
                    "restore manifest.json from a replica; the backup cannot be restored without it",
                    source=entry.source or "",
                    backup_id=entry.id,
                )
            )
        else:
            results.append(
                CheckResult(
                    "status",
                    False,
                    f"{entry.state}: {first_part(entry.reason or 'no error recorded')}",
                    "look at the failed run's log; the next successful backup replaces it",
                    critical=False,
                    source=entry.source or "",
                    backup_id=entry.id,
                )
            )
    return results


def validate(
    config: Any,
    *,
    backup_id: str | None = None,
    latest: bool = False,
    all: bool = False,  # noqa: A002 - the CLI's --all
    level: str = "integrity",
    vault_name: str | None = None,
    sources: list[str] | None = None,
    keyring: Keyring | None = None,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    before_compare: Callable[[Any], None] | None = None,
    record_history: bool = True,
) -> ValidationRecord:
    """Validate the chosen backups of ``config``'s vault (or replica ``vault_name``) at ``level``.

    Returns the record (also written to the vault's history unless ``record_history`` is false).
    Failed checks are in the record; DRError only when the run cannot start (unknown level, source
    or backup id, no vault).
    """
    if level not in LEVELS:
        raise ConfigError(f"validation level {level!r} is not one of {', '.join(LEVELS)}; choose one with --level")
    for name in sources or []:
        config.source(name)  # ConfigError naming the stack's sources
    say = progress or (lambda _message: None)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:  # a naive time is UTC, as everywhere in the vault
        now = now.replace(tzinfo=UTC)
    vault = config.vault_named(vault_name).open()
    if keyring is None:
        keyring = config.keyring()
    record = ValidationRecord(
        id=new_run_id("validation", now),
        level=level,
        vault=vault_name or "primary",
        started_at=now_iso(),
        stack=config.stack,
    )
    wanted = set(sources) if sources else None
    try:
        chosen = select_backups(vault, backup_id, latest=latest, all=all, sources=sources)
    except (IntegrityError, FormatError) as exc:
        # The backup is there but its manifest cannot be read: that is the finding.
        chosen = []
        record.backups.append(str(backup_id))
        record.results.append(
            CheckResult(
                "manifest",
                False,
                first_part(str(exc)),
                "restore manifest.json from a replica; the backup cannot be restored without it",
                backup_id=str(backup_id),
            )
        )
    record.backups += [m.id for m in chosen]
    if not backup_id:
        record.results += _unusable_entries(vault, chosen, all, wanted)
    history = History(vault.store)
    run = None
    if level in ("integrity", "restore"):
        run = IntegrityRun(
            vault,
            keyring,
            history=history,
            reverify_after_hours=config.validation.reverify_after_hours,
            now=now,
            progress=say,
        )
    try:
        for manifest in chosen:
            say(f"validating {manifest.id} ({manifest.source}, {level})")
            checks = quick.check_backup(vault, manifest)
            record.results += checks
            if manifest.status != COMPLETED:
                continue
            if run is not None:
                record.results += run.check_backup(manifest)
            if level == "restore":
                record.results += _restore(config, vault, keyring, manifest, before_compare, say, vault_name)
    finally:
        if run is not None:
            run.close()
    if not backup_id:
        record.results += _freshness(config, vault, chosen, wanted, now)
    if run is not None:
        record.objects_read, record.bytes_read = run.store.objects, run.store.bytes
        record.reused = dict(run.reused)
        record.decryption_checked = run.decryption_checked
    record.ended_at = now_iso()
    if record_history:
        history.put("validations", record.id, record.to_dict())
    say(record.summary_line())
    return record


def _freshness(
    config: Any, vault: Vault, chosen: list[Manifest], wanted: set[str] | None, now: datetime
) -> list[CheckResult]:
    """Each of the stack's sources (those asked for) has a recoverable point within its RPO.

    Only when validating the newest backups: checking one named backup says nothing of the source."""
    results = []
    for source in config.sources:
        if wanted is not None and source.name not in wanted:
            continue
        results.append(quick.freshness(vault, source.name, source.kind, config.objectives.rpo_for(source.name), now))
    return results


def _restore(
    config: Any,
    vault: Vault,
    keyring: Keyring,
    manifest: Manifest,
    before_compare: Callable[[Any], None] | None,
    progress: Callable[[str], None],
    vault_name: str | None,
) -> list[CheckResult]:
    """The restore level: the backup restored into a sandbox and compared (core.validation.restore_check)."""
    from core.validation.restore_check import check_restore

    try:
        recovery = check_restore(
            config,
            vault,
            keyring,
            manifest.source,
            backup_id=manifest.id,
            before_compare=before_compare,
            progress=progress,
            vault_name=vault_name,
        )
    except DRError as exc:  # check_restore reports its failures as results; this is a last guard
        return [
            CheckResult(
                "restore",
                False,
                first_part(str(exc)),
                "see the restore's message",
                source=manifest.source,
                backup_id=manifest.id,
            )
        ]
    return list(recovery.results)
