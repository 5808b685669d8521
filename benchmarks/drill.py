"""Benchmark: the monthly drill's whole-stack RTO on a PostgreSQL + MariaDB + Redis stack.

One run (a drill is one measurement, not rounds of one):

* seeds, or reuses as ``backup_postgres.py`` and ``backup_mysql.py`` do, the
  ``genesis_bench`` database of about ``--size-mb`` on the machine's PostgreSQL
  (127.0.0.1:5432) and one of about ``--mysql-mb`` on its MariaDB (127.0.0.1:3306),
  and a throw-away ``redis-server`` with ``--redis-keys`` keys (as ``backup_redis.py``
  does; the seeding functions are theirs, imported);
* takes the native tools' inputs for the reference restores (``pg_dump -Fc``,
  ``mariadb-dump``, ``redis-cli --rdb``; untimed) *before* our backups, so the
  drill starts right after the last backup and the RPO is what the backups give;
* takes a full backup of each (``core.operations.backup_source``, in process, a
  local vault under a temp dir, the real PBKDF2 cost); PostgreSQL's is the one
  ``backup_method: auto`` picks (physical once the capture's slot exists, logical
  otherwise: the machine's server has no slot, so ``pg_dump``);
* stops the source Redis and runs the monthly drill in process on a
  ``core.stack.StackConfig`` of the three sources: ``core.drills.run_drill(config,
  "monthly")`` declares the disaster, restores every source in parallel into a
  sandbox started by our code (``initdb`` + ``postgres``, ``mariadb-install-db`` +
  ``mariadbd``, ``redis-server``), compares with the checks recorded at backup time
  and runs the stack's smoke queries; RTO is the wall time from the declaration to
  the last source verified, with seconds per stage and source;
* for context, the native restores of the same data, one after the other:
  ``pg_restore -j 2`` into an empty database of the machine's server, ``mariadb``
  loading the ``mariadb-dump`` into an empty database of the machine's server, and
  a fresh ``redis-server`` loading the RDB. They start no server (except Redis),
  verify nothing and run one at a time, so their sum is a lower bound of a
  hand-run recovery, not a like-for-like figure.

Goal (issue 10): full-stack RTO under 3 minutes on this machine; the source
documents allow 15. Usage::

    python benchmarks/drill.py [--size-mb 1024] [--mysql-mb 300] [--redis-keys 1000000] [--json]
    python benchmarks/drill.py --size-mb 50 --mysql-mb 20 --redis-keys 50000   # a quick check

The seeded databases are kept for the next run; the vault, the Redis servers,
the reference outputs and the scratch databases are removed at the end, also on
failure or Ctrl-C (the drill tears its own sandboxes down).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import backup_mysql, backup_postgres, backup_redis  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    BENCH_PASS,
    add_goals,
    bench_keyring,
    bench_vault,
    chosen_steps,
    emit,
    ensure_debian_packages,
    log,
    timed,
)

STEPS = ("drill", "native")
RTO_GOAL_S = 180.0
GOAL_LABEL = "full-stack RTO under 3 minutes on this machine (the source documents allow 15)"
# The stack's source names, in the order the report lists them.
PG, MYSQL, REDIS = "app-db", "app-mysql", "app-cache"
STAGES = ("sandbox", "fetch", "decrypt", "load", "replay", "verify")
# The stack reads its passphrase from here (a throw-away one, as every benchmark's: BENCH_PASS).
PASSPHRASE_ENV = "GENESIS_BENCH_DRILL_PASSPHRASE"
TOOLS = {
    "psql": "postgresql-client",
    "pg_dump": "postgresql-client",
    "pg_restore": "postgresql-client",
    "mariadb": "mariadb-client",
    "mariadb-dump": "mariadb-client",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
}


# -- the data ----------------------------------------------------------------------------


def prepare_postgres(args: argparse.Namespace) -> backup_postgres.Server:
    server = backup_postgres.Server(args.pg_host, args.pg_port, args.pg_user)
    if args.reseed or backup_postgres.seeded_size(server, args.dbname) != args.size_mb:
        backup_postgres.seed(server, args.dbname, args.size_mb)
    else:
        log(f"reusing PostgreSQL {args.dbname} (seeded for {args.size_mb} MB)")
    return server


def prepare_mysql(args: argparse.Namespace) -> backup_mysql.Server:
    server = backup_mysql.Server(args.mysql_host, args.mysql_port, args.mysql_user)
    if args.reseed or backup_mysql.seeded_size(server, args.dbname) != args.mysql_mb:
        backup_mysql.seed(server, args.dbname, args.mysql_mb)
    else:
        log(f"reusing MariaDB {args.dbname} (seeded for {args.mysql_mb} MB)")
    return server


def stack_config(args: argparse.Namespace, vault_dir: Path, redis_port: int, keys: int):
    """The drilled stack: the three sources as production knows them, our local vault, the default
    objectives (RTO 15 min, RPO 5 min), and one smoke query per source that proves the data is there."""
    from core.stack import StackConfig

    return StackConfig.model_validate(
        {
            "stack": "bench-drill",
            "vault": {"type": "local", "path": str(vault_dir)},
            "encryption": {"passphrase_from": f"env:{PASSPHRASE_ENV}"},
            "sources": [
                {
                    "name": PG,
                    "kind": "postgres",
                    "host": args.pg_host,
                    "port": args.pg_port,
                    "user": args.pg_user,
                    "password": os.environ.get("PGPASSWORD") or None,
                    "database": args.dbname,
                    "backup_method": "auto",
                },
                {
                    "name": MYSQL,
                    "kind": "mysql",
                    "host": args.mysql_host,
                    "port": args.mysql_port,
                    "user": args.mysql_user,
                    "password": os.environ.get("MYSQL_PWD") or None,
                    "database": args.dbname,
                },
                {"name": REDIS, "kind": "redis", "host": "127.0.0.1", "port": redis_port, "mode": "rdb"},
            ],
            "validation": {
                "smoke_queries": {
                    PG: [{"query": "SELECT size_mb FROM bench_meta", "expect": str(args.size_mb)}],
                    MYSQL: [{"query": "SELECT size_mb FROM bench_meta", "expect": str(args.mysql_mb)}],
                    REDIS: [{"query": "DBSIZE", "expect": str(keys)}],
                }
            },
        }
    )


# -- the run -----------------------------------------------------------------------------


def take_backups(config, vault, keyring, out: dict) -> None:
    """A full backup of every source, in the stack's order, each timed; the drill restores these."""
    from core.engines import engine_for
    from core.operations import backup_source

    for source in config.sources:
        log(f"genesis-dr full backup of {source.name} ({source.kind}, in process)")
        started = time.monotonic()
        manifest = backup_source(vault, keyring, engine_for(source), "full")
        out["backup_s"][source.name] = round(time.monotonic() - started, 2)
        out["stored_bytes"][source.name] = manifest.stored_bytes
        out["plain_bytes"][source.name] = manifest.plain_bytes
        if source.kind == "postgres":
            out["pg_backup_method"] = "physical" if (manifest.position or {}).get("physical") else "logical"


