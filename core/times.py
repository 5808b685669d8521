"""Times an operator types (``--target-time``): one parser, one error, always UTC.

Accepted: ISO 8601 (``2026-12-01T14:30:00Z``, ``2026-12-01 14:30+01:00``,
``2026-12-01``), where a time without a zone is UTC (servers and the vault keep
UTC; a local zone would shift a restore by hours without a word); the source
documents' form ``2024-12-15_14:30:00`` (UTC as well); ``now``; and times
relative to now, ``-90m``, ``-2h``, ``2 hours ago``, ``3d ago`` (units s, m, h,
d, w; ``m`` is minutes). Anything else is a ConfigError that names the option
and shows an example.

``read_operator_time`` also says whether UTC was *assumed* (no zone typed), so a
restore plan can say so; ``OperatorTime.parameter`` is the form handed to a flow
run that keeps that fact (a naive ISO text) while pinning relative times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core.errors import ConfigError
from core.sources import short

_UNITS = {
    "s": 1,
    "sec": 1,
    "secs": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "mins": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hr": 3600,
    "hrs": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 604800,
    "week": 604800,
    "weeks": 604800,
}
_RELATIVE = re.compile(r"-\s*(\d{1,9})\s*([a-z]+)|(\d{1,9})\s*([a-z]+)\s+ago", re.IGNORECASE | re.ASCII)
# The source documents write times as 2024-12-15_14:30:00 (an underscore for ISO's T).
_DOCUMENT_FORM = re.compile(r"(\d{4}-\d{2}-\d{2})_(\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)", re.ASCII)
EXAMPLES = (
    "e.g. 2026-12-01T14:30:00Z, '2026-12-01 14:30' (no zone means UTC), '2h ago' or -90m, "
    "or the source documents' 2026-12-01_14:30:00"
)


@dataclass(frozen=True)
class OperatorTime:
    """A time as typed and as read: ``when`` is aware UTC; ``zone_assumed`` when no zone was typed."""

    typed: str
    when: datetime
    zone_assumed: bool = False

    def iso(self) -> str:
        """``when`` as ISO 8601 UTC with a Z (what plans and reports print)."""
        return iso_z(self.when)

    def note(self) -> str:
        """One phrase for a plan: the instant, and how the typed text was read."""
        if self.zone_assumed:
            return f"{self.iso()} ('{self.typed.strip()}' has no zone: read as UTC)"
        if self.typed.strip() != self.iso():
            return f"{self.iso()} (typed '{self.typed.strip()}')"
        return self.iso()

    def plan_note(self) -> str | None:
        """What a restore plan says of how the time was read: only when UTC was assumed."""
        return f"'{self.typed.strip()}' has no zone: read as UTC" if self.zone_assumed else None

    def parameter(self) -> str:
        """What a flow run gets: the text as typed when UTC was assumed (the run's plan says so again, in the
        operator's words), ISO 8601 UTC otherwise (relative times pinned to the instant they were typed)."""
        return self.typed.strip() if self.zone_assumed else self.iso()


def iso_z(when: datetime) -> str:
    """An aware datetime as ISO 8601 UTC ending in Z (microseconds only when there are some)."""
    return when.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def parse_operator_time(value: str, option: str = "--target-time", now: datetime | None = None) -> datetime:
    """``value`` as an aware UTC datetime, or a one-line ConfigError naming ``option``.

    Args:
        value: what the operator typed.
        option: the option or field named in the error.
        now: the reference for relative times (default: the current time).
    """
    return read_operator_time(value, option, now).when


def read_operator_time(
    value: str | datetime, option: str = "--target-time", now: datetime | None = None
) -> OperatorTime:
    """``value`` read as ``parse_operator_time`` does, with whether UTC was assumed (no zone typed).

    A ``datetime`` (a flow parameter) is taken as it is; a naive one is UTC, assumed.
    """
    if isinstance(value, datetime):
        naive = value.tzinfo is None
        when = value.replace(tzinfo=UTC) if naive else value.astimezone(UTC)
        return OperatorTime(when.isoformat(), when, naive)
    text = value.strip()
    now = now or datetime.now(UTC)
    if text.lower() == "now":
        return OperatorTime(value, now)
    relative = _RELATIVE.fullmatch(text)
    if relative:
        amount, unit = (relative.group(1), relative.group(2)) if relative.group(1) else relative.group(3, 4)
        seconds = _UNITS.get(unit.lower())
        if seconds is None:
            raise ConfigError(
                f"{option} {short(value)}: unknown unit {unit!r}; use s, m (minutes), h, d or w, {EXAMPLES}"
            )
        try:
            return OperatorTime(value, now - timedelta(seconds=int(amount) * seconds))
        except OverflowError:
            raise ConfigError(f"{option} {short(value)}: too far in the past; {EXAMPLES}") from None
    document = _DOCUMENT_FORM.fullmatch(text)
    if document:
        text = f"{document.group(1)}T{document.group(2)}"
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            return OperatorTime(value, when.replace(tzinfo=UTC), zone_assumed=True)
        return OperatorTime(value, when.astimezone(UTC))
    except (ValueError, OverflowError):
        raise ConfigError(f"{option} {short(value)}: not a time; use ISO 8601 or a relative time, {EXAMPLES}") from None


def _instant(text: str | None) -> datetime | None:
    if not text:
        return None
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _iso_ms(text: str | None) -> str | None:
    when = _instant(text)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z") if when else None


def recovery_summary(target_time: str, points: list[dict], note: str | None = None) -> dict:
    """The stack at one instant: each source's recovery point and the largest skew between them.

    ``points``: one dict per source with ``source``, ``kind``, ``time`` (the recovery point, ISO
    8601), ``data_loss_s`` (how far before ``target_time``) and ``proof`` (how it is known). The
    skew is the distance between the earliest and the latest recovery point: how far apart in
    time the recovered sources are (0 when they all reached the target).
    """
    # One form for every recovery point (engines report theirs with an offset or a Z, in µs or ms).
    points = [p | {"time": _iso_ms(p.get("time"))} for p in points]
    timed = [(p, _instant(p.get("time"))) for p in points]
    known = [(p, t) for p, t in timed if t is not None]
    skew = None
    earliest = latest = None
    if len(known) > 1:
        earliest = min(known, key=lambda pt: pt[1])
        latest = max(known, key=lambda pt: pt[1])
        skew = round((latest[1] - earliest[1]).total_seconds(), 3)
    return {
        "target_time": target_time,
        "note": note,
        "sources": points,
        "skew_s": skew,
        "earliest": earliest[0]["source"] if earliest else None,
        "latest": latest[0]["source"] if latest else None,
    }


def render_recovery_summary(summary: dict, planned: bool = False) -> str:
    """``recovery_summary`` as text: one line per source, then the skew."""
    note = f" ({summary['note']})" if summary.get("note") else ""
    if planned:
        lines = [f"Stack at {summary['target_time']}{note}: what each source would reach"]
    else:
        lines = [f"Stack restored to {summary['target_time']}{note}: what each source reached"]
    width = max([len(p["source"]) for p in summary["sources"]] + [6])
    lines.append(f"  {'SOURCE':<{width}} {'KIND':<8} {'RECOVERY POINT':<26} {'DATA LOSS':>10}  PROOF")
    for p in summary["sources"]:
        loss = p.get("data_loss_s")
        loss_text = f"{loss:.1f}s" if isinstance(loss, int | float) else "-"
        lines.append(
            f"  {p['source']:<{width}} {p.get('kind') or '-':<8} {p.get('time') or '-':<26} {loss_text:>10}  "
            f"{p.get('proof') or '-'}"
        )
    if summary.get("skew_s") is not None:
        by = {p["source"]: p for p in summary["sources"]}
        lines.append(
            f"  largest skew between sources: {summary['skew_s']:.3f}s ({summary['earliest']} at "
            f"{by[summary['earliest']]['time']}, {summary['latest']} at {by[summary['latest']]['time']})"
        )
    return "\n".join(lines)


def planned_points(plans: dict[str, dict]) -> list[dict]:
    """Each plan's recovery point, as ``recovery_summary`` takes them."""
    return [
        {
            "source": name,
            "kind": plan["kind"],
            "time": plan["recovery_time"],
            "data_loss_s": plan["data_loss_s"],
            "proof": "planned from the vault's catalog",
        }
        for name, plan in plans.items()
    ]


def reached_points(plans: dict[str, dict], reports: dict[str, dict]) -> list[dict]:
    """Each restore's recovery point as its engine proved it (the plan's, where a report has none)."""
    points = []
    for name, report in reports.items():
        point = report.get("recovery_point") or {}
        points.append(
            {
                "source": name,
                "kind": plans[name]["kind"],
                "time": point.get("time") or plans[name]["recovery_time"],
                "data_loss_s": report["data_loss_s"]
                if report.get("data_loss_s") is not None
                else plans[name]["data_loss_s"],
                "proof": point.get("proof") or "the backup's own position (no log replayed)",
            }
        )
    return points
