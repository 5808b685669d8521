"""Replication tasks: which replicas, and bringing one replica up to date (core.replication)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from core.errors import ConfigError, ReplicationError
from core.replication import ReplicaReport, open_primary, replicate
from core.stack import PRIMARY
from tasks.limits import exclusive
from tasks.policy import task_options
from tasks.progress import Progress
from tasks.run_stack import run_stack
from tasks.runlog import progress


def replicate_limit(stack: str, replica: str) -> str:
    """One replication of a replica at a time, whichever run started it (names are already [a-z0-9-])."""
    return f"genesis-dr-replicate-{stack}-{replica}"


@task(name="select-replicas", cache_policy=NO_CACHE, **task_options("plan"))
def select_replicas(stack: str, replica: str | None = None) -> list[str]:
    """The replicas to bring up to date: the one named, or every replica of the stack (maybe none)."""
    config = run_stack(stack).config
    if replica is None:
        return [r.name for r in config.replicas]
    if replica == PRIMARY:
        raise ConfigError(f"--replica {PRIMARY}: the primary is what replicas copy; name a replica")
    config.vault_named(replica)  # ConfigError lists the names
    return [replica]


# Never cached (a DR action runs every time); store faults are not retried here: RetryingStore already
# spent its budget on them, and the next run (every 5 minutes) resumes where this one stopped.
@task(name="replicate-vault", task_run_name="replicate-{replica}", cache_policy=NO_CACHE, **task_options("backup"))
def replicate_vault(stack: str, replica: str, verify: bool = False) -> dict:
    """Copy what ``replica`` lacks of the stack's vault, verified; returns its report (counts, lag, missing).

    Raises ReplicationError (exit 20, the report attached) when the replica lags past the stack's
    ``replication.max_lag_seconds``.
    """
    opened = run_stack(stack)
    config = opened.config
    replica_store = config.vault_named(replica).store()
    with exclusive(replicate_limit(config.stack, replica), f"replication to {replica}"):
        primary = open_primary(config.vault.store(), replica_store, replica)
        if primary is None:  # no backup yet: an empty report, in sync
            return ReplicaReport(replica=replica, location=replica_store.describe()).to_dict() | {"stack": config.stack}
        try:
            # The bytes copied so far in the UI (a progress artifact) and on a terminal; what a run will copy is
            # not known ahead, so it shows bytes and rate, not a percentage. The subject (where the replica is)
            # lets the artifact be published while the copy runs.
            with Progress(replica, "replicate", "replication to", subject=replica_store.describe()) as shown:
                report = replicate(
                    primary,
                    replica_store,
                    name=replica,
                    progress=progress(),
                    verify=verify,
                    max_lag_seconds=config.replication.max_lag_seconds,
                    on_bytes=shown.on_bytes,
                )
        except ReplicationError as exc:
            if getattr(exc, "report", None) is not None:
                exc.report["stack"] = config.stack
            raise
    return report.to_dict() | {"stack": config.stack}
