"""Shared flow helpers: collect per-source outcomes, publish artifacts, decide the final state."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from core.errors import DRError
from core.units import human_bytes


class PartialFailureError(DRError):
    """Some sources failed; the flow ends Failed after the others finished."""


def collect(futures: dict) -> tuple[list[dict], dict[str, BaseException]]:
    """Wait for every future; one failed source does not stop the others."""
    results, failures = [], {}
    for name, future in futures.items():
        try:
            results.append(future.result())
        except BaseException as exc:  # collected and re-raised below, never swallowed
            failures[name] = exc
    return results, failures


def raise_failures(failures: dict[str, BaseException], what: str) -> None:
    if not failures:
        return
    if len(failures) == 1:
        raise next(iter(failures.values()))
    detail = "; ".join(f"{name}: {exc}" for name, exc in failures.items())
    codes = {getattr(exc, "exit_code", 1) for exc in failures.values()}
    error = PartialFailureError(f"{len(failures)} {what} failed - {detail}")
    error.exit_code = codes.pop() if len(codes) == 1 else 1
    raise error


TABLE_COLUMNS = (
    "source",
    "backup_id",
    "type",
    "status",
    "plain_bytes",
    "stored_bytes",
    "seconds",
    "position",
    "parent",
    "note",
)


def backup_rows(results: list[dict], failures: dict[str, BaseException], backup_type: str | None = None) -> list[dict]:
    """One row per source of a backup run, from the committed manifests' facts (every row has every column).

    A result whose status is SKIPPED (an incremental that would have overlapped a running one) says why in
    ``note``; a failed source has the id of its FAILED record when the vault got one, and its error."""
    rows = []
    for r in results:
        status = r.get("status") or "COMPLETED"
        rows.append(
            {
                "source": r["source"],
                "backup_id": r.get("id") or "",
                "type": r.get("type") or backup_type or "",
                "status": status,
                "plain_bytes": r.get("plain_bytes"),
                "stored_bytes": r.get("stored_bytes"),
                "seconds": r.get("seconds"),
                "position": r.get("position_text") or "",
                "parent": r.get("parent") or "",
                "note": str(r.get("reason") or r.get("error") or "")[:300],
            }
        )
    for name, exc in failures.items():
        rows.append(
            dict.fromkeys(TABLE_COLUMNS)
            | {
                "source": name,
                "backup_id": getattr(exc, "backup_id", None) or "",
                "type": getattr(exc, "backup_type", None) or backup_type or "",
                "status": "FAILED",
                "position": "",
                "parent": "",
                "note": str(exc)[:300],
            }
        )
    return rows


def publish_backup_table(
    results: list[dict], failures: dict[str, BaseException], backup_type: str | None = None
) -> None:
    """The run's table artifact (key ``backup-run``: a row per source, sortable in the UI) and its markdown
    summary (key ``backup-summary``: sizes for people, and every entry a backup left out)."""
    create_table_artifact(
        backup_rows(results, failures, backup_type),
        key="backup-run",
        description="Backups of this run, one row per source (plaintext and stored bytes, seconds the backup ran)",
    )
    rows = ["| source | backup id | status | size | stored | position |", "|---|---|---|---|---|---|"]
    for r in results:
        if (r.get("status") or "COMPLETED") != "COMPLETED":  # a skipped incremental: its reason
            rows.append(f"| {r['source']} | - | {r['status']} | - | - | {str(r.get('reason') or '')[:200]} |")
            continue
        rows.append(
            f"| {r['source']} | `{r['id']}` | {r['status']} | {human_bytes(r['plain_bytes'])} | "
            f"{human_bytes(r['stored_bytes'])} | {r['position_text']} |"
        )
    for name, exc in failures.items():
        backup_id = getattr(exc, "backup_id", None)
        rows.append(f"| {name} | {f'`{backup_id}`' if backup_id else '-'} | FAILED | - | - | {str(exc)[:200]} |")
    # Nothing is left out silently: every entry a backup skipped (where the stack allows it) is listed.
    skips = [(r["source"], r["id"], entry) for r in results for entry in r.get("skipped") or []]
    if skips:
        rows += ["", "**Left out of these backups (the stack allows skipping them):**", ""]
        rows += [f"- {source} `{backup_id}`: {entry}" for source, backup_id, entry in skips]
    create_markdown_artifact("\n".join(rows), key="backup-summary", description="Backups taken by this run")


def raise_if_failed(record, data: dict, error_class: type[DRError]) -> None:
    """End a validation or drill run Failed when a critical check failed: the first failure in the
    error's line (the command prints it), the whole record attached for the caller to show."""
    failed = [r for r in record.results if r.failed and r.critical]
    if not failed:
        return
    more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
    error = error_class(f"{record.summary_line()}: {failed[0].line()}{more}")
    error.record = data
    raise error