def run_monthly_drill(config, keyring, out: dict) -> None:
    from core.drills import run_drill

    log("monthly drill: disaster declared now; every source restored into a sandbox")
    started = time.monotonic()
    # The keyring the backups were written with (the stack's own, passphrase_from, would open them too).
    record = run_drill(config, "monthly", keyring=keyring, progress=lambda msg: log(f"  drill: {msg}"))
    out["drill_wall_s"] = round(time.monotonic() - started, 2)
    data = record.to_dict()
    out["drill_id"] = data.get("id")
    out["rto_s"] = None if data.get("rto_s") is None else round(data["rto_s"], 2)
    out["rto_objective_s"] = data.get("rto_objective_s")
    out["passed"] = bool(data.get("passed"))
    for name, src in data.get("sources", {}).items():
        out["stages"][name] = {stage: round(src.get("stages", {}).get(stage, 0.0), 2) for stage in STAGES}
        out["rpo_s"][name] = None if src.get("rpo_s") is None else round(src["rpo_s"], 2)
        out["rpo_objective_s"][name] = src.get("rpo_objective_s")
        out["source_seconds"][name] = None if src.get("seconds") is None else round(src["seconds"], 2)
        out["recovery_point"][name] = src.get("recovery_point")
        out["target"][name] = src.get("target")
    # Summed over the sources (they ran in parallel, so this is work, not wall time).
    out["stages_total"] = {stage: round(sum(s[stage] for s in out["stages"].values()), 2) for stage in STAGES}
    from core.validation.results import CheckResult

    results = [CheckResult.from_dict(r) for r in data.get("results", [])]
    out["failures"] = [r.line() for r in results if r.failed]
    out["checks"] = {"passed": sum(r.checked and r.passed for r in results), "failed": sum(r.failed for r in results)}


