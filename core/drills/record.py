"""What a drill proved: the record kept in the vault (``history/drills/<id>.json``) and its reports.

A monthly or full drill measures the recovery of the whole stack: ``rto_s`` is the wall time from
the declared disaster to the last source verified, each source carries its achieved RPO (disaster
time minus recovery point) and its seconds per stage. Daily and weekly drills are validations; their
record carries the validation's record and results, and no RTO.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from core.timing import STAGES
from core.validation.results import CheckResult

TIERS = ("daily", "weekly", "monthly", "full")
RECOVERY_TIERS = ("monthly", "full")  # the tiers that restore the whole stack and measure RTO and RPO


def seconds_text(value: float | None) -> str:
    """``0.42 s``, ``12.3 s``, ``2 min 5 s``, ``3 h 2 min``; ``-`` when not measured."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{int(value // 60)} min {int(value % 60)} s"
    return f"{int(value // 3600)} h {int(value % 3600 // 60)} min"


@dataclass
class DrillRecord:
    """One drill run. ``sources`` maps a key (the source's name; ``name@replica`` for a restore from a
    replica vault) to {source, kind, vault, backup_id, recovery_point, rpo_s, rpo_objective_s, stages,
    seconds, target, passed}."""

    id: str
    tier: str
    stack: str
    vault: str = "primary"  # the vault the drill ran against (and where its record is kept)
    disaster_time: str = ""  # monthly/full: the declared disaster (ISO, UTC)
    started_at: str = ""
    ended_at: str = ""
    rto_s: float | None = None  # monthly/full: declaration to the last source verified, from ``vault``
    rto_objective_s: float | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[CheckResult] = field(default_factory=list)
    validation: dict[str, Any] | None = None  # daily/weekly: the ValidationRecord's dict
    vaults_rto_s: dict[str, float] = field(default_factory=dict)  # full: RTO of each vault restored from
    chart: str | None = None  # the chart's key in the vault
    chart_path: str | None = None  # the chart's local copy (GENESIS_DR_REPORTS)

    @property
    def passed(self) -> bool:
        """No failed critical check (a restore, a data check, a smoke query, an objective)."""
        return not any(r.failed and r.critical for r in self.results)

    def failures(self, critical_only: bool = False) -> list[CheckResult]:
        return [r for r in self.results if r.failed and (r.critical or not critical_only)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrillRecord:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "results"}
        return cls(**fields, results=[CheckResult.from_dict(r) for r in data.get("results", [])])

    def worst_rpo(self) -> tuple[str, dict[str, Any]] | None:
        """The source whose RPO is furthest over (or closest to) its objective, or None."""
        measured = [(k, s) for k, s in self.sources.items() if s.get("rpo_s") is not None]
        if not measured:
            return None
        return max(measured, key=lambda ks: ks[1]["rpo_s"] / (ks[1].get("rpo_objective_s") or 1.0))

    def summary_line(self) -> str:
        outcome = "passed" if self.passed else "FAILED"
        text = f"drill {self.id} ({self.tier}, stack {self.stack}, vault {self.vault}) {outcome}"
        if self.tier in RECOVERY_TIERS:
            text += f": {len(self.sources)} recoveries, RTO {seconds_text(self.rto_s)}"
            text += f" (objective {seconds_text(self.rto_objective_s)})"
            worst = self.worst_rpo()
            if worst:
                key, src = worst
                text += f", worst RPO {seconds_text(src['rpo_s'])} ({key}, objective {seconds_text(src.get('rpo_objective_s'))})"
        elif self.validation:
            counts = self.validation.get("counts") or {}
            text += (
                f": {self.validation.get('level')} validation of {len(self.validation.get('backups') or [])} backups, "
                f"{counts.get('passed', 0)} checks passed, {counts.get('failed', 0)} failed, "
                f"{counts.get('not_checked', 0)} not checked"
            )
        return text

    def render_text(self) -> str:
        """For a terminal: the failures and not-checked lines, per-source figures, then the summary."""
        lines = [r.line() for r in self.results if r.failed or not r.checked]
        for key, src in self.sources.items():
            stages = ", ".join(f"{s} {seconds_text(v)}" for s, v in _ordered(src.get("stages") or {}))
            lines.append(
                f"{key}: {src.get('seconds', 0):.2f} s ({stages or 'no stages'}); recovery point "
                f"{src.get('recovery_point') or '-'}, RPO {seconds_text(src.get('rpo_s'))} "
                f"(objective {seconds_text(src.get('rpo_objective_s'))})"
            )
        if self.chart_path:
            lines.append(f"chart: {self.chart_path}")
        lines.append(self.summary_line())
        return "\n".join(lines)

    def render_markdown(self) -> str:
        """The Prefect artifact: outcome, RTO/RPO against the objectives, failures, a table per source
        and stage, then every check."""
        lines = [f"# {self.summary_line()}", ""]
        if self.tier in RECOVERY_TIERS:
            verdict = _verdict(self.rto_s, self.rto_objective_s)
            lines += [
                f"Disaster declared at **{self.disaster_time}**; the whole stack was recovered and verified in "
                f"**{seconds_text(self.rto_s)}** (RTO objective {seconds_text(self.rto_objective_s)}: {verdict}).",
                "",
            ]
            for vault, rto in self.vaults_rto_s.items():
                if vault != self.vault:
                    lines += [
                        f"From vault **{vault}**: {seconds_text(rto)} ({_verdict(rto, self.rto_objective_s)}).",
                        "",
                    ]
        failed = self.failures()
        if failed:
            lines += ["## Failures", ""] + [f"- {_cell(r.line())}" for r in failed] + [""]
        if self.sources:
            lines += [
                "## Recovery per source and stage",
                "",
                "| source | vault | kind | backup | recovery point | RPO | RPO objective | "
                + " | ".join(STAGES)
                + " | total | result |",
                "|---" * (9 + len(STAGES)) + "|",
            ]
            for key, src in self.sources.items():
                stages = src.get("stages") or {}
                rpo_verdict = _verdict(src.get("rpo_s"), src.get("rpo_objective_s"))
                lines.append(
                    f"| {key} | {src.get('vault', '-')} | {src.get('kind', '-')} | {src.get('backup_id') or '-'} | "
                    f"{src.get('recovery_point') or '-'} | {seconds_text(src.get('rpo_s'))} ({rpo_verdict}) | "
                    f"{seconds_text(src.get('rpo_objective_s'))} | "
                    + " | ".join(seconds_text(stages.get(s)) for s in STAGES)
                    + f" | {seconds_text(src.get('seconds'))} | {'passed' if src.get('passed') else 'FAILED'} |"
                )
            lines.append("")
        if self.chart or self.chart_path:
            where = f"`{self.chart}` in the vault" if self.chart else ""
            local = f"local copy `{self.chart_path}`" if self.chart_path else ""
            lines += [f"Chart of RTO and RPO over the last drills: {', '.join(p for p in (where, local) if p)}.", ""]
        lines += ["## Checks", "", "| source | check | result | detail |", "|---|---|---|---|"]
        for r in self.results:
            detail = r.detail + (f" — {r.remedy}" if r.failed and r.remedy else "")
            lines.append(f"| {r.source or '-'} | {r.name} | {r.status} | {_cell(detail)} |")
        return "\n".join(lines)


def _ordered(stages: dict[str, float]) -> list[tuple[str, float]]:
    known = [(s, stages[s]) for s in STAGES if s in stages]
    return known + sorted((s, v) for s, v in stages.items() if s not in STAGES)


def _verdict(value: float | None, objective: float | None) -> str:
    if value is None:
        return "not measured"
    if objective is None:
        return "no objective"
    return "within" if value <= objective else "**OVER**"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
