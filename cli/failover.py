"""``genesis-dr failover status|health|run`` and ``genesis-dr failback``.

``status`` and ``health`` look at every region now (probes, no flow run) without counting towards the
monitor's consecutive failures; ``run`` and ``failback`` run the failover and failback flows.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from cli.replicate import STACK_HELP
from core.errors import DRError

EPILOG_STATUS = "exit 0: the state and health were read (whatever they say); 2: the stack has no 'failover:' section."
EPILOG_RUN = (
    "exit 0: done (or the dry run's plan printed); 1: not confirmed, nothing changed; 2: bad stack or region; "
    "24: the failover state moved (another monitor or failover acted; read 'failover status' and decide again); "
    "25: promoted, but the DNS switch failed (the old primary stays fenced; switch the record by hand); "
    "27: the target is unhealthy, lags beyond max_data_loss_seconds (--force takes the lag, recorded) or is the "
    "active region; 28: stopped halfway (the report names each component's state and the next step; the state "
    "stays in progress until 'failover run REGION REASON --force' finishes it)."
)
EPILOG_FAILBACK = (
    "exit 0: done (or the dry run's plan printed); 1: not confirmed, nothing changed; 2: bad stack; 24: the "
    "failover state moved; 25: switched back, but the DNS switch failed; 27: the primary region is not ready "
    "(unhealthy, or already active); 28: stopped halfway (the report names each component's state and the next "
    "step)."
)


def register(subparsers) -> None:
    """Add ``failover`` (status, health, run) and ``failback`` to the ``genesis-dr`` parser."""
    f = subparsers.add_parser(
        "failover",
        help="regions: 'failover status', 'failover health [REGION]', 'failover run REGION REASON'",
        description="The stack's failover between regions (its 'failover:' section): the state (active region and "
        "epoch), each region's health, and a failover to another region.",
    )
    fsub = f.add_subparsers(dest="action", required=True, metavar="ACTION")
    st = fsub.add_parser(
        "status",
        help="the active region, its epoch, an operation in progress, each region's score and lag",
        description="Probe every region now and show the failover state (kept in the vault) with each region's "
        "score, lag and failed checks; the monitor's failure count is not changed.",
        epilog=EPILOG_STATUS,
    )
    st.add_argument("--stack", default="default", help=STACK_HELP)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_status)

    h = fsub.add_parser(
        "health",
        help="every check of every region (or of REGION) with its result and weight",
        description="Probe the regions now and list every check: result, weight in the score, latency, lag, detail.",
        epilog=EPILOG_STATUS,
    )
    h.add_argument("region", nargs="?", metavar="REGION", help="only this region")
    h.add_argument("--stack", default="default", help=STACK_HELP)
    h.add_argument("--json", action="store_true", help="machine-readable output")
    h.set_defaults(func=cmd_health)

    r = fsub.add_parser(
        "run",
        help="fail over to REGION (the failover flow); asks for confirmation unless --yes",
        description="Run the failover flow: fence the active region's databases (when reachable), wait for REGION's "
        "replicas to replay, promote them (and RDS), prove they take writes, repoint the other regions, switch DNS, "
        "record the new epoch and a report in the vault. The plan is shown first; it runs exactly as shown.",
        epilog=EPILOG_RUN,
    )
    r.add_argument("region", metavar="REGION", help="the region to make active")
    r.add_argument("reason", metavar="REASON", help="why (recorded with the new epoch and in the report)")
    r.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    r.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    r.add_argument(
        "--force",
        action="store_true",
        help="take a target that lags beyond max_data_loss_seconds, or an operation a dead run left in progress "
        "(recorded in the report)",
    )
    r.add_argument("--stack", default="default", help=STACK_HELP)
    r.add_argument("--json", action="store_true", help="print the plan and report as JSON")
    r.set_defaults(func=cmd_run)

    b = subparsers.add_parser(
        "failback",
        help="return to the primary region after a failover (the failback flow)",
        description="Run the failback flow: rebuild the primary region's databases as replicas of the active ones, "
        "let them catch up, then switch back with no data loss (fence, wait replayed, promote, prove writes, "
        "repoint, DNS back) and record the new epoch and a report. Asks for confirmation unless --yes.",
        epilog=EPILOG_FAILBACK,
    )
    b.add_argument("reason", metavar="REASON", help="why (recorded with the new epoch and in the report)")
    b.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    b.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    b.add_argument("--stack", default="default", help=STACK_HELP)
    b.add_argument("--json", action="store_true", help="print the plan and report as JSON")
    b.set_defaults(func=cmd_failback)


def _look(stack: str):
    """The state and a fresh assessment of ``stack`` (the monitor's count untouched), and the opened stack."""
    from cli.stacks import from_blocks
    from tasks.failover import look, open_failover

    opened = open_failover(from_blocks(stack))
    state, assessment = look(opened, record=False)
    return opened, state, assessment


def _state_lines(stack: str, state) -> list[str]:
    since = state.changed_at.isoformat(timespec="seconds")
    lines = [f"stack {stack}: active region {state.active_region}, epoch {state.epoch} (since {since}: {state.reason})"]
    if state.in_progress:
        lines.append(f"in progress: {state.in_progress} (a dead run's operation is taken over with --force)")
    elif state.outcome:
        lines.append(f"last operation: {state.outcome}")
    return lines


def cmd_status(args) -> int:
    from cli.stacks import prefect_session
    from core.failover.monitor import render_assessment

    with prefect_session():
        opened, state, assessment = _look(args.stack)
        last = opened.states.reports(last=1)
    if args.json:
        data = {"stack": args.stack, "state": state.to_dict(), "assessment": assessment.to_dict()}
        data["last_report"] = last[0] if last else None
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print("\n".join(_state_lines(args.stack, state)))
    print(render_assessment(assessment))
    return 0


def _check_row(check) -> tuple[str, ...]:
    lag = []
    if check.lag_s is not None:
        lag.append(f"{check.lag_s:g}s")
    if check.lag_bytes is not None:
        lag.append(f"{check.lag_bytes}B")
    latency = "-" if check.latency_s is None else f"{check.latency_s * 1000:.0f}ms"
    return (check.name, "ok" if check.ok else "FAILED", f"{check.weight:g}", latency, "/".join(lag) or "-")


def cmd_health(args) -> int:
    from cli.stacks import prefect_session

    with prefect_session():
        opened, state, assessment = _look(args.stack)
    names = [opened.failover.region(args.region).name] if args.region else list(assessment.regions)
    if args.json:
        data = {name: assessment.regions[name].to_dict() for name in names}
        print(json.dumps({"stack": args.stack, "active_region": state.active_region, "regions": data}, indent=2))
        return 0
    for name in names:
        health = assessment.regions[name]
        verdict = "healthy" if health.healthy else "UNHEALTHY"
        active = ", active" if name == state.active_region else ""
        print(f"{name} (priority {opened.failover.region(name).priority}{active}): score {health.score:.2f}, {verdict}")
        rows = [("check", "result", "weight", "latency", "lag")] + [_check_row(c) for c in health.checks]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        details = ["detail"] + [c.detail for c in health.checks]
        for row, detail in zip(rows, details, strict=True):
            print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + "  " + detail)
        if not health.checks:
            print("  (no checks: the region names no database and no health URL)")
    return 0