def native_inputs(args, pg: backup_postgres.Server, my: backup_mysql.Server, redis, workdir: Path) -> dict:
    """The reference restores' inputs, made with the native tools (not timed)."""
    files = {"pg": workdir / "native.pgdump", "mysql": workdir / "native.sql", "rdb": workdir / "native.rdb"}
    log("native inputs: pg_dump -Fc, mariadb-dump, redis-cli --rdb (not timed)")
    timed(["pg_dump", "-Fc", *pg.conn_args(args.dbname), "-f", str(files["pg"])])
    conn = shlex.join(my.conn_args())
    timed(
        f"mariadb-dump {conn} --single-transaction --routines --triggers --events {shlex.quote(args.dbname)} "
        f"> {shlex.quote(str(files['mysql']))}"
    )
    timed(["redis-cli", "-p", str(redis.port), "--rdb", str(files["rdb"])])
    return files


def native_restores(args, pg, my, files: dict, workdir: Path, keys: int, out: dict) -> None:
    """The same three restores with the native tools, one after the other, each timed."""
    native = out["native"]
    with backup_postgres.scratch_database(pg, f"{args.dbname}_drill_native") as target:
        log(f"native: pg_restore -j 2 into {target}")
        native["pg_restore_j2_s"] = round(
            timed(["pg_restore", "-j", "2", *pg.conn_args(target), str(files["pg"])])[0], 2
        )
    with backup_mysql.scratch_database(my, f"{args.dbname}_drill_native") as target:
        log(f"native: mariadb < mariadb-dump into {target}")
        load = f"mariadb {shlex.join(my.conn_args())} {shlex.quote(target)} < {shlex.quote(str(files['mysql']))}"
        native["mariadb_load_s"] = round(timed(load)[0], 2)
    fresh = workdir / "native-redis"
    fresh.mkdir()
    shutil.move(files["rdb"], fresh / "dump.rdb")
    log("native: a fresh redis-server loads the RDB")
    started = time.monotonic()
    server = backup_redis.RedisServer(fresh)  # returns once it answers PING, i.e. the RDB is loaded
    native["redis_load_s"] = round(time.monotonic() - started, 2)
    try:
        loaded = int(server.cli("DBSIZE"))
    finally:
        server.stop()
    if loaded != keys:
        raise SystemExit(f"native redis load: {loaded} keys, expected {keys}")
    native["serial_total_s"] = round(sum(native[k] for k in ("pg_restore_j2_s", "mariadb_load_s", "redis_load_s")), 2)


def run(args: argparse.Namespace) -> dict:
    ensure_debian_packages(TOOLS)
    steps = chosen_steps(args, STEPS)
    os.environ.setdefault(PASSPHRASE_ENV, BENCH_PASS)
    pg = prepare_postgres(args)
    my = prepare_mysql(args)
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-drill-", dir=args.workdir))
    # The drill's chart goes to GENESIS_DR_REPORTS; unless told otherwise, into the run's temp dir.
    reports = Path(args.reports) if args.reports else workdir / "reports"
    os.environ["GENESIS_DR_REPORTS"] = str(reports)
    out: dict = {
        "dbname": args.dbname,
        "size_mb_requested": args.size_mb,
        "mysql_mb_requested": args.mysql_mb,
        "pg_db_bytes": pg.db_bytes(args.dbname),
        "mysql_db_bytes": my.db_bytes(args.dbname),
        "pg_server_version": pg.sql(args.dbname, "SHOW server_version"),
        "mysql_server_version": my.sql("SELECT VERSION()"),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "backup_s": {},
        "stored_bytes": {},
        "plain_bytes": {},
        "stages": {},
        "rpo_s": {},
        "rpo_objective_s": {},
        "source_seconds": {},
        "recovery_point": {},
        "target": {},
        "native": {},
        "rto_s": None,  # set by the drill (--steps without drill: not measured)
        "passed": None,
    }
    redis = None
    try:
        redis = backup_redis.RedisServer(workdir / "redis-source")
        out["redis_server_version"] = redis.cli("INFO", "server").split("redis_version:")[1].split()[0]
        backup_redis.seed(redis, args.redis_keys)
        keys = int(redis.cli("DBSIZE"))
        out["redis_keys"] = keys
        out["redis_used_memory_mb"] = round(int(redis.cli("INFO", "memory").split("used_memory:")[1].split()[0]) >> 20)
        files = native_inputs(args, pg, my, redis, workdir) if "native" in steps else {}
        keyring = bench_keyring(out)
        vault_dir = workdir / "vault"
        vault = bench_vault(vault_dir, out)
        config = stack_config(args, vault_dir, redis.port, keys)
        take_backups(config, vault, keyring, out)
        # Production Redis is gone in the disaster; the drill needs only the vault (and frees the memory).
        redis.stop()
        redis = None
        if "drill" in steps:
            run_monthly_drill(config, keyring, out)
        if "native" in steps:
            native_restores(args, pg, my, files, workdir, keys, out)
    finally:
        if redis is not None:
            redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if out.get("rto_s") is not None and out["native"].get("serial_total_s"):
        out["rto_vs_native_serial"] = round(out["rto_s"] / out["native"]["serial_total_s"], 3)
    if out.get("rto_s") is not None:
        add_goals(out, {GOAL_LABEL: ("rto_s", RTO_GOAL_S, True)})
        # A drill that failed recovered less than the whole stack: its time is no full-stack RTO.
        out["goals"]["rto_s"]["pass"] &= bool(out["passed"])
    return out


