"""Restore-level checks: restore one source into a throw-away sandbox and prove the result.

``check_restore`` picks what to restore (a backup, the newest point at or before a time,
or the newest backup), opens a sandbox of the source's kind (or the stack's drill
target for it, refused if it is a production source or holds data), restores with the
ordinary restore machinery without its own verification, then compares the sandbox
with the checks recorded at backup time, runs the stack's smoke queries and re-applies the
GDPR erasures recorded for the source (as every restore does, after the comparison). Every
outcome is a ``CheckResult``: a failed restore is a failed check, never an exception
(a cancelled run and programming errors still raise). The sandbox is torn down when
the check ends, whatever happened. ``stages`` gives the seconds per stage a drill
reports: sandbox start, fetch and decrypt (busy time in the reader threads), load and
replay (wall spans), verify (comparison and smoke queries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import cancel
from core.cancel import InterruptedRunError
from core.chains import iso, parse_iso, plan_chain_restore
from core.crypto.keys import Keyring
from core.engines import engine_for
from core.engines.base import Engine, compare_checks
from core.errors import DRError, SandboxError
from core.repository.manifest import COMPLETED, Manifest
from core.repository.vault import Vault
from core.restoring import count_checks, reapply_erasures, restore_backup, restore_chain_plan
from core.sandbox import open_sandbox
from core.timing import STAGES, StageClock
from core.validation.results import CheckResult, not_checked
from core.validation.smoke import run_smoke

Progress = Callable[[str], None]
SANDBOX_KINDS = ("postgres", "mysql", "redis", "files")
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


@dataclass
class SourceRecovery:
    """One source restored and checked: what, where, to which point, every result and the stages."""

    source: str
    kind: str
    backup_id: str
    recovery_point: str | None  # ISO time the restored data stands at
    results: list[CheckResult] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the whole check (sandbox teardown included)
    # Wall time from the start until the restored data was proven (checks and smoke queries done), before the
    # sandbox was torn down: when this source was back in service, which is what an RTO measures.
    recovered_s: float | None = None
    target: str = ""  # the sandbox (or drill target) restored into
    report: dict | None = None  # RestoreReport.to_dict()

    @property
    def passed(self) -> bool:
        return not any(r.failed and r.critical for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


def _quiet(_message: str) -> None:
    """Core never logs on its own: the caller's ``progress`` gets the lines."""


def _naming(say: Progress, source: str, backup_id: str) -> Progress:
    """``say`` with every line as ``<source>: <backup id>: <line>`` (the run log of a validation or drill checks
    many sources and backups at once), a line that starts with either already named only once."""

    def named(message: str) -> None:
        for name in (source, backup_id):
            message = message.removeprefix(f"{name}: ")
        say(f"{source}: {backup_id}: {message}")

    return named


# -- what to restore -------------------------------------------------------------------------


@dataclass
class _Choice:
    label: str  # backup id, or "source at time"
    backup_id: str  # the backup restored (a chain's full for a point-in-time plan)
    physical: bool
    plan: dict | None = None  # a point-in-time plan (restore_chain_plan), else restore_backup(backup_id)
    compare_with: str = ""  # whose recorded checks the restored data must match


def _usable(manifests: list[Manifest], source: str) -> list[Manifest]:
    return sorted(
        (
            m
            for m in manifests
            if m.source == source and m.status == COMPLETED and m.labels.get("purpose") != "rollback"
        ),
        key=lambda m: m.ended_at,
    )


def _physical(vault: Vault, manifest: Manifest) -> bool:
    if manifest.kind != "postgres":
        return False
    full = manifest if manifest.type == "full" else vault.manifest(manifest.chain or manifest.id)
    return bool(full.position.get("physical"))


