"""``run_drill``: one drill tier of a stack, recorded in the vault.

* daily: integrity validation of the newest backup of every source;
* weekly: restore-level validation of the same (each restored into a throw-away sandbox);
* monthly: declare the disaster now; restore every source to its newest recoverable point at or
  before it (point in time where the kind has a chain) in sandboxes, ``drill.parallel`` at once;
  data checks and smoke queries; RTO end to end and per stage, RPO per source, both held against
  the stack's objectives;
* full: monthly, then the same from every replica vault (only read), then the failover rehearsal
  (not checked until failover exists).

A drill never raises for what it found: failed checks are in the record, and the caller (the flow)
fails the run. It raises only when it cannot run at all (no vault, an interrupt).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from core.chains import iso, parse_iso
from core.drills.chart import render_chart, write_local
from core.drills.objectives import check_rpo, check_rto, rpo_seconds
from core.drills.record import RECOVERY_TIERS, TIERS, DrillRecord
from core.history import History
from core.timing import StageClock
from core.validation.restore_check import SourceRecovery, check_restore
from core.validation.results import CheckResult, new_run_id, not_checked, now_iso
from core.validation.runner import validate

PRIMARY = "primary"


def run_drill(
    config,
    tier: str,
    *,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    vault_name: str | None = None,
    keyring=None,
    record_history: bool = True,
) -> DrillRecord:
    """Run drill ``tier`` (daily, weekly, monthly, full) of the stack ``config``; returns its record,
    also kept in the vault (``history/drills/<id>.json``, with a chart for monthly and full drills)
    when ``record_history``. ``now``: the declared disaster time (default: the moment of the call)."""
    if tier not in TIERS:
        raise ValueError(f"unknown drill tier {tier!r}; choose one of {', '.join(TIERS)}")
    say = progress or (lambda _line: None)
    started = datetime.now(UTC)
    vault = config.vault_named(vault_name).open()
    keyring = keyring if keyring is not None else config.keyring()
    record = DrillRecord(
        id=new_run_id("drill", started),
        tier=tier,
        stack=config.stack,
        vault=vault_name or PRIMARY,
        started_at=now_iso(),
    )
    if tier in ("daily", "weekly"):
        level = "integrity" if tier == "daily" else "restore"
        say(f"{tier} drill: {level} validation of the newest backup of every source")
        validation = validate(
            config,
            latest=True,
            level=level,
            vault_name=vault_name,
            sources=[s.name for s in config.sources],  # the stack's sources, not every one the vault has held
            keyring=keyring,
            now=now,
            progress=progress,
            record_history=record_history,
        )
        record.validation = validation.to_dict()
        record.results = list(validation.results)
    else:
        disaster = now or started
        if disaster.tzinfo is None:
            disaster = disaster.replace(tzinfo=UTC)
        # The recorded time (milliseconds) is the one restored to and measured from, so the record's
        # figures add up from its own fields.
        record.disaster_time = iso(disaster)
        disaster = parse_iso(record.disaster_time)
        record.rto_objective_s = config.objectives.rto_seconds
        say(f"{tier} drill: disaster declared at {record.disaster_time}; restoring {len(config.sources)} sources")
        _recover_stack(config, record, vault, keyring, disaster, record.vault, say)
        if tier == "full":
            for replica in config.replicas:
                if replica.name == record.vault:
                    continue
                say(f"full drill: the same recovery from replica vault {replica.name}")
                try:
                    replica_vault = replica.vault.open()
                except Exception as exc:  # noqa: BLE001 - an unreachable replica is a finding, not a crash
                    record.results.append(
                        CheckResult(
                            name=f"replica {replica.name}",
                            passed=False,
                            detail=f"cannot open replica vault {replica.vault.location()}: {_one_line(exc)}",
                            remedy="check the replica's store and credentials, then 'genesis-dr replicate'",
                        )
                    )
                    continue
                _recover_stack(config, record, replica_vault, keyring, disaster, replica.name, say)
            if not config.replicas:
                record.results.append(not_checked("replica restore", "the stack has no replica vault"))
            record.results.append(not_checked("failover rehearsal", "failover has not landed yet"))
    record.ended_at = now_iso()
    if record_history:
        _keep(record, vault, config, say)
    say(record.summary_line())
    return record


def _recover_stack(config, record: DrillRecord, vault, keyring, disaster: datetime, vault_label: str, say) -> None:
    """Every source of the stack restored from ``vault`` to ``disaster``, ``drill.parallel`` at once;
    the recoveries, RPO and RTO checks go into ``record``."""
    declared = time.monotonic()
    done_at: dict[str, float] = {}
    lock = threading.Lock()

    def recover(source) -> SourceRecovery:
        called = time.monotonic()
        recovery = check_restore(
            config,
            vault,
            keyring,
            source.name,
            target_time=disaster,
            progress=say,
            clock=StageClock(),
            vault_name=None if vault_label == PRIMARY else vault_label,
        )
        # The source is back once its data is proven, not once the drill's sandbox is gone again; a
        # recovery that never got that far ends when check_restore returned.
        with lock:
            ended = called + recovery.recovered_s if recovery.recovered_s is not None else time.monotonic()
            done_at[source.name] = ended
        return recovery

    with ThreadPoolExecutor(max_workers=config.drill.parallel, thread_name_prefix="drill") as pool:
        recoveries = list(pool.map(recover, config.sources))
    rto = round(max(done_at.values()) - declared, 3)
    unrecovered = 0
    for source, recovery in zip(config.sources, recoveries, strict=True):
        key = source.name if vault_label == record.vault else f"{source.name}@{vault_label}"
        rpo = rpo_seconds(disaster, recovery.recovery_point)
        objective = config.objectives.rpo_for(source.name)
        # Nothing recovered and a failed check saying why (sandbox, restore): the source is down.
        restored = recovery.recovery_point is not None or recovery.passed
        unrecovered += not restored
        record.sources[key] = {
            "source": source.name,
            "kind": recovery.kind,
            "vault": vault_label,
            "backup_id": recovery.backup_id,
            "recovery_point": recovery.recovery_point,
            "rpo_s": rpo,
            "rpo_objective_s": objective,
            "stages": dict(recovery.stages),
            "seconds": round(recovery.recovered_s if recovery.recovered_s is not None else recovery.seconds, 3),
            "target": recovery.target,
            "passed": recovery.passed,
        }
        record.results.extend(recovery.results)
        # A failed restore is its own failed check; "RPO not measured" beside it would be noise.
        if rpo is not None or restored:
            record.results.append(check_rpo(source.name, rpo, objective, vault=vault_label))
        if restored:
            say(
                f"{key}: recovered in {record.sources[key]['seconds']:.2f} s to {recovery.recovery_point or '-'} (RPO {rpo} s)"
            )
        else:
            first = next((r for r in recovery.results if r.failed), None)
            say(f"{key}: NOT recovered: {first.line() if first else 'no result'}")
    record.results.append(check_rto(rto, config.objectives.rto_seconds, vault=vault_label, unrecovered=unrecovered))
    record.vaults_rto_s[vault_label] = rto
    if vault_label == record.vault:
        record.rto_s = rto


def _keep(record: DrillRecord, vault, config, say) -> None:
    """The chart of the last ``drill.trend`` recoveries (this one included) and the record, in the
    vault's history; the chart also in the local reports directory."""
    history = History(vault.store)
    if record.tier in RECOVERY_TIERS:
        earlier = _recent_recoveries(history, config.drill.trend - 1)
        png = render_chart([*(d for d in earlier if d.get("id") != record.id), record.to_dict()])
        record.chart = history.put_blob("drills", f"{record.id}.png", png)
        try:
            record.chart_path = str(write_local(record.stack, record.id, png))
        except OSError as exc:
            # The vault keeps the chart; a local directory that cannot be written must not lose the record.
            record.results.append(
                CheckResult(
                    name="chart",
                    passed=False,
                    detail=f"the chart's local copy could not be written: {_one_line(exc)}",
                    remedy="set GENESIS_DR_REPORTS to a writable directory",
                    critical=False,
                )
            )
    history.put("drills", record.id, record.to_dict())
    say(f"drill record kept in the vault as history/drills/{record.id}.json")


def _recent_recoveries(history: History, count: int) -> list[dict[str, Any]]:
    """The last ``count`` monthly/full drill records, oldest first (newest read first, then stop)."""
    found: list[dict[str, Any]] = []
    for record_id in reversed(history.ids("drills")):
        if len(found) >= count:
            break
        doc = history.get("drills", record_id)
        if doc.get("tier") in RECOVERY_TIERS:
            found.append(doc)
    # Ids sort by the second they were made in; two drills within one second are ordered by start.
    return sorted(found, key=lambda d: (d.get("started_at") or "", d.get("id") or ""))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
