"""``genesis-dr retention|hold|erase|audit|archive``: retention and compliance.

``retention run``, ``hold create|release``, ``erase`` and ``audit verify`` run their flows (they show in
the UI and the run history); ``retention status``, ``hold list``, ``audit acknowledge|show`` and
``archive thaw`` work in-process, reading the vault directly. The admin key (hold release, erasure,
audit acknowledgement) is read where the command runs: the admin's machine.
"""

from __future__ import annotations

import json
import sys

from cli.replicate import STACK_HELP
from core.errors import ConfigError, DRError

EPILOG_RUN = (
    "exit 0: done (or the dry run's plan printed); 30: refused for a source whose policy would delete every "
    "backup, or while a failed audit verification is unacknowledged (the other sources were handled; the "
    "report says what was done); 33: a signing key is missing or unlisted. A backup whose objects are under an "
    "object lock is left whole and listed in the report as locked (deleted by a later run once released)."
)
EPILOG_HOLD = (
    "exit 0: done; 29: the scope is malformed or matches nothing, or the hold is unknown or already released; "
    "33: releasing needs the admin signing key (signing.admin_key_from, listed in signing.admin_public_keys)."
)
EPILOG_ERASE = (
    "exit 0: recorded and applied; 33: recording an erasure needs the admin signing key; 34: a source holding "
    "personal data has no erasure rule (retention.erasure.<source>), or an erasure failed."
)
EPILOG_AUDIT = "exit 0: the trail is complete and unaltered (or its problems acknowledged); 32: it is not."
SCOPE_HELP = (
    'what the hold covers, as JSON: {"backup_ids": ["backup_20241215_*"], "sources": [...], '
    '"data_classes": [...], "from_time": ISO, "to_time": ISO} (fields AND\'ed, list values OR\'ed)'
)


