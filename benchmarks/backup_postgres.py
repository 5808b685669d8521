"""Benchmark: genesis-dr's PostgreSQL backup and restore against the plain tools.

Seeds (or reuses) a database of about ``--size-mb`` with four differently shaped
tables, then times, in one run:

* ``pg_dump DB > /dev/null`` - the source's own speed (the reference);
* ``pg_dump -Fc -Z0 > /dev/null`` and ``pg_dump -Fc -f FILE`` - extras; the file
  feeds the ``pg_restore -j 2`` reference and is not part of any timed restore;
* ``pg_dump | gzip | openssl enc -aes-256-cbc -pbkdf2`` - the approach of the
  source documents (its output is counted with ``wc -c``, never kept);
* our full backup (``core.operations.backup_source``, in process, local vault,
  default chunk size, zstd, the real 600 000 PBKDF2 iterations) with the peak
  RSS of *this* Python process (pg_dump, a child, is the reference tool and is
  not counted);
* our restore (``core.operations.restore_backup``, including its verification)
  into a fresh empty database, and ``pg_restore -j 2`` into another.

Restore targets, the vault and the dump file are removed afterwards; the seeded
database is kept for the next run. Usage::

    python -m benchmarks.backup_postgres [--size-mb 1024] [--json]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    BENCH_PASS,
    CpuMeter,
    Rounds,
    add_goals,
    bench_keyring,
    bench_vault,
    chosen_steps,
    common_arguments,
    emit,
    log,
    measured_backup,
    measured_restore,
    print_goals,
    print_steps,
    ratio,
    timed,
    verification_seconds,
)

SEED_VERSION = 1
GOALS = {
    # name: (value key, limit, True if the value must stay strictly below the limit)
    "backup / raw pg_dump": ("backup_vs_raw_dump", 1.3, False),
    "backup / seed pipeline": ("backup_vs_seed_pipeline", 0.45, False),
    "stored / seed pipeline bytes": ("stored_vs_seed_pipeline_bytes", 1.0, False),
    "restore / pg_restore -j 2": ("restore_vs_pg_restore_j2", 1.25, False),
    "backup peak RSS (MB)": ("backup_peak_rss_mb", 200.0, True),
}
STEPS = ("raw", "custom", "seed", "backup", "restore", "pg_restore")

# Share of --size-mb given to each table (heap + TOAST); the rest is indexes and catalog.
TABLES = {
    "orders": 0.26,  # numbers, dates, booleans
    "documents": 0.28,  # prose-like text
    "events": 0.24,  # jsonb
    "blobs": 0.13,  # incompressible bytea
}

SCHEMA = """
CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE TABLE orders (
    id bigint NOT NULL, customer_id integer, quantity smallint, unit_price numeric(10,2),
    total numeric(12,2), discount real, status smallint, created_at timestamptz, shipped boolean,
    weight double precision);
CREATE TABLE documents (id bigint NOT NULL, title text, body text, lang char(2));
CREATE TABLE events (id bigint NOT NULL, happened_at timestamptz, payload jsonb);
CREATE TABLE blobs (id bigint NOT NULL, name text, payload bytea);
CREATE TABLE bench_meta (seed_version integer, size_mb integer, created_at timestamptz DEFAULT now());
"""

WORDS = (
    "the customer order was shipped after payment invoice delayed warehouse quarter revenue increase decrease "
    "because of and a to in region north south east west product service contract renewal support ticket "
    "resolved pending review approved manager team report figures budget forecast risk compliance audit "
    "backup restore database latency error success"
).split()

WORDS_SQL = {"words": ",".join(f"'{w}'" for w in WORDS), "nwords": len(WORDS)}

INSERTS = {
    "orders": """
INSERT INTO orders
SELECT g, (g * 7919) % 1000003, 1 + g % 17, round((random() * 500)::numeric, 2),
       round((random() * 5000)::numeric, 2), random()::real, (g % 5)::smallint,
       timestamptz '2020-01-01 00:00+00' + g * interval '37 seconds', g % 3 = 0, random() * 100
FROM generate_series({lo}::bigint, {hi}) g""",
    # The inner generate_series depends on g, so the words are drawn per row.
    "documents": """
