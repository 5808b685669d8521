"""Backups and log capture of one source: the sequences every flow task calls.

Plain functions over a vault, a keyring and an engine; no Prefect here. Restores
live in ``core.restoring`` (re-exported here: tasks call both through this module).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from core import cancel
from core.crypto.keys import Keyring
from core.engines import log_start, position_order, position_text
from core.engines.base import BackupResult, BaseBackup, Engine
from core.errors import (
    BackupNotFoundError,
    ConfigError,
    DRError,
    LogGapError,
)
from core.estimate import estimate_bytes
from core.repository.log import LogWriter
from core.repository.manifest import COMPLETED, Manifest
from core.repository.streams import ByteCounter
from core.repository.vault import CAPTURE_LEASE_PREFIX, Vault
from core.restoring import (  # noqa: F401 - re-exported for the tasks
    Progress,
    RestoreReport,
    _quiet,
    count_checks,
    render_report,
    restore_backup,
    restore_chain_plan,
    size_text,
    verify_target,
)

# Told (plaintext bytes done, expected total or None) as chunks move: see backup_source.
OnBytes = Callable[[int, int | None], None]


def choose_base(manifests: list[Manifest], source: str, backup_type: str) -> Manifest:
    """The backup a differential (the newest full) or an incremental (the newest backup of the newest
    full's chain) is taken on."""
    completed = sorted(
        (
            m
            for m in manifests
            if m.source == source and m.status == COMPLETED and m.labels.get("purpose") != "rollback"
        ),
        key=lambda m: m.ended_at,
    )
    fulls = [m for m in completed if m.type == "full"]
    if not fulls:
        raise BackupNotFoundError(
            f"no completed full backup of {source!r} to take a {backup_type} backup on; run "
            f"'genesis-dr backup full --source {source}' first"
        )
    full = fulls[-1]
    if backup_type == "differential":
        return full
    return [m for m in completed if m.id == full.id or m.chain == full.id][-1]


class _BaseReader:
    """The base's streams, opened (one key unwrap) only if the engine reads them: an incremental
    of a database never does, so a backup host with only public keys can take one."""

    def __init__(self, vault: Vault, keyring: Keyring, backup_id: str) -> None:
        self._vault, self._keyring, self._id = vault, keyring, backup_id
        self._reader = None

    def _open(self):
        if self._reader is None:
            self._reader = self._vault.open_backup(self._id, self._keyring)
        return self._reader

    @property
    def result(self) -> BackupResult:
        return self._open().result

    def stream_names(self) -> list[str]:
        return self._open().stream_names()

    def iter_stream(self, name: str):
        return self._open().iter_stream(name)

    def open_stream(self, name: str):
        return self._open().open_stream(name)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()


def backup_source(
    vault: Vault,
    keyring: Keyring,
    engine: Engine,
    backup_type: str = "full",
    *,
    compression: str = "zstd",
    labels: dict[str, str] | None = None,
    progress: Progress | None = None,
    on_bytes: OnBytes | None = None,
    on_begin: Callable[[str, int | None], None] | None = None,
) -> Manifest:
    """Take one backup of ``engine``'s source under its lock; returns the committed manifest.

    ``backup_type`` full, differential (on the newest full) or incremental (on the newest backup of
    that full's chain). For a source whose changes are its log, a backup on a base makes sure the
    vault's log holds everything up to the position the engine returns (waiting for the running
    capture, or capturing up to there itself) and records that range.

    Every attempt leaves a record: a failure writes a FAILED manifest with the
    error, then the error is raised (never swallowed).

    ``on_bytes(done, total)`` is told the plaintext bytes stored so far after each chunk (from the
    vault's threads; it must only record them), ``total`` the source's estimated size
    (``core.estimate``) or None; ``on_begin(backup_id, total)`` once the backup has its id.
    """
    name = engine.config.name
    if backup_type not in engine.backup_types:
        raise ConfigError(
            f"{name}: a {engine.kind} source takes {' and '.join(engine.backup_types)} backups, not {backup_type}"
            + (
                "; its continuous capture ('genesis-dr capture') gives point-in-time restores"
                if engine.captures_log
                else ""
            )
        )
    with vault.lock(name, f"{backup_type} backup"):
        base = None if backup_type == "full" else choose_base(vault.list_backups(name), name, backup_type)
        writer = vault.begin_backup(
            source=name,
            kind=engine.kind,
            backup_type=backup_type,
            target=engine.describe(),
            keyring=keyring,
            compression=compression,
            parent=base.id if base else None,
            chain=(base.chain or base.id) if base else None,
            labels=labels,
        )
        if on_bytes is not None:
            total = estimate_bytes(engine, backup_type)
            writer.moved = ByteCounter(on_bytes, total).add
            if on_begin is not None:
                on_begin(writer.id, total)
        reader = _BaseReader(vault, keyring, base.id) if base else None
        try:
            engine.ping()
            on = None
            if base is not None:
                on = BaseBackup(
                    id=base.id,
                    type=base.type,
                    ended_at=base.ended_at,
                    result=BackupResult(position=base.position, tool_versions=base.tool_versions),
                    reader=reader,
                )
            result = engine.backup(writer, on) if on is not None else engine.backup(writer)
            if base is not None and engine.captures_log:
                writer.set_chain(
                    base.chain or base.id, _ship_log(vault, keyring, engine, base, result.position, progress)
                )
        except BaseException as exc:
            try:
                writer.fail(exc)
            except DRError as record_exc:
                # The vault may be the thing that failed (full, unreachable); say both.
                if isinstance(exc, DRError):
                    raise type(exc)(f"{exc} (and the FAILED record could not be written: {record_exc})") from None
            raise
        finally:
            if reader is not None:
                reader.close()
        return writer.commit(result)


def _ship_log(vault: Vault, keyring: Keyring, engine: Engine, base: Manifest, until: dict, progress) -> dict:
    """Make the vault's log reach ``until`` (the running capture ships it, or we capture it here)
    and return the range a backup on ``base`` records: from the base's position to ``until``."""
    name, kind = engine.config.name, engine.kind
    order = lambda p: position_order(kind, p)  # noqa: E731
    if vault.capture_running(name):
        deadline = time.monotonic() + max(120.0, 4.0 * float(getattr(engine.config, "rpo_seconds", 30)))
        while True:
            pieces = vault.log_pieces(name)
            if pieces and order(pieces[-1].end) >= order(until):
                break
            if time.monotonic() > deadline:
                reached = position_text(kind, pieces[-1].end) if pieces else "nothing"
                raise LogGapError(
                    f"{name}: the running capture has not shipped the log up to {position_text(kind, until)} "
                    f"(it reached {reached}); check the capture run's log"
                )
            cancel.check(f"{base.type} backup of {name}")
            time.sleep(0.5)
    else:
        capture_source(vault, keyring, engine, threading.Event(), until=until, progress=progress)
        pieces = vault.log_pieces(name)
    begin = base.log.get("to") if base.log else log_start(kind, base.position) or base.position
    covering = [p for p in pieces if order(p.end) > order(begin) and order(p.start) < order(until)]
    if not covering and order(begin) < order(until):
        raise LogGapError(
            f"{name}: the vault's log does not hold {position_text(kind, begin)} -> {position_text(kind, until)}; "
            "take a new full backup"
        )
    return {
        "from": begin,
        "to": until,
        "pieces": [covering[0].seq, covering[-1].seq] if covering else [],
    }


def capture_source(
    vault: Vault,
    keyring: Keyring,
    engine: Engine,
    stop: threading.Event,
    *,
    until: dict | None = None,
    progress: Progress | None = None,
) -> dict:
    """Ship ``engine``'s log into the vault until ``stop`` is set (or, with ``until``, once the log
    reaches that position), under the source's capture lease: never its backup lease, so a running
    capture never blocks a full backup. Returns what was shipped."""
    name = engine.config.name
    if not engine.captures_log:
        raise ConfigError(f"{name}: a {engine.kind} source has no log to capture; its backups are its chain")
    say = progress or _quiet
    started = time.monotonic()
    passphrase_key_id = vault.check_passphrase(keyring)

    def newest_full() -> Manifest | None:
        fulls = [
            m
            for m in vault.list_backups(name)
            if m.status == COMPLETED and m.type == "full" and m.labels.get("purpose") != "rollback"
        ]
        return max(fulls, key=lambda m: m.ended_at) if fulls else None

    def take_full() -> BackupResult:
        manifest = backup_source(vault, keyring, engine, "full", progress=progress)
        say(f"capture of {name}: took full backup {manifest.id} to start the log from")
        return BackupResult(position=manifest.position, tool_versions=manifest.tool_versions)

    with vault.lock(CAPTURE_LEASE_PREFIX + name, "log capture") as lease:
        log = LogWriter(
            vault.store,
            name,
            engine.kind,
            keyring,
            passphrase_key_id,
            newest_full=newest_full,
            take_full=take_full,
            progress=say,
            lease=lease,
        )
        try:
            engine.ping()
            engine.capture(log, stop, until)
        finally:
            log.close()
    return {
        "source": name,
        "pieces": log.shipped,
        "stored_bytes": log.shipped_bytes,
        "seconds": round(time.monotonic() - started, 3),
        "last": log.last_piece().end if log.last_piece() else None,
    }


def validate_backup(vault: Vault, keyring: Keyring, backup_id: str) -> dict:
    """Read and authenticate every object of a backup without restoring it."""
    reader = vault.open_backup(backup_id, keyring)
    try:
        checked = reader.verify_objects()
    finally:
        reader.close()
    return {"backup_id": backup_id, "plain_bytes_checked": checked, "streams": reader.stream_names()}