def _choose(vault: Vault, src: Any, backup_id: str | None, target_time: datetime | None) -> _Choice:
    name = src.name
    if backup_id:
        manifest = vault.manifest(backup_id)
        if manifest.source != name:
            raise DRError(f"backup {backup_id} is of {manifest.source}, not {name}; give a backup of {name}")
        return _Choice(backup_id, backup_id, _physical(vault, manifest), compare_with=backup_id)
    manifests = vault.list_backups(name)
    if target_time is None:
        usable = _usable(manifests, name)
        if not usable:
            raise DRError(f"{name}: the vault holds no completed backup of it; run 'genesis-dr backup' first")
        newest = usable[-1]
        return _Choice(newest.id, newest.id, _physical(vault, newest), compare_with=newest.id)
    captures = engine_for(src).captures_log
    plan = plan_chain_restore(
        manifests,
        vault.log_pieces(name) if captures else [],
        name,
        src.kind,
        target_time,
        datetime.now(UTC),
        target="a sandbox",
        target_has_data=False,
        force=False,
    ).to_dict()
    base = vault.manifest(plan["base_id"])
    last = plan["layers"][-1] if plan["layers"] else plan["base_id"]
    if not plan["layers"] and not plan["pieces"]:  # the full alone: an ordinary restore of it
        return _Choice(base.id, base.id, _physical(vault, base), compare_with=base.id)
    return _Choice(f"{name} at {plan['recovery_time']}", base.id, _physical(vault, base), plan, last)


# -- where to restore ------------------------------------------------------------------------


def _identity(cfg: Any) -> tuple:
    """What makes two configs the same target (loopback names are one host)."""
    kind = cfg.kind
    if kind == "files":
        return ("files", str(Path(cfg.root).resolve()))
    host = (cfg.host or "").lower()
    host = "loopback" if host in _LOOPBACK else host
    if kind == "postgres":
        return ("postgres", host, cfg.port) if cfg.data_dir else ("postgres", host, cfg.port, cfg.database)
    if kind == "mysql":
        return ("mysql", cfg.socket) if cfg.socket else ("mysql", host, cfg.port, cfg.database)
    return (kind, host, cfg.port)


def _same_target(target: Any, source: Any) -> bool:
    if target.kind != source.kind:
        return False
    if target.kind == "files":
        a, b = Path(target.root).resolve(), Path(source.root).resolve()
        return a == b or a in b.parents or b in a.parents  # one inside the other: a restore would reach it
    mine, theirs = _identity(target), _identity(source)
    if target.kind == "postgres" and (target.data_dir or getattr(source, "data_dir", None)):
        return mine[:3] == theirs[:3]  # a new cluster on a source's host:port is that server
    return mine == theirs


def drill_target_config(config: Any, src: Any, fields: dict[str, Any]) -> Any:
    """The stack's drill target for ``src``: its fields over the source's; SandboxError if it is any
    source of the stack (a drill never touches production)."""
    target = type(src).model_validate({**src.model_dump(), **fields, "name": src.name})
    for other in config.sources:
        if _same_target(target, other):
            raise SandboxError(
                f"drill target of {src.name} is the production target of source {other.name} "
                f"({engine_for(other).describe()}); point drill.targets.{src.name} at a test environment"
            )
    return target


@contextmanager
def _restore_target(
    config: Any, src: Any, physical: bool, clock: StageClock, say: Progress
) -> Iterator[tuple[Any, str]]:
    fields = (getattr(getattr(config, "drill", None), "targets", None) or {}).get(src.name)
    if fields:
        target = drill_target_config(config, src, fields)
        engine = engine_for(target)
        started = time.monotonic()
        engine.ping_target()
        if engine.has_data():
            raise SandboxError(
                f"drill target {engine.describe()} of {src.name} is not empty; empty it (a drill restores only into "
                "an empty test environment) or remove drill.targets." + src.name
            )
        clock.add("sandbox", time.monotonic() - started)
        say(f"{src.name}: restoring into the drill target {engine.describe()}")
        yield target, engine.describe()
        return
    with open_sandbox(src, physical=physical) as sandbox:
        clock.add("sandbox", sandbox.started_s)
        say(f"{src.name}: {sandbox.describe()} ready in {sandbox.started_s:.1f}s")
        yield sandbox.config, sandbox.describe()


# -- the check -------------------------------------------------------------------------------


