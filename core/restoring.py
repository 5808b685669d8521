"""Restores: one backup, or a chain to a point in time, into a target that is never left worse off.

Plain functions over a vault, a keyring and an engine; no Prefect here. Both kinds of
restore run the same guarded sequence (``_restore``): lock and mark the target, refuse
one that holds data unless forced, take a rollback point, restore beside the target
and swap where the engine can (else prove every object readable first), verify, and
put the rollback point back by itself if anything fails after the target changed.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core import cancel, targets
from core.chains import check_reaches, parse_iso, plan_chain_restore
from core.crypto.keys import Keyring
from core.engines import engine_for
from core.engines.base import ChainSteps, Engine, StopPoint, compare_checks
from core.errors import ConfigError, DRError, EngineError, TargetNotEmptyError, VerificationError
from core.repository.manifest import COMPLETED
from core.repository.streams import ByteCounter
from core.repository.vault import Vault
from core.retention import erasure
from core.timing import StageClock


@dataclass
class RestoreReport:
    """What a restore did: the document an operator reads at 3 a.m."""

    backup_id: str
    source: str
    target: str
    rollback_backup_id: str | None
    verified_checks: int
    plain_bytes: int
    seconds: float
    method: str = "in place"  # or "staged beside the target, then swapped in"
    # Every object not restored exactly as it was backed up, and everything the backup left out.
    notes: list[str] = field(default_factory=list)
    skipped_at_backup: list[str] = field(default_factory=list)
    interrupted_before: str | None = None  # the mark an earlier, killed restore left on this target
    mismatches: list[str] = field(default_factory=list)
    # Point-in-time restores: where the restore ended ({"time", "position", "proof"}), how far short
    # of the target time, and the checks that could not be compared at a point between backups.
    recovery_point: dict | None = None
    data_loss_s: float | None = None
    unproven: list[str] = field(default_factory=list)
    # GDPR erasure requests of the source re-applied after verification (core.retention.erasure), and
    # what each step removed; False in erasures_applied: the caller compares first and re-applies them.
    erasures: list[str] = field(default_factory=list)
    erasure_lines: list[str] = field(default_factory=list)
    erasures_applied: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def render_report(report: dict) -> str:
    """The restore report as text: outcome first, then everything that was not restored exactly."""
    lines = [
        f"restored {report['backup_id']} into {report['target']} in {report['seconds']:.1f}s "
        f"({report['method']}); verified {report['verified_checks']} checks recorded at backup time"
    ]
    if report.get("rollback_backup_id"):
        lines.append(f"rollback point: {report['rollback_backup_id']} (restore it to undo)")
    point = report.get("recovery_point")
    if point:
        loss = report.get("data_loss_s") or 0.0
        lines.append(f"recovery point: {point.get('time')} ({loss:.1f}s before the target time); {point.get('proof')}")
    for line in report.get("unproven") or []:
        lines.append(f"NOT PROVEN BY CHECKS: {line}")
    if report.get("interrupted_before"):
        lines.append(f"found and replaced an interrupted restore: {report['interrupted_before']}")
    notes = report.get("notes") or []
    skipped = report.get("skipped_at_backup") or []
    if not notes and not skipped:
        lines.append("exact: every object was restored as it was backed up")
    for note in notes:
        lines.append(f"NOT AS BACKED UP: {note}")
    for entry in skipped:
        lines.append(f"NOT IN THE BACKUP (skipped when it was taken): {entry}")
    erased = report.get("erasures") or []
    if erased:
        state = "re-applied" if report.get("erasures_applied", True) else "NOT YET re-applied"
        lines.append(f"erasures {state}: {len(erased)} ({', '.join(erased)})")
        lines += [f"  {line}" for line in report.get("erasure_lines") or []]
    return "\n".join(lines)


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


def _with_context(exc: BaseException, context: str) -> BaseException:
    """The same error class (same exit code) with what happened to the target appended."""
    if context in str(exc):  # the engine said it already
        return exc
    if isinstance(exc, DRError):
        error = type(exc)(f"{exc.message}; {context}")
        error.exit_code = exc.exit_code
        return error
    error = EngineError(f"{type(exc).__name__}: {exc}; {context}")
    return error


Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    """The default progress sink: core never logs on its own (the flow's task routes progress to the run log)."""


def size_text(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _verify_reporting(engine: Engine, expected: dict, backup_id: str, say: Progress) -> int:
    started = time.monotonic()
    verified = verify_target(engine, expected, backup_id)
    say(
        f"verified {verified} checks recorded at backup time against {engine.describe()} in {time.monotonic() - started:.1f}s"
    )
    return verified


def _restore_in_place(
    reader, engine: Engine, backup_id: str, say: Progress = _quiet, verify: bool = True
) -> tuple[list[str], int]:
    notes = engine.restore(reader, reader.result) or []
    if not verify:  # the caller compares (a restore-level validation or drill, which reports the differences)
        return list(notes), 0
    return list(notes), _verify_reporting(engine, reader.result.checks, backup_id, say)


def _put_back(vault: Vault, keyring: Keyring, rollback_id: str, engine: Engine) -> None:
    reader = vault.open_backup(rollback_id, keyring)
    try:
        _restore_in_place(reader, engine, rollback_id)
    finally:
        reader.close()


class _Backup:
    """What a restore of one backup loads: its streams, proved by its recorded checks."""

    def __init__(
        self, vault: Vault, keyring: Keyring, backup_id: str, say: Progress, clock: StageClock | None = None
    ) -> None:
        self.reader = vault.open_backup(backup_id, keyring)  # key, MAC and version checked before the target
        self.reader.clock, self.clock, self.verify = clock, clock, True
        self.label, self.manifest = backup_id, self.reader.manifest
        self.plain_bytes = self.manifest.plain_bytes
        m = self.manifest
        say(
            f"opened backup {backup_id} of {m.source} ({size_text(m.plain_bytes)} in {len(m.streams)} streams, "
            f"ended {m.ended_at}): key and manifest checked"
        )
        self.read: set[str] = set()

        def loaded(name: str, size: int, secs: float) -> None:
            self.read.add(name)
            say(f"stream {name} loaded: {size_text(size)} in {secs:.1f}s, SHA-256 matched")

        self.reader.on_stream_read = loaded
        self.extra: dict = {}

    def count(self, counter: ByteCounter) -> None:
        self.reader.moved = counter.add

    def verify_objects(self) -> int:
        # The proof read before an in-place restore is not the restore's progress: only the load counts.
        self.reader.on_stream_read, report = None, self.reader.on_stream_read
        self.reader.moved, moved = None, self.reader.moved
        try:
            return self.reader.verify_objects()
        finally:
            self.reader.on_stream_read, self.reader.moved = report, moved

    def into(self, engine: Engine, say: Progress) -> tuple[list[str], int]:
        started = time.monotonic()
        notes, verified = _restore_in_place(self.reader, engine, self.label, say, self.verify)
        if self.clock is not None:
            self.clock.add("load", time.monotonic() - started)
        # Every object of a restored backup is authenticated, also a stream the engine did not need
        # (an index, a sidecar): a damaged backup must never pass as a good one.
        for name in self.reader.stream_names():
            if name not in self.read:
                for _ in self.reader.iter_stream(name):
                    pass
        return notes, verified

    def close(self) -> None:
        self.reader.close()


class _Chain:
    """What a point-in-time restore loads: exactly the plan's backups and log pieces, in order."""

    def __init__(
        self, vault: Vault, keyring: Keyring, plan: dict, say: Progress, clock: StageClock | None = None
    ) -> None:
        self.plan, self.clock, self.verify = plan, clock, True
        source = plan["source"]
        self.label = f"{source} at {plan['recovery_time']}"
        self.base = vault.open_backup(plan["base_id"], keyring)
        self.manifest = self.base.manifest
        self.layers = []
        self.log = None
        try:
            self.layers = [vault.open_backup(i, keyring) for i in plan["layers"]]
            self.log = vault.log_reader(source, keyring)
            for reader in [self.base, *self.layers]:
                reader.clock = clock
            self.log.clock = clock
            index = vault.log_index(source)
            self.records = [index.record(seq) for seq in plan["pieces"]]
        except BaseException:
            self.close()
            raise
        self.plain_bytes = int(plan["plain_bytes"])
        self.stop = StopPoint(time=parse_iso(plan["stop_time"]) if plan.get("stop_time") else None)
        say(
            f"opened {plan['base_id']}, {len(self.layers)} backups on it and {len(self.records)} log pieces of "
            f"{source} ({size_text(plan['plain_bytes'])}): keys and records checked"
        )
        self.extra: dict = {}

    def count(self, counter: ByteCounter) -> None:
        for reader in [self.base, *self.layers, self.log]:
            reader.moved = counter.add

    def verify_objects(self) -> int:
        readers = [self.base, *self.layers, self.log]
        moved = [r.moved for r in readers]
        for reader in readers:  # the proof read is not the restore's progress (see _Backup.verify_objects)
            reader.moved = None
        try:
            total = sum(r.verify_objects() for r in [self.base, *self.layers])
            for record in self.records:
                total += sum(len(piece) for piece in self.log.iter_piece(record))
        finally:
            for reader, told in zip(readers, moved, strict=True):
                reader.moved = told
        return total

    def into(self, engine: Engine, say: Progress) -> tuple[list[str], int]:
        if not self.layers and not self.records:
            # Nothing to apply or replay: the restore of the full itself, proved by its checks.
            m = self.base.manifest
            self.extra = {
                "recovery_point": {
                    "time": m.ended_at,
                    "position": m.position,
                    "proof": f"the state of backup {m.id} (nothing in the vault after it reaches the target)",
                },
                "data_loss_s": self.plan["data_loss_s"],
            }
            started = time.monotonic()
            try:
                return _restore_in_place(self.base, engine, m.id, say, self.verify)
            finally:
                if self.clock is not None:
                    self.clock.add("load", time.monotonic() - started)
        # Load (the full and the layers) until the first log piece is opened; replay from there.
        started, replay_from = time.monotonic(), []

        def timed(opener):
            def open_piece():
                if not replay_from:
                    replay_from.append(time.monotonic())
                return opener()

            return open_piece

        steps = ChainSteps(
            base=self.base,
            layers=self.layers,
            pieces=[(record.info, timed(self.log.opener(record))) for record in self.records],
        )
        try:
            point = engine.restore_chain(steps, self.stop, say)
        finally:
            if self.clock is not None:
                ended = time.monotonic()
                self.clock.add("load", (replay_from[0] if replay_from else ended) - started)
                self.clock.add("replay", ended - replay_from[0] if replay_from else 0.0)
        last = self.layers[-1] if self.layers else self.base
        self.extra = {
            "recovery_point": {"time": point.time, "position": point.position, "proof": point.proof},
            "data_loss_s": self.plan["data_loss_s"],
        }
        if self.records:
            # Replayed past the last backup: its checks describe an earlier instant.
            self.extra["unproven"] = [
                f"the checks of {last.manifest.id} describe {last.manifest.ended_at}, before the recovery point: "
                f"{len(self.records)} log pieces were replayed after it; the recovery point is proven by {point.proof}"
            ]
            say(f"recovery point {point.time} reached; {point.proof}")
            return list(point.notes), 0
        say(f"recovery point {point.time}: the state of {last.manifest.id}; {point.proof}")
        if not self.verify:
            return list(point.notes), 0
        if not last.result.checks:
            self.extra["unproven"] = [
                f"{last.manifest.id} recorded no checks; the recovery point is proven by {point.proof}"
            ]
            return list(point.notes), 0
        return list(point.notes), _verify_reporting(engine, last.result.checks, last.manifest.id, say)

    def close(self) -> None:
        for reader in [getattr(self, "base", None), *self.layers]:
            if reader is not None:
                reader.close()
        if self.log is not None:
            self.log.close()


def _check_room(engine: Engine, needed: int) -> None:
    """Refuse before anything changes when the directory a restore writes into (a files root, a
    recovered PostgreSQL data directory) has less free space than the plaintext it will hold."""
    where = getattr(engine.config, "data_dir", None) or getattr(engine.config, "root", None)
    if not where:
        return  # a database server's own disk: the server reports it
    path = Path(where)
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    if free < needed:
        raise ConfigError(
            f"restore target {engine.describe()}: {path} has {size_text(free)} free but the restore writes "
            f"{size_text(needed)}; free space there or choose another target"
        )


def _restore_staged(load, engine: Engine, staged: Engine, say: Progress = _quiet) -> tuple[list[str], int]:
    """Restore into the sibling and verify it there; the target is untouched (the caller swaps it in)."""
    try:
        notes, verified = load.into(staged, say)
        cancel.check(f"restore of {load.label} into {engine.describe()}")
    except BaseException as exc:
        try:
            staged.discard()
        except Exception as cleanup:  # the restore's error comes first; the leftover is named
            raise _with_context(
                exc,
                f"the target was not changed (and the staged copy {staged.describe()} could not be removed: {cleanup})",
            ) from None
        raise _with_context(exc, "the target was not changed") from None
    return list(notes), verified


def restore_backup(
    vault: Vault,
    keyring: Keyring,
    backup_id: str,
    engine: Engine,
    *,
    force: bool = False,
    rollback: bool = True,
    progress: Progress | None = None,
    verify: bool = True,
    clock: StageClock | None = None,
    erasure_rules: dict | None = None,
    on_bytes: Callable[[int, int | None], None] | None = None,
) -> RestoreReport:
    """Restore ``backup_id`` into ``engine``'s target and prove it with the recorded checks.

    The vault is only read; the lock is the target's (``core.targets``). A target
    that holds data is refused unless ``force``; with ``force`` a rollback backup
    of the target is taken first, and nothing is destroyed before the backup is
    proven readable: engines that can restore beside the target and swap the
    verified copy in; the others have every object of the backup authenticated
    first, and if the restore fails after it changed the target, the rollback
    point is put back automatically. Every error after a destructive step names
    the rollback backup.

    ``progress`` is told each step in one line (what, sizes, times): the run log an
    operator watches.

    ``verify=False`` skips only the comparison with the recorded checks (a restore-level
    validation compares itself, and reports the differences as a check result); ``clock``
    collects the seconds per stage (fetch, decrypt, load, replay) of a drill.

    Every GDPR erasure recorded for the backup's source is re-applied on the restored target
    after the verification (``core.retention.erasure``), with the rule recorded in the vault or
    ``erasure_rules`` (the stack's ``retention.erasure``, which win); the report names them. A
    request the keyring cannot open stops the restore before the target changes; a failing
    statement raises ErasureError after it (the restored data stays). With ``verify=False``
    the caller compares first, then calls ``reapply_erasures``.

    ``on_bytes(done, total)`` is told the plaintext bytes loaded so far after each chunk (from the
    vault's threads; it must only record them), ``total`` the backup's (or the plan's) plaintext size.
    """
    say = progress or _quiet
    manifest = vault.manifest(backup_id)
    if manifest.type != "full" and manifest.status == COMPLETED:
        # A backup on a base is restored as its chain up to its own end: the full, the layers, the log.
        plan = plan_chain_restore(
            vault.list_backups(manifest.source),
            vault.log_pieces(manifest.source) if engine.captures_log else [],
            manifest.source,
            engine.kind,
            parse_iso(manifest.ended_at),
            datetime.now(UTC),
            target=engine.describe(),
            target_has_data=False,
            force=force,
        )
        check_reaches(plan, manifest)
        load = _Chain(vault, keyring, plan.to_dict(), say, clock)
    else:
        load = _Backup(vault, keyring, backup_id, say, clock)
    load.verify = verify
    if on_bytes is not None:
        load.count(ByteCounter(on_bytes, load.plain_bytes))
    return _restore(vault, keyring, load, engine, force, rollback, say, erasure_rules)


def restore_chain_plan(
    vault: Vault,
    keyring: Keyring,
    plan: dict,
    engine: Engine,
    *,
    force: bool = False,
    rollback: bool = True,
    progress: Progress | None = None,
    verify: bool = True,
    clock: StageClock | None = None,
    erasure_rules: dict | None = None,
    on_bytes: Callable[[int, int | None], None] | None = None,
) -> RestoreReport:
    """Execute a point-in-time plan (``core.chains.plan_chain_restore``) exactly as it reads: its
    full, the backups on it and its log pieces, replayed to its stop time, with the same target
    protection as ``restore_backup``. The report gives the recovery point and how it was proven;
    recorded erasures are re-applied, and ``on_bytes`` told, as ``restore_backup`` does."""
    say = progress or _quiet
    load = _Chain(vault, keyring, plan, say, clock)
    load.verify = verify  # False: only the comparison with the recorded checks is skipped (see restore_backup)
    if on_bytes is not None:
        load.count(ByteCounter(on_bytes, load.plain_bytes))
    return _restore(vault, keyring, load, engine, force, rollback, say, erasure_rules)


def reapply_erasures(
    vault: Vault, keyring: Keyring, engine: Engine, source: str, say: Progress = _quiet, rules: dict | None = None
) -> tuple[list[str], list[str]]:
    """Re-apply every erasure recorded for ``source`` on ``engine``'s restored target: (request ids, report lines).

    For callers that restore with ``verify=False`` and compare the target themselves (a restore-level
    validation, a drill): call this after the comparison."""
    rule, subjects = erasure.reapply_on_restore(vault, keyring, source, rules)
    return _erase(engine, source, rule, subjects, say)


def _erase(
    engine: Engine, source: str, rule, subjects: list[tuple[str, str]], say: Progress
) -> tuple[list[str], list[str]]:
    if not subjects:
        return [], []
    ids = [request_id for request_id, _ in subjects]
    lines = erasure.apply_erasures(engine, rule, subjects, say, source=source)
    say(f"erasures re-applied on {engine.describe()}: {len(ids)} ({', '.join(ids)}) of {source}")
    return ids, lines


def _restore(
    vault: Vault,
    keyring: Keyring,
    load,
    engine: Engine,
    force: bool,
    rollback: bool,
    say: Progress,
    erasure_rules: dict | None = None,
) -> RestoreReport:
    started = time.monotonic()
    label, manifest = load.label, load.manifest
    try:
        # Unsealed before the target changes: a request these keys cannot open stops the restore here.
        rule, subjects = erasure.reapply_on_restore(vault, keyring, manifest.source, erasure_rules)
        engine.ping_target()
        _check_room(engine, load.plain_bytes)
        with targets.guard(engine.target_key(), f"restore of {label}") as target:
            interrupted = target.previous
            if interrupted and interrupted.staged_tag:
                leftover = engine.stage(interrupted.staged_tag)
                if leftover is not None:
                    leftover.discard()
            has_data = engine.has_data()
            if has_data and not force:
                was = f" (left there by an interrupted restore: {interrupted.describe()})" if interrupted else ""
                raise TargetNotEmptyError(
                    f"restore target {engine.describe()} already holds data{was}; choose an empty target, or pass "
                    "--force (a rollback backup of the target is taken first)"
                )
            tag = secrets.token_hex(4)
            # Beside the target only when there is something to protect: an empty target has nothing
            # to lose, and a swap costs a DROP DATABASE (a checkpoint after a large load) for nothing.
            staged = engine.stage(tag) if has_data else None
            say(f"target {engine.describe()}: {'holds data' if has_data else 'empty'}")
            if staged is None and has_data:
                # In place over data: prove every object readable before destroying anything.
                step = time.monotonic()
                checked = load.verify_objects()
                say(
                    f"read and authenticated every object of {label} first: {size_text(checked)} in {time.monotonic() - step:.1f}s"
                )
            rollback_id = None
            if has_data and rollback:
                step = time.monotonic()
                rollback_id = _take_rollback(vault, keyring, engine, label)
                say(
                    f"rollback point: backup {rollback_id} of {engine.describe()} taken in {time.monotonic() - step:.1f}s"
                )
            target.mark(manifest.id, rollback_id, tag if staged is not None else None)
            if staged is not None:
                say(f"restoring beside the target into {staged.describe()}, then swapping it in")
                try:
                    notes, verified = _restore_staged(load, engine, staged, say)
                except BaseException:
                    target.clear()  # the staged copy is gone and the target was never touched
                    raise
                try:
                    engine.swap_in(staged)
                except BaseException as exc:
                    raise _recover(vault, keyring, engine, exc, rollback_id, has_data, target) from None
                say(f"swapped the verified copy into place as {engine.describe()}")
            else:
                say(f"restoring in place into {engine.describe()}")
                try:
                    notes, verified = load.into(engine, say)
                except BaseException as exc:
                    raise _recover(vault, keyring, engine, exc, rollback_id, has_data, target) from None
            erased, erasure_lines = [], []
            if load.verify:  # after the verification: the checks describe the data as backed up
                try:
                    erased, erasure_lines = _erase(engine, manifest.source, rule, subjects, say)
                except BaseException as exc:
                    target.clear()  # the restore itself is complete; the error says the subject is still there
                    if rollback_id:
                        raise _with_context(exc, f"rollback point: backup {rollback_id}") from None
                    raise
            target.clear()
            say(f"restore of {label} into {engine.describe()} done in {time.monotonic() - started:.1f}s")
        return RestoreReport(
            backup_id=manifest.id,
            source=manifest.source,
            target=engine.describe(),
            rollback_backup_id=rollback_id,
            verified_checks=verified,
            plain_bytes=manifest.plain_bytes,
            seconds=round(time.monotonic() - started, 3),
            method="staged beside the target, verified, then swapped in" if staged is not None else "in place",
            # A note restating a skip the manifest records is listed once, as a skip.
            notes=[n for n in notes if not any(n.startswith(entry) for entry in manifest.skipped)],
            skipped_at_backup=list(manifest.skipped),
            interrupted_before=interrupted.describe() if interrupted else None,
            recovery_point=load.extra.get("recovery_point"),
            data_loss_s=load.extra.get("data_loss_s"),
            unproven=load.extra.get("unproven", []),
            erasures=erased if load.verify else [request_id for request_id, _ in subjects],
            erasure_lines=erasure_lines,
            erasures_applied=load.verify or not subjects,
        )
    finally:
        load.close()


def _take_rollback(vault: Vault, keyring: Keyring, engine: Engine, backup_id: str) -> str:
    from core.operations import backup_source  # backups and restores call each other only here

    try:
        return backup_source(
            vault,
            keyring,
            engine_for(engine.rollback_config()),
            "full",
            labels={"purpose": "rollback", "before_restore_of": backup_id},
        ).id
    except DRError as exc:
        raise _with_context(
            exc,
            f"could not take the rollback backup of {engine.describe()} before restoring over it, so the target was "
            "not changed; restore into an empty target, or make the vault writable",
        ) from None


def _recover(vault, keyring, engine: Engine, exc: BaseException, rollback_id, had_data: bool, target) -> BaseException:
    """After an in-place restore failed: put the rollback point back, and say exactly where the target stands."""
    if rollback_id:
        try:
            _put_back(vault, keyring, rollback_id, engine)
        except BaseException as again:
            return _with_context(
                exc,
                f"the target was changed and putting back rollback backup {rollback_id} failed too ({again}); "
                f"restore {rollback_id} with --force before using this target",
            )
        target.clear()
        return _with_context(exc, f"the target was put back to rollback backup {rollback_id} and verified")
    if had_data:
        return _with_context(exc, "the target was changed and no rollback backup was taken; restore it with --force")
    try:
        left_empty = not engine.has_data()
    except DRError:
        left_empty = False  # cannot tell: keep the mark
    if left_empty:  # the engine removed what it had written
        target.clear()
        return _with_context(exc, "the target is empty, as it was before")
    return _with_context(
        exc, "the target (empty before) is left partially restored and marked so; restore again with --force"
    )
