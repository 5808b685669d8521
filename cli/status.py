"""``genesis-dr status``: one screen of the stack's state, read from its vault(s) in this process.

The stack comes from this host's local description (no Prefect, no server; ``cli.stacks.description``),
the state from the vault (``core.observe.snapshot``): each source's last backups and their age against its
RPO objective, the capture, the replicas' lag, the last validations and drills, the active region, the
holds and the vault's room. ``--json`` prints the same snapshot for scripts.
"""

from __future__ import annotations

import json

from cli.replicate import STACK_HELP

TYPES = (("full", "LAST FULL"), ("differential", "LAST DIFF"), ("incremental", "LAST INCR"))


def register(subparsers) -> None:
    """Add ``status`` to the ``genesis-dr`` parser."""
    p = subparsers.add_parser(
        "status",
        help="one screen: last backups against the RPO, capture, replica lag, validations, drills, region, holds",
        description="The stack's state, read from its vault in this process (no flow run, no Prefect server): "
        "each source's last full, differential and incremental backup and its newest recoverable point against "
        "its RPO objective (OK or LATE), whether its log capture runs, each replica's lag, the last validation "
        "and drill of each level and tier, the active region, the active legal holds and the vault's room.",
    )
    p.add_argument("--stack", default="default", help=STACK_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output (the whole snapshot)")
    p.set_defaults(func=cmd_status)


def cmd_status(args) -> int:
    from cli.stacks import description
    from core.observe.snapshot import build_snapshot

    snap = build_snapshot(description(args.stack))
    if args.json:
        print(json.dumps(snap.to_dict(), indent=2, sort_keys=True))
    else:
        print(render_status(snap))
    return 0


def _ago(now, when: str | None) -> str:
    from core.chains import parse_iso
    from core.drills.record import seconds_text

    if not when:
        return "-"
    return f"{seconds_text(max(0.0, (now - parse_iso(when)).total_seconds()))} ago"


def _seconds(value: float | None) -> str:
    from core.drills.record import seconds_text

    return seconds_text(value)


def render_status(snap) -> str:
    """The snapshot as one screen of text."""
    from core.units import human_bytes

    now = snap.taken
    lines = [f"stack {snap.stack}: vault {snap.vault}, as of {snap.taken_at}"]
    if not snap.vault_exists:
        lines.append("  no backups yet: the vault is created by the first backup")
    rows = [("SOURCE", "KIND", *(title for _, title in TYPES), "NEWEST POINT", "RPO / OBJECTIVE", "", "CAPTURE")]
    for src in snap.sources:
        capture = "-"
        if src.captures_log:
            lag = f", lag {_seconds(src.capture_lag_s)}" if src.capture_lag_s is not None else ""
            capture = ("running" if src.capture_running else "NOT RUNNING") + lag
        rows.append(
            (
                src.name,
                src.kind,
                *(_ago(now, b.ended_at) if (b := src.last_success.get(t)) else "-" for t, _ in TYPES),
                src.newest_point_what.split(" ")[0] or "-",
                f"{_seconds(src.rpo_s)} / {_seconds(src.rpo_objective_s)}",
                "LATE" if src.late else "OK",
                capture,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for src in snap.sources:
        for backup_type, f in sorted(src.last_failure.items()):
            if (ok := src.last_success.get(backup_type)) is None or ok.ended_at < f.ended_at:
                lines.append(f"  {src.name}: last {backup_type} FAILED {_ago(now, f.ended_at)} ({f.error_class}: "
                             f"{(f.error or '').splitlines()[0][:120] if f.error else 'no message'})")  # fmt: skip
        for operation, why in sorted(src.slow.items()):
            lines.append(f"  {src.name}: {operation} SLOW: {why}")
        if src.skipped:
            counts = ", ".join(f"{n} {t}" for t, n in sorted(src.skipped.items()))
            lines.append(f"  {src.name}: skipped (the previous run was still going): {counts}")

    lines.append("validations:")
    any_validation = False
    for src in snap.sources:
        for level, v in sorted(src.validations.items()):
            any_validation = True
            outcome = "passed" if v.passed else f"FAILED ({v.first_failure})"
            lines.append(f"  {src.name} {level}: {outcome}, {_ago(now, v.at)}")
    if not any_validation:
        lines.append("  none recorded ('genesis-dr validate')")
    lines.append("drills:")
    for tier in ("daily", "weekly", "monthly", "full"):
        d = snap.drills.get(tier)
        if d is None:
            lines.append(f"  {tier:<8} never run")
            continue
        outcome = "passed" if d.passed else f"FAILED ({d.first_failure})"
        figures = "".join(
            f", {name} {_seconds(value)}" for name, value in (("RTO", d.rto_s), ("RPO", d.rpo_s)) if value is not None
        )
        lines.append(f"  {tier:<8} {outcome}, {_ago(now, d.at)}{figures}")
    lines.append(f"  RTO objective {_seconds(snap.rto_objective_s)}")

    if snap.replicas:
        lines.append("replicas:")
        for r in snap.replicas:
            if r.problem:
                lines.append(f"  {r.name}: UNREADABLE ({r.problem})")
            elif not r.missing:
                lines.append(f"  {r.name}: in sync (lag 0 s)")
            else:
                lines.append(f"  {r.name}: lag {_seconds(r.lag_s)} ({r.missing} backups or log pieces missing)")
    if snap.failover is not None:
        f = snap.failover
        busy = f", {f.in_progress} in progress" if f.in_progress else ""
        lines.append(
            f"failover: active region {f.active_region} (epoch {f.epoch}{busy}), healthy regions "
            f"{len(f.healthy_regions)}/{len(f.regions)}: {', '.join(f.healthy_regions) or 'NONE'}"
        )
    holds = ", ".join(f"{h['id']} ({h['name']})" for h in snap.holds)
    lines.append(f"holds: {len(snap.holds)} active" + (f": {holds}" if holds else ""))
    usage = []
    for u in snap.usage:
        room = f" of {human_bytes(u.total_bytes)} ({100 * u.used_bytes / u.total_bytes:.1f} %)" if u.total_bytes else ""
        usage.append(f"{u.vault} {human_bytes(u.used_bytes)}{room}")
    lines.append("vault usage: " + "; ".join(usage))
    for problem in snap.problems:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)
