"""drill: restore exercises that prove the stack recoverable, with RTO and RPO measured against its objectives."""

from __future__ import annotations

from typing import Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from core.errors import DrillFailedError
from flows.notifying import announce
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
    from core.drills import DrillRecord

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
    failed = [r for r in record.results if r.failed and r.critical]
    announce(
        stack,
        "drill",
        record.passed,
        title=f"{tier} drill of {stack}: {'passed' if record.passed else 'FAILED'}",
        summary=record.summary_line() if record.passed else f"{record.summary_line()}; first: {failed[0].line()}",
        subject=tier,
        details={"record": record.id, "tier": tier, "rto_s": data.get("rto_s"), "rpo_s": _rpos(data)},
    )
    if not record.passed:
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        error = DrillFailedError(f"{record.summary_line()}: {failed[0].line()}{more}")
        error.record = data
        raise error
    get_run_logger().info(record.summary_line())
    return data


def _rpos(data: dict) -> dict:
    return {name: s.get("rpo_s") for name, s in (data.get("sources") or {}).items()}
