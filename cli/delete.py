"""``genesis-dr delete BACKUP_ID... "REASON"``: deletion outside the retention policy, on the admin's key.

In-process (no flow): the admin signing key is read where the command runs, the admin's
machine, and the deletion is certified and audited like a retention run's
(core.retention.manual).
"""

from __future__ import annotations

from cli.replicate import STACK_HELP
from core.errors import ConfigError
from core.repository.manifest import valid_backup_id

EPILOG = (
    "exit 0: deleted (or, with --dry-run, deletable); 2: no reason given; 8: no such backup; 29: a legal hold "
    "covers it; 30: refused (another kept backup needs it, it is the newest valid backup of its source, a "
    "compliance minimum keeps it, or the audit trail has an unacknowledged alarm); 31: an object lock holds it; "
    "33: the admin signing key is missing or not listed in signing.admin_public_keys."
)


def register(subparsers) -> None:
    """Add ``delete`` to the ``genesis-dr`` parser."""
    d = subparsers.add_parser(
        "delete",
        help="delete backups outside the retention policy (admin signing key)",
        description="Crypto-shred and delete the named backups from the vault and every replica, with a signed "
        "deletion certificate, an audit entry and the admin's signed authorisation. Needs the admin signing key "
        "(signing.admin_key_from, listed in signing.admin_public_keys). Refused, before anything is changed, for "
        "a backup under a legal hold or object lock, one another kept backup needs, the newest valid backup of a "
        "source, one under a compliance minimum, and while the audit trail has an unacknowledged alarm.",
        epilog=EPILOG,
    )
    d.add_argument("backup_ids", nargs="+", metavar="BACKUP_ID", help="a backup to delete (see 'genesis-dr list')")
    d.add_argument("reason", metavar="REASON", help="why they must go now (signed into the certificate)")
    d.add_argument("--dry-run", action="store_true", help="check every refusal and change nothing")
    d.add_argument("--stack", default="default", help=STACK_HELP)
    d.set_defaults(func=cmd_delete)


def cmd_delete(args) -> int:
    from cli.stacks import from_blocks, prefect_session
    from core.retention.manual import ACTION, delete_outside_policy

    if valid_backup_id(args.reason):
        raise ConfigError(
            f'delete: the last argument is a backup id; give the reason last: delete {args.reason} "REASON"'
        )
    with prefect_session():
        config = from_blocks(args.stack)
    admin = config.signing.admin_key(ACTION)
    certs = delete_outside_policy(config, args.backup_ids, args.reason, admin_key=admin, dry_run=args.dry_run)
    for cert in certs:
        print(
            f"deleted {cert.subject} ({cert.source}) on the authority of admin {admin.fingerprint}: certificate {cert.id}"
        )
    return 0
