"""What a validation finds: one structured result per check, and the record of a run.

A ``CheckResult`` is one line an operator can act on: what was checked, whether it
passed, the detail, the remedy when it did not, and whether a failure of it fails the
run (``critical``). A check that could not run (no private key to decrypt with, no
sandbox for a kind) is ``checked=False``: it neither passes nor fails, and the report
says so, so "not checked" is never mistaken for "fine".
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

LEVELS = ("quick", "integrity", "restore")


@dataclass
class CheckResult:
    """One check of one backup (or of one source, for freshness), in one line each field."""

    name: str  # e.g. "objects present", "chunk authentication", "pg_restore --list", "row counts"
    passed: bool
    detail: str  # what was found, one line (never a secret, never a sampled value)
    remedy: str = ""  # what to do when it failed, one line
    critical: bool = True  # a failed critical check fails the run
    source: str = ""
    backup_id: str = ""  # empty for checks of a source as a whole (freshness)
    checked: bool = True  # False: could not run (e.g. no private key); passed is then True and ignored
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.checked and not self.passed

    @property
    def status(self) -> str:
        return "not checked" if not self.checked else ("passed" if self.passed else "FAILED")

    def line(self) -> str:
        """``[FAILED] backup_x app-db: objects present: 2 chunks missing; remedy``."""
        where = " ".join(p for p in (self.backup_id or "", self.source) if p)
        text = f"[{self.status}] {where + ': ' if where else ''}{self.name}: {self.detail}"
        if self.failed and self.remedy:
            text += f"; {self.remedy}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def not_checked(name: str, detail: str, *, source: str = "", backup_id: str = "") -> CheckResult:
    return CheckResult(name=name, passed=True, detail=detail, source=source, backup_id=backup_id, checked=False)


def new_run_id(prefix: str, now: datetime | None = None) -> str:
    """``validation_20261206_020000123_a1b2c3d4`` / ``drill_...``: UTC to the millisecond, so records of one
    vault sort by time even when two runs start in the same second."""
    now = now or datetime.now(UTC)
    return f"{prefix}_{now.strftime('%Y%m%d_%H%M%S%f')[:-3]}_{secrets.token_hex(4)}"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ValidationRecord:
    """One validation run: what was validated, at which level, in which vault, and every result.

    Kept in the vault (``history/validations/<id>.json``) so the history survives the Prefect
    database; published as a markdown artifact by the flow.
    """

    id: str
    level: str
    vault: str  # "primary" or the replica's name
    started_at: str
    ended_at: str = ""
    backups: list[str] = field(default_factory=list)
    results: list[CheckResult] = field(default_factory=list)
    # What was not re-read because it was verified recently: backup id -> when it was verified.
    reused: dict[str, str] = field(default_factory=dict)
    objects_read: int = 0
    bytes_read: int = 0
    decryption_checked: bool = True  # False when no private key was available
    stack: str = "default"

    @property
    def passed(self) -> bool:
        """No failed critical check."""
        return not any(r.failed and r.critical for r in self.results)

    def failures(self, critical_only: bool = False) -> list[CheckResult]:
        return [r for r in self.results if r.failed and (r.critical or not critical_only)]

    def counts(self) -> dict[str, int]:
        return {
            "passed": sum(1 for r in self.results if r.checked and r.passed),
            "failed": sum(1 for r in self.results if r.failed),
            "not_checked": sum(1 for r in self.results if not r.checked),
        }

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        data["counts"] = self.counts()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationRecord:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "results"}
        return cls(**fields, results=[CheckResult.from_dict(r) for r in data.get("results", [])])

    def summary_line(self) -> str:
        c = self.counts()
        outcome = "passed" if self.passed else "FAILED"
        return (
            f"validation {self.id} ({self.level}, vault {self.vault}) {outcome}: {len(self.backups)} backups, "
            f"{c['passed']} checks passed, {c['failed']} failed, {c['not_checked']} not checked"
        )

    def render_markdown(self) -> str:
        """The Prefect artifact: outcome first, failures next, then every check in a table."""
        lines = [f"# {self.summary_line()}", ""]
        if not self.decryption_checked:
            lines += ["**Decryption was not checked**: no private key was available to this run.", ""]
        failed = self.failures()
        if failed:
            lines += ["## Failures", ""] + [f"- {r.line()}" for r in failed] + [""]
        if self.reused:
            lines += [
                f"{len(self.reused)} backups were verified recently and not re-read: "
                + ", ".join(f"{b} (at {t})" for b, t in sorted(self.reused.items())),
                "",
            ]
        lines += ["| backup | source | check | result | detail |", "|---|---|---|---|---|"]
        for r in self.results:
            detail = r.detail.replace("|", "\\|") + (f" — {r.remedy}" if r.failed and r.remedy else "")
            lines.append(f"| {r.backup_id or '-'} | {r.source or '-'} | {r.name} | {r.status} | {detail} |")
        return "\n".join(lines)
