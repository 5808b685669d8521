"""Benchmark: genesis-dr's MariaDB/MySQL backup and restore against the plain tools and mydumper.

Seeds (or reuses) a database of about ``--size-mb`` of InnoDB data (numbers,
prose-like text, JSON, incompressible blobs), then times, in one run and round
by round:

* ``mariadb-dump --single-transaction DB > /dev/null`` - the native dump path
  (``native_s``, the reference);
* ``mariadb-dump | gzip | openssl enc -aes-256-cbc -pbkdf2`` - the source
  documents' approach (``seed_backup_s``; counted with ``wc -c`` while a copy
  is kept in the work directory for the seed restore);
* ``openssl enc -d | gunzip | mariadb`` into an empty database (``seed_restore_s``);
* ``mydumper -t 2`` into a directory and ``myloader -t 2`` from it into an
  empty database (``best_tool_backup_s``, ``best_tool_restore_s``);
* ``mariadb-backup --backup --stream=xbstream > /dev/null`` (an extra: a
  physical copy of the whole server, not comparable in what it gives you);
* our full backup (``core.operations.backup_source``, in process, local vault,
  default chunk size, zstd, the real PBKDF2 cost) with the peak RSS of *this*
  process (the dump tools are children and not counted), and our restore
  (``core.operations.restore_backup``, verification included) into an empty
  database.

Restore targets, vaults and reference outputs are removed afterwards; the
seeded database is kept for the next run. Usage::

    python benchmarks/backup_mysql.py [--size-mb 400] [--json] [--repeat 3] [--steps native,seed,...]
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
    ensure_debian_packages,
    log,
    measured_backup,
    measured_restore,
    print_goals,
    print_steps,
    ratio,
    timed,
    verification_seconds,
)

SEED_VERSION = 3
GOALS = {
    # name: (value key, limit, True if the value must stay strictly below the limit)
    "backup / native mariadb-dump": ("backup_vs_native", 1.5, False),
    "backup / seed pipeline": ("backup_vs_seed_pipeline", 1.0, False),
    "restore / seed pipeline restore": ("restore_vs_seed_restore", 1.0, False),
    "restore / myloader -t 2": ("restore_vs_myloader", 1.25, False),
    "backup peak RSS (MB)": ("backup_peak_rss_mb", 200.0, True),
    "restore peak RSS (MB)": ("restore_peak_rss_mb", 200.0, True),
}
STEPS = ("native", "seed", "seed_restore", "mydumper", "myloader", "mariabackup", "backup", "restore")
TOOLS = {
    "mariadb": "mariadb-client",
    "mariadb-dump": "mariadb-client",
    "mydumper": "mydumper",
    "myloader": "mydumper",
    "mariadb-backup": "mariadb-backup",
    "gzip": "gzip",
    "openssl": "openssl",
}

# Share of --size-mb (InnoDB data + indexes) given to each table.
TABLES = {
    "orders": 0.28,  # numbers, dates, booleans
    "documents": 0.30,  # prose-like text
    "events": 0.27,  # JSON
    "blobs": 0.15,  # incompressible bytes
}
WORDS = (
    "the customer order was shipped after payment invoice delayed warehouse quarter revenue increase decrease "
    "because of and a to in region north south east west product service contract renewal support ticket "
    "resolved pending review approved manager team report figures budget forecast risk compliance audit "
    "backup restore database latency error success"
).split()
_WORD = "ELT(1 + FLOOR(RAND() * {n}), {words})".format(n=len(WORDS), words=",".join(f"'{w}'" for w in WORDS))

SCHEMA = [
    "CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, customer_id INT, quantity SMALLINT, "
    "unit_price DECIMAL(10,2), total DECIMAL(12,2), discount FLOAT, status TINYINT, created_at DATETIME, "
    "shipped BOOLEAN, weight DOUBLE, KEY (customer_id)) ENGINE=InnoDB",
    "CREATE TABLE documents (id BIGINT NOT NULL PRIMARY KEY, title VARCHAR(200), body TEXT, lang CHAR(2)) ENGINE=InnoDB",
    "CREATE TABLE events (id BIGINT NOT NULL PRIMARY KEY, happened_at DATETIME, payload JSON) ENGINE=InnoDB",
    "CREATE TABLE blobs (id BIGINT NOT NULL PRIMARY KEY, name VARCHAR(100), payload MEDIUMBLOB) ENGINE=InnoDB",
    "CREATE TABLE bench_meta (seed_version INT, size_mb INT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
]
# Rows {lo}..{hi} of each table, generated on the server (the SEQUENCE engine's seq_X_to_Y tables).
INSERTS = {
    "orders": "INSERT INTO orders SELECT seq, (seq * 7919) % 1000003, 1 + seq % 17, ROUND(RAND() * 500, 2), "
    "ROUND(RAND() * 5000, 2), RAND(), seq % 5, '2020-01-01' + INTERVAL seq * 37 SECOND, seq % 3 = 0, RAND() * 100 "
    "FROM seq_{lo}_to_{hi}",
    "documents": "INSERT INTO documents SELECT seq, CONCAT('Report ', seq, ' on ', ELT(1 + seq % 5, 'sales', 'ops', "
    "'risk', 'audit', 'growth')), CONCAT_WS(' ', " + ", ".join([_WORD] * 60) + ", LEFT(MD5(RAND()), 8)), "
    "ELT(1 + seq % 4, 'en', 'de', 'fr', 'es') FROM seq_{lo}_to_{hi}",
    "events": "INSERT INTO events SELECT seq, '2023-01-01' + INTERVAL seq SECOND, JSON_OBJECT("
    "'user_id', (seq * 31) % 200000, 'type', ELT(1 + seq % 5, 'click', 'view', 'purchase', 'signup', 'logout'), "
    "'session', MD5(seq DIV 10), 'amount', ROUND(RAND() * 1000, 2), 'items', JSON_ARRAY(seq % 100, seq % 37, seq % 11), "
    "'meta', JSON_OBJECT('ua', ELT(1 + seq % 3, 'Mozilla/5.0 (X11; Linux x86_64)', "
    "'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0)', 'curl/8.4.0'), "
    "'ip', CONCAT('10.', seq % 256, '.', (seq DIV 256) % 256, '.', seq % 7), 'ok', seq % 10 <> 0)) "
    "FROM seq_{lo}_to_{hi}",
    "blobs": "INSERT INTO blobs SELECT seq, CONCAT('blob-', seq, '.bin'), CONCAT("
    + ", ".join(["RANDOM_BYTES(1024)"] * 16)
    + ") FROM seq_{lo}_to_{hi}",
}
# Rows inserted first to measure each table's bytes per row (enough to fill pages as the full table will).
CALIBRATION_ROWS = {"orders": 20_000, "documents": 5_000, "events": 20_000, "blobs": 500}
BATCH_BYTES = 32 << 20


# -- talking to the server through the plain tools -------------------------------------


class Server:
    def __init__(self, host: str, port: int, user: str) -> None:
        self.host, self.port, self.user = host, port, user

    def conn_args(self) -> list[str]:
        """Connection options for the mariadb tools (a password, if any, from MYSQL_PWD)."""
        return [f"--host={self.host}", f"--port={self.port}", f"--user={self.user}", "--protocol=TCP"]

    def mydumper_args(self) -> list[str]:
        args = ["--host", self.host, "--port", str(self.port), "--user", self.user]
        if os.environ.get("MYSQL_PWD"):
            args += ["--password", os.environ["MYSQL_PWD"]]
        return args

    def sql(self, query: str, database: str | None = None) -> str:
        argv = ["mariadb", *self.conn_args(), "--batch", "--skip-column-names"]
        if database:
            argv.append(f"--database={database}")
        proc = subprocess.run(argv, input=query, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"mariadb failed on {query[:80]!r}: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def database_exists(self, db: str) -> bool:
        return self.sql(f"SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{db}'") == "1"

    def recreate(self, db: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS `{db}`; CREATE DATABASE `{db}` CHARACTER SET utf8mb4")

    def drop(self, db: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS `{db}`")

    def db_bytes(self, db: str) -> int:
        return sum(self.table_bytes(db, table) for table in TABLES)

    def table_bytes(self, db: str, table: str) -> int:
        self.sql(f"ANALYZE TABLE `{db}`.`{table}`")  # InnoDB's sizes are statistics: bring them up to date
        return int(
            self.sql(
                "SELECT DATA_LENGTH + INDEX_LENGTH FROM information_schema.TABLES "
                f"WHERE TABLE_SCHEMA = '{db}' AND TABLE_NAME = '{table}'"
            )
        )

    def server_pids(self) -> list[int]:
        pidfile = self.sql("SELECT @@GLOBAL.pid_file")
        try:
            with open(pidfile) as fh:
                return [int(fh.read().strip())]
        except (OSError, ValueError):
            found = subprocess.run(["pgrep", "-x", "mariadbd"], capture_output=True, text=True).stdout.split()
            return [int(p) for p in found[:1]]


# -- seeding -------------------------------------------------------------------------


def seeded_size(server: Server, db: str) -> int | None:
    """The size marker of an existing benchmark database, or None if it must be (re)seeded."""
    if not server.database_exists(db):
        return None
    try:
        row = server.sql("SELECT seed_version, size_mb FROM bench_meta LIMIT 1", db)
    except SystemExit:
        return None
    if not row:
        return None
    version, size = (int(x) for x in row.split())
    return size if version == SEED_VERSION else None


def seed(server: Server, db: str, size_mb: int) -> None:
    """Create the database and fill each table to its share of ``size_mb``, server side."""
    log(f"seeding {db} to about {size_mb} MB (SEQUENCE engine, server side)")
    started = time.monotonic()
    server.recreate(db)
    server.sql(";\n".join(SCHEMA), db)
    for table, share in TABLES.items():
        # x1.12: the calibration table's size (fresh statistics of a small table) runs ~12 % over
        # what each row takes in the full table, measured on the 400 MB set.
        target = int(size_mb * share * 1.12 * (1 << 20))
        calibration = CALIBRATION_ROWS[table]
        server.sql(INSERTS[table].format(lo=1, hi=calibration), db)
        per_row = max(1.0, server.table_bytes(db, table) / calibration)
        total_rows = max(calibration, int(target / per_row))
        batch = max(100, int(BATCH_BYTES / per_row))
        lo = calibration + 1
        while lo <= total_rows:
            hi = min(total_rows, lo + batch - 1)
            server.sql(INSERTS[table].format(lo=lo, hi=hi), db)
            lo = hi + 1
        log(f"  {table}: {total_rows} rows ({per_row:.0f} B/row)")
    server.sql(f"INSERT INTO bench_meta (seed_version, size_mb) VALUES ({SEED_VERSION}, {size_mb})", db)
    log(f"seeded {server.db_bytes(db) >> 20} MB in {time.monotonic() - started:.0f} s")


# -- measuring -----------------------------------------------------------------------


@contextmanager
def scratch_database(server: Server, name: str):
    server.recreate(name)
    try:
        yield name
    finally:
        server.drop(name)


def run(args: argparse.Namespace) -> dict:
    ensure_debian_packages(TOOLS)
    server = Server(args.host, args.port, args.user)
    steps = chosen_steps(args, STEPS)
    db = args.dbname
    if args.reseed or seeded_size(server, db) != args.size_mb:
        seed(server, db, args.size_mb)
    else:
        log(f"reusing {db} (seeded for {args.size_mb} MB)")
    out: dict = {
        "dbname": db,
        "size_mb_requested": args.size_mb,
        "db_bytes": server.db_bytes(db),
        "server_version": server.sql("SELECT VERSION()"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    conn = shlex.join(server.conn_args())
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-mysql-", dir=args.workdir))
    rounds = Rounds(CpuMeter(server.server_pids))
    sample = rounds.sample
    env = dict(os.environ, BENCH_PASS=BENCH_PASS)
    seed_file = workdir / "seed.sql.gz.enc"
    mydumper_dir = workdir / "mydumper"
    try:
        ours = Ours(server, db, workdir, out) if steps & {"backup", "restore"} else None
        for round_no in range(1, args.repeat + 1):
            if args.repeat > 1:
                log(f"round {round_no} of {args.repeat}")
            # Rounds interleave the tools, so a busy moment on the machine hits each of them alike.
            if "native" in steps:
                log("mariadb-dump --single-transaction > /dev/null (native)")
                with sample("native_dump_s") as r:
                    r["s"] = timed(f"mariadb-dump {conn} --single-transaction {shlex.quote(db)} > /dev/null")[0]
            if steps & {"seed", "seed_restore"}:
                log("mariadb-dump | gzip | openssl enc -aes-256-cbc -pbkdf2 (source documents' approach)")
                pipeline = (
                    f"mariadb-dump {conn} --single-transaction --routines --triggers --events {shlex.quote(db)} "
                    f"| gzip | openssl enc -aes-256-cbc -pbkdf2 -pass env:BENCH_PASS | tee {shlex.quote(str(seed_file))} | wc -c"
                )
                with sample("seed_pipeline_s") as r:
                    r["s"], count = timed(pipeline, env=env)
                out["seed_pipeline_bytes"] = int(count)
            if "seed_restore" in steps:
                with scratch_database(server, f"{db}_seed_restore") as target:
                    log(f"openssl enc -d | gunzip | mariadb into {target}")
                    restore = (
                        f"openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BENCH_PASS -in {shlex.quote(str(seed_file))} "
                        f"| gunzip | mariadb {conn} {shlex.quote(target)}"
                    )
                    with sample("seed_restore_s") as r:
                        r["s"] = timed(restore, env=env)[0]
            if steps & {"mydumper", "myloader"}:
                shutil.rmtree(mydumper_dir, ignore_errors=True)
                log("mydumper -t 2")
                argv = ["mydumper", *server.mydumper_args(), "-t", "2", "-B", db, "-o", str(mydumper_dir)]
                argv += ["--routines", "--triggers", "--events"]
                with sample("mydumper_s") as r:
                    r["s"] = timed(argv)[0]
            if "myloader" in steps:
                target = f"{db}_myloader"
                server.drop(target)
                log(f"myloader -t 2 into {target}")
                argv = ["myloader", *server.mydumper_args(), "-t", "2", "-d", str(mydumper_dir), "-B", target]
                try:
                    with sample("myloader_s") as r:
                        r["s"] = timed(argv)[0]
                finally:
                    server.drop(target)
            if "mariabackup" in steps:
                log("mariadb-backup --backup --stream=xbstream > /dev/null (extra: whole server, physical)")
                target_dir = workdir / "mariabackup"
                argv = (
                    f"mariadb-backup --backup {conn} --stream=xbstream --target-dir={shlex.quote(str(target_dir))} "
                    "> /dev/null"
                )
                with sample("mariabackup_stream_s") as r:
                    r["s"] = timed(argv)[0]
            if ours:
                ours.backup(sample("backup_s"))
                if "restore" in steps:
                    ours.restore(sample("restore_s"))
        if "native" in steps:
            out["native_dump_bytes"] = int(
                timed(f"mariadb-dump {conn} --single-transaction {shlex.quote(db)} | wc -c")[1]
            )
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
        from core.sources import MySQLSourceConfig

        s = self.server
        password = os.environ.get("MYSQL_PWD") or None
        return engine_for(
            MySQLSourceConfig(name=name, host=s.host, port=s.port, user=s.user, password=password, database=database)
        )

    def backup(self, step) -> None:
        """One backup; ``step`` (a ``sample`` context) gets its time and meters its CPU."""
        log("genesis-dr backup (in process)")
        m = self.manifest = measured_backup(self.vault, self.keyring, self._engine("bench", self.db), step, self.out)
        self.out["stored_bytes"], self.out["plain_bytes"] = m.stored_bytes, m.plain_bytes
        self.out["stream_count"] = len(m.streams)
        self.out["tool_versions"] = m.tool_versions

    def restore(self, step) -> None:
        """One restore into an empty database; ``step`` gets its time and meters its CPU."""
        target = f"{self.db}_restore"
        self.server.drop(target)  # the engine creates it: "an empty server" as the reference tools get
        try:
            log(f"genesis-dr restore into {target} (includes verification)")
            engine = self._engine("bench-restore", target)
            measured_restore(self.vault, self.keyring, self.manifest.id, engine, step, self.out)
            # The verification's cost if it ran as a pass of its own after the load (a fresh engine).
            self.out["verify_pass_s_estimate"] = verification_seconds(
                self.vault, self.keyring, self.manifest.id, self._engine("bench-verify", target)
            )
        finally:
            self.server.drop(target)


def add_ratios(out: dict) -> None:
    # The names every benchmark shares (benchmarks/README.md), beside this script's own.
    for common, own in (
        ("native_s", "native_dump_s"),
        ("seed_backup_s", "seed_pipeline_s"),
        ("seed_stored_bytes", "seed_pipeline_bytes"),
        ("best_tool_backup_s", "mydumper_s"),
        ("best_tool_restore_s", "myloader_s"),
        ("peak_rss_mb", "backup_peak_rss_mb"),
    ):
        if own in out:
            out[common] = out[own]
    ratio(out, "backup_vs_native", "backup_s", "native_s")
    ratio(out, "backup_vs_seed_pipeline", "backup_s", "seed_backup_s")
    ratio(out, "backup_vs_mydumper", "backup_s", "best_tool_backup_s")
    ratio(out, "stored_vs_seed_pipeline_bytes", "stored_bytes", "seed_stored_bytes")
    ratio(out, "restore_vs_seed_restore", "restore_s", "seed_restore_s")
    ratio(out, "restore_vs_myloader", "restore_s", "best_tool_restore_s")
    add_goals(out, GOALS)


def print_text(out: dict) -> None:
    mb = 1 << 20
    print(
        f"database {out['dbname']}: {out['db_bytes'] / mb:.0f} MB InnoDB (data + indexes), "
        f"{out['server_version']}, {out['cpus']} CPUs; times are the median of {out['repeat']} interleaved round(s)"
    )
    rows = [
        ("mariadb-dump > /dev/null (native)", "native_dump_s", "native_dump_bytes"),
        ("mariadb-dump | gzip | openssl (seed)", "seed_pipeline_s", "seed_pipeline_bytes"),
        ("mydumper -t 2 (best tool)", "mydumper_s", None),
        ("mariadb-backup --stream > /dev/null (extra)", "mariabackup_stream_s", None),
        ("genesis-dr backup", "backup_s", "stored_bytes"),
        ("openssl -d | gunzip | mariadb (seed restore)", "seed_restore_s", None),
        ("myloader -t 2 (best tool)", "myloader_s", None),
        ("genesis-dr restore (+verify)", "restore_s", None),
    ]
    print_steps(out, rows)
    if "backup_s" in out:
        print(
            f"  backup peak RSS {out['backup_peak_rss_mb']} MB (+{out['backup_rss_increase_mb']} MB over a "
            f"{out['backup_rss_baseline_mb']} MB baseline; dump tools excluded); {out['stream_count']} streams, "
            f"plain {out['plain_bytes'] / mb:.1f} MB; KDF {out['kdf_wrap_s']} s"
        )
    if "restore_s" in out:
        print(
            f"  restore peak RSS {out['restore_peak_rss_mb']} MB; the checks as a pass of their own would take "
            f"{out['verify_pass_s_estimate']:.2f} s"
        )
    print_goals(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3306)
    parser.add_argument("--user", default="root", help="password, if needed, from MYSQL_PWD")
    parser.add_argument("--dbname", default="genesis_bench")
    common_arguments(parser, STEPS, size_mb=400)
    args = parser.parse_args(argv)
    emit(run(args), args, print_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
