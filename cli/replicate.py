"""``genesis-dr replicate``: run the replicate flow (every replica of the stack's vault, or one)."""

from __future__ import annotations

import json

STACK_HELP = "the stack to use, as named in its file (default: default); 'genesis-dr stacks' lists them"


def register(subparsers) -> None:
    """Add the ``replicate`` command to the ``genesis-dr`` parser."""
    p = subparsers.add_parser(
        "replicate",
        help="run the replicate flow: copy the vault to its replicas, verified",
        description="Run the replicate flow: copy every committed backup and log piece each replica of the stack's "
        "vault lacks (objects first, each verified on the replica, the manifest last), repair damaged copies, and "
        "report each replica's lag. Fails (exit 20) when a replica lags past replication.max_lag_seconds.",
    )
    p.add_argument("--stack", default="default", help=STACK_HELP)
    p.add_argument("--replica", help="only this replica (as named in the stack's replicas:)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also read back and hash every object of the backups a replica already holds (default: their sizes)",
    )
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=cmd_replicate)


def cmd_replicate(args) -> int:
    """Run the flow in a Prefect session (it shows in the UI and run history) and print one line per replica."""
    from cli.stacks import prefect_session
    from core.units import human_bytes

    with prefect_session():
        from flows.replicate import replicate

        reports = replicate(stack=args.stack, replica=args.replica, verify=args.verify)
    if args.json:
        print(json.dumps(reports, indent=2, sort_keys=True))
        return 0
    if not reports:
        print(f"stack '{args.stack}' has no replicas: list them under 'replicas:' in its stack file and apply it")
    for r in reports:
        state = "in sync" if r["in_sync"] else f"lags {r['lag_seconds']:.0f} s, lacks {'; '.join(r['missing'])}"
        print(
            f"{r['replica']} ({r['location']}): {state}; {r['backups_copied']} backups and {r['log_pieces_copied']} "
            f"log pieces copied ({human_bytes(r['bytes_copied'])}, {r['server_side_copies']} objects server-side), "
            f"{r['objects_repaired']} repaired, {r['objects_verified']} read back and verified, "
            f"{r['objects_checked']} size-checked"
        )
    return 0