def _confirm(what: str) -> None:
    """Read 'yes' from the terminal (or stdin); anything else, or nothing, changes nothing."""
    print(f"{what}? Type 'yes' to go on: ", end="", flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer != "yes":
        print()
        raise DRError(
            f"{what}: not confirmed ({answer or 'no answer'}); nothing was changed (answer 'yes' or add --yes)"
        )


def _show(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    elif data.get("dry_run"):
        print(data["plan_text"])
        print("dry run: nothing was changed")
    else:
        print(data.get("report_text") or data.get("plan_text", ""))


def _operate(call, what: str, args) -> int:
    """Dry run, or plan + confirmation + run at the epoch the plan was made at; a stopped run prints its report."""
    from cli.stacks import prefect_session
    from flows.failover import render_report

    with prefect_session():
        if args.dry_run:
            _show(call(dry_run=True, expected_epoch=None), args.json)
            return 0
        expected = None
        if not args.yes:
            preview = call(dry_run=True, expected_epoch=None)
            print(preview["plan_text"])
            _confirm(what)
            expected = preview["state"]["epoch"]  # what was confirmed: refused if the state moved since
        try:
            data = call(dry_run=False, expected_epoch=expected)
        except DRError as exc:
            report = getattr(exc, "report", None)
            if report is not None:
                print(json.dumps(report, indent=2, sort_keys=True, default=str) if args.json else render_report(report))
            raise
    _show(data, args.json)
    return 0


def cmd_run(args) -> int:
    from flows.failover import failover

    def call(**kw):
        return failover(stack=args.stack, target=args.region, reason=args.reason, force=args.force, **kw)

    return _operate(call, f"fail stack {args.stack} over to {args.region}", args)


def cmd_failback(args) -> int:
    from flows.failback import failback

    def call(**kw):
        return failback(stack=args.stack, reason=args.reason, **kw)

    return _operate(call, f"fail stack {args.stack} back to its primary region", args)