def _failed(name: str, detail: str, remedy: str, source: str, backup_id: str, started: float) -> CheckResult:
    return CheckResult(name, False, detail, remedy=remedy, source=source, backup_id=backup_id, seconds=_since(started))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _data_checks(
    vault: Vault, keyring: Keyring, engine: Engine, choice: _Choice, report: dict, source: str
) -> CheckResult:
    started = time.monotonic()
    backup = choice.compare_with
    if report.get("unproven"):
        # Replayed past the last backup: its checks describe an earlier instant than the data.
        return not_checked("data checks", report["unproven"][0], source=source, backup_id=backup)
    reader = vault.open_backup(backup, keyring)
    try:
        expected = reader.result.checks
    finally:
        reader.close()
    if not expected:
        return not_checked("data checks", f"backup {backup} recorded no checks", source=source, backup_id=backup)
    try:
        diffs = compare_checks(expected, engine.collect_checks(expected))
    except DRError as exc:
        return _failed(
            "data checks",
            f"could not read the restored data back: {exc.message}",
            "investigate the restore (the sandbox's server log) and validate again",
            source,
            backup,
            started,
        )
    if diffs:
        more = f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else ""
        return _failed(
            "data checks",
            f"{len(diffs)} differences from the checks recorded at backup time: {'; '.join(diffs[:3])}{more}",
            "the restored data is not what was backed up; restore from another backup and investigate this one",
            source,
            backup,
            started,
        )
    return CheckResult(
        "data checks",
        True,
        f"{count_checks(expected)} checks recorded at backup time matched the restored data",
        source=source,
        backup_id=backup,
        seconds=_since(started),
    )


def _erasure_rules(config: Any) -> dict | None:
    """The stack's current erasure rules: they win over the ones recorded with the requests."""
    retention = getattr(config, "retention", None)
    return retention.erasure if retention is not None else None


def _erasures(
    config: Any, vault: Vault, keyring: Keyring, engine: Engine, source: str, backup: str, report: dict, say: Progress
) -> CheckResult | None:
    """Re-apply the recorded GDPR erasures on the restored sandbox (the restore ran without its own
    verification, so it left them to us). None when no request names the source; a rule that fails
    is a failed critical check: a drill that could not erase the subject proves a restore would not."""
    started = time.monotonic()
    try:
        ids, lines = reapply_erasures(vault, keyring, engine, source, say, _erasure_rules(config))
    except InterruptedRunError:
        raise
    except DRError as exc:
        report["erasures_applied"] = False
        return _failed(
            "erasures re-applied",
            exc.message,
            f"fix retention.erasure.{source} in the stack (a restore of this source would fail the same way) "
            "and validate again",
            source,
            backup,
            started,
        )
    if not ids:
        return None
    report.update(erasures=ids, erasure_lines=lines, erasures_applied=True)
    return CheckResult(
        "erasures re-applied",
        True,
        f"{len(ids)} erasure request(s) re-applied on the restored data ({', '.join(ids)}): {'; '.join(lines)}",
        source=source,
        backup_id=backup,
        seconds=_since(started),
    )