def register(subparsers) -> None:
    """Add ``retention``, ``hold``, ``erase``, ``audit`` and ``archive`` to the ``genesis-dr`` parser."""
    r = subparsers.add_parser(
        "retention",
        help="the retention policy: 'retention run [--dry-run]', 'retention status'",
        description="Expire, archive and securely delete backups by the stack's retention policy.",
    )
    rsub = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = rsub.add_parser(
        "run",
        help="run the retention flow (the retention deployment runs it daily)",
        description="Run the retention flow: finish deletions a killed run left marked, set object-lock legal "
        "holds, archive backups past archive_after, then crypto-shred and delete what the policy expires, with a "
        "signed certificate per deletion. Never deletes what a hold covers, what a kept backup or the "
        "point-in-time window needs, the newest valid backup of a source, or anything under a compliance minimum.",
        epilog=EPILOG_RUN,
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    run.add_argument("--stack", default="default", help=STACK_HELP)
    run.add_argument("--json", action="store_true", help="print the report as JSON")
    run.set_defaults(func=cmd_retention_run)
    st = rsub.add_parser(
        "status",
        help="per source: what is kept and why, what expires when, what is held, storage by tier",
        description="The retention plan as of now (nothing changed), the holds, storage by tier and pending "
        "GDPR erasures; read from the vault in this process (no flow run).",
    )
    st.add_argument("--stack", default="default", help=STACK_HELP)
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_retention_status)

    h = subparsers.add_parser(
        "hold",
        help="legal holds: 'hold create NAME REASON SCOPE_JSON CONTACT', 'hold release ID REASON', 'hold list'",
        description="Legal holds: recorded in the vault and the audit trail; retention never deletes what an "
        "active hold covers, and on S3 (GCS) every covered object also gets an Object Lock legal "
        "(event-based) hold until the release.",
    )
    hsub = h.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = hsub.add_parser("create", help="record a legal hold (the hold flow)", epilog=EPILOG_HOLD)
    create.add_argument("name", metavar="NAME", help="a short name, e.g. the matter or case")
    create.add_argument("reason", metavar="REASON", help="why the data must be kept")
    create.add_argument("scope", metavar="SCOPE_JSON", help=SCOPE_HELP)
    create.add_argument("contact", metavar="CONTACT", help="who to ask about it (e.g. legal@example.com)")
    create.add_argument("--stack", default="default", help=STACK_HELP)
    create.add_argument("--json", action="store_true", help="print the hold as JSON")
    create.set_defaults(func=cmd_hold_create)
    release = hsub.add_parser(
        "release", help="release a legal hold (the hold flow; needs the admin signing key)", epilog=EPILOG_HOLD
    )
    release.add_argument("hold_id", metavar="HOLD_ID", help="as shown by 'genesis-dr hold list'")
    release.add_argument("reason", metavar="REASON", help="why it may be released")
    release.add_argument("--stack", default="default", help=STACK_HELP)
    release.add_argument("--json", action="store_true", help="print the hold as JSON")
    release.set_defaults(func=cmd_hold_release)
    ls = hsub.add_parser("list", help="the active holds (--all: released ones too)")
    ls.add_argument("--all", action="store_true", help="also the released holds")
    ls.add_argument("--stack", default="default", help=STACK_HELP)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_hold_list)

    e = subparsers.add_parser(
        "erase",
        help="record a GDPR erasure request for a data subject and apply it (needs the admin signing key)",
        description="Record a GDPR erasure request (the subject sealed in the vault, never in clear: not in a "
        "flow parameter, a log or the audit trail), then apply it with the erase flow: backups past their data "
        "classes' maximum are crypto-shredded with a certificate; backups a compliance minimum keeps stay, and "
        "every restore of them re-applies the erasure.",
        epilog=EPILOG_ERASE,
    )
    e.add_argument(
        "--subject",
        required=True,
        metavar="ID",
        help="the data subject (e.g. an e-mail address) as the stack's erasure rules match it; '-' reads it from "
        "standard input (kept out of the process list and the shell history)",
    )
    e.add_argument("--dry-run", action="store_true", help="record nothing; print what would happen")
    e.add_argument("--stack", default="default", help=STACK_HELP)
    e.add_argument("--json", action="store_true", help="print the outcome as JSON")
    e.set_defaults(func=cmd_erase)

    a = subparsers.add_parser(
        "audit",
        help="the audit trail: 'audit verify', 'audit acknowledge REASON', 'audit show'",
        description="The vault's append-only, hash-chained and signed audit trail.",
    )
    asub = a.add_subparsers(dest="action", required=True, metavar="ACTION")
    verify = asub.add_parser(
        "verify",
        help="prove the audit trail complete and unaltered (the audit-verify flow)",
        description="Run the audit-verify flow: check every entry's signature and the hash chain to the head "
        "(and each replica's head); an edited, deleted, reordered or inserted entry is named. A failure raises an "
        "alarm in the vault: retention deletes nothing until 'genesis-dr audit acknowledge'.",
        epilog=EPILOG_AUDIT,
    )
    verify.add_argument("--stack", default="default", help=STACK_HELP)
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=cmd_audit_verify)
    ack = asub.add_parser(
        "acknowledge",
        help="acknowledge the current audit alarm (needs the admin signing key)",
        description="Sign an acknowledgement of the problems of the current audit alarm: later verifications "
        "report them as acknowledged and retention deletes again.",
    )
    ack.add_argument("reason", metavar="REASON", help="what was found and done about it")
    ack.add_argument("--stack", default="default", help=STACK_HELP)
    ack.set_defaults(func=cmd_audit_acknowledge)
    show = asub.add_parser("show", help="print the audit entries (oldest first)")
    show.add_argument("--last", type=int, metavar="N", help="only the last N entries")
    show.add_argument("--stack", default="default", help=STACK_HELP)
    show.add_argument("--json", action="store_true", help="one JSON object per line (JSON lines)")
    show.set_defaults(func=cmd_audit_show)

    ar = subparsers.add_parser(
        "archive",
        help="archived backups: 'archive thaw BACKUP_ID'",
        description="Backups moved to a colder storage class stay listed; a class whose reads are delayed "
        "(S3 GLACIER, DEEP_ARCHIVE) must be thawed before a restore.",
    )
    arsub = ar.add_subparsers(dest="action", required=True, metavar="ACTION")
    thaw = arsub.add_parser(
        "thaw",
        help="request the restore of an archived backup's objects from their cold tier",
        description="Ask the store to make every frozen object of the backup readable for --days days, and "
        "say how many are ready, requested or still in progress (run it again to see the progress).",
    )
    thaw.add_argument("backup_id", metavar="BACKUP_ID", help="as shown by 'genesis-dr list'")
    thaw.add_argument("--days", type=int, default=7, help="how long the thawed copies stay readable (default 7)")
    thaw.add_argument(
        "--tier",
        choices=("Standard", "Expedited", "Bulk"),
        default="Standard",
        help="S3 retrieval tier (GLACIER: Standard 3-5 hours, Expedited 1-5 minutes at a higher price)",
    )
    thaw.add_argument("--stack", default="default", help=STACK_HELP)
    thaw.add_argument("--json", action="store_true", help="machine-readable output")
    thaw.set_defaults(func=cmd_archive_thaw)


def _print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


# --- retention ---------------------------------------------------------------------------------------------


def cmd_retention_run(args) -> int:
    from cli.stacks import prefect_session
    from flows.retention import retention

    with prefect_session():
        try:
            report = retention(stack=args.stack, dry_run=args.dry_run)
        except DRError as exc:
            partial = getattr(exc, "report", None)
            if partial:
                _print_json(partial) if args.json else print(partial.get("text", ""))
            raise
    if args.json:
        _print_json(report)
        return 0
    print(report.get("text", ""))  # a dry run's says "dry run: nothing was changed"
    return 0


