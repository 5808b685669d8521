"""The genesis-dr command: each operation runs the corresponding Prefect flow.

Expected failures print one line ``genesis-dr: error: ...`` and exit with the
error's documented code (see README, "Exit codes"); never a traceback, never a
secret.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path  # noqa: E402

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Set before Prefect is imported: its console handler then drops tracebacks of expected failures.
os.environ.setdefault("PREFECT_LOGGING_SETTINGS_PATH", str(Path(__file__).with_name("logging.yml")))

from core import cancel  # noqa: E402
from core.errors import ConfigError, DRError  # noqa: E402


def _targets(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--target {pair!r}: expected KEY=VALUE, e.g. --target database=app_restored")
        out[key] = int(value) if value.isdigit() and key in ("port", "db") else value
    return out


RESTORE_TARGET_EXAMPLES = {
    "postgres": "--target database={source}_restored",
    "mysql": "--target database={source}_restored",
    "redis": "--target port=6380",
    "files": "--target root=/tmp/{source}-restored",
}


def _print_backups(results: list[dict]) -> None:
    from flows.reporting import human_bytes

    for r in results:
        print(
            f"{r['source']}: {r['status']} {r['id']}  {human_bytes(r['plain_bytes'])} -> "
            f"{human_bytes(r['stored_bytes'])} stored in {r['vault']}"
        )
        for entry in r.get("skipped") or []:
            print(f"  SKIPPED (the stack allows it): {entry}")
    print("\nTo restore (add --dry-run to see the plan first; without --target it restores over the source):")
    for r in results:
        example = RESTORE_TARGET_EXAMPLES.get(r["kind"], "").format(source=r["source"].replace("-", "_"))
        print(f"  genesis-dr restore --source {r['source']} --backup-id {r['id']} {example}")


def cmd_apply(args) -> int:
    from blocks.apply import apply_stack
    from core.stack import load_stack_file

    config = load_stack_file(args.file)
    for slug in apply_stack(config):
        print(f"saved block {slug}")
    print(f"stack '{config.stack}' applied: {len(config.sources)} sources, vault {config.vault.path}")
    return 0


def cmd_backup(args) -> int:
    from flows.backup import backup

    if args.type != "full":
        raise ConfigError(f"backup type {args.type!r} is not available yet; use 'genesis-dr backup full'")
    results = backup(stack=args.stack, backup_type=args.type, sources=args.source or None)
    _print_backups(results)
    return 0


def _print_unfinished_restores() -> None:
    """Targets a restore is running on, or was killed on before it was verified (to stderr: --json stays clean)."""
    from core.targets import unfinished_restores

    for mark in unfinished_restores():
        print(f"RESTORE IN PROGRESS OR INTERRUPTED: {mark.describe()}", file=sys.stderr)


def cmd_list(args) -> int:
    from blocks.apply import load_stack
    from core.repository.manifest import ABANDONED, COMPLETED, IN_PROGRESS
    from core.repository.vault import VaultMissingError
    from flows.reporting import human_bytes

    config = load_stack(args.stack)
    _print_unfinished_restores()
    try:
        vault = config.vault.open()  # the vault says whether it exists (or lost its config.json: an error)
    except VaultMissingError:
        if args.json:
            print("[]")
        else:
            print(f"no backups yet: the vault {config.vault.path} is created by the first backup")
        return 0
    entries = vault.entries(args.source)
    unfinished = [e for e in entries if e.state in (IN_PROGRESS, ABANDONED)]
    if not args.all:
        entries = [e for e in entries if e.state not in (IN_PROGRESS, ABANDONED)]
    if args.json:
        print(json.dumps([e.summary() for e in entries], indent=2, sort_keys=True))
        return 0
    if not entries:
        print(f"no backups in {config.vault.path}")
    else:
        print(
            f"{'ID':<34} {'SOURCE':<14} {'TYPE':<6} {'STATUS':<11} {'ENDED (UTC)':<24} {'SIZE':>10} {'STORED':>10}  "
            f"{'KEYS':<21} POSITION"
        )
    for e in entries:
        m = e.manifest
        if m is not None:
            label = " (rollback)" if m.labels.get("purpose") == "rollback" else ""
            print(
                f"{m.id:<34} {m.source:<14} {m.type:<6} {e.state:<11} {m.ended_at:<24} "
                f"{human_bytes(m.plain_bytes):>10} {human_bytes(m.stored_bytes):>10}  {m.key_text():<21} "
                f"{m.position_text()}{label}"
            )
            if m.skipped:
                print(f"    skipped ({len(m.skipped)}): {', '.join(m.skipped)}")
        else:
            source = e.source or "?"
            print(f"{e.id:<34} {source:<14} {'-':<6} {e.state:<11} {'-':<24} {'-':>10} {'-':>10}")
        if e.state != COMPLETED and e.reason:
            print(f"    {e.state}: {e.reason}")
    if unfinished and not args.all:
        print(
            f"({len(unfinished)} unfinished backup(s) without a manifest not shown; 'genesis-dr list --all' shows "
            "them; the next backup of their source records abandoned ones FAILED)"
        )
    return 0


def cmd_unlock(args) -> int:
    from blocks.apply import load_stack
    from core.repository.lock import break_lock, describe_holder, lease_names, lease_stale, read_lease

    config = load_stack(args.stack)
    stores = [config.vault.store()]  # works even when the vault lost its config.json
    try:  # restore targets keep their locks on the restoring host, not in the vault
        from core.targets import state_store

        stores.append(state_store())
    except ImportError:
        pass
    name = args.lock or args.source
    if not name:
        held = [(store, n, read_lease(store, n)) for store in stores for n in lease_names(store)]
        for store, n, holder in held:
            state = "stale" if holder is None or lease_stale(holder) else "live"
            print(f"{n}: {state}, {describe_holder(holder or {})} ({store.describe()})")
        if not held:
            print("no leases held")
        print("to remove a dead run's lease: genesis-dr unlock --source NAME | --lock NAME")
        return 0
    for store in stores:
        if read_lease(store, name) is not None:
            print(break_lock(store, name))
            return 0
    held = ", ".join(n for store in stores for n in lease_names(store)) or "none"
    where = ", ".join(store.describe() for store in stores)
    raise ConfigError(f"no lease '{name}' in {where} (leases held: {held}); nothing removed")


def cmd_repair_vault(args) -> int:
    from blocks.apply import load_stack
    from core.repository.vault import Vault

    if not args.new_identity:
        raise ConfigError(
            "repair-vault: first restore config.json from a replica or a backup of the vault; only if no copy "
            "exists, pass --new-identity to write a NEW one"
        )
    config = load_stack(args.stack)
    vault = Vault.recreate_identity(config.vault.store())
    print(
        f"wrote a new config.json (vault id {vault.config['id']}) into {vault.describe()}; existing backups stay readable"
    )
    return 0


def cmd_restore(args) -> int:
    from blocks.apply import load_stack
    from core.plan import restore_target
    from flows.restore import restore

    target_time = datetime.fromisoformat(args.target_time.replace("Z", "+00:00")) if args.target_time else None
    # Refuse bad --target values before a flow run exists: a run stores its parameters for good.
    restore_target(load_stack(args.stack), args.source, _targets(args.target), args.target_source)
    out = restore(
        source=args.source,
        stack=args.stack,
        backup_id=args.backup_id,
        target_time=target_time,
        target=_targets(args.target) or None,
        target_source=args.target_source,
        dry_run=args.dry_run,
        force=args.force,
    )
    if out["dry_run"]:
        from core.plan import render_plan

        print(render_plan(out["plan"]))
        print("dry run: nothing was changed")
        return 0
    from core.operations import render_report

    print(render_report(out["report"]))
    return 0


def cmd_key_rotate(args) -> int:
    from blocks.apply import load_stack

    config = load_stack(args.stack)
    old, new = config.vault.open(create=True).rotate_key(config.keyring())
    if old == new:
        print(f"the stack's passphrase is already the vault's key (key id {new}); nothing changed")
    else:
        print(
            f"new backups of stack '{config.stack}' are checked against key id {new} (was {old or 'none'}); "
            "earlier backups still open only with the passphrase they were written with ('genesis-dr list' shows "
            "each backup's key)"
        )
    return 0


def cmd_key(args) -> int:
    if args.action == "rotate":
        return cmd_key_rotate(args)
    from core.crypto.keys import fingerprint, generate_x25519_keypair

    private, public = generate_x25519_keypair()
    print(f"x25519_public_keys: [{public}]   # fingerprint {fingerprint(public)}")
    print("# private key, needed to restore: keep it offline, in a 0600 file named by x25519_private_key_from")
    print(private)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genesis-dr", description="Disaster recovery for PostgreSQL, MariaDB/MySQL, Redis and files."
    )
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("apply", help="register a stack file as Prefect blocks")
    a.add_argument("file")
    a.set_defaults(func=cmd_apply)

    b = sub.add_parser("backup", help="run the backup flow")
    b.add_argument("type", choices=["full", "differential", "incremental"])
    b.add_argument("--stack", default="default")
    b.add_argument("--source", action="append", help="back up only this source (repeatable)")
    b.set_defaults(func=cmd_backup)

    ls = sub.add_parser("list", help="list backups in the stack's vault")
    ls.add_argument("--stack", default="default")
    ls.add_argument("--source")
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--all", action="store_true", help="also show unfinished backups (in progress or abandoned)")
    ls.set_defaults(func=cmd_list)

    u = sub.add_parser("unlock", help="remove the lease of a run you know is dead (refuses a live local one)")
    u.add_argument("--stack", default="default")
    which_lock = u.add_mutually_exclusive_group()
    which_lock.add_argument("--source", help="the lease of this source's backups")
    which_lock.add_argument("--lock", help="a lease by name (as named in a 'locked by' error)")
    u.set_defaults(func=cmd_unlock)

    rv = sub.add_parser("repair-vault", help="write a new vault identity when config.json is lost (see docs/FORMAT.md)")
    rv.add_argument("--stack", default="default")
    rv.add_argument("--new-identity", action="store_true", help="write a NEW config.json (no copy of the old exists)")
    rv.set_defaults(func=cmd_repair_vault)

    r = sub.add_parser("restore", help="run the restore flow")
    r.add_argument("--stack", default="default")
    r.add_argument("--source", required=True)
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--backup-id")
    which.add_argument("--target-time", help="ISO time; restores the newest backup at or before it")
    r.add_argument(
        "--target", action="append", metavar="KEY=VALUE", help="override a target setting, e.g. database=app_copy"
    )
    r.add_argument("--target-source", help="restore into another source of the stack")
    r.add_argument("--mode", choices=["full"], default="full", help=argparse.SUPPRESS)
    r.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    r.add_argument("--force", action="store_true", help="restore over existing data (after a rollback backup)")
    r.set_defaults(func=cmd_restore)

    k = sub.add_parser("key", help="key management")
    k.add_argument("action", choices=["generate", "rotate"], help="rotate: make the stack's passphrase the vault's key")
    k.add_argument("--stack", default="default")
    k.set_defaults(func=cmd_key)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cli.prefect_home import secure_prefect_home

    secure_prefect_home()  # home 0700 before Prefect creates anything in it; its database 0600 after the command
    try:
        with cancel.stop_on_signals(lambda msg: print(f"genesis-dr: {msg}", file=sys.stderr)):
            code = args.func(args)
    except DRError as exc:
        if cancel.requested():
            # Whatever the tools said once they were stopped, the run was interrupted and committed nothing.
            print(f"genesis-dr: interrupted: {exc}", file=sys.stderr)
            return 130
        print(f"genesis-dr: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "genesis-dr: interrupted (aborted at once; a killed run's lock expires and its partial backup is "
            "recorded FAILED by the next backup)",
            file=sys.stderr,
        )
        return 130
    finally:
        secure_prefect_home()
    if cancel.requested():
        print("genesis-dr: the interrupt came after the run had committed; the results above stand", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
