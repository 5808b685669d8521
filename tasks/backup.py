"""Backup tasks."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core import operations
from core.chains import parse_iso
from core.engines import engine_class, engine_for
from core.errors import DRError
from core.units import human_bytes
from tasks.events import emit_backup_completed
from tasks.limits import backup_slots
from tasks.policy import task_options
from tasks.progress import Progress
from tasks.run_stack import run_stack
from tasks.runlog import progress
from tasks.scheduling import flag_if_slow


@task(name="select-sources", cache_policy=NO_CACHE, **task_options("plan"))
def select_sources(
    stack: str, sources: list[str] | None, backup_type: str = "full", kinds: list[str] | None = None
) -> list[str]:
    """The source names to back up: the named ones, or every source of the stack (of ``kinds``, if given) that
    takes a ``backup_type`` backup.

    A source named explicitly is always backed up: if its kind cannot take that type, its backup fails
    loudly (ConfigError). Only the "every source" default leaves such sources out, and says so, so a
    schedule of incrementals over a stack with a Redis source (fulls only) does not fail every 5 minutes.
    """
    config = run_stack(stack).config  # resolved here once; the backup tasks of this run reuse it
    if sources:
        return [config.source(name).name for name in sources]  # ConfigError names an unknown one
    chosen = [s for s in config.sources if not kinds or s.kind in kinds]
    takes = [s for s in chosen if backup_type in engine_class(s.kind).backup_types]
    left_out = [f"{s.name} ({s.kind})" for s in chosen if s not in takes]
    if left_out:
        get_run_logger().info(
            "%s backup: left out %s (their kind takes only %s backups)",
            backup_type,
            ", ".join(left_out),
            "/".join(sorted({t for s in chosen if s not in takes for t in engine_class(s.kind).backup_types})),
        )
    return [s.name for s in takes]


# Never cached: a DR action must run every time it is asked for, and read the live state.
# Retried only when the source failed transiently (each attempt leaves its own FAILED record).
@task(
    name="backup-source",
    task_run_name="backup-{source}-{backup_type}",
    cache_policy=NO_CACHE,
    **task_options("backup"),
)
def backup_source(stack: str, source: str, backup_type: str = "full") -> dict:
    """Dump one source into the vault; returns the manifest summary (ids, sizes, position, seconds, slow), or
    for a skipped incremental ``{"source", "type", "status": "SKIPPED", "reason", ...}``.

    Its progress goes to a progress artifact and, on a terminal, a bar (tasks/progress.py); its end to one log
    line naming the source and the backup, a ``genesis-dr.backup.completed`` event and the slow-operation check."""
    opened = run_stack(stack)
    config = opened.config
    # The source's slot and one of the stack's max_concurrent_backups; an incremental whose source is still
    # being backed up is skipped (recorded in the vault's history): its result says SKIPPED, and why.
    with backup_slots(config, source, backup_type) as skipped:
        if skipped is not None:
            return skipped
        vault = config.vault.open(create=True)
        with Progress(source, f"{backup_type}-backup", f"{backup_type} backup") as shown:
            try:
                manifest = operations.backup_source(
                    vault,
                    opened.keyring,
                    engine_for(config.source(source)),
                    backup_type,
                    compression=config.vault.compression,
                    # A backup on a base says when it waits for the log to be shipped.
                    progress=progress(source, lambda: shown.subject),
                    on_bytes=shown.on_bytes,
                    on_begin=shown.on_begin,
                )
            except Exception as exc:
                exc.backup_type = backup_type  # for the run's table (flows/reporting.py)
                if shown.subject:  # the vault holds its FAILED record: name it (the task's failure line does not)
                    exc.backup_id = shown.subject
                    get_run_logger().error(
                        "%s: %s backup %s FAILED after %s in %.1f s: %s",
                        source,
                        backup_type,
                        shown.subject,
                        human_bytes(shown.done),
                        shown.seconds(),
                        exc,
                    )
                raise
    seconds = manifest_seconds(manifest.summary())
    summary = manifest.summary() | {"vault": vault.describe(), "seconds": seconds}
    get_run_logger().info(
        "%s: %s backup %s committed, %s -> %s stored in %.1f s%s",
        source,
        backup_type,
        manifest.id,
        human_bytes(manifest.plain_bytes),
        human_bytes(manifest.stored_bytes),
        seconds,
        f" (on {manifest.parent})" if manifest.parent else "",
    )
    emit_backup_completed(config.stack, source, backup_type, manifest.id)  # never raises
    try:
        summary["slow"] = flag_if_slow(config.stack, source, backup_type, seconds, manifest.id)
    except DRError as exc:  # the backup is committed: a history that cannot be read must not fail it
        get_run_logger().warning("%s: %s backup %s: slow check skipped: %s", source, backup_type, manifest.id, exc)
    return summary


def manifest_seconds(summary: dict) -> float:
    """How long the backup ran, from its manifest's start and end (what the vault records, not the task's wait)."""
    return round((parse_iso(summary["ended_at"]) - parse_iso(summary["started_at"])).total_seconds(), 3)