def cmd_retention_status(args) -> int:
    from cli.stacks import from_blocks, prefect_session
    from core.retention.run import retention_status

    with prefect_session():
        config = from_blocks(args.stack)
    status = retention_status(config)
    if args.json:
        _print_json(status)
    else:
        print(render_status(status))
    return 0


def render_status(status: dict) -> str:
    """``retention status`` as text: the plan's own rendering, then holds, storage by tier, pending erasures."""
    from core.units import human_bytes

    lines = [status.get("text", "").rstrip(), ""]
    holds = status.get("holds") or []
    lines.append(f"active holds: {len(holds)}")
    lines += [f"  {h['id']} ({h['name']}): {h['reason']}; contact {h['contact']}" for h in holds]
    tiers = status.get("storage") or {}
    lines.append(
        "storage by tier: " + (", ".join(f"{t} {human_bytes(n)}" for t, n in tiers.items()) or "nothing stored")
    )
    if status.get("deleting"):
        lines.append(f"deletions in progress (finished by the next run): {', '.join(status['deleting'])}")
    pending = status.get("pending_erasures") or []
    lines.append(f"pending GDPR erasures: {len(pending)}")
    lines += [f"  {p['id']}: due by {p['due_by']}{' (OVERDUE)' if p.get('overdue') else ''}" for p in pending]
    return "\n".join(lines)


# --- holds -------------------------------------------------------------------------------------------------


def _hold_flow(args, **params) -> dict:
    from cli.stacks import prefect_session
    from flows.hold import hold

    with prefect_session():
        return hold(stack=args.stack, **params)


def _object_holds_line(counts: dict) -> str:
    """What the provider's locks look like now, per store of the vault (local stores have none)."""
    parts = []
    for name, c in sorted((counts or {}).items()):
        if c.get("lock_supported"):
            parts.append(
                f"{name}: {c.get('held', 0)} object(s) under legal hold ({c.get('set_on', 0)} set, "
                f"{c.get('set_off', 0)} lifted now)"
            )
        else:
            parts.append(f"{name}: no object lock on {c.get('location', name)} (the hold record alone binds retention)")
    return "object locks: " + "; ".join(parts) if parts else "object locks: none"


def cmd_hold_create(args) -> int:
    from cli.invocation import program
    from core.retention.scope import parse_scope

    parse_scope(args.scope)  # a malformed scope is refused before Prefect is involved and a flow run is kept
    from tasks.retention import operator

    held = _hold_flow(
        args, action="create", name=args.name, reason=args.reason, scope=args.scope, contact=args.contact,
        creator=operator(),
    )  # fmt: skip
    if args.json:
        _print_json(held)
        return 0
    print(held["id"])
    print(f"hold {held['id']} ({held['name']}) recorded; retention keeps everything it covers until "
          f"'{program()} hold release {held['id']} REASON'", file=sys.stderr)  # fmt: skip
    print(_object_holds_line(held.get("object_holds")), file=sys.stderr)
    return 0


def cmd_hold_release(args) -> int:
    held = _hold_flow(args, action="release", hold_id=args.hold_id, reason=args.reason)
    if args.json:
        _print_json(held)
        return 0
    print(f"hold {held['id']} ({held['name']}) released by {held.get('released_by')}: retention may expire what it "
          "covered by the policy again")  # fmt: skip
    print(_object_holds_line(held.get("object_holds")))
    return 0


def cmd_hold_list(args) -> int:
    from cli.stacks import from_blocks, prefect_session
    from core.retention.catalog import read_catalog
    from core.retention.holds import HoldBook, describe_cover
    from tasks.retention import hold_dict

    with prefect_session():
        config = from_blocks(args.stack)
    vault = config.vault.open()
    admins = config.signing.admin_public_keys
    found = HoldBook(vault.store).list(admins)
    catalog = read_catalog(vault, config) if found else None
    holds = [hold_dict(h) | {"covers": describe_cover(catalog, h)} for h in found if args.all or h.active]
    if args.json:
        _print_json(holds)
        return 0
    if not holds:
        print("no holds" if args.all else "no active holds ('--all' shows released ones too)")
        return 0
    print(f"{'ID':<24} {'NAME':<20} {'STATE':<9} {'CREATED (UTC)':<26} {'CREATOR':<24} CONTACT")
    for h in holds:
        state = "active" if h["active"] else "released"
        print(f"{h['id']:<24} {h['name']:<20} {state:<9} {h['created_at']:<26} {h['creator']:<24} {h['contact']}")
        print(f"    reason: {h['reason']}")
        print(f"    scope: {json.dumps(h['scope'], sort_keys=True)}; covers {h['covers']}")
        if not h["active"]:
            print(f"    released {h.get('released_at')} by {h.get('released_by')}: {h.get('release_reason')}")
    return 0


