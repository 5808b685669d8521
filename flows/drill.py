"""drill: restore exercises that prove the stack recoverable, with RTO and RPO measured against its objectives."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from core import cancel
from core.errors import DrillFailedError
from core.notify.reports import drill_event
from flows.notifying import announce
from flows.reporting import raise_if_failed
from tasks.scheduling import defer_if_needed, flag_if_slow, seconds_of
from tasks.validate import run_drill_tier


@flow(name="drill", log_prints=True)
def drill(
    stack: str = "default",
    tier: Literal["daily", "weekly", "monthly", "full"] = "daily",
    vault: str | None = None,
) -> dict:
    """Run a drill of ``tier``:

    * daily: integrity validation of the newest backup of every source;
    * weekly: restore-level validation of every source in throw-away sandboxes;
    * monthly: a whole-stack disaster exercise: every source restored to its newest recoverable point in
      sandboxes, data checks and smoke queries, RTO per stage and end to end, RPO per source;
    * full: monthly, plus the same from each replica vault.

    The report goes to a markdown artifact (a table per source and stage), a JSON record and a PNG chart
    of RTO and RPO over the last drills in the vault; the outcome is notified. The run ends Failed
    (exit 22) when a recovery failed or RTO/RPO missed the stack's objectives.
    """
    # From a deployment, inside a maintenance window or on a busy host the run ends Scheduled for later.
    deferred = defer_if_needed(stack, "drill")
    if deferred is not None:
        return deferred
    from core.drills import DrillRecord

    # SIGTERM (a cancelled run) or Ctrl-C stops at the next step instead of killing the process, so every
    # sandbox is torn down; a sandbox of a run killed outright is removed by the next one (core.sandbox).
    with cancel.stop_on_signals(print):
        data = run_drill_tier(stack, tier, vault)
    record = DrillRecord.from_dict(data)
    create_markdown_artifact(record.render_markdown(), key=f"drill-{tier}", description=f"Drill ({tier}) of {stack}")
    if data.get("chart_path"):
        create_link_artifact(
            f"file://{data['chart_path']}",
            link_text="RTO and RPO over the last drills (PNG)",
            key=f"drill-{tier}-chart",
            description=f"Also in the vault as {data.get('chart')}",
        )
    announce(stack, drill_event(record))
    raise_if_failed(record, data, DrillFailedError)
    get_run_logger().info(record.summary_line())
    flag_if_slow(stack, None, f"drill-{tier}", seconds_of(data), data.get("id"))  # warns over slow_factor x usual
    return data