INSERT INTO documents
SELECT g, 'Report ' || g || ' on ' || (ARRAY['sales','ops','risk','audit','growth'])[1 + g % 5],
       (SELECT string_agg(CASE WHEN random() < 0.08 THEN substr(md5(random()::text), 1, 8)
                               ELSE (ARRAY[{words}])[1 + floor(random() * {nwords})::int] END, ' ')
        FROM generate_series(1, 40 + g % 30)),
       (ARRAY['en','de','fr','es'])[1 + g % 4]
FROM generate_series({lo}::bigint, {hi}) g""",
    "events": """
INSERT INTO events
SELECT g, timestamptz '2023-01-01 00:00+00' + g * interval '1 second',
       jsonb_build_object(
         'user_id', (g * 31) % 200000,
         'type', (ARRAY['click','view','purchase','signup','logout'])[1 + g % 5],
         'session', md5((g / 10)::text),
         'amount', round((random() * 1000)::numeric, 2),
         'items', jsonb_build_array(g % 100, g % 37, g % 11),
         'meta', jsonb_build_object(
            'ua', (ARRAY['Mozilla/5.0 (X11; Linux x86_64)','Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0)',
                         'curl/8.4.0'])[1 + g % 3],
            'ip', '10.' || (g % 256) || '.' || ((g / 256) % 256) || '.' || (g % 7),
            'ok', g % 10 <> 0))
FROM generate_series({lo}::bigint, {hi}) g""",
    "blobs": """
INSERT INTO blobs
SELECT g, 'blob-' || g || '.bin',
       gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(1024) || gen_random_bytes(1024)
