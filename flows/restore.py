"""restore: plan, (approve,) refuse or take a rollback point, restore, verify.

Two forms: one backup of one source (``backup_id``, or the newest full), and a
point-in-time restore (``target_time``) of one source or of every source of a
``mode`` to the same instant, each through its chain (full, backups on it, log
replayed to the target), with the recovery point of each and the largest skew
between them in the report.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.states import Cancelled
from pydantic import Field

from core import cancel
from core.chains import render_chain_plan
from core.errors import ConfigError, DRError, TargetNotEmptyError
from core.operations import render_report
from core.plan import render_plan
from core.stack import PRIMARY, check_distinct_targets, split_targets
from core.times import planned_points, reached_points, read_operator_time, recovery_summary, render_recovery_summary
from flows.reporting import collect, raise_failures
from tasks.audit import record_audit
from tasks.policy import seconds_from_env
from tasks.restore import (
    plan_chain_task,
    plan_restore_task,
    restore_backup_task,
    restore_chain_task,
    select_restore_sources,
)

# How long a paused restore waits for an operator's decision before the run fails (nothing changed).
APPROVAL_TIMEOUT = int(seconds_from_env("GENESIS_DR_APPROVAL_TIMEOUT", 3600, minimum=1))


class RestoreApproval(RunInput):
    """The form the Prefect UI shows on a paused restore."""

    approve: bool = Field(
        default=False,
        description="Restore over the target's data (a rollback backup of it is taken first). "
        "Leave unticked and resume to abort: nothing is changed.",
    )


def _from_deployment() -> bool:
    context = FlowRunContext.get()
    return bool(context and context.flow_run and context.flow_run.deployment_id)


def _approved(plan: dict, approval: str, rendered: str | None = None) -> bool:
    """Pause for an operator's decision in the Prefect UI unless this run needs none."""
    if approval == "skip" or (approval == "auto" and not _from_deployment()):
        return True  # the CLI's own --force is the operator's explicit confirmation
    logger = get_run_logger()
    logger.warning(
        "restore over %s, which holds data: paused for approval (Resume in the Prefect UI, approve ticked; "
        "or leave it unticked to abort); it fails unresumed after %ss",
        plan["target"],
        APPROVAL_TIMEOUT,
    )
    form = RestoreApproval.with_initial_data(
        description=(
            "### Restore over a target that holds data\n\n"
            f"```\n{rendered or render_plan(plan)}\n```\n\n"
            "Tick **approve** to restore (a rollback backup of the target is taken first and named in the report); "
            "leave it unticked to abort with nothing changed."
        ),
        approve=False,
    )
    decision = pause_flow_run(wait_for_input=form, timeout=APPROVAL_TIMEOUT, poll_interval=5, key="restore-approval")
    logger.info("restore over %s %s by the operator", plan["target"], "approved" if decision.approve else "declined")
    return decision.approve


@flow(name="restore", log_prints=True)
def restore(
    source: str | None = None,
    stack: str = "default",
    backup_id: str | None = None,
    target_time: datetime | str | None = None,
    target: dict[str, str | int] | None = None,
    target_source: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    approval: Literal["auto", "required", "skip"] = "auto",
    mode: Literal["full", "database_only", "redis_only", "artifacts_only"] | None = None,
    vault: str | None = None,
):
    """Restore ``source`` from one backup (``backup_id``, or its newest full), or restore to a point in time.

    With ``target_time`` (ISO 8601, no zone = UTC; the source documents' ``2024-12-15_14:30:00``;
    ``2h ago``) each source is restored through its chain to that instant: ``source`` alone, or
    every source of ``mode`` (full: all; database_only: PostgreSQL and MariaDB/MySQL; redis_only;
    artifacts_only: files), each into its own target, and the report gives each one's recovery
    point and the largest skew between them.

    ``target`` overrides non-secret connection fields (e.g. ``{"database": "app_copy"}``; with
    several sources ``{"app-db.port": 5433}``); ``target_source`` restores into another source
    of the stack. A target holding data is refused unless ``force``, which takes a rollback
    backup first. A forced restore over data pauses for approval in the Prefect UI when
    ``approval`` is ``required``, or ``auto`` and the run was started from a deployment (the
    UI's run form, a schedule, ``prefect deployment run``); ``skip`` never pauses (configure it
    on a deployment meant to run unattended). Declined, the run ends Cancelled with nothing
    changed.

    ``vault``: restore from a replica of the stack's vault (its name in the stack's ``replicas:``; default
    the primary), e.g. with the primary lost. A replica is only read: a restore over data from it, which
    needs a rollback backup written into the vault, is refused; restore into an empty target instead.
    """
    asked = {"backup_id": backup_id, "target_time": None if target_time is None else str(target_time), "mode": mode}
    asked |= {"vault": vault or PRIMARY, "target_source": target_source, "force": force}
    subject = source or f"{mode or 'full'} mode"

    def run():
        if target_time is not None and backup_id is None:
            return _point_in_time(
                source, stack, target_time, target, target_source, dry_run, force, approval, mode, vault
            )
        if source is None:
            raise ConfigError("restore: --source is needed with --backup-id (or give --target-time and --mode)")
        if mode is not None and mode != "full":
            raise ConfigError(f"restore: --mode {mode} restores to a point in time; give --target-time with it")
        return _one_backup(
            source, stack, backup_id, target_time, target, target_source, dry_run, force, approval, vault
        )

    if dry_run:
        return run()  # reads only: nothing to record
    return _audited(stack, subject, asked, run)