# --- erasure -----------------------------------------------------------------------------------------------


def _subject(value: str) -> str:
    subject = sys.stdin.readline().strip() if value == "-" else value.strip()
    if not subject:
        raise ConfigError("erase: the subject is empty; give it with --subject ID (or '-' and the ID on stdin)")
    return subject


def cmd_erase(args) -> int:
    from cli.stacks import from_blocks, prefect_session
    from core.retention.erasure import preview_erasure, record_erasure
    from flows.erase import erase, render_erasure

    subject = _subject(args.subject)
    with prefect_session():
        config = from_blocks(args.stack)
        if args.dry_run:
            # Nothing is recorded: what the erasure would shred and keep does not depend on the subject.
            result = preview_erasure(config)
        else:
            # Recorded here, in this process: the subject is sealed in the vault before any flow run exists,
            # and the flow gets only the request's id.
            request = record_erasure(config, subject, admin_key=config.signing.admin_key("erase"))
            print(f"erasure request {request.id} recorded (due by {request.due_by})", file=sys.stderr)
            result = erase(stack=args.stack, request_id=request.id) | {"id": request.id}
    if args.json:
        _print_json(result)
        return 0
    print(render_erasure(result))
    if args.dry_run:
        print("dry run: nothing was recorded or changed")
    return 0


# --- audit -------------------------------------------------------------------------------------------------


def cmd_audit_verify(args) -> int:
    from cli.stacks import prefect_session
    from flows.audit import audit_verify

    with prefect_session():
        try:
            report = audit_verify(stack=args.stack)
        except DRError as exc:
            failed = getattr(exc, "report", None)
            if failed:
                _print_json(failed) if args.json else print(failed.get("text", ""))
            raise
    _print_json(report) if args.json else print(report.get("text", ""))
    return 0


def cmd_audit_acknowledge(args) -> int:
    from cli.stacks import from_blocks, prefect_session
    from core.audit.verify import acknowledge

    if not args.reason.strip():
        raise ConfigError("audit acknowledge: give the reason (what was found and done about it)")
    with prefect_session():
        config = from_blocks(args.stack)
    admin = config.signing.admin_key("audit acknowledge")
    ack = acknowledge(config.vault.store(), admin, args.reason.strip(), config.signing.admin_public_keys)
    covered = ack.get("problems") or ack.get("covers") or []
    print(f"audit alarm acknowledged by admin {admin.fingerprint} ({len(covered)} problem(s)); retention deletes again")
    return 0


def _entry_line(entry: dict) -> str:
    from core.crypto.signing import fingerprint

    try:
        signer = fingerprint(entry.get("signer", ""))
    except DRError:
        signer = "?"
    details = json.dumps(entry.get("details") or {}, sort_keys=True, separators=(",", ":"))
    return (
        f"{entry.get('seq'):>6} {entry.get('at')} {entry.get('action'):<18} {entry.get('outcome'):<8} "
        f"{entry.get('subject')}  by {entry.get('actor')} (key {signer}) {details}"
    )


def cmd_audit_show(args) -> int:
    from cli.stacks import description
    from core.audit.trail import AuditTrail

    if args.last is not None and args.last < 1:
        raise ConfigError(f"audit show --last {args.last}: give a number of entries, 1 or more")
    entries = AuditTrail(description(args.stack).vault.store()).entries()
    if args.last is not None:
        entries = entries[-args.last :]
    for entry in entries:
        print(json.dumps(entry, sort_keys=True, separators=(",", ":")) if args.json else _entry_line(entry))
    if not entries and not args.json:
        print("the audit trail is empty")
    return 0


# --- archive -----------------------------------------------------------------------------------------------


def cmd_archive_thaw(args) -> int:
    from cli.stacks import description
    from core.retention.archive import thaw_backup

    config = description(args.stack)
    # Data moved to an archive vault is thawed there: every replica of the stack may be one.
    replicas = {r.name: config.vault_named(r.name).store() for r in config.replicas}
    counts = thaw_backup(config.vault.open(), args.backup_id, days=args.days, replicas=replicas, tier=args.tier)
    if args.json:
        _print_json(counts)
        return 0
    ready, waiting = counts.get("ready", 0), counts.get("requested", 0) + counts.get("in-progress", 0)
    print(
        f"{args.backup_id}: {ready} object(s) readable, {counts.get('requested', 0)} thaw(s) requested, "
        f"{counts.get('in-progress', 0)} in progress"
    )
    if waiting:
        print("run the same command again to follow the progress; restore once every object is readable")
    else:
        print("every object is readable: the backup can be restored now")
    return 0