FROM generate_series({lo}::bigint, {hi}) g""",
}

CALIBRATION_ROWS = 5_000
BATCH_BYTES = 96 << 20


# -- talking to the server through the plain tools -------------------------------------


class Server:
    def __init__(self, host: str, port: int, user: str) -> None:
        self.host, self.port, self.user = host, port, user

    def conn_args(self, dbname: str) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user, "-d", dbname]

    def sql(self, dbname: str, query: str) -> str:
        """Run SQL with psql (PGPASSWORD, if any, comes from the environment); returns unaligned output."""
        proc = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", *self.conn_args(dbname)],
            input=query,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"psql on {dbname} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def database_exists(self, dbname: str) -> bool:
        return self.sql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{dbname}'") == "1"

    def recreate(self, dbname: str) -> None:
        self.drop(dbname)
        self.sql("postgres", f'CREATE DATABASE "{dbname}"')

    def drop(self, dbname: str) -> None:
        self.sql("postgres", f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def db_bytes(self, dbname: str) -> int:
        return int(self.sql(dbname, "SELECT pg_database_size(current_database())"))


# -- seeding -------------------------------------------------------------------------


def seeded_size(server: Server, dbname: str) -> int | None:
    """The size marker of an existing benchmark database, or None if it must be (re)seeded."""
    if not server.database_exists(dbname):
        return None
    found = server.sql(dbname, "SELECT to_regclass('bench_meta') IS NOT NULL")
    if found != "t":
        return None
    row = server.sql(dbname, "SELECT seed_version || ' ' || size_mb FROM bench_meta LIMIT 1")
    if not row:
        return None
    version, size = (int(x) for x in row.split())
    return size if version == SEED_VERSION else None


def seed(server: Server, dbname: str, size_mb: int) -> None:
    """Create the database and fill each table to its share of ``size_mb``, server side."""
    log(f"seeding {dbname} to about {size_mb} MB (generate_series, server side)")
    started = time.monotonic()
    server.recreate(dbname)
    server.sql(dbname, SCHEMA)
    for table, share in TABLES.items():
        target = int(size_mb * share * (1 << 20))
        server.sql(dbname, INSERTS[table].format(lo=1, hi=CALIBRATION_ROWS, **WORDS_SQL))
        per_row = int(server.sql(dbname, f"SELECT pg_table_size('{table}')")) / CALIBRATION_ROWS
        total_rows = max(CALIBRATION_ROWS, int(target / per_row))
        batch = max(1000, int(BATCH_BYTES / per_row))
        lo = CALIBRATION_ROWS + 1
        while lo <= total_rows:
            hi = min(total_rows, lo + batch - 1)
            server.sql(dbname, INSERTS[table].format(lo=lo, hi=hi, **WORDS_SQL))
            lo = hi + 1
        log(f"  {table}: {total_rows} rows ({per_row:.0f} B/row)")
    server.sql(dbname, "".join(f"ALTER TABLE {t} ADD PRIMARY KEY (id);\n" for t in TABLES))
    # Freeze and set hint bits now, so the first timed dump does not pay for writing them.
    server.sql(dbname, "VACUUM (FREEZE, ANALYZE)")
    server.sql(dbname, f"INSERT INTO bench_meta (seed_version, size_mb) VALUES ({SEED_VERSION}, {size_mb})")
    log(f"seeded in {time.monotonic() - started:.0f} s")


# -- measuring -----------------------------------------------------------------------


def postmaster_pid(server: Server, dbname: str) -> int | None:
    try:
        datadir = server.sql(dbname, "SHOW data_directory")
        with open(Path(datadir) / "postmaster.pid") as fh:
            return int(fh.readline())
    except (OSError, ValueError, SystemExit):
        return None


@contextmanager
def scratch_database(server: Server, name: str):
    server.recreate(name)
    try:
        yield name
    finally:
        server.drop(name)


def run(args: argparse.Namespace) -> dict:
    server = Server(args.host, args.port, args.user)
    steps = chosen_steps(args, STEPS)

    if args.reseed or seeded_size(server, args.dbname) != args.size_mb:
        seed(server, args.dbname, args.size_mb)
    else:
        log(f"reusing {args.dbname} (seeded for {args.size_mb} MB)")
    db = args.dbname
    out: dict = {
        "dbname": db,
        "size_mb_requested": args.size_mb,
        "db_bytes": server.db_bytes(db),
        "server_version": server.sql(db, "SHOW server_version"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    conn = shlex.join(server.conn_args(db))
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-", dir=args.workdir))
    pid = postmaster_pid(server, db)
    rounds = Rounds(CpuMeter((lambda: [pid]) if pid else None))
    sample = rounds.sample

    try:
        ours = Ours(server, db, workdir, out) if steps & {"backup", "restore"} else None
        dump_file = workdir / f"{db}.dump"
        if "pg_restore" in steps:
            log("pg_dump -Fc -f FILE (input for pg_restore, not part of the restore time)")
            out["custom_dump_s"], _ = timed(f"pg_dump -Fc {conn} -f {shlex.quote(str(dump_file))}")
            out["custom_dump_bytes"] = dump_file.stat().st_size
        for round_no in range(1, args.repeat + 1):
            if args.repeat > 1:
                log(f"round {round_no} of {args.repeat}")
            # Rounds interleave the tools, so a busy moment on the machine hits each of them alike.
            if "custom" in steps:
                log("pg_dump -Fc -Z0 > /dev/null")
                with sample("custom_z0_dump_s") as r:
                    r["s"] = timed(f"pg_dump -Fc -Z0 {conn} > /dev/null")[0]
            if "raw" in steps:
                log("pg_dump > /dev/null (reference)")
                with sample("raw_dump_s") as r:
                    r["s"] = timed(f"pg_dump {conn} > /dev/null")[0]
            if "seed" in steps:
                log("pg_dump | gzip | openssl enc -aes-256-cbc -pbkdf2 (source documents' approach)")
                env = dict(os.environ, BENCH_PASS=BENCH_PASS)
                pipeline = f"pg_dump {conn} | gzip | openssl enc -aes-256-cbc -pbkdf2 -pass env:BENCH_PASS | wc -c"
                with sample("seed_pipeline_s") as r:
                    r["s"], count = timed(pipeline, env=env)
                out["seed_pipeline_bytes"] = int(count)
            if ours:
                ours.backup(sample("backup_s"))
                if "restore" in steps:
                    ours.restore(sample("restore_s"))
            if "pg_restore" in steps:
                with scratch_database(server, f"{db}_pg_restore") as target:
                    log(f"pg_restore -j 2 into {target}")
                    with sample("pg_restore_j2_s") as r:
                        r["s"] = timed(["pg_restore", "-j", "2", *server.conn_args(target), str(dump_file)])[0]
        if "raw" in steps:
            out["raw_dump_bytes"] = int(timed(f"pg_dump {conn} | wc -c")[1])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rounds.summarize(out, args.repeat)
    add_ratios(out)
    return out


class Ours:
    """genesis-dr's backup and restore, in this process, into a local vault under ``workdir``."""

    def __init__(self, server: Server, db: str, workdir: Path, out: dict) -> None:
        self.server, self.db, self.out = server, db, out
        self.keyring = bench_keyring(out)
        self.vault = bench_vault(workdir / "vault", out)
        self.manifest = None

    def _engine(self, name: str, database: str):
        from core.engines import engine_for
        from core.sources import PostgresSourceConfig

        s = self.server
        password = os.environ.get("PGPASSWORD") or None
        return engine_for(
            PostgresSourceConfig(name=name, host=s.host, port=s.port, user=s.user, password=password, database=database)
        )

    def backup(self, step) -> None:
        """One backup; ``step`` (a ``sample`` context) gets its time and meters its CPU."""
        log("genesis-dr backup (in process)")
        m = self.manifest = measured_backup(self.vault, self.keyring, self._engine("bench", self.db), step, self.out)
        self.out["stored_bytes"], self.out["plain_bytes"] = m.stored_bytes, m.plain_bytes
        self.out["streams"] = {s.name: {"plain": s.plain_bytes, "stored": s.stored_bytes} for s in m.streams}
        self.out["tool_versions"] = m.tool_versions

    def restore(self, step) -> None:
        """One restore into a scratch database; ``step`` gets its time and meters its CPU."""
        with scratch_database(self.server, f"{self.db}_restore") as target:
            log(f"genesis-dr restore into {target} (includes verification)")
            engine = self._engine("bench-restore", target)
            measured_restore(self.vault, self.keyring, self.manifest.id, engine, step, self.out)
            # The verification's share, measured again on the restored (now cached) data.
            self.out["restore_verify_s_estimate"] = verification_seconds(
                self.vault, self.keyring, self.manifest.id, engine
            )