def _restored(result) -> dict:
    """The audit details of a finished restore: per source, the backup, the target and what was verified."""
    reports = result.get("reports") or ({"one": result["report"]} if result.get("report") else {})
    out = {}
    for report in reports.values():
        point = report.get("recovery_point") or {}
        out[report["source"]] = {
            "backup_id": report["backup_id"],
            "target": report["target"],
            "verified_checks": report["verified_checks"],
            "rollback_backup_id": report.get("rollback_backup_id"),
            "recovery_point": point.get("time"),
            "erasures": report.get("erasures", []),
        }
    return out


def _audited(stack: str, subject: str, asked: dict, run):
    """Run the restore and write its one audit entry (success, failure or cancelled).

    An entry that cannot be written (the vault read-only, or lost with its region) is queued on this host and
    logged as an error by ``record_audit``; the restore's own outcome stands either way.
    """
    logger = get_run_logger()
    try:
        result = run()
    except BaseException as exc:
        why = str(exc) if isinstance(exc, DRError) else type(exc).__name__
        try:
            record_audit(stack, "restore", subject, asked | {"error": why[:500]}, "failure")
        except Exception as audit_exc:  # noqa: BLE001 - the restore's own error is the one to raise
            logger.error("%s", audit_exc)
        raise
    if isinstance(result, State):
        outcome, details = "cancelled", asked | {"why": result.message}
    else:
        outcome, details = "success", asked | {"restored": _restored(result)}
    record_audit(stack, "restore", subject, details, outcome)
    return result


def _refuse_rollback_into_replica(vault: str | None, over: list[dict]) -> None:
    """A restore over data writes a rollback backup into the vault first; a replica takes no writes."""
    if vault not in (None, PRIMARY) and over:
        where = ", ".join(p["target"] for p in over)
        raise ConfigError(
            f"restore from replica {vault} over {where}, which holds data: the rollback backup taken first cannot be "
            "written into a replica (only replication writes there); restore into an empty target (--target), or "
            "from the primary vault"
        )


def _one_backup(source, stack, backup_id, target_time, target, target_source, dry_run, force, approval, vault=None):
    logger = get_run_logger()
    plan = plan_restore_task(stack, source, backup_id, target_time, target, target_source, force, vault)
    create_markdown_artifact(f"```\n{render_plan(plan)}\n```", key="restore-plan", description="What this restore does")
    for line in render_plan(plan).splitlines():
        logger.info("%s: plan: %s", source, line.strip())
    if dry_run:
        logger.info("%s: dry run: nothing was changed", source)
        return {"plan": plan, "dry_run": True}
    if plan["refusal"]:
        raise TargetNotEmptyError(
            f"restore target {plan['target']} already holds data; choose an empty target, or pass --force (a rollback backup of the target is taken first)"
        )
    _refuse_rollback_into_replica(vault, [plan] if plan["target_has_data"] else [])
    if plan["target_has_data"] and not _approved(plan, approval):
        return Cancelled(message=f"restore over {plan['target']} was not approved; nothing was changed")
    with cancel.stop_on_signals(print):  # an interrupted restore stops before its swap (see core.cancel)
        if "pieces" in plan:
            # A differential or incremental by id: its chain's plan (core.planning) is executed as printed - the
            # full, the layers on it, the log - not its full alone.
            report = restore_chain_task(stack, source, plan, target, target_source, force, vault)
        else:
            report = restore_backup_task(stack, source, plan["backup_id"], target, target_source, force, vault)
    _log_report(logger, source, report)
    create_markdown_artifact(
        f"```\n{render_report(report)}\n```",
        key="restore-report",
        description="Restore outcome, verification, and every object not restored exactly as backed up",
    )
    return {"plan": plan, "report": report, "dry_run": False}