# -- output ------------------------------------------------------------------------------


def fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_text(out: dict) -> None:
    mb = 1 << 20
    print(
        f"stack: PostgreSQL {out['pg_server_version']} {out['dbname']} {out['pg_db_bytes'] / mb:.0f} MB "
        f"(full: {out.get('pg_backup_method', '?')}), {out['mysql_server_version']} {out['dbname']} "
        f"{out['mysql_db_bytes'] / mb:.0f} MB, Redis {out['redis_server_version']} {out['redis_keys']} keys "
        f"({out['redis_used_memory_mb']} MB); {out['cpus']} CPUs, load average at start {out['load_average'][0]}"
    )
    print(
        "  backups (in process, local vault): "
        + ", ".join(
            f"{name} {s:.2f} s / {out['stored_bytes'][name] / mb:.1f} MB stored" for name, s in out["backup_s"].items()
        )
    )
    if out.get("stages"):
        print()
        print("  monthly drill, seconds per stage (fetch and decrypt are busy time, overlapped with load)")
        print(f"  {'source':12s}" + "".join(f"{s:>9s}" for s in STAGES) + f"{'wall':>9s}{'RPO':>9s}")
        for name, stages in out["stages"].items():
            cells = "".join(f"{fmt(stages.get(s)):>9s}" for s in STAGES)
            print(f"  {name:12s}{cells}{fmt(out['source_seconds'].get(name)):>9s}{fmt(out['rpo_s'].get(name)):>9s}")
        total = out.get("stages_total", {})
        print(f"  {'sum':12s}" + "".join(f"{fmt(total.get(s)):>9s}" for s in STAGES))
        print(
            f"  end-to-end RTO {fmt(out.get('rto_s'))} s (objective {fmt(out.get('rto_objective_s'))} s, sources in "
            f"parallel); drill {'passed' if out.get('passed') else 'FAILED'}"
            f" ({out.get('checks', {}).get('passed', 0)} checks passed, {out.get('checks', {}).get('failed', 0)} failed)"
        )
        for line in out.get("failures", []):
            print(f"    {line}")
    native = out.get("native") or {}
    if native:
        print()
        print("  native restores for context (one at a time, into running servers, no verification):")
        print(f"    pg_restore -j 2 of a pg_dump -Fc      {fmt(native.get('pg_restore_j2_s')):>8s} s")
        print(f"    mariadb < mariadb-dump                {fmt(native.get('mariadb_load_s')):>8s} s")
        print(f"    redis-server loading the RDB          {fmt(native.get('redis_load_s')):>8s} s")
        print(f"    sum                                   {fmt(native.get('serial_total_s')):>8s} s")
    goal = out.get("goals", {}).get("rto_s")
    print()
    if goal:
        failed = "" if out.get("passed") else "; the drill FAILED, so this is no full-stack recovery"
        verdict = "PASS" if goal["pass"] else "MISS"
        print(f"  {verdict}  {GOAL_LABEL}: {goal['value']:.2f} s (goal < {goal['goal']:.0f} s){failed}")
    else:
        print(f"  MISS  {GOAL_LABEL}: not measured (the drill did not run)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--steps", help=f"comma-separated subset of {','.join(STEPS)} (default: all)")
    parser.add_argument("--size-mb", type=int, default=1024, help="PostgreSQL database size (MB)")
    parser.add_argument("--mysql-mb", type=int, default=300, help="MariaDB database size (MB)")
    parser.add_argument("--redis-keys", type=int, default=1_000_000, help="keys in the Redis source")
    parser.add_argument("--dbname", default="genesis_bench", help="database name on both servers")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres", help="password, if needed, from PGPASSWORD")
    parser.add_argument("--mysql-host", default="127.0.0.1")
    parser.add_argument("--mysql-port", type=int, default=3306)
    parser.add_argument("--mysql-user", default="root", help="password, if needed, from MYSQL_PWD")
    parser.add_argument("--reseed", action="store_true", help="recreate the databases even if their markers match")
    parser.add_argument("--workdir", help="where the vault and reference outputs go (default: system temp dir)")
    parser.add_argument("--reports", help="keep the drill's chart here (default: removed with the temp dir)")
    args = parser.parse_args(argv)
    emit(run(args), args, print_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
