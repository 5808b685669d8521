"""Shared flow helpers: collect per-source outcomes, publish artifacts, decide the final state."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

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


def publish_backup_table(results: list[dict], failures: dict[str, BaseException]) -> None:
    rows = ["| source | backup id | status | size | stored | position |", "|---|---|---|---|---|---|"]
    for r in results:
        pos = r["position_text"]
        rows.append(
            f"| {r['source']} | `{r['id']}` | {r['status']} | {human_bytes(r['plain_bytes'])} | "
            f"{human_bytes(r['stored_bytes'])} | {pos} |"
        )
    for name, exc in failures.items():
        rows.append(f"| {name} | - | FAILED | - | - | {str(exc)[:200]} |")
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
