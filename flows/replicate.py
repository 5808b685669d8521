"""replicate: bring every replica of a stack's vault up to date, verified, and report each one's lag."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from core.units import human_bytes
from flows.reporting import collect, raise_failures
from tasks.replicate import replicate_vault, select_replicas
from tasks.scheduling import defer_if_needed


@flow(name="replicate", log_prints=True)
def replicate(stack: str = "default", replica: str | None = None, verify: bool = False) -> list[dict]:
    """Copy every committed backup and log piece each replica lacks (objects first, manifest last), verified
    on the replica, and report per replica: backups and bytes copied, objects repaired, and the lag.

    ``replica``: only that one (default: all of the stack's ``replicas:``). ``verify``: also re-read and hash
    every object of the backups a replica already holds (default: their sizes). Replicas run concurrently;
    the run ends Failed when any replica failed or lags past ``replication.max_lag_seconds`` (exit 20).
    """
    # Listed in operations.heavy_jobs (not by default), it waits out maintenance windows and busy hosts.
    deferred = defer_if_needed(stack, "replicate")
    if deferred is not None:
        return deferred
    names = select_replicas(stack, replica)
    if not names:
        get_run_logger().info("stack '%s' has no replicas (the stack file's 'replicas:'); nothing to copy", stack)
        return []
    futures = {name: replicate_vault.submit(stack, name, verify) for name in names}
    results, failures = collect(futures)
    publish_replica_table(results, failures)
    raise_failures(failures, "replications")
    return results


def publish_replica_table(results: list[dict], failures: dict[str, BaseException]) -> None:
    """One row per replica: what was copied and repaired, and its lag (a failed replica's last known lag)."""
    rows = [_row(r, "in sync" if r["in_sync"] else f"lags {r['lag_seconds']:.0f} s") for r in results]
    for name, exc in failures.items():
        report = getattr(exc, "report", None)
        rows.append(_row(report, f"FAILED: {str(exc)[:300]}") if report else _empty_row(name, f"FAILED: {exc}"))
    create_table_artifact(
        table=rows, key="replication", description="Replicas of the vault: copied, repaired, verified, lag"
    )


def _row(r: dict, status: str) -> dict:
    return {
        "replica": r["replica"],
        "location": r["location"],
        "status": status,
        "backups copied": r["backups_copied"],
        "log pieces copied": r["log_pieces_copied"],
        "bytes copied": human_bytes(r["bytes_copied"]),
        "objects repaired": r["objects_repaired"],
        "objects verified": r["objects_verified"],
        "lag (s)": r["lag_seconds"],
        "missing": "; ".join(r["missing"][:3]),
    }


def _empty_row(name: str, status: str) -> dict:
    return (
        {"replica": name, "location": "", "status": str(status)[:300]}
        | dict.fromkeys(
            ("backups copied", "log pieces copied", "bytes copied", "objects repaired", "objects verified", "lag (s)"),
            "-",
        )
        | {"missing": ""}
    )
