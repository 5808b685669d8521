"""What a failover (or failback) run did: each planned step with its outcome, the data loss, the DNS change.

The report is stored once in the vault (``StateStore.put_report``), shown as a flow artifact, and carried by
``FailoverIncompleteError.report``; everything in it is one-line text and numbers, never a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A step's status in the report: ok, failed, unreachable (failed because its server does not answer: a fence
# of a dead primary, recorded and redone when it returns), skipped (not run: an earlier step stopped the run).
OK, FAILED, UNREACHABLE, SKIPPED = "ok", "failed", "unreachable", "skipped"
# The run's outcome.
COMPLETED, INCOMPLETE, DNS_FAILED = "completed", "incomplete", "dns_failed"


@dataclass(frozen=True)
class StepResult:
    """One planned step as it ran: what (action, component, region), its status and one-line detail."""

    action: str
    component: str
    region: str
    status: str
    detail: str
    seconds: float = 0.0

    @property
    def what(self) -> str:
        return f"{self.action} {self.component} in {self.region}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "component": self.component,
            "region": self.region,
            "status": self.status,
            "detail": self.detail,
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        return cls(**data)


@dataclass
class FailoverReport:
    """One run: ``operation`` ("failover to us-east-1"), the region(s) left and the target, the epoch it claimed,
    each step, the outcome and the next step for the operator, and the plan it ran (as printed, as data)."""

    operation_id: str
    operation: str
    kind: str  # "failover" or "failback"
    source: str
    target: str
    epoch: int
    reason: str
    forced: bool
    started_at: str
    finished_at: str = ""
    seconds: float = 0.0
    outcome: str = INCOMPLETE
    steps: list[StepResult] = field(default_factory=list)
    data_loss: dict[str, Any] = field(default_factory=dict)
    to_fence_when_back: list[str] = field(default_factory=list)
    dns: dict[str, Any] | None = None
    next_step: str = ""
    plan: dict[str, Any] = field(default_factory=dict)

    def component_states(self) -> dict[str, str]:
        """Per component, what happened to it in order ("fence ok in us-west-2, promote FAILED in us-east-1")."""
        states: dict[str, list[str]] = {}
        for s in self.steps:
            word = {OK: "ok", FAILED: "FAILED", UNREACHABLE: "unreachable", SKIPPED: "not run"}.get(s.status, s.status)
            states.setdefault(s.component, []).append(f"{s.action} {word} in {s.region}")
        return {component: ", ".join(parts) for component, parts in states.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "operation_id": self.operation_id,
            "operation": self.operation,
            "kind": self.kind,
            "source": self.source,
            "target": self.target,
            "epoch": self.epoch,
            "reason": self.reason,
            "forced": self.forced,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": self.seconds,
            "outcome": self.outcome,
            "steps": [s.to_dict() for s in self.steps],
            "data_loss": dict(self.data_loss),
            "to_fence_when_back": list(self.to_fence_when_back),
            "dns": dict(self.dns) if self.dns else None,
            "next_step": self.next_step,
            "components": self.component_states(),
            "plan": dict(self.plan),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FailoverReport:
        data = dict(data)
        data.pop("components", None)  # derived from the steps
        data["steps"] = [StepResult.from_dict(s) for s in data.get("steps", [])]
        return cls(**data)

    def render(self) -> str:
        """Markdown for the flow artifact and the CLI: the outcome, then one row per step."""
        lines = [
            f"## {self.operation}: {self.outcome}",
            "",
            f"- from {self.source} to {self.target}, epoch {self.epoch}, {self.seconds:g} s"
            + (" (forced)" if self.forced else ""),
            f"- reason: {self.reason}",
        ]
        loss = self.data_loss.get("planned") or {}
        if loss:
            lines.append(f"- data loss at the last health check: {_loss(loss)}")
        if self.to_fence_when_back:
            lines.append(f"- unreachable, fenced when they return: {', '.join(self.to_fence_when_back)}")
        if self.dns:
            lines.append(f"- DNS: {self.dns.get('record')} -> {self.dns.get('value')}")
        if self.next_step:
            lines.append(f"- next: {self.next_step}")
        lines += ["", "| # | step | status | seconds | detail |", "|---|---|---|---|---|"]
        for n, s in enumerate(self.steps, 1):
            detail = s.detail.replace("|", "\\|")
            lines.append(f"| {n} | {s.what} | {s.status} | {s.seconds:g} | {detail} |")
        return "\n".join(lines)


def _loss(loss: dict[str, Any]) -> str:
    parts = []
    if loss.get("lag_s") is not None:
        parts.append(f"{loss['lag_s']:g} s")
    if loss.get("lag_bytes") is not None:
        parts.append(f"{loss['lag_bytes']} bytes")
    return ", ".join(parts) or "unknown"
