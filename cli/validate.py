"""``genesis-dr validate`` and ``genesis-dr drill``: run the validate and drill flows; ``drill status`` reads
the drill history the vault keeps (no flow, no Prefect server)."""

from __future__ import annotations

import json

from cli.replicate import STACK_HELP

VAULT_HELP = "validate a replica of the vault (as named in the stack's replicas:) instead of the primary"
EPILOG_VALIDATE = (
    "exit 0: every critical check passed; 21: a critical check failed (each failure is printed in one line "
    "with its remedy). The record is kept in the vault (history/validations/) and shown in the Prefect UI."
)


def register(subparsers) -> None:
    """Add ``validate`` and ``drill`` to the ``genesis-dr`` parser."""
    v = subparsers.add_parser(
        "validate",
        help="run the validate flow: prove backups readable and restorable",
        description="Run the validate flow on one backup, the newest of each source (default) or all of them. "
        "quick: manifests, objects present with their sizes, chains complete, each source within its RPO; "
        "integrity (default): quick plus every object read back and authenticated and the engines' own tools on "
        "the plaintext; restore: integrity plus a restore into a throw-away sandbox compared with the checks "
        "recorded at backup time and the stack's smoke queries.",
        epilog=EPILOG_VALIDATE,
    )
    which = v.add_mutually_exclusive_group()
    which.add_argument("backup_id", nargs="?", metavar="BACKUP_ID", help="validate this backup (see 'genesis-dr list')")
    which.add_argument("--latest", action="store_true", help="the newest backup of each source (the default)")
    which.add_argument("--all", action="store_true", help="every completed backup (each object is read once)")
    v.add_argument("--level", choices=("quick", "integrity", "restore"), default="integrity", help="how deep")
    v.add_argument("--source", action="append", metavar="NAME", help="only this source (repeatable)")
    v.add_argument("--vault", metavar="NAME", help=VAULT_HELP)
    v.add_argument("--stack", default="default", help=STACK_HELP)
    v.add_argument("--json", action="store_true", help="print the validation record as JSON")
    v.set_defaults(func=cmd_validate)

    d = subparsers.add_parser(
        "drill",
        help="restore drills that measure RTO and RPO ('drill run TIER', 'drill status')",
        description="Run a restore drill (the drill flow) or show the drill history kept in the vault.",
    )
    dsub = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = dsub.add_parser(
        "run",
        help="run a drill: daily, weekly, monthly or full",
        description="daily: integrity validation of the newest backup of every source; weekly: restore-level "
        "validation of every source in sandboxes; monthly: the whole stack restored to its newest recoverable point "
        "in sandboxes, RTO per stage and end to end and RPO per source measured against the stack's objectives; "
        "full: monthly plus the same from every replica vault.",
        epilog="exit 0: passed; 22: a recovery failed or RTO/RPO missed the objectives.",
    )
    run.add_argument("tier", choices=("daily", "weekly", "monthly", "full"))
    run.add_argument("--vault", metavar="NAME", help="drill from a replica of the vault instead of the primary")
    run.add_argument("--stack", default="default", help=STACK_HELP)
    run.add_argument("--json", action="store_true", help="print the drill record as JSON")
    run.set_defaults(func=cmd_drill_run)
    status = dsub.add_parser(
        "status",
        help="the last drill of each tier, pass or fail, and the RTO/RPO trend",
        description="Read the drill history kept in the vault (no flow run, no Prefect server).",
    )
    status.add_argument("--vault", metavar="NAME", help="read a replica's history instead of the primary's")
    status.add_argument("--stack", default="default", help=STACK_HELP)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_drill_status)


def _run_flow(call, args):
    """Run a flow in a Prefect session; a failed check still prints its record before the error line."""
    from cli.stacks import prefect_session

    with prefect_session():
        try:
            return call(), None
        except Exception as exc:
            record = getattr(exc, "record", None)
            if record is None:
                raise
            return record, exc


def cmd_validate(args) -> int:
    from core.validation.results import ValidationRecord

    def call():
        from flows.validate import validate

        return validate(
            stack=args.stack,
            backup_id=args.backup_id,
            latest=args.latest,
            all=args.all,
            level=args.level,
            vault=args.vault,
            sources=args.source or None,
        )

    data, error = _run_flow(call, args)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        record = ValidationRecord.from_dict(data)
        for result in record.results:
            if result.failed or not result.checked:
                print(result.line())
        print(record.summary_line())
    if error is not None:
        raise error
    return 0


def cmd_drill_run(args) -> int:
    from core.drills import DrillRecord

    def call():
        from flows.drill import drill

        return drill(stack=args.stack, tier=args.tier, vault=args.vault)

    data, error = _run_flow(call, args)
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print(DrillRecord.from_dict(data).render_text())
    if error is not None:
        raise error
    return 0


def cmd_drill_status(args) -> int:
    from cli.stacks import description
    from core.drills import drill_status, render_status

    config = description(args.stack)
    status = drill_status(config, vault_name=args.vault)
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render_status(status))
    return 0
