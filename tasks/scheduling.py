"""When a deployed run waits (maintenance windows, peak hours, a busy host), and whether an operation was slow.

``defer_if_needed`` is called first thing by the heavy flows (backup full/differential, validate,
drill, retention). A flow that returns a Scheduled state ends Scheduled, not Failed: the Prefect
server records it with its new start time and the reason, and the worker or ``serve`` process
that runs the deployment picks the run up again at that time, like any scheduled run (checked
with Prefect 3.8.8: the flow engine proposes the returned state, the server accepts Running ->
Scheduled, and a Runner polling its deployments starts the run again when it is due; the run's
``run_count`` goes up). Only runs started from a deployment are deferred: a CLI run is an
operator's explicit request and runs now.

A later attempt of the same run finds when it was first deferred by a threshold in its own state
history (the Scheduled states' messages), so ``max_defer_seconds`` holds across attempts without
anything stored elsewhere.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.states import Scheduled, State

from core.chains import parse_iso
from core.errors import DRError
from core.history import History
from core.scheduling.deferral import THRESHOLD_PREFIX, breaches, decide, is_heavy
from core.scheduling.readings import host_readings
from core.scheduling.slow import LAST_RUNS, slow_flag
from tasks.run_stack import run_stack

BACKUP_TYPES = ("full", "differential", "incremental")
_SLACK_SECONDS = 1.0
_HISTORY_READS = 200  # records read at most to find the last runs of one level or tier


def _deployment_run():
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or context.flow_run.deployment_id is None:
        return None
    return context.flow_run


def _first_threshold_deferral(flow_run_id) -> datetime | None:
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    times = [
        s.timestamp
        for s in states
        if s.is_scheduled() and (s.message or "").startswith(THRESHOLD_PREFIX) and s.timestamp is not None
    ]
    return min(times).astimezone(UTC) if times else None


def defer_if_needed(stack: str, job: str) -> State | None:
    """A Scheduled state (new start time, reason) for the flow to return when its heavy ``job`` must wait, else
    None. Flows: ``deferred = defer_if_needed(stack, job); if deferred: return deferred``."""
    flow_run = _deployment_run()
    if flow_run is None:
        return None
    try:
        config = run_stack(stack).config  # the run's tasks reuse this resolution
    except DRError:
        return None  # an unknown stack: the flow's first step fails with it, and notifies, as without deferral
    operations = config.operations
    if not is_heavy(job, operations):
        return None
    now = datetime.now(UTC)
    local_vault = config.vault.path if config.vault.type == "local" else None
    readings = host_readings(local_vault, disks=operations.thresholds.max_disk_busy_percent is not None)
    since = _first_threshold_deferral(flow_run.id)
    deferral = decide(job, operations, now, readings, since)
    logger = get_run_logger()
    if deferral is None:
        if since is not None:
            still = breaches(operations.thresholds, readings)
            if still:
                logger.warning(
                    "%s runs anyway after waiting since %s (max_defer_seconds %d): %s",
                    job,
                    f"{since:%Y-%m-%d %H:%M:%S} UTC",
                    operations.thresholds.max_defer_seconds,
                    "; ".join(still),
                )
        return None
    logger.info("%s", deferral.message)
    return Scheduled(scheduled_time=deferral.until, message=deferral.message)


def _durations(items: list[dict], before: datetime | None) -> list[float]:
    out = []
    for item in items:
        try:
            started = parse_iso(item["started_at"])
            if before is None or started < before:
                out.append((parse_iso(item["ended_at"]) - started).total_seconds())
        except (KeyError, TypeError, ValueError):
            continue
    return out


def previous_durations(stack: str, source: str | None, operation: str, before: datetime | None = None) -> list[float]:
    """Seconds taken by earlier runs of ``operation`` (started before ``before``), oldest first: a backup type
    (completed backups of ``source``), ``validate-<level>`` or ``drill-<tier>`` (the vault's history; ``source``
    unused)."""
    config = run_stack(stack).config
    vault = config.vault.open(create=True)
    if operation in BACKUP_TYPES:
        manifests = [m for m in vault.list_backups(source) if m.type == operation and m.status == "COMPLETED"]
        manifests.sort(key=lambda m: m.started_at)
        return _durations([{"started_at": m.started_at, "ended_at": m.ended_at} for m in manifests], before)
    kind, _, variant = operation.partition("-")
    field = {"validate": ("validations", "level"), "drill": ("drills", "tier")}.get(kind)
    if field is None:
        raise ValueError(f"no durations are kept for operation {operation!r}")
    history = History(vault.store)
    matching: list[dict] = []
    # Newest first, and only as far back as the slow flag looks: a vault keeps years of records.
    for record_id in reversed(history.ids(field[0])[-_HISTORY_READS:]):
        record = history.get(field[0], record_id)
        if not variant or record.get(field[1]) == variant:
            matching.append(record)
            if len(matching) > LAST_RUNS:
                break
    return _durations(list(reversed(matching)), before)


def seconds_of(record: dict) -> float | None:
    """A record's duration (``started_at`` to ``ended_at``), or None."""
    found = _durations([record], None)
    return found[0] if found else None


def flag_if_slow(
    stack: str, source: str | None, operation: str, seconds: float | None, backup_id: str | None = None
) -> str | None:
    """Right after an operation that took ``seconds``: the reason it was slow (logged as a warning), or None.

    ``operation``: a backup type (then ``source`` names the source), ``validate-<level>`` or ``drill-<tier>``;
    ``backup_id`` (or a validation's or drill's record id) is named in the warning.
    The previous runs are those that started before this one (its own record, already in the vault after a
    committed backup or a written validation record, is left out). The check never fails the operation: a
    vault it cannot read is one warning.
    """
    if seconds is None:
        return None
    logger = _logger()
    what = f"{source} {operation}" if source else f"{operation} of stack {stack}"
    if backup_id:  # one line per event, naming the source and the backup, as the backup's other lines do
        what = f"{source}: {operation} backup {backup_id}" if source else f"{operation} {backup_id} of stack {stack}"
    # A little slack: the caller's clock started just before the record's own started_at.
    this_started = datetime.now(UTC) - timedelta(seconds=seconds + _SLACK_SECONDS)
    try:
        previous = previous_durations(stack, source, operation, before=this_started)
    except DRError as exc:
        logger.warning("%s: not checked for slowness (%s)", what, exc)
        return None
    reason = slow_flag(previous, seconds, factor=run_stack(stack).config.operations.slow_factor)
    if reason:
        logger.warning("%s: slow, %s", what, reason)
    return reason


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:  # outside a run
        return logging.getLogger(__name__)
