"""Backup and restore of one source: the sequence every flow task calls.

Plain functions over a vault, a keyring and an engine; no Prefect here.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from core.crypto.keys import Keyring
from core.engines import engine_for
from core.engines.base import Engine, compare_checks
from core.errors import DRError, TargetNotEmptyError, VerificationError
from core.repository.manifest import Manifest
from core.repository.vault import Vault


def backup_source(
    vault: Vault,
    keyring: Keyring,
    engine: Engine,
    backup_type: str = "full",
    *,
    compression: str = "zstd",
    labels: dict[str, str] | None = None,
) -> Manifest:
    """Take one backup of ``engine``'s source under its lock; returns the committed manifest.

    Every attempt leaves a record: a failure writes a FAILED manifest with the
    error, then the error is raised (never swallowed).
    """
    name = engine.config.name
    with vault.lock(name, f"{backup_type} backup"):
        writer = vault.begin_backup(
            source=name,
            kind=engine.kind,
            backup_type=backup_type,
            target=engine.describe(),
            keyring=keyring,
            compression=compression,
            labels=labels,
        )
        try:
            engine.ping()
            result = engine.backup(writer)
        except BaseException as exc:
            try:
                writer.fail(exc)
            except DRError as record_exc:
                # The vault may be the thing that failed (full, unreachable); say both.
                if isinstance(exc, DRError):
                    raise type(exc)(f"{exc} (and the FAILED record could not be written: {record_exc})") from None
            raise
        return writer.commit(result)


@dataclass
class RestoreReport:
    backup_id: str
    source: str
    target: str
    rollback_backup_id: str | None
    verified_checks: int
    plain_bytes: int
    seconds: float
    mismatches: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def count_checks(checks: dict) -> int:
    return sum(count_checks(v) if isinstance(v, dict) else 1 for v in checks.values())


def verify_target(engine: Engine, expected: dict, backup_id: str) -> int:
    """Compare the target's data with the checks recorded at backup time."""
    actual = engine.collect_checks(expected)
    diffs = compare_checks(expected, actual)
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise VerificationError(
            f"restore of {backup_id} into {engine.describe()} does not match the backup: {'; '.join(diffs[:3])}{more}; "
            "do not put this target in service - investigate, then restore again or from another backup"
        )
    return count_checks(expected)


def restore_backup(
    vault: Vault,
    keyring: Keyring,
    backup_id: str,
    engine: Engine,
    *,
    force: bool = False,
    rollback: bool = True,
) -> RestoreReport:
    """Restore ``backup_id`` into ``engine``'s target and prove it with the recorded checks.

    Refuses a target that holds data unless ``force``; with ``force`` it first
    takes a full backup of the target (the rollback point) into the same vault.
    """
    started = time.monotonic()
    reader = vault.open_backup(backup_id, keyring)  # key, MAC and version checked before touching the target
    try:
        manifest = reader.manifest
        engine.ping_target()
        rollback_id = None
        if engine.has_data():
            if not force:
                raise TargetNotEmptyError(
                    f"restore target {engine.describe()} already holds data; choose an empty target, or pass --force "
                    "(a rollback backup of the target is taken first)"
                )
            if rollback:
                rollback_id = backup_source(
                    vault,
                    keyring,
                    engine_for(engine.rollback_config()),
                    "full",
                    labels={"purpose": "rollback", "before_restore_of": backup_id},
                ).id
        with vault.lock(f"restore-{engine.config.name}", f"restore of {backup_id}"):
            engine.restore(reader, reader.result)
            verified = verify_target(engine, reader.result.checks, backup_id)
        return RestoreReport(
            backup_id=backup_id,
            source=manifest.source,
            target=engine.describe(),
            rollback_backup_id=rollback_id,
            verified_checks=verified,
            plain_bytes=manifest.plain_bytes,
            seconds=round(time.monotonic() - started, 3),
        )
    finally:
        reader.close()


def validate_backup(vault: Vault, keyring: Keyring, backup_id: str) -> dict:
    """Read and authenticate every object of a backup without restoring it."""
    reader = vault.open_backup(backup_id, keyring)
    try:
        checked = reader.verify_objects()
    finally:
        reader.close()
    return {"backup_id": backup_id, "plain_bytes_checked": checked, "streams": reader.stream_names()}