def check_restore(
    config: Any,
    vault: Vault,
    keyring: Keyring,
    source: str,
    *,
    backup_id: str | None = None,
    target_time: datetime | None = None,
    before_compare: Callable[[Engine], None] | None = None,
    progress: Progress | None = None,
    clock: StageClock | None = None,
    vault_name: str | None = None,
) -> SourceRecovery:
    """Restore ``source`` into a sandbox and check it (see the module docstring).

    ``backup_id``: that backup (a backup on a base: its chain up to it); ``target_time``: the
    newest recoverable point at or before it (point in time where the kind has a chain);
    neither: the newest completed backup. ``before_compare(engine)`` runs on the restored
    target before the comparison (tests alter the sandbox with it). ``clock`` collects the
    stage seconds (a new one if not given); ``vault_name`` only labels the progress lines.
    """
    say = progress or _quiet
    clock = clock if clock is not None else StageClock()
    started = time.monotonic()
    src = config.source(source)
    out = SourceRecovery(source=source, kind=src.kind, backup_id=backup_id or "", recovery_point=None)

    def finish() -> SourceRecovery:
        measured = clock.seconds()
        out.stages = {stage: measured.get(stage, 0.0) for stage in STAGES}
        out.seconds = _since(started)
        return out

    if src.kind not in SANDBOX_KINDS:
        out.results.append(not_checked("restore", f"no sandbox for {src.kind} sources", source=source))
        return finish()
    step = time.monotonic()
    try:
        choice = _choose(vault, src, backup_id, target_time)
    except DRError as exc:
        out.results.append(
            _failed("restore", exc.message, "choose another backup or time", source, backup_id or "", step)
        )
        return finish()
    out.backup_id = choice.backup_id
    cancel.check(f"restore-level check of {source}")  # a cancelled run starts no sandbox
    where = f" of vault {vault_name}" if vault_name else ""
    say(f"{source}: restore-level check of {choice.label}{where}")
    try:
        with _restore_target(config, src, choice.physical, clock, say) as (target, described):
            out.target = described
            engine = engine_for(target)
            step = time.monotonic()
            try:
                restore, what = (
                    (restore_chain_plan, choice.plan) if choice.plan is not None else (restore_backup, choice.backup_id)
                )
                report = restore(
                    vault,
                    keyring,
                    what,
                    engine,
                    rollback=False,
                    progress=_naming(say, source, choice.backup_id),
                    verify=False,
                    clock=clock,
                    erasure_rules=_erasure_rules(config),
                ).to_dict()
            except InterruptedRunError:
                raise
            except (DRError, OSError) as exc:
                detail = exc.message if isinstance(exc, DRError) else f"{type(exc).__name__}: {exc}"
                out.results.append(
                    _failed(
                        "restore",
                        f"restore of {choice.label} into {described} failed: {detail}",
                        "the backup cannot be restored as it is; restore from another backup and investigate this one",
                        source,
                        choice.backup_id,
                        step,
                    )
                )
                return finish()
            # Interrupted (SIGTERM from a cancelled run, Ctrl-C): stop before the checks; leaving the block
            # tears the sandbox down.
            cancel.check(f"restore-level check of {source}")
            out.report = report
            point = report.get("recovery_point") or {}
            # One format for every kind (engines report their own: microseconds, "+00:00").
            out.recovery_point = iso(parse_iso(point.get("time") or vault.manifest(choice.compare_with).ended_at))
            out.results.append(
                CheckResult(
                    "restore",
                    True,
                    f"restored {choice.label} into {described} in {report['seconds']:.1f}s; recovery point "
                    f"{out.recovery_point}",
                    source=source,
                    backup_id=choice.backup_id,
                    seconds=_since(step),
                )
            )
            if before_compare is not None:
                before_compare(engine)
            with clock.measure("verify"):
                out.results.append(_data_checks(vault, keyring, engine, choice, report, source))
                queries = config.validation.smoke_queries.get(source, []) if hasattr(config, "validation") else []
                for result in run_smoke(target, queries):
                    result.backup_id = choice.backup_id
                    out.results.append(result)
            # After the comparison (it holds the data as backed up): the sandbox ends as a real restore would.
            erased = _erasures(
                config, vault, keyring, engine, source, choice.backup_id, report, _naming(say, source, choice.backup_id)
            )
            if erased is not None:
                out.results.append(erased)
            out.recovered_s = _since(started)
    except SandboxError as exc:
        out.results.append(
            _failed(
                "sandbox",
                exc.message,
                "fix the sandbox host (install the server, free the port) and validate again",
                source,
                choice.backup_id,
                started,
            )
        )
    except InterruptedRunError:
        raise
    except DRError as exc:  # the drill target could not be reached
        out.results.append(
            _failed(
                "sandbox", exc.message, "fix the drill target and validate again", source, choice.backup_id, started
            )
        )
    return finish()


__all__ = ["SourceRecovery", "check_restore", "drill_target_config"]
