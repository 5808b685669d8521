"""validate: prove backups restorable at one of three depths, with a record kept in the vault."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from core import cancel
from core.errors import ValidationFailedError
from core.notify.reports import validation_event
from core.validation.results import ValidationRecord
from flows.notifying import announce
from flows.reporting import raise_if_failed
from tasks.scheduling import defer_if_needed, flag_if_slow, seconds_of
from tasks.validate import validate_backups


@flow(name="validate", log_prints=True)
def validate(
    stack: str = "default",
    backup_id: str | None = None,
    latest: bool = False,
    all: bool = False,  # noqa: A002 - the CLI's --all
    level: Literal["quick", "integrity", "restore"] = "integrity",
    vault: str | None = None,
    sources: list[str] | None = None,
) -> dict:
    """Validate a backup (``backup_id``), the newest of each source (``latest``, the default) or every backup
    (``all``) of the stack's vault (or the replica ``vault``) at ``level``:

    * quick: manifests, every object present with its size, chains complete, each source within its RPO;
    * integrity: quick, plus every object read back and authenticated, every stream's digest, and the
      engines' own tools (pg_restore --list, redis-check-rdb, ...) on the streamed plaintext;
    * restore: integrity, plus a restore into a throw-away sandbox, compared with the checks recorded at
      backup time, plus the stack's smoke queries.

    The record goes to the vault (history) and to a markdown artifact; the outcome is notified. The run
    ends Failed (exit 21) when a critical check failed.
    """
    # From a deployment, inside a maintenance window or on a busy host the run ends Scheduled for later.
    deferred = defer_if_needed(stack, "validate")
    if deferred is not None:
        return deferred
    # SIGTERM (a cancelled run) or Ctrl-C stops at the next step instead of killing the process, so every
    # sandbox is torn down; a sandbox of a run killed outright is removed by the next one (core.sandbox).
    with cancel.stop_on_signals(print):
        data = validate_backups(stack, backup_id, latest, all, level, vault, sources)
    record = ValidationRecord.from_dict(data)
    create_markdown_artifact(
        record.render_markdown(), key=f"validation-{level}", description=f"Validation ({level}) of {stack}"
    )
    announce(stack, validation_event(record))
    raise_if_failed(record, data, ValidationFailedError)
    get_run_logger().info(record.summary_line())
    flag_if_slow(stack, None, f"validate-{level}", seconds_of(data), data.get("id"))  # warns over slow_factor x usual
    return data
