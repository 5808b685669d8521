"""backup: dump every source of a stack into the vault, concurrently."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from core import cancel
from flows.reporting import collect, publish_backup_table, raise_failures
from tasks.backup import backup_source, select_sources


@flow(name="backup", log_prints=True)
def backup(
    stack: str = "default", backup_type: Literal["full"] = "full", sources: list[str] | None = None
) -> list[dict]:
    """Back up the stack's sources (all, or the named ones) and commit one manifest each.

    Sources run concurrently; a failed source does not stop the others, but the
    run ends Failed and names every failure.
    """
    # SIGINT/SIGTERM (an operator, or Prefect cancelling the run) stop each backup at its next
    # chunk: it ends FAILED with nothing committed, instead of committing after the run "ended".
    with cancel.stop_on_signals(print):
        names = select_sources(stack, sources)
        futures = {name: backup_source.submit(stack, name, backup_type) for name in names}
        results, failures = collect(futures)
    publish_backup_table(results, failures)
    raise_failures(failures, "source backups")
    return results
