"""backup: a full, differential or incremental backup of every source of a stack, concurrently."""

from __future__ import annotations

from typing import Literal

from prefect import flow

from core import cancel
from core.notify.reports import backup_event
from flows.notifying import announce
from flows.reporting import collect, publish_backup_table, raise_failures
from tasks.backup import backup_source, select_sources
from tasks.scheduling import defer_if_needed


@flow(name="backup", log_prints=True)
def backup(
    stack: str = "default",
    backup_type: Literal["full", "differential", "incremental"] = "full",
    sources: list[str] | None = None,
    kinds: list[Literal["postgres", "mysql", "redis", "files", "bucket"]] | None = None,
) -> list[dict]:
    """Back up the stack's sources (all, those of ``kinds``, or the named ones) and commit one manifest each.

    ``backup_type``: ``full``; ``differential`` (what changed since the last full) or
    ``incremental`` (since the previous backup), which by default take every source whose
    kind has them (Redis takes fulls only: left out, and the run log says so); a source
    named in ``sources`` that cannot take the type fails. Sources run concurrently; a failed
    source does not stop the others, but the run ends Failed and names every failure.
    """
    # From a deployment, a heavy backup inside a maintenance window or on a busy host ends Scheduled for later.
    deferred = defer_if_needed(stack, backup_type)
    if deferred is not None:
        return deferred
    # SIGINT/SIGTERM (an operator, or Prefect cancelling the run) stop each backup at its next
    # chunk: it ends FAILED with nothing committed, instead of committing after the run "ended".
    scope = {"sources": sources, "kinds": kinds}
    with cancel.stop_on_signals(print):
        try:
            names = select_sources(stack, sources, backup_type, kinds)
        except Exception as exc:  # e.g. an unknown source: reported, then the run fails with it
            announce(stack, backup_event(stack, backup_type, [], {"plan": exc}, **scope))
            raise
        futures = {name: backup_source.submit(stack, name, backup_type) for name in names}
        results, failures = collect(futures)
    publish_backup_table(results, failures, backup_type)
    # Success and failure are both reported (a success resolves the incident a failure opened); a skipped
    # incremental is a line of its own in the event, never counted as committed.
    announce(stack, backup_event(stack, backup_type, results, failures, **scope))
    raise_failures(failures, "source backups")
    return results
