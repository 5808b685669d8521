"""The stack file's ``schedules:`` on the deployments of prefect.yaml, without editing YAML.

Two paths, so the order of ``genesis-dr apply`` and ``prefect deploy`` does not matter:

* ``genesis-dr apply`` keeps the stack's schedules in a Prefect variable
  (``genesis-dr-schedules-<stack>``) and rewrites the schedule of each deployment
  that already runs that stack (its ``stack`` parameter);
* ``prefect deploy`` runs the build step ``deployments.steps.stack_schedules``,
  which reads that variable back (the source documents' cadence when the stack
  has none), and prefect.yaml's schedules are templated from its output.

Each deployment has one schedule of ours, marked with the slug ``SLUG``; schedules
an operator added beside it in the UI are left alone.
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


def apply_schedules(config: StackConfig) -> list[str]:
    """Store ``config``'s schedules and put them on the deployments that run its stack; one line per change."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.variables import Variable

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
            spec = wanted[key]
            ours = [s for s in client.read_deployment_schedules(deployment.id) if s.slug == SLUG]
            if ours:
                client.update_deployment_schedule(
                    deployment.id, ours[0].id, active=spec["active"], schedule=_schedule(spec)
                )
                for extra in ours[1:]:
                    client.delete_deployment_schedule(deployment.id, extra.id)
            else:
                client.create_deployment_schedules(deployment.id, [(_schedule(spec), spec["active"])], slug=SLUG)
            state = f"cron '{spec['cron']}' UTC" if spec["active"] else "off (paused)"
            lines.append(f"schedule of deployment {full_name}: {state}")
    if not found:
        lines.append(f"schedules of stack '{config.stack}' stored; 'prefect deploy --all' puts them on its deployments")
    return lines
