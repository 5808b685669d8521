"""``drill status``: the last run of each tier and the trend of RTO and RPO, read from the vault's history.

The history is the vault's (``history/drills``), so the status survives the Prefect database and
needs no server. The trend covers the last ``drill.trend`` monthly and full drills: the median, the
last figure, and whether the last one is better or worse than the median of the ones before it.
"""

from __future__ import annotations

import statistics
from typing import Any

from core.drills.record import RECOVERY_TIERS, TIERS, DrillRecord, seconds_text
from core.history import History

# The last figure moves the direction only when it is this far (relative) from the earlier median:
# recoveries of the same stack vary by a few percent from run to run.
STEADY_BAND = 0.10


def trend(values: list[float]) -> dict[str, Any]:
    """``{median, last, direction, drills}`` of figures oldest first, where lower is better.

    direction: ``improving`` / ``worsening`` when the last figure is more than 10 % below / above the
    median of the ones before it, else ``steady``; ``too few drills`` with fewer than two figures.
    """
    if not values:
        return {"median": None, "last": None, "direction": "no drills", "drills": 0}
    last = values[-1]
    out: dict[str, Any] = {"median": round(statistics.median(values), 3), "last": last, "drills": len(values)}
    if len(values) < 2:
        out["direction"] = "too few drills"
        return out
    before = statistics.median(values[:-1])
    if last < before * (1 - STEADY_BAND):
        out["direction"] = "improving"
    elif last > before * (1 + STEADY_BAND):
        out["direction"] = "worsening"
    else:
        out["direction"] = "steady"
    return out


def summarize(records: list[dict[str, Any]], last: int) -> dict[str, Any]:
    """The status of drill records (oldest first): the last run per tier and the trend of the newest
    ``last`` monthly/full drills. Pure: ``drill_status`` feeds it the vault's history."""
    # Ids sort by the second they were made in; two drills within one second are ordered by start.
    records = sorted(records, key=lambda d: (d.get("started_at") or "", d.get("id") or ""))
    tiers: dict[str, Any] = {t: None for t in TIERS}
    for data in records:
        record = DrillRecord.from_dict(data)
        failed = record.failures(critical_only=True)
        tiers[record.tier] = {
            "id": record.id,
            "when": record.started_at,
            "passed": record.passed,
            "rto_s": record.rto_s,
            "failures": len(failed),
            "first_failure": failed[0].line() if failed else None,
        }
    recoveries = [DrillRecord.from_dict(d) for d in records if d.get("tier") in RECOVERY_TIERS][-last:]
    rto = [r.rto_s for r in recoveries if r.rto_s is not None]
    rpo: dict[str, Any] = {}
    for record in recoveries:
        for key, src in record.sources.items():
            if src.get("vault", record.vault) != record.vault or src.get("rpo_s") is None:
                continue  # the trend follows the drill's own vault; replica restores are in each record
            rpo.setdefault(key, {"values": [], "objective_s": None})
            rpo[key]["values"].append(src["rpo_s"])
            rpo[key]["objective_s"] = src.get("rpo_objective_s")
    return {
        "tiers": tiers,
        "trend": {
            "drills": len(recoveries),
            "rto": trend(rto) | {"objective_s": recoveries[-1].rto_objective_s if recoveries else None},
            "rpo": {k: trend(v["values"]) | {"objective_s": v["objective_s"]} for k, v in sorted(rpo.items())},
        },
    }


def drill_status(config, vault_name: str | None = None) -> dict[str, Any]:
    """The last run of each tier (id, when, passed, rto_s) and the RTO/RPO trend of the last
    ``config.drill.trend`` monthly/full drills, from the history kept in the vault."""
    vault = config.vault_named(vault_name).open()
    history = History(vault.store)
    ids = history.ids("drills")
    # Every tier's last run may be old, but only the last ``trend`` recoveries are charted: read newest
    # first and stop when each tier is found and the trend is full.
    wanted, found, recoveries, docs = set(TIERS), set(), 0, []
    for record_id in reversed(ids):
        if found >= wanted and recoveries >= config.drill.trend:
            break
        doc = history.get("drills", record_id)
        docs.append(doc)
        found.add(doc.get("tier"))
        recoveries += doc.get("tier") in RECOVERY_TIERS
    status = summarize(list(reversed(docs)), config.drill.trend)
    return {"stack": config.stack, "vault": vault_name or "primary", "records": len(ids)} | status


def render_status(status: dict[str, Any]) -> str:
    """For a terminal: one line per tier, then the trend."""
    lines = [
        f"drills of stack {status.get('stack')} (vault {status.get('vault')}): {status.get('records', 0)} recorded"
    ]
    for tier, last in status["tiers"].items():
        if last is None:
            lines.append(f"  {tier:<8} never run")
            continue
        outcome = "passed" if last["passed"] else f"FAILED ({last['failures']} critical)"
        rto = f", RTO {seconds_text(last['rto_s'])}" if last.get("rto_s") is not None else ""
        lines.append(f"  {tier:<8} {last['when']}  {outcome}{rto}  {last['id']}")
        if last.get("first_failure"):
            lines.append(f"           first failure: {last['first_failure']}")
    t = status["trend"]
    if not t["drills"]:
        lines.append("trend: no monthly or full drill yet ('genesis-dr drill run monthly')")
        return "\n".join(lines)
    lines.append(f"trend over the last {t['drills']} monthly/full drills (median, last, direction):")
    lines.append(f"  RTO {_trend_text(t['rto'])}")
    for key, rpo in t["rpo"].items():
        lines.append(f"  RPO {key}: {_trend_text(rpo)}")
    return "\n".join(lines)


def _trend_text(t: dict[str, Any]) -> str:
    return (
        f"median {seconds_text(t['median'])}, last {seconds_text(t['last'])}, {t['direction']}"
        f" (objective {seconds_text(t.get('objective_s'))})"
    )
