"""The stack file's ``schedules:`` on the deployments of prefect.yaml, without editing YAML.

Two paths, so the order of ``genesis-dr apply`` and ``prefect deploy`` does not matter:

* ``genesis-dr apply`` keeps the stack's schedules in a Prefect variable
  (``genesis-dr-schedules-<stack>``) and puts them on the stack's deployments
  (``deployments.register.register_deployments``, which also creates what is missing;
  ``apply_schedules`` below only rewrites those that exist);
* ``prefect deploy`` runs the build step ``deployments.steps.stack_schedules``,
  which reads that variable back (the source documents' cadence when the stack
  has none), and prefect.yaml's schedules are templated from its output.

Each deployment has one schedule of ours, marked with the slug ``SLUG``; schedules
an operator added beside it in the UI are left alone, and so is a pause or resume of
ours in the UI, until the stack file's own setting for it (a cron or ``off``) changes.
"""

from __future__ import annotations

from typing import Any

from core.stack import SchedulesConfig, StackConfig

SLUG = "genesis-dr-stack"
# schedules: key -> the deployment it times ("<flow>/<deployment>" in prefect.yaml).
DEPLOYMENTS = {
    "full": "backup/full",
    "differential": "backup/differential",
    "incremental": "backup/incremental",
    "redis": "backup/redis",
    "capture": "capture/capture",
    "replicate": "replicate/replicate",
    "validate_integrity": "validate/validate-integrity",
    "validate_restore": "validate/validate-restore",
    "drill_daily": "drill/drill-daily",
    "drill_weekly": "drill/drill-weekly",
    "drill_monthly": "drill/drill-monthly",
    "monitor": "monitor/monitor",
    "retention": "retention/retention",
    "audit_verify": "audit-verify/audit-verify",
    "self_backup": "self-backup/self-backup",
    # On demand: a paused placeholder unless the stack file gives a cron.
    "drill_full": "drill/drill-full",
    "restore": "restore/restore",
    "failover": "failover/failover",
    "failback": "failback/failback",
    "hold": "hold/hold",
    "erase": "erase/erase",
}


def variable_name(stack: str) -> str:
    return f"genesis-dr-schedules-{stack}"


def stored_schedules(stack: str) -> SchedulesConfig:
    """The schedules ``genesis-dr apply`` stored for ``stack``; the defaults when it stored none."""
    from prefect.variables import Variable

    value = Variable.get(variable_name(stack), default=None)
    return SchedulesConfig.model_validate(value) if isinstance(value, dict) else SchedulesConfig()


def _schedule(spec: dict[str, Any]):
    from prefect.client.schemas.schedules import CronSchedule

    return CronSchedule(cron=spec["cron"], timezone=spec["timezone"])


def toggled(previous: SchedulesConfig, config: StackConfig) -> set[str]:
    """Schedule keys whose on/off the stack file changed since ``previous`` (what was applied before): only
    those are paused or resumed on deployments that exist; a pause or resume in the UI stays otherwise."""
    before, now = previous.deployment_schedules(), config.schedules.deployment_schedules()
    return {key for key, spec in now.items() if before[key]["active"] != spec["active"]}


def put_schedule(
    client: Any, deployment_id: Any, schedules: list[dict], full_name: str, spec: dict[str, Any], *, toggle: bool
) -> str | None:
    """Make our schedule (slug ``SLUG``) among a deployment's ``schedules`` (as the API returns them, JSON) the one
    ``spec`` gives; the line saying so, or None when it already was.

    Its cron follows the stack; its active flag only when ``toggle`` (the stack file turned it on or off) or when
    it is new. Duplicates of ours (a schedule re-created by hand with our slug) fold into one; other schedules
    are never touched.
    """
    ours = [s for s in schedules if s.get("slug") == SLUG]
    for extra in ours[1:]:
        client.delete_deployment_schedule(deployment_id, extra["id"])
    if not ours:
        client.create_deployment_schedules(deployment_id, [(_schedule(spec), spec["active"])], slug=SLUG)
        return _line(full_name, spec["cron"], spec["active"])
    current = ours[0]
    active = spec["active"] if toggle else current["active"]
    timed = current.get("schedule") or {}
    same_cron = timed.get("cron") == spec["cron"] and timed.get("timezone") == spec["timezone"]
    if same_cron and active == current["active"] and len(ours) == 1:
        return None
    client.update_deployment_schedule(deployment_id, current["id"], active=active, schedule=_schedule(spec))
    return _line(full_name, spec["cron"], active)


def _line(full_name: str, cron: str, active: bool) -> str:
    state = f"cron '{cron}' UTC" if active else f"off (paused; cron '{cron}' UTC)"
    return f"schedule of deployment {full_name}: {state}"


def apply_schedules(config: StackConfig) -> list[str]:
    """Store ``config``'s schedules and put them on the deployments (already there) that run its stack; one line
    per change. ``deployments.register.register_deployments`` does this and creates what is missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.variables import Variable

    turned = toggled(stored_schedules(config.stack), config)
    Variable.set(variable_name(config.stack), config.schedules.model_dump(), overwrite=True)
    wanted = config.schedules.deployment_schedules()
    lines: list[str] = []
    with get_client(sync_client=True) as client:
        found = 0
        for key, full_name in DEPLOYMENTS.items():
            try:
                deployment = client.read_deployment_by_name(full_name)
            except ObjectNotFound:  # not deployed (yet): 'prefect deploy' reads the variable
                continue
            if (deployment.parameters or {}).get("stack", "default") != config.stack:
                continue
            found += 1
            ours = [s.model_dump(mode="json") for s in deployment.schedules]
            line = put_schedule(client, deployment.id, ours, full_name, wanted[key], toggle=key in turned)
            if line:
                lines.append(line)
    if not found:
        lines.append(f"schedules of stack '{config.stack}' stored; 'prefect deploy --all' puts them on its deployments")
    return lines
