"""self-backup: seal what genesis-dr itself needs to be rebuilt into the stack's vault.

After a disaster that took the Prefect server with it, `genesis-dr bootstrap --from-vault VAULT` on a new
machine restores from the newest snapshot: the stack's blocks (secrets included), deployments with their
schedules, automations, variables, work pools and concurrency limits. Then the operator restores the stack.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from core.units import human_bytes
from tasks.audit import record_audit
from tasks.scheduling import defer_if_needed
from tasks.self_backup import self_backup_task


@flow(name="self-backup", log_prints=True)
def self_backup(stack: str = "default") -> dict:
    """Snapshot the stack's Prefect state (blocks with their secrets, deployments, automations, variables, work
    pools, concurrency limits) into its primary vault, encrypted like a backup; keep the newest 14 snapshots."""
    # Listed in operations.heavy_jobs (not by default), it waits out maintenance windows and busy hosts.
    deferred = defer_if_needed(stack, "self_backup")
    if deferred is not None:
        return deferred
    result = self_backup_task(stack)
    counts = result["counts"]
    get_run_logger().info(
        "self-backup %s: %d blocks, %d deployments, %d automations, %d variables, %d work pools, "
        "%d concurrency limits; %s in %s",
        result["id"],
        counts["blocks"],
        counts["deployments"],
        counts["automations"],
        counts["variables"],
        counts["work_pools"],
        counts["concurrency_limits"],
        human_bytes(result["size"]),
        result["vault"],
    )
    details = {"counts": counts, "sha256": result["sha256"], "size": result["size"], "destroyed": result["destroyed"]}
    result["audit"] = record_audit(stack, "self.backup", result["id"], details)
    return result