def add_ratios(out: dict) -> None:
    ratio(out, "backup_vs_raw_dump", "backup_s", "raw_dump_s")
    ratio(out, "backup_vs_seed_pipeline", "backup_s", "seed_pipeline_s")
    ratio(out, "stored_vs_seed_pipeline_bytes", "stored_bytes", "seed_pipeline_bytes")
    ratio(out, "restore_vs_pg_restore_j2", "restore_s", "pg_restore_j2_s")
    # The names every benchmark shares (benchmarks/README.md), beside this script's own.
    for common, own in (
        ("native_s", "raw_dump_s"),
        ("seed_backup_s", "seed_pipeline_s"),
        ("seed_stored_bytes", "seed_pipeline_bytes"),
        ("best_tool_restore_s", "pg_restore_j2_s"),
        ("peak_rss_mb", "backup_peak_rss_mb"),
    ):
        if own in out:
            out[common] = out[own]
    add_goals(out, GOALS)


def print_text(out: dict) -> None:
    mb = 1 << 20
    print(
        f"database {out['dbname']}: {out['db_bytes'] / mb:.0f} MB (pg_database_size), PostgreSQL "
        f"{out['server_version']}, {out['cpus']} CPUs; times are the median of {out['repeat']} interleaved round(s)"
    )
    rows = [
        ("pg_dump -Fc -Z0 > /dev/null", "custom_z0_dump_s", None),
        ("pg_dump > /dev/null (reference)", "raw_dump_s", "raw_dump_bytes"),
        ("pg_dump | gzip | openssl (seed pipeline)", "seed_pipeline_s", "seed_pipeline_bytes"),
        ("genesis-dr backup", "backup_s", "stored_bytes"),
        ("genesis-dr restore (+verify)", "restore_s", None),
        ("pg_dump -Fc -f FILE (pg_restore input)", "custom_dump_s", "custom_dump_bytes"),
        ("pg_restore -j 2", "pg_restore_j2_s", None),
    ]

    print_steps(out, rows)
    if "backup_s" in out:
        print(
            f"  backup peak RSS {out['backup_peak_rss_mb']} MB (+{out['backup_rss_increase_mb']} MB over a "
            f"{out['backup_rss_baseline_mb']} MB baseline; first backup of this Python process, pg_dump excluded)"
        )
        print(
            f"  KDF: {out['kdf_iterations']} PBKDF2 iterations, {out['kdf_wrap_s']} s per backup; "
            f"chunk size {out['chunk_size'] >> 20} MiB, {out['compression']}; plain {out['plain_bytes'] / mb:.1f} MB"
        )
    if "restore_s" in out:
        print(
            f"  restore peak RSS {out['restore_peak_rss_mb']} MB; verification about "
            f"{out['restore_verify_s_estimate']:.2f} s of the restore"
        )
    print_goals(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres", help="password, if needed, from PGPASSWORD")
    parser.add_argument("--dbname", default="genesis_bench")
    common_arguments(parser, STEPS, size_mb=1024)
    args = parser.parse_args(argv)
    emit(run(args), args, print_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