def _log_report(logger, source: str, report: dict) -> None:
    """The restore report, one log line per event, each naming the source and the backup restored (the first line
    names the backup itself: ``app-db: restored <id> into ...``)."""
    backup_id = report.get("backup_id")
    for line in render_report(report).splitlines():
        named = [source] + ([backup_id] if backup_id and backup_id not in line else [])
        logger.info("%s", ": ".join([*named, line.strip()]))


def _point_in_time(source, stack, target_time, target, target_source, dry_run, force, approval, mode, vault=None):
    logger = get_run_logger()
    when = read_operator_time(target_time)
    chosen = select_restore_sources(stack, mode, source)
    names = [entry["source"] for entry in chosen]
    if target_source is not None and len(names) != 1:
        raise ConfigError("restore: --target-source names the target of one source; use it with --source")
    targets = split_targets(target, names)
    futures = {
        name: plan_chain_task.submit(stack, name, when.parameter(), targets[name] or None, target_source, force, vault)
        for name in names
    }
    plans, failures = collect(futures)
    raise_failures(failures, "restore plans")
    plans = {plan["source"]: plan for plan in plans}
    check_distinct_targets({name: plans[name] for name in names})
    rendered = "\n\n".join(render_chain_plan(plans[name]) for name in names)
    summary = recovery_summary(when.iso(), planned_points({n: plans[n] for n in names}), when.plan_note())
    summary_text = render_recovery_summary(summary, planned=True)
    text = f"{rendered}\n\n{summary_text}"
    create_markdown_artifact(f"```\n{text}\n```", key="restore-plan", description="What this restore does")
    for name in names:  # each source's lines name it; the summary is about them all
        for line in render_chain_plan(plans[name]).splitlines():
            logger.info("%s: plan: %s", name, line.strip())
    for line in summary_text.splitlines():
        logger.info("plan: %s", line.strip())
    if dry_run:
        logger.info("dry run: nothing was changed")
        return {"plans": plans, "summary": summary, "dry_run": True}
    refused = [plans[n] for n in names if plans[n]["refusal"]]
    if refused:
        where = ", ".join(p["target"] for p in refused)
        raise TargetNotEmptyError(
            f"restore target{'s' if len(refused) > 1 else ''} {where} already hold{'' if len(refused) > 1 else 's'} "
            "data; choose an empty target, or pass --force (a rollback backup of the target is taken first)"
        )
    over = [plans[n] for n in names if plans[n]["target_has_data"]]
    _refuse_rollback_into_replica(vault, over)
    if over:
        joined = {"target": ", ".join(p["target"] for p in over)}
        if not _approved(joined, approval, rendered):
            return Cancelled(message=f"restore over {joined['target']} was not approved; nothing was changed")
    with cancel.stop_on_signals(print):  # an interrupted restore stops before its swap (see core.cancel)
        futures = {
            name: restore_chain_task.submit(
                stack, name, plans[name], targets[name] or None, target_source, force, vault
            )
            for name in names
        }
        done, failures = collect(futures)
    reports = {report["source"]: report for report in done}
    summary = recovery_summary(when.iso(), reached_points(plans, reports), when.plan_note())
    text = "\n\n".join(
        [f"{name}:\n{render_report(reports[name])}" for name in names if name in reports]
        + [f"{name}: FAILED: {exc}" for name, exc in failures.items()]
        + ([render_recovery_summary(summary)] if reports else [])
    )
    for name in names:
        if name in reports:
            _log_report(logger, name, reports[name])
        elif name in failures:
            logger.info("%s: FAILED: %s", name, failures[name])
    for line in (render_recovery_summary(summary) if reports else "").splitlines():
        logger.info("%s", line)
    create_markdown_artifact(
        f"```\n{text}\n```",
        key="restore-report",
        description="Each source's recovery point and verification, and the largest skew between sources",
    )
    raise_failures(failures, "source restores")
    out = {"plans": plans, "reports": reports, "summary": summary, "dry_run": False}
    if len(names) == 1:  # the single-source shape as well (the report of one restore)
        out |= {"plan": plans[names[0]], "report": reports[names[0]]}
    return out
