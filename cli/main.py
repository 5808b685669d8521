"""The genesis-dr command: each operation runs the corresponding Prefect flow.

Expected failures print one line ``genesis-dr: error: ...`` and exit with the
error's documented code (see README, "Exit codes"); never a traceback, never a
secret. Remedies in messages are printed as commands that work as printed
(``cli.invocation``).

Read-only commands (``list``, ``restore --dry-run``, ``stacks``, ``key
generate``, ``key signing-new``, ``key signing-host``, ``audit show``,
``--help``, ``--version``) never import Prefect: they answer from
the stack's local description (``core.stack_description``) in well under a
second. Commands that run flows or save blocks do so inside
``cli.stacks.prefect_session`` (``@uses_prefect``): a temporary server that
cannot outlive the command when none is configured, and runs of killed
commands marked Crashed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from datetime import datetime

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from cli.invocation import command, render_remedies  # noqa: E402
from cli.stacks import cmd_stacks, description, from_blocks, prefect_session  # noqa: E402
from core import cancel  # noqa: E402
from core.errors import ConfigError, DRError, TargetNotEmptyError  # noqa: E402

STACK_HELP = "the stack to use, as named in its file (default: default); 'genesis-dr stacks' lists them"
VAULT_HELP = "read a replica of the vault (as named in the stack's replicas:) instead of the primary ('primary')"


def uses_prefect(command):
    """Run ``command`` inside a Prefect session (an API that cannot outlive the command; dead runs marked Crashed)."""

    def run(args) -> int:
        with prefect_session():
            return command(args)

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genesis-dr")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _targets(pairs: list[str]) -> dict:
    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--target {pair!r}: expected KEY=VALUE, e.g. --target database=app_restored")
        field = key.rpartition(".")[2]  # SOURCE.KEY=VALUE in a restore of several sources
        out[key] = (
            int(value) if field in ("port", "db") and value.isascii() and value.isdigit() and len(value) < 10 else value
        )
    return out


def apply_operations(config) -> list[str]:
    """The stack's pools, queues and deployments (prefect.yaml's, routed by pool) with its schedules, its
    automations (failed runs notify; an overdue backup pages) and its stack-wide backup limit, on the API in
    PREFECT_API_URL; one line per change. ``genesis-dr apply`` and ``genesis-dr serve`` both run it."""
    from deployments.automations import apply_automations
    from deployments.register import register_deployments
    from tasks.limits import stack_backups_limit, sync_limit

    lines = register_deployments(config) + apply_automations(config)
    sync_limit(stack_backups_limit(config.stack), config.operations.max_concurrent_backups)
    return lines


def blocks_only(args) -> bool:
    """``apply --blocks-only`` (or GENESIS_DR_APPLY_BLOCKS_ONLY=1): the blocks and stored schedules only."""
    return bool(getattr(args, "blocks_only", False)) or os.environ.get("GENESIS_DR_APPLY_BLOCKS_ONLY", "") == "1"


def cmd_apply(args) -> int:
    from core import stack_description
    from core.stack import load_stack_file

    config = load_stack_file(args.file)  # refused before Prefect is involved
    with prefect_session() as where:
        from blocks.apply import apply_stack
        from deployments.schedules import apply_schedules

        for slug in apply_stack(config):
            print(f"saved block {slug}")
        if blocks_only(args):  # the deployments are another apply's (a central server's, or prefect deploy)
            for line in apply_schedules(config):
                print(line)
        else:
            for line in apply_operations(config):
                print(line)
    path = stack_description.save(config, where)
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    print(f"stack '{config.stack}' applied: {len(config.sources)} sources, vault {config.vault.location()}")
    print(f"local description (no secrets, for read-only commands): {path}")
    return 0


@uses_prefect
def cmd_backup(args) -> int:
    from cli.hints import print_backups
    from core import stack_description
    from flows.backup import backup

    results = backup(stack=args.stack, backup_type=args.type, sources=args.source or None)
    print_backups(results, args.stack, stack_description.load(args.stack))
    return 0


@uses_prefect
def cmd_capture(args) -> int:
    from core.engines import position_text
    from flows.capture import capture

    results = capture(stack=args.stack, sources=args.source or None)
    for r in results:
        last = f", the vault's log ends at {position_text(r['kind'], r['last'])}" if r.get("last") else ""
        cut = " (the piece it was shipping is shipped by the next capture)" if r.get("interrupted") else ""
        print(f"{r['source']}: capture stopped; {r.get('pieces', 0)} pieces shipped this run{last}{cut}")
    if cancel.requested():
        # A signal is how a capture ends: nothing was cut short, and 'genesis-dr capture' resumes without a gap.
        print("capture stopped by the interrupt; everything shipped is in the vault; run it again to resume")
        cancel.reset()
    return 0


def _print_unfinished_restores() -> None:
    """Targets a restore is running on, or was killed on before it was verified (to stderr: --json stays clean)."""
    from core.targets import unfinished_restores

    for mark in unfinished_restores():
        print(f"RESTORE IN PROGRESS OR INTERRUPTED: {mark.describe()}", file=sys.stderr)


def cmd_list(args) -> int:
    from cli.hints import human_bytes
    from core.replication import open_vault  # --vault REPLICA
    from core.repository.manifest import ABANDONED, COMPLETED, IN_PROGRESS
    from core.repository.vault import VaultMissingError

    config = description(args.stack)
    where = config.vault_named(args.vault)  # ConfigError lists the stack's vaults
    _print_unfinished_restores()
    try:
        vault = open_vault(config, args.vault)  # the vault says whether it exists (or lost its config.json: an error)
    except VaultMissingError:
        if args.json:
            print("[]")
        elif args.vault not in (None, "primary"):
            print(f"no backups in replica {args.vault} ({where.location()}): run 'genesis-dr replicate' first")
        else:
            print(f"no backups yet: the vault {config.vault.location()} is created by the first backup")
        return 0
    if args.chains:
        return _list_chains(vault, config, args)
    entries = vault.entries(args.source)
    unfinished = [e for e in entries if e.state in (IN_PROGRESS, ABANDONED)]
    if not args.all:
        entries = [e for e in entries if e.state not in (IN_PROGRESS, ABANDONED)]
    if args.json:
        print(json.dumps([e.summary() for e in entries], indent=2, sort_keys=True))
        return 0
    if not entries:
        print(f"no backups in {where.location()}")
    else:
        print(
            f"{'ID':<34} {'SOURCE':<14} {'TYPE':<12} {'STATUS':<11} {'ENDED (UTC)':<24} {'SIZE':>10} {'STORED':>10}  "
            f"{'KEYS':<21} POSITION"
        )
    for e in entries:
        m = e.manifest
        if m is not None:
            label = " (rollback)" if m.labels.get("purpose") == "rollback" else ""
            print(
                f"{m.id:<34} {m.source:<14} {m.type:<12} {e.state:<11} {m.ended_at:<24} "
                f"{human_bytes(m.plain_bytes):>10} {human_bytes(m.stored_bytes):>10}  {m.key_text():<21} "
                f"{m.position_text()}{label}"
            )
            if m.skipped:
                print(f"    skipped ({len(m.skipped)}): {', '.join(m.skipped)}")
        else:
            source = e.source or "?"
            print(f"{e.id:<34} {source:<14} {'-':<12} {e.state:<11} {'-':<24} {'-':>10} {'-':>10}")
        if e.state != COMPLETED and e.reason:
            print(f"    {e.state}: {e.reason}")
    if unfinished and not args.all:
        print(
            f"({len(unfinished)} unfinished backup(s) without a manifest not shown; "
            f"'{command('list', '--all', stack=args.stack)}' shows them; the next backup of their source records "
            "abandoned ones FAILED)"
        )
    return 0


def _list_chains(vault, config, args) -> int:
    """Each source's chains: full -> differential -> incrementals, and its log's coverage and gaps."""
    from core.chains import list_chains, render_chains

    names = [args.source] if args.source else [s.name for s in config.sources]
    kinds = {s.name: s.kind for s in config.sources}
    manifests = [m for m in vault.list_backups(args.source) if m.labels.get("purpose") != "rollback"]
    pieces = {name: vault.log_pieces(name) for name in names}
    chains = list_chains(manifests, {n: p for n, p in pieces.items() if p}, kinds)
    if args.json:
        print(json.dumps(chains, indent=2, sort_keys=True))
    else:
        print(render_chains(chains))
    return 0


def cmd_unlock(args) -> int:
    from core.repository.lock import break_lock, describe_holder, lease_names, lease_stale, read_lease

    config = description(args.stack)
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
        print(f"to remove a dead run's lease: {command('unlock', '--source NAME | --lock NAME', stack=args.stack)}")
        return 0
    for store in stores:
        if read_lease(store, name) is not None:
            print(break_lock(store, name))
            return 0
    held = ", ".join(n for store in stores for n in lease_names(store)) or "none"
    where = ", ".join(store.describe() for store in stores)
    raise ConfigError(f"no lease '{name}' in {where} (leases held: {held}); nothing removed")


def cmd_repair_vault(args) -> int:
    from core.repository.vault import Vault

    if not args.new_identity:
        raise ConfigError(
            "repair-vault: first restore config.json from a replica or a backup of the vault; only if no copy "
            "exists, pass --new-identity to write a NEW one"
        )
    config = description(args.stack)
    vault = Vault.recreate_identity(config.vault.store())
    print(
        f"wrote a new config.json (vault id {vault.config['id']}) into {vault.describe()}; existing backups stay readable"
    )
    return 0


def _stack_for_plans(args, names: list[str]):
    """The stack to plan with on this host: its description, or its blocks when a target needs a secret the
    description does not hold (only then is Prefect involved)."""
    local = description(args.stack)
    if any(local.needs_secret(args.target_source or name) for name in names):
        with prefect_session():
            return local, from_blocks(args.stack)
    return local, local


def _dry_run(args, target_time: datetime | None) -> int:
    """Plan on this host, without Prefect: the vault's catalog and the target's state, read directly.

    The target is checked (reachable, holding data) as the restore would; a target
    that needs a password this host's description does not hold gets it from the
    stack's blocks (only then is Prefect involved). A refused plan exits 9.
    """
    from core.plan import render_plan
    from core.planning import plan_restore_from

    local, config = _stack_for_plans(args, [args.source])
    plan = plan_restore_from(
        config, local.vault_named(args.vault), args.source, args.backup_id, target_time,
        _targets(args.target) or None, args.target_source, args.force,
    )  # fmt: skip
    print(render_plan(plan.to_dict()))
    if plan.refusal:
        print("dry run: nothing was changed; the restore would be refused")
        raise TargetNotEmptyError(
            f"restore target {plan.target} already holds data; choose an empty target, or pass --force (a rollback "
            "backup of the target is taken first)"
        )
    print("dry run: nothing was changed")
    return 0


def _dry_run_point_in_time(args, when) -> int:
    """The point-in-time plan of each source, planned here exactly as the restore flow plans it (no Prefect
    unless a target's secret is needed); exit 9 if a target would be refused."""
    from core.chains import render_chain_plan
    from core.planning import plan_chain_from
    from core.stack import check_distinct_targets, restore_sources, split_targets
    from core.times import planned_points, recovery_summary, render_recovery_summary

    names = restore_sources(description(args.stack), args.mode, args.source)
    if args.target_source is not None and len(names) != 1:
        raise ConfigError("restore: --target-source names the target of one source; use it with --source")
    local, config = _stack_for_plans(args, names)
    targets = split_targets(_targets(args.target), names)
    plans = {
        name: plan_chain_from(
            config, local.vault_named(args.vault), name, when.when, targets[name] or None, args.target_source,
            args.force, note=when.plan_note(),
        ).to_dict()
        for name in names
    }  # fmt: skip
    check_distinct_targets(plans)
    for name in names:
        print(render_chain_plan(plans[name]))
        print()
    print(render_recovery_summary(recovery_summary(when.iso(), planned_points(plans), when.plan_note()), planned=True))
    refused = [plans[n]["target"] for n in names if plans[n]["refusal"]]
    if refused:
        print("dry run: nothing was changed; the restore would be refused")
        raise TargetNotEmptyError(
            f"restore target {', '.join(refused)} already holds data; choose an empty target, or pass --force (a "
            "rollback backup of the target is taken first)"
        )
    print("dry run: nothing was changed")
    return 0


def cmd_restore(args) -> int:
    from core import stack_description
    from core.plan import restore_target
    from core.stack import split_targets
    from core.times import read_operator_time

    when = read_operator_time(args.target_time) if args.target_time is not None else None
    point_in_time = when is not None
    if not point_in_time:
        if args.source is None:
            raise ConfigError("restore --backup-id needs --source NAME (the source the backup belongs to)")
        if args.mode is not None:
            raise ConfigError(f"--mode {args.mode} restores to a point in time; give --target-time with it")
    if args.dry_run:
        return _dry_run_point_in_time(args, when) if point_in_time else _dry_run(args, None)
    with prefect_session():
        # Refuse bad --target values before a flow run exists (a run stores its parameters for good); the local
        # description suffices (only field names and kinds are checked).
        stack = stack_description.load(args.stack) or from_blocks(args.stack)
        stack.vault_named(args.vault)  # an unknown --vault before any flow run
        if point_in_time:
            from core.stack import restore_sources

            names = restore_sources(stack, args.mode, args.source)
            if args.target_source is not None and len(names) != 1:
                raise ConfigError("restore: --target-source names the target of one source; use it with --source")
            for name, overrides in split_targets(_targets(args.target), names).items():
                restore_target(stack, name, overrides, args.target_source)
            return _restore_point_in_time(args, when)
        restore_target(stack, args.source, _targets(args.target), args.target_source)
        return _restore(args)


def _restore(args) -> int:
    from flows.restore import restore

    out = restore(
        source=args.source,
        stack=args.stack,
        backup_id=args.backup_id,
        target=_targets(args.target) or None,
        target_source=args.target_source,
        force=args.force,
        vault=args.vault,
    )
    from core.operations import render_report

    print(render_report(out["report"]))
    return 0


def _restore_point_in_time(args, when) -> int:
    from core.operations import render_report
    from core.times import render_recovery_summary
    from flows.restore import restore

    out = restore(
        source=args.source,
        stack=args.stack,
        target_time=when.parameter(),
        target=_targets(args.target) or None,
        target_source=args.target_source,
        force=args.force,
        mode=args.mode,
        vault=args.vault,
    )
    for name, report in out["reports"].items():
        print(f"{name}:")
        print("  " + render_report(report).replace("\n", "\n  "))
    print(render_recovery_summary(out["summary"]))
    return 0


@uses_prefect
def cmd_key_rotate(args) -> int:
    # Re-wraps every backup's data key for the stack's current keys.
    from blocks.apply import load_stack
    from core.crypto.keys import Keyring
    from core.crypto.secretref import check_ref, read_secret
    from core.repository.rekey import rotate_vault

    config = load_stack(args.stack)
    vault = config.vault.open(create=True)
    new_keyring = config.keyring()
    if args.new_backups_only:
        old, new = vault.rotate_key(new_keyring)
        if old == new:
            print(f"the stack's passphrase is already the vault's key (key id {new}); nothing changed")
        else:
            print(
                f"new backups of stack '{config.stack}' are checked against key id {new} (was {old or 'none'}); "
                "earlier backups still open only with the passphrase they were written with ('genesis-dr list' "
                "shows each backup's key)"
            )
        return 0
    old_passphrase = None
    if args.old_passphrase_from:
        try:
            check_ref(args.old_passphrase_from)
        except ValueError as exc:
            raise ConfigError(f"--old-passphrase-from: {exc}") from None
        old_passphrase = read_secret(args.old_passphrase_from, "--old-passphrase-from (the passphrase being replaced)")
    old_keyring = Keyring(
        passphrase=old_passphrase,
        private_key_from=config.encryption.x25519_private_key_from,
        kms_keys=list(config.encryption.kms_keys),
        stack=config.stack,
    )
    report = rotate_vault(vault, new_keyring, old_keyring)
    if report.new_key_id and report.old_key_id != report.new_key_id:
        print(f"new backups of stack '{config.stack}' are checked against key id {report.new_key_id} (was "
              f"{report.old_key_id or 'none'})")  # fmt: skip
    print(
        f"re-wrapped {len(report.rewrapped) + len(report.finished)} backup(s) and {len(report.log_keys_rewrapped)} "
        f"log key(s) for the stack's current keys ({report.current} backup(s) and {report.log_keys_current} log "
        f"key(s) already were); skipped {len(report.skipped_failed)} FAILED backup(s); no data object was touched"
    )
    if report.finished:
        print(f"finished {len(report.finished)} backup(s) an earlier, interrupted rotation had re-wrapped")
    if report.skipped_corrupt:
        print(f"left as they are (CORRUPT manifest): {', '.join(report.skipped_corrupt)}")
    if report.shredded:
        print(f"crypto-shredded by retention, not re-wrapped: {', '.join(report.shredded)}")
    if report.in_progress:
        print(
            f"still in progress, written for the keys they started with: {', '.join(report.in_progress)}; run "
            f"'genesis-dr key rotate --stack {config.stack}' again once they are done"
        )
    return 0


def cmd_key_generate(args) -> int:
    from core.crypto.keys import fingerprint, generate_x25519_keypair

    private, public = generate_x25519_keypair()
    print(f"x25519_public_keys: [{public}]   # fingerprint {fingerprint(public)}")
    print("# private key, needed to restore: keep it offline, in a 0600 file named by x25519_private_key_from")
    print(private)
    return 0


def cmd_key_signing_new(args) -> int:
    from core.crypto.signing import fingerprint, generate_signing_key

    private, public = generate_signing_key()
    where = sys.stdout
    if args.out:
        path = os.path.abspath(args.out)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            raise ConfigError(
                f"key signing-new: {path} exists; a key file is never overwritten, choose another path"
            ) from None
        except OSError as exc:
            raise ConfigError(f"key signing-new: cannot create {path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as out:
            out.write(private + "\n")
            out.flush()
            os.fsync(out.fileno())
        print(f"private key written to {path} (mode 0600): name it as signing.admin_key_from: file:{path} on the "
              "admin's machine (or signing.key_from on a host)")  # fmt: skip
    else:
        print(private)  # alone on stdout, so it can be piped into a secret store
        where = sys.stderr
    print(f"public key (fingerprint {fingerprint(public)}): {public}", file=where)
    print("list it in the stack file's signing.admin_public_keys (an admin key: hold release, deletion outside the "
          "policy, erasure, audit acknowledge) or signing.trusted_public_keys (a host's audit key), then apply the "
          "stack", file=where)  # fmt: skip
    return 0


def cmd_key_signing_host(args) -> int:
    from core.crypto.signing import default_key_path, load_signing_key

    key = load_signing_key(None, "this host's signing key")
    print(f"{key.public_b64}   # fingerprint {key.fingerprint}, private key in {default_key_path()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="genesis-dr",
        description="Disaster recovery for PostgreSQL, MariaDB/MySQL, Redis and files.",
        epilog="Exit codes and the stack file: see README.md. Read-only commands (list, stacks, restore --dry-run, "
        "key generate) answer from this host's description of the stack, without Prefect.",
    )
    p.add_argument("--version", action="version", version=f"genesis-dr {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    a = sub.add_parser(
        "apply", help="register a stack file: its blocks, work pools, deployments, schedules and automations"
    )
    a.add_argument("file", help="the stack file (YAML), e.g. examples/dr.yaml")
    a.add_argument(
        "--blocks-only",
        action="store_true",
        help="save the blocks and schedules only; leave work pools, deployments, automations and limits alone "
        "(a site whose deployments a central server's apply or 'prefect deploy' manages; "
        "also GENESIS_DR_APPLY_BLOCKS_ONLY=1)",
    )
    a.set_defaults(func=cmd_apply)

    b = sub.add_parser("backup", help="run the backup flow")
    b.add_argument(
        "type",
        choices=["full", "differential", "incremental"],
        help="full; differential (changes since the last full) or incremental (since the previous backup): every "
        "source whose kind takes one (Redis: fulls only), or each --source named",
    )
    b.add_argument("--stack", default="default", help=STACK_HELP)
    b.add_argument("--source", action="append", help="back up only this source (repeatable)")
    b.set_defaults(func=cmd_backup)

    c = sub.add_parser(
        "capture",
        help="capture the log (WAL, binlog, Redis stream) of the stack's sources until stopped",
        description="Run the capture flow: ship each source's log into the vault continuously (one capture per "
        "source whose kind has a log), so a restore can reach any point in time. Runs until SIGINT/SIGTERM (Ctrl-C) "
        "or the run is cancelled; a restart resumes without a gap. A capture that fails (the server dropped log it "
        "had not shipped: exit 14, a new full backup is needed) stops the run.",
    )
    c.add_argument("--stack", default="default", help=STACK_HELP)
    c.add_argument("--source", action="append", help="capture only this source's log (repeatable)")
    c.set_defaults(func=cmd_capture)

    ls = sub.add_parser("list", help="list backups in the stack's vault")
    ls.add_argument("--stack", default="default", help=STACK_HELP)
    ls.add_argument("--source", help="only this source's backups")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.add_argument("--all", action="store_true", help="also show unfinished backups (in progress or abandoned)")
    ls.add_argument(
        "--chains",
        action="store_true",
        help="each source's chains: full -> differential -> incrementals, and the log's coverage and gaps",
    )
    ls.add_argument("--vault", metavar="NAME", help=VAULT_HELP)
    ls.set_defaults(func=cmd_list)

    u = sub.add_parser("unlock", help="remove the lease of a run you know is dead (refuses a live local one)")
    u.add_argument("--stack", default="default", help=STACK_HELP)
    which_lock = u.add_mutually_exclusive_group()
    which_lock.add_argument("--source", help="the lease of this source's backups")
    which_lock.add_argument("--lock", help="a lease by name (as named in a 'locked by' error)")
    u.set_defaults(func=cmd_unlock)

    rv = sub.add_parser("repair-vault", help="write a new vault identity when config.json is lost (see docs/FORMAT.md)")
    rv.add_argument("--stack", default="default", help=STACK_HELP)
    rv.add_argument("--new-identity", action="store_true", help="write a NEW config.json (no copy of the old exists)")
    rv.set_defaults(func=cmd_repair_vault)

    r = sub.add_parser(
        "restore",
        help="run the restore flow",
        description="Restore one backup (--source NAME --backup-id ID), or restore to a point in time "
        "(--target-time T) one source (--source) or every source of a mode (--mode), each through its chain.",
    )
    r.add_argument("--stack", default="default", help=STACK_HELP)
    r.add_argument("--source", help="the source restored (with --target-time and --mode: only this one)")
    which = r.add_mutually_exclusive_group(required=True)
    which.add_argument("--backup-id", help="as shown by 'genesis-dr list' (needs --source)")
    which.add_argument(
        "--target-time",
        help="restore to this instant through each source's chain: ISO 8601 (no zone: UTC), the source documents' "
        "2024-12-15_14:30:00, or e.g. '2h ago'",
    )
    r.add_argument(
        "--mode",
        choices=["full", "database_only", "redis_only", "artifacts_only"],
        help="with --target-time: the sources restored to that one instant (full: all; database_only: PostgreSQL "
        "and MariaDB/MySQL; redis_only; artifacts_only: files and buckets)",
    )
    r.add_argument(
        "--target",
        action="append",
        metavar="KEY=VALUE",
        help="override a target setting, e.g. database=app_copy; with several sources SOURCE.KEY=VALUE, e.g. "
        "app-db.port=5433",
    )
    r.add_argument("--target-source", help="restore into another source of the stack (one source only)")
    r.add_argument(
        "--dry-run",
        action="store_true",
        help="print the plan and change nothing (planned on this host, without a flow run; exit 9 if refused)",
    )
    r.add_argument("--force", action="store_true", help="restore over existing data (after a rollback backup)")
    r.add_argument("--vault", metavar="NAME", help=VAULT_HELP)
    r.set_defaults(func=cmd_restore)

    # Commands defined in modules of their own, each with register(sub); in this order in --help.
    for module in (
        "replicate", "validate", "failover", "retention", "classify", "delete", "status", "metrics", "serve",
        "bootstrap",
    ):  # fmt: skip
        importlib.import_module(f"cli.{module}").register(sub)

    k = sub.add_parser("key", help="key management")
    key_sub = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    kg = key_sub.add_parser(
        "generate",
        help="print a new X25519 key pair for write-only backup hosts",
        description="Print a new X25519 key pair: the public key goes in the stack file's x25519_public_keys (a "
        "backup host then writes backups it cannot read); keep the private key offline, restores need it.",
    )
    kg.set_defaults(func=cmd_key_generate)
    kr = key_sub.add_parser(
        "rotate",
        help="re-wrap every backup's data key for the stack's current keys (data untouched)",
        description="Make the stack's current passphrase the vault's key for new backups, and re-wrap every "
        "committed backup's and log key's data key for the stack's current recipients (passphrase, X25519 public "
        "keys, KMS keys), opening each with the old passphrase (--old-passphrase-from), the stack's X25519 private "
        "key or its KMS keys. Data objects are never rewritten; a stopped run is finished by running it again.",
    )
    kr.add_argument("--stack", default="default", help=STACK_HELP)
    kr.add_argument(
        "--old-passphrase-from",
        metavar="REF",
        help="where the passphrase being replaced is read: env:NAME, file:/path (mode 0600) or prompt",
    )
    kr.add_argument(
        "--new-backups-only",
        action="store_true",
        help="only make the stack's passphrase the vault's key; earlier backups keep their wraps",
    )
    kr.set_defaults(func=cmd_key_rotate)
    ks = key_sub.add_parser(
        "signing-new",
        help="make a new Ed25519 signing key (an admin's, or a host's audit key)",
        description="Make a new Ed25519 signing key pair. The private key goes to --out PATH (mode 0600; an "
        "existing file is never overwritten) or, without --out, alone to standard output; the public key and "
        "where it goes in the stack file (signing.admin_public_keys for an admin, signing.trusted_public_keys for "
        "a host) are printed beside it.",
    )
    ks.add_argument("--out", metavar="PATH", help="write the private key to this new file (mode 0600)")
    ks.set_defaults(func=cmd_key_signing_new)
    kh = key_sub.add_parser(
        "signing-host",
        help="print this host's audit signing public key (for signing.trusted_public_keys)",
        description="Print the public half of this host's signing key (<state dir>/keys/signing.ed25519, created "
        "on first use; a stack whose signing.key_from names another key signs with that one instead). Once a "
        "stack lists admin or trusted keys, 'audit verify' accepts only listed signers: list every host's key.",
    )
    kh.set_defaults(func=cmd_key_signing_host)

    st = sub.add_parser(
        "stacks",
        help="list the stacks applied on this host",
        description="List the stacks applied on this host (from their local descriptions; no Prefect).",
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=cmd_stacks)
    return p


def main(argv: list[str] | None = None) -> int:
    from cli import collector

    collector.starting()  # start-up and exit without full garbage collections (see cli.collector)
    args = build_parser().parse_args(argv)
    from cli.prefect_home import secure_prefect_home
    from cli.stacks import command_stack

    command_stack.set(getattr(args, "stack", None))

    secure_prefect_home()  # home 0700 before Prefect creates anything in it; its database 0600 after the command
    try:
        with cancel.stop_on_signals(lambda msg: print(f"genesis-dr: {msg}", file=sys.stderr)):
            code = args.func(args)
    except DRError as exc:
        if cancel.requested():
            # Whatever the tools said once they were stopped, the run was interrupted and committed nothing.
            print(f"genesis-dr: interrupted: {exc}", file=sys.stderr)
            return 130
        print(f"genesis-dr: error: {render_remedies(str(exc), getattr(args, 'stack', None))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(
            "genesis-dr: interrupted (aborted at once; a killed run's lock expires and its partial backup is "
            "recorded FAILED by the next backup)",
            file=sys.stderr,
        )
        return 130
    finally:
        collector.finished()
        secure_prefect_home()
    if cancel.requested():
        print("genesis-dr: the interrupt came after the run had committed; the results above stand", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
