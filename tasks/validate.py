"""Validation and drill tasks: one call into core each (core.validation.runner, core.drills)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.policy import task_options
from tasks.run_stack import run_stack
from tasks.runlog import progress


# Never cached (a DR check runs every time). A failed check is a result, not an exception: the flow
# decides the final state after publishing the record, so a failing validation still shows its report.
@task(name="validate-backups", cache_policy=NO_CACHE, **task_options("restore"))
def validate_backups(
    stack: str,
    backup_id: str | None = None,
    latest: bool = False,
    all: bool = False,  # noqa: A002 - the CLI's --all
    level: str = "integrity",
    vault: str | None = None,
    sources: list[str] | None = None,
) -> dict:
    """Validate the selected backups at ``level``; returns the validation record (also kept in the vault)."""
    from core.validation.runner import validate

    opened = run_stack(stack)
    record = validate(
        opened.config,
        backup_id=backup_id,
        latest=latest,
        all=all,
        level=level,
        vault_name=vault,
        sources=sources,
        keyring=opened.keyring,
        progress=progress(),
    )
    return record.to_dict()


@task(name="run-drill", task_run_name="drill-{tier}", cache_policy=NO_CACHE, **task_options("restore"))
def run_drill_tier(stack: str, tier: str, vault: str | None = None) -> dict:
    """Run one drill tier of the stack; returns the drill record (also kept in the vault, with its chart)."""
    from core.drills import run_drill

    opened = run_stack(stack)
    record = run_drill(opened.config, tier, vault_name=vault, keyring=opened.keyring, progress=progress())
    return record.to_dict()
