"""Benchmark: point-in-time recovery of PostgreSQL, genesis-dr against pgBackRest, under a steady write load.

One run, on a throw-away cluster of our own that holds the foundation
benchmark's ``genesis_bench`` database (seeded by ``backup_postgres.seed``; the
machine's own server is never touched):

* a load thread commits ``--tps`` small rows a second (``pitr_load``: id, the
  statement time, and the commit time the server keeps with
  ``track_commit_timestamp``) from the start to the disaster;
* pgBackRest (Debian's package; a repository in the run's directory, zstd,
  ``process-max=2``, aes-256-cbc with a generated passphrase, WAL shipped by
  ``archive_command`` with ``archive_timeout``): ``backup --type=full``, time
  and stored size (the backup and the WAL it needs);
* ours, in this process: a physical full (``core.operations.backup_source``),
  then ``core.operations.capture_source`` in a thread for the rest of the run;
* a 1 % change (1 % of every table's rows, a contiguous id range), then our
  incremental (the WAL since the full) and pgBackRest's ``--type=incr``;
* ``--load-s`` more seconds of load; the load stops, the disaster is declared
  at D. What each tool holds at D is all a restore may use: our vault is
  copied (hard links) and the log pieces shipped after D are dropped from the
  copy; pgBackRest's newest archived WAL at D is read from ``pg_stat_archiver``;
* RPO: our restore of the copy to D (``core.chains.plan_chain_restore`` +
  ``core.operations.restore_chain_plan``) into a new data directory on a free
  port; rpo_s = D - commit time of the newest row found there. pgBackRest's RPO
  is computed, not restored: D - commit time of the newest row whose commit
  lies in the archived WAL at D (PostgreSQL refuses to start when a
  ``recovery_target_time`` lies past the archived WAL, so that restore would fail);
* PITR restore time (RTO): ours (above), and ``pgbackrest restore --type=time
  --target=D`` after ``pgbackrest check`` archived the WAL up to D, each until
  the recovered server is promoted and accepts writes.

Usage::

    python benchmarks/pitr.py [--db-mb 1024] [--json]
    python benchmarks/pitr.py --db-mb 64 --settle-s 15 --load-s 45   # a quick check

The seeded cluster is kept as a template (``<workdir or tmp>/genesis-bench-pitr-<MB>mb``)
for the next run; everything else (clusters, repositories, vault) is stopped
and removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import bisect
import glob
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import backup_postgres  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    CpuMeter,
    PeakRSS,
    Rounds,
    add_goals,
    as_user,
    bench_keyring,
    bench_vault,
    emit,
    ensure_debian_packages,
    free_port,
    log,
    print_steps,
    ratio,
    timed,
    tree_bytes,
)

DBNAME = "genesis_bench"
STANZA = "bench"
TEMPLATE_VERSION = 1
SIDES = ("pgbackrest", "ours")
WAL_SEGMENT = 16 << 20  # initdb's default, which the template uses
GOALS = {
    # label: (value key, limit, True if the value must stay strictly below the limit)
    "RPO (s)": ("rpo_s", 60.0, False),
    "backup / pgBackRest backup": ("backup_vs_pgbackrest", 1.0, False),
    "PITR restore / pgBackRest restore": ("pitr_restore_vs_pgbackrest", 1.0, False),
    "incremental / full bytes (1 % change)": ("incremental_vs_full", 0.05, False),
    "peak RSS of our process (MB)": ("peak_rss_mb", 200.0, True),
}

# Settings of every cluster of the run, in postgresql.conf (so restored clusters have them too).
# track_commit_timestamp: a restored row's commit time comes from the server, not from our clock.
CLUSTER_CONF = """
# genesis-dr benchmarks/pitr.py
listen_addresses = '127.0.0.1'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
track_commit_timestamp = on
"""

LOAD_TABLE = """
CREATE TABLE pitr_load (id bigserial PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                        note text NOT NULL);
"""

# The 1 % change: one column of the first 1 % of each table's rows (a contiguous id range).
CHANGE = {
    "orders": "quantity = quantity + 1",
    "documents": "title = title || ' (revised)'",
    "events": "payload = payload || '{\"revised\": true}'",
    "blobs": "name = name || '.v2'",
}


def pg_bindir() -> Path:
    """The newest installed PostgreSQL server's binaries (Debian's layout)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql; apt-get install postgresql")
    return Path(found[-1]).parent


def run_as_postgres(argv: list[str], what: str, **kwargs) -> str:
    proc = subprocess.run(as_user("postgres", argv), capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")
    return proc.stdout


def lsn_int(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# -- our own throw-away clusters ---------------------------------------------------------------


class Cluster:
    """A PostgreSQL cluster of this run, run as the postgres user (the server refuses root)."""

    started: list[Cluster] = []  # every cluster this process started: stopped on the way out

    def __init__(self, datadir: Path, port: int) -> None:
        self.datadir, self.port = datadir, port
        self.logfile = datadir.parent / f"{datadir.name}.log"

    def start(self, options: dict[str, str] | None = None, wait: bool = True) -> None:
        """Start the server; ``options`` are ``-c`` settings of this start only (not in the data directory,
        so backups and restored clusters never inherit them)."""
        opts = [f"-p {self.port}"] + [shlex.quote(f"-c{k}={v}") for k, v in (options or {}).items()]
        argv = [str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile), "-o", " ".join(opts)]
        Cluster.started.append(self)
        run_as_postgres([*argv, *(["-w", "-t", "600"] if wait else ["-W"]), "start"], f"starting {self.datadir}")

    def pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True

    def stop(self, mode: str = "fast") -> None:
        if self.pid() is None:
            return
        argv = [str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "120", "stop"]
        proc = subprocess.run(as_user("postgres", argv), capture_output=True, text=True)
        if proc.returncode != 0 and self.pid() is not None:
            try:  # pg_ctl could not stop it: end the postmaster we started, by its own pid
                os.kill(self.pid(), 9)
            except (OSError, TypeError):
                pass

    def connect(self, dbname: str = DBNAME, timeout: int = 5):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True, connect_timeout=timeout
        )

    def query(self, sql: str, params=None, dbname: str = DBNAME):
        with self.connect(dbname) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def wait_writable(self, timeout: float = 1800.0) -> None:
        """Until the server accepts connections and is out of recovery (promoted): it accepts writes."""
        import psycopg

        started = time.monotonic()
        deadline = started + timeout
        seen = False
        while True:
            try:
                with self.connect(timeout=2) as conn:
                    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return
            except psycopg.OperationalError:
                pass
            # A server that was up and went away failed its recovery (its log says why); one that never
            # wrote its pid file within a minute never started.
            seen = seen or self.alive()
            if not self.alive() and (seen or time.monotonic() - started > 60):
                tail = self.logfile.read_text(errors="replace").splitlines()[-5:] if self.logfile.exists() else []
                raise SystemExit(f"the cluster in {self.datadir} is not running: " + " | ".join(tail))
            if time.monotonic() > deadline:
                raise SystemExit(f"the cluster in {self.datadir} did not accept writes within {timeout:.0f} s")
            time.sleep(0.05)


def stop_all_clusters() -> None:
    for cluster in reversed(Cluster.started):
        try:
            cluster.stop("immediate")
        except Exception as exc:  # noqa: BLE001 - every cluster gets its chance to stop
            log(f"could not stop the cluster in {cluster.datadir}: {exc}")


def init_cluster(datadir: Path) -> None:
    datadir.parent.mkdir(parents=True, exist_ok=True)
    shutil.chown(datadir.parent, "postgres")
    run_as_postgres(
        [
            str(pg_bindir() / "initdb"),
            "-D",
            str(datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--no-instructions",
        ],
        "initdb",
    )
    with open(datadir / "postgresql.conf", "a") as fh:
        fh.write(CLUSTER_CONF)


def template_cluster(cache: Path, size_mb: int, reseed: bool) -> Path:
    """The seeded, stopped data directory this size's runs copy (seeded on first use)."""
    marker = cache / "marker.json"
    want = {
        "template": TEMPLATE_VERSION,
        "seed_version": backup_postgres.SEED_VERSION,
        "size_mb": size_mb,
        "bindir": str(pg_bindir()),
    }
    datadir = cache / "data"
    if not reseed and datadir.is_dir() and marker.is_file() and json.loads(marker.read_text()) == want:
        log(f"reusing the seeded cluster {datadir}")
        return datadir
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    cache.chmod(0o755)
    init_cluster(datadir)
    cluster = Cluster(datadir, free_port())
    # Seeding only: durability does not matter until the clean shutdown below writes everything out.
    cluster.start({"fsync": "off", "synchronous_commit": "off", "max_wal_size": "4GB"})
    try:
        server = backup_postgres.Server("127.0.0.1", cluster.port, "postgres")
        backup_postgres.seed(server, DBNAME, size_mb)
        server.sql(DBNAME, LOAD_TABLE)
        server.sql(DBNAME, "CHECKPOINT")
    finally:
        cluster.stop("fast")
        Cluster.started.remove(cluster)
    subprocess.run(["sync"], check=False)
    marker.write_text(json.dumps(want))
    return datadir


# -- the write load ---------------------------------------------------------------------------


class Load(threading.Thread):
    """Commits ``tps`` one-row transactions a second; remembers each row's id, the moment its commit
    returned, and the WAL write position right after it (above its commit record)."""

    def __init__(self, cluster: Cluster, tps: float) -> None:
        super().__init__(name="pitr-load", daemon=True)
        self.cluster, self.tps = cluster, tps
        self.rows: list[tuple[int, float, int]] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.late = 0  # transactions that started behind schedule (the machine could not keep up)

    def run(self) -> None:
        try:
            with self.cluster.connect() as conn:
                started, n = time.monotonic(), 0
                while not self.stop_event.is_set():
                    due = started + n / self.tps
                    wait = due - time.monotonic()
                    if wait > 0:
                        if self.stop_event.wait(wait):
                            break
                    elif wait < -0.5:
                        self.late += 1
                    row_id = conn.execute("INSERT INTO pitr_load (note) VALUES ('tick') RETURNING id").fetchone()[0]
                    acked = time.time()
                    written = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
                    self.rows.append((row_id, acked, lsn_int(written)))
                    n += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=30)
        if self.error is not None:
            raise SystemExit(f"the write load failed: {self.error}")


def newest_row(cluster: Cluster) -> tuple[int, datetime, int]:
    """(id, commit time, rows) of the newest load row in ``cluster``."""
    row = cluster.query(
        "SELECT id, pg_xact_commit_timestamp(xmin), (SELECT count(*) FROM pitr_load) FROM pitr_load "
        "ORDER BY id DESC LIMIT 1"
    )
    if not row:
        raise SystemExit(f"no load row in the cluster in {cluster.datadir}")
    return row[0][0], row[0][1], row[0][2]


def check_rows(cluster: Cluster, load: Load, newest_id: int, what: str) -> bool:
    """Every row the load committed up to the newest one found is there, and none after it."""
    expected = sum(1 for row_id, _, _ in load.rows if row_id <= newest_id)  # the template's table is empty
    count, top = cluster.query("SELECT count(*), max(id) FROM pitr_load")[0]
    ok = count == expected and top == newest_id
    if not ok:
        log(f"{what}: {count} load rows up to id {top}, expected {expected}")
    return ok


def segment_end(wal_file: str) -> int | None:
    """The LSN where the WAL segment a file name (segment, ``.partial``, ``.backup``) names ends."""
    if len(wal_file) < 24 or any(c not in "0123456789ABCDEF" for c in wal_file[:24]):
        return None  # a timeline history file
    return (int(wal_file[8:16], 16) << 32) + (int(wal_file[16:24], 16) + 1) * WAL_SEGMENT


class Exposure:
    """How old the newest restorable write is, sampled every second while the load runs: the same
    measure as the RPO at the disaster, over the whole window instead of one instant. A row is
    restorable by a tool once its commit's WAL (the load's WAL position after it) is below what the
    tool holds: the end of our newest log piece; the end of pgBackRest's newest archived segment."""

    def __init__(self, load: Load, source: Cluster, ours: Ours | None, pgbackrest: bool) -> None:
        self.load, self.source, self.ours, self.pgbackrest = load, source, ours, pgbackrest
        self.samples: dict[str, list[float]] = {"ours": [], "pgbackrest": []}

    def _age(self, covered: int, now: float) -> float | None:
        rows = self.load.rows[:]
        i = bisect.bisect_right([row[2] for row in rows], covered)
        return round(now - rows[i - 1][1], 2) if i else None

    def sample(self) -> None:
        now = time.time()
        if self.ours is not None:
            pieces = self.ours.vault.log_pieces("bench")
            if pieces:
                age = self._age(max(lsn_int(p.end["lsn"]) for p in pieces), now)
                if age is not None:
                    self.samples["ours"].append(age)
        if self.pgbackrest:
            archived = self.source.query("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            end = segment_end(archived) if archived else None
            age = self._age(end, now) if end is not None else None
            if age is not None:
                self.samples["pgbackrest"].append(age)

    def summarize(self, out: dict) -> None:
        for side, prefix in (("ours", ""), ("pgbackrest", "pgbackrest_")):
            values = self.samples[side]
            if values:
                out[f"{prefix}rpo_window"] = {
                    "max_s": max(values),
                    "median_s": round(statistics.median(values), 2),
                    "samples": len(values),
                }


# -- pgBackRest -------------------------------------------------------------------------------


class PgBackRest:
    """A throw-away pgBackRest repository and stanza for the source cluster, in ``root``."""

    def __init__(self, root: Path, source: Cluster, process_max: int) -> None:
        self.root, self.source = root, source
        self.repo = root / "repo"
        for path in (root, self.repo, root / "lock", root / "spool"):
            path.mkdir(parents=True, exist_ok=True)
            shutil.chown(path, "postgres")
        self.conf = root / "pgbackrest.conf"
        # The passphrase goes into the 0600 file only (never argv, never a log line).
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(
                "[global]\n"
                f"repo1-path={self.repo}\n"
                "repo1-cipher-type=aes-256-cbc\n"
                f"repo1-cipher-pass={secrets.token_urlsafe(32)}\n"
                "repo1-retention-full=2\n"
                "compress-type=zst\n"
                f"process-max={process_max}\n"
                # An immediate checkpoint, as pg_basebackup --checkpoint=fast: neither tool waits out a spread one.
                "start-fast=y\n"
                f"lock-path={root / 'lock'}\n"
                f"spool-path={root / 'spool'}\n"
                "log-level-console=warn\n"
                "log-level-file=off\n"
                f"\n[{STANZA}]\n"
                f"pg1-path={source.datadir}\n"
                f"pg1-port={source.port}\n"
            )
        shutil.chown(self.conf, "postgres")

    def argv(self, *args: str) -> list[str]:
        return as_user("postgres", ["pgbackrest", f"--config={self.conf}", f"--stanza={STANZA}", *args])

    @property
    def archive_command(self) -> str:
        return f"pgbackrest --config={self.conf} --stanza={STANZA} archive-push %p"

    def run(self, *args: str) -> tuple[float, str]:
        return timed(self.argv(*args))

    def info(self) -> dict:
        return json.loads(self.run("info", "--output=json")[1])[0]

    def newest_backup(self) -> dict:
        return self.info()["backup"][-1]

    def wal_bytes(self, first: str, last: str) -> int:
        """Stored bytes of the archived WAL segments ``first``..``last`` (file names sort in WAL order)."""
        total = 0
        for path in self.repo.glob(f"archive/{STANZA}/*/*/*"):
            if first[:24] <= path.name[:24] <= last[:24] and len(path.name) > 24 and path.name[24] == "-":
                total += path.stat().st_size
        return total

    def restore(self, datadir: Path, target: datetime) -> None:
        datadir.mkdir(mode=0o700)
        shutil.chown(datadir, "postgres")
        self.run(
            "restore",
            f"--pg1-path={datadir}",
            "--type=time",
            f"--target={target.isoformat(sep=' ')}",
            "--target-action=promote",
            "--archive-mode=off",
        )


# -- ours -------------------------------------------------------------------------------------


class Ours:
    """genesis-dr in this process: physical full, capture in a thread, incremental, chain restore."""

    def __init__(self, workdir: Path, source: Cluster, out: dict, rpo_seconds: int | None) -> None:
        self.workdir, self.source, self.out = workdir, source, out
        self.vault_path = workdir / "vault"
        self.keyring = bench_keyring(out)
        self.vault = bench_vault(self.vault_path, out)
        self.rpo_seconds = rpo_seconds
        self.capture_thread: threading.Thread | None = None
        self.capture_stop = threading.Event()
        self.capture_error: BaseException | None = None
        self.capture_result: dict | None = None
        os.environ["GENESIS_DR_SPOOL_DIR"] = str(workdir / "spool")

    def config(self, **overrides):
        from core.sources import PostgresSourceConfig

        fields = dict(
            name="bench",
            host="127.0.0.1",
            port=self.source.port,
            user="postgres",
            database=DBNAME,
            backup_method="physical",
        )
        if self.rpo_seconds is not None:
            fields["rpo_seconds"] = self.rpo_seconds
        fields.update(overrides)
        return PostgresSourceConfig(**fields)

    def engine(self, **overrides):
        from core.engines import engine_for

        return engine_for(self.config(**overrides))

    def backup(self, backup_type: str):
        from core.operations import backup_source

        return backup_source(self.vault, self.keyring, self.engine(), backup_type)

    def start_capture(self) -> None:
        from core.operations import capture_source

        engine = self.engine()

        def capture() -> None:
            try:
                self.capture_result = capture_source(
                    self.vault, self.keyring, engine, self.capture_stop, progress=lambda m: log(f"  capture: {m}")
                )
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                self.capture_error = exc

        self.capture_thread = threading.Thread(target=capture, name="pitr-capture", daemon=True)
        self.capture_thread.start()

    def check_capture(self) -> None:
        if self.capture_error is not None:
            raise SystemExit(f"our capture failed: {self.capture_error}")

    def stop_capture(self) -> None:
        if self.capture_thread is None:
            return
        self.capture_stop.set()
        self.capture_thread.join(timeout=120)
        if self.capture_thread.is_alive():
            log("our capture did not stop within 120 s")
        self.capture_thread = None
        self.check_capture()

    def piece_bytes(self, seqs: list[int] | None = None) -> int:
        pieces = self.vault.log_pieces("bench")
        if seqs:
            lo, hi = seqs[0], seqs[-1]
            pieces = [p for p in pieces if lo <= p.seq <= hi]
        return sum(p.stream.stored_bytes for p in pieces)

    def snapshot(self, at: float) -> Path:
        """The vault as it was at ``at``: hard-linked copy, log pieces whose index was written later dropped
        (a piece exists once its index entry is written, the last thing ``ship`` does)."""
        copy = self.workdir / "vault-at-disaster"
        subprocess.run(["cp", "-al", str(self.vault_path), str(copy)], check=True)
        dropped = 0
        for path in (copy / "logs").rglob("*.json"):
            if path.stat().st_mtime > at:
                path.unlink()
                dropped += 1
        self.out["pieces_shipped_after_disaster"] = dropped
        return copy

    def restore(self, vault_path: Path, target: datetime, datadir: Path, port: int) -> tuple[dict, object]:
        """Plan and run the restore of ``vault_path`` to ``target`` into ``datadir``; returns the plan and report."""
        from core.chains import plan_chain_restore
        from core.repository.vault import Vault
        from core.restoring import restore_chain_plan
        from core.storage.local import LocalStore

        vault = Vault.open(LocalStore(vault_path))
        engine = self.engine(port=port, data_dir=str(datadir))
        plan = plan_chain_restore(
            vault.list_backups("bench"),
            vault.log_pieces("bench"),
            "bench",
            "postgres",
            target,
            datetime.now(UTC),
            target=engine.describe(),
            target_has_data=engine.has_data(),
            force=False,
        ).to_dict()
        started = time.monotonic()
        report = restore_chain_plan(
            vault,
            self.keyring,
            plan,
            engine,
            progress=lambda m: log(f"  restore +{time.monotonic() - started:.2f}s: {m}"),
        )
        return plan, report


# -- the run ----------------------------------------------------------------------------------


def change_one_percent(cluster: Cluster) -> int:
    """Update the first 1 % of every table's rows; returns the rows changed."""
    changed = 0
    with cluster.connect() as conn:
        for table, assignment in CHANGE.items():
            top = conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
            cur = conn.execute(f"UPDATE {table} SET {assignment} WHERE id <= %s", (max(1, top // 100),))
            changed += cur.rowcount
    return changed


def run(args: argparse.Namespace) -> dict:
    sides = set(args.sides.split(","))
    if sides - set(SIDES):
        raise SystemExit(f"--sides: choose from {','.join(SIDES)}")
    if "pgbackrest" in sides:
        ensure_debian_packages({"pgbackrest": "pgbackrest"})
    base = Path(args.workdir or tempfile.gettempdir())
    template = template_cluster(base / f"genesis-bench-pitr-{args.db_mb}mb", args.db_mb, args.reseed)
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-pitr-", dir=args.workdir))
    workdir.chmod(0o777)  # the postgres user creates data directories and logs here
    out: dict = {
        "dbname": DBNAME,
        "db_mb_requested": args.db_mb,
        "tps": args.tps,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sides": sorted(sides),
    }
    load: Load | None = None
    ours: Ours | None = None
    try:
        log("copying the seeded cluster")
        source = Cluster(workdir / "source", free_port())
        subprocess.run(["cp", "-a", str(template), str(source.datadir)], check=True)
        pgbr = PgBackRest(workdir / "pgbackrest", source, args.process_max) if "pgbackrest" in sides else None
        options = {"max_wal_size": "2GB"}
        if pgbr:
            options.update(
                archive_mode="on", archive_command=pgbr.archive_command, archive_timeout=str(args.archive_timeout)
            )
        source.start(options)
        out["server_version"] = source.query("SHOW server_version")[0][0]
        out["db_bytes"] = source.query("SELECT pg_database_size(current_database())")[0][0]
        # A physical backup holds the whole cluster: the other databases (postgres, templates) too.
        out["cluster_bytes"] = source.query("SELECT sum(pg_database_size(datname))::bigint FROM pg_database")[0][0]
        rounds = Rounds(CpuMeter(lambda: [p for p in [source.pid()] if p]))
        rss: dict[str, float] = {}

        if pgbr:
            log("pgbackrest stanza-create")
            pgbr.run("stanza-create")
        load = Load(source, args.tps)
        load.start()
        log(f"write load started: {args.tps} tx/s")
        time.sleep(2)

        if pgbr:
            log("pgbackrest backup --type=full")
            with rounds.sample("pgbackrest_backup_s") as r:
                r["s"] = pgbr.run("backup", "--type=full")[0]
            full = pgbr.newest_backup()
            out["pgbackrest_backup_repo_bytes"] = full["info"]["repository"]["delta"]
            out["pgbackrest_backup_wal_bytes"] = pgbr.wal_bytes(full["archive"]["start"], full["archive"]["stop"])
            out["pgbackrest_stored_bytes"] = out["pgbackrest_backup_repo_bytes"] + out["pgbackrest_backup_wal_bytes"]
            out["pgbackrest_repo_disk_bytes_after_full"] = tree_bytes(pgbr.repo)  # all WAL archived so far too
            out["pgbackrest_version"] = timed(["pgbackrest", "version"])[1]
        if "ours" in sides:
            ours = Ours(workdir, source, out, args.rpo_seconds)
            log("genesis-dr physical full backup (in process)")
            with PeakRSS() as peak, rounds.sample("backup_s") as r:
                started = time.monotonic()
                manifest = ours.backup("full")
                r["s"] = time.monotonic() - started
            rss["backup"] = peak.peak_mb
            out["stored_bytes"] = out["full_bytes"] = manifest.stored_bytes
            out["plain_bytes"] = manifest.plain_bytes
            out["full_position"] = manifest.position
            out["vault_disk_bytes_after_full"] = tree_bytes(ours.vault_path)
            out["tool_versions"] = manifest.tool_versions
            log("genesis-dr capture started (thread)")
            ours.start_capture()

        def steady(seconds: float, phase: str) -> None:
            log(f"steady load for {seconds:.0f} s")
            with PeakRSS() as peak:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    time.sleep(1)
                    exposure.sample()
                    if ours:
                        ours.check_capture()
                    if load.error:
                        raise SystemExit(f"the write load failed: {load.error}")
            if ours:  # our capture thread runs meanwhile; without it there is nothing of ours to weigh
                rss[phase] = peak.peak_mb

        exposure = Exposure(load, source, ours, pgbr is not None)
        steady(args.settle_s, "capture")
        log("1 % change")
        with rounds.sample("change_s") as r:
            started = time.monotonic()
            out["changed_rows"] = change_one_percent(source)
            r["s"] = time.monotonic() - started
        if ours:
            log("genesis-dr incremental backup (in process)")
            with PeakRSS() as peak, rounds.sample("incremental_backup_s") as r:
                started = time.monotonic()
                incremental = ours.backup("incremental")
                r["s"] = time.monotonic() - started
            rss["incremental"] = peak.peak_mb
            out["incremental_log"] = incremental.log
            seqs = (incremental.log or {}).get("pieces") or []
            out["incremental_bytes"] = incremental.stored_bytes + (ours.piece_bytes(seqs) if seqs else 0)
        if pgbr:
            log("pgbackrest backup --type=incr")
            with rounds.sample("pgbackrest_incremental_backup_s") as r:
                r["s"] = pgbr.run("backup", "--type=incr")[0]
            incr = pgbr.newest_backup()
            out["pgbackrest_incremental_bytes"] = incr["info"]["repository"]["delta"] + pgbr.wal_bytes(
                incr["archive"]["start"], incr["archive"]["stop"]
            )
        steady(args.load_s, "steady")

        # -- the disaster ------------------------------------------------------------------
        exposure.summarize(out)
        load.finish()
        disaster_epoch = time.time()
        disaster = utc(disaster_epoch)
        out["disaster_at"] = disaster.isoformat()
        out["load_rows"], out["load_late"] = len(load.rows), load.late
        log(f"disaster declared at {disaster.isoformat()} ({len(load.rows)} rows written by the load)")
        if pgbr:
            row = source.query("SELECT last_archived_wal, last_archived_time FROM pg_stat_archiver")[0]
            archived, out["pgbackrest_last_archived_at"] = row[0], row[1].isoformat()
            if row[1].timestamp() > disaster_epoch:  # archived in the milliseconds since D: not at D
                log("pgBackRest archived a segment just after the disaster; its RPO is understated by one segment")
            end = segment_end(archived)
            inside = [row for row in load.rows if row[2] <= end]
            out["pgbackrest_last_archived_wal_at_disaster"] = archived
            if inside:
                committed = source.query(
                    "SELECT pg_xact_commit_timestamp(xmin) FROM pitr_load WHERE id = %s", (inside[-1][0],)
                )
                out["pgbackrest_rpo_s"] = round(disaster_epoch - committed[0][0].timestamp(), 2)
            else:  # nothing the load wrote was archived: at least as old as the load
                out["pgbackrest_rpo_s"] = round(disaster_epoch - load.rows[0][1], 2)
        # Ours after pgBackRest's reading (one query): the copy is dated by D itself, whatever it takes.
        snapshot = ours.snapshot(disaster_epoch) if ours else None
        if ours:
            ours.stop_capture()
            out["capture"] = ours.capture_result
        if pgbr:
            # A recovery to a time stops at the first commit after it; without one PostgreSQL refuses to
            # end recovery ("recovery ended before configured recovery target was reached"). One row
            # committed after the disaster marks that end; neither restore may contain it.
            time.sleep(0.01)
            source.query("INSERT INTO pitr_load (note) VALUES ('after the disaster')")
            log("pgbackrest check (archives the WAL past the disaster, for the timed restore)")
            pgbr.run("check")
        source.stop("fast")

        # -- restores ----------------------------------------------------------------------
        if ours:
            target = Cluster(workdir / "ours-restore", free_port())
            target.logfile = target.datadir / "genesis-dr-server.log"  # where the engine's server logs
            Cluster.started.append(target)  # the engine starts it; we stop it
            log(f"genesis-dr restore to {disaster.isoformat()} into {target.datadir} (port {target.port})")
            with PeakRSS() as peak, rounds.sample("pitr_restore_s") as r:
                started = time.monotonic()
                plan, report = ours.restore(snapshot, disaster, target.datadir, target.port)
                target.wait_writable()
                r["s"] = time.monotonic() - started
            rss["restore"] = peak.peak_mb
            out["plan_pieces"], out["plan_data_loss_s"] = len(plan["pieces"]), plan["data_loss_s"]
            out["recovery_point"], out["restore_unproven"] = report.recovery_point, report.unproven
            row_id, committed, _ = newest_row(target)
            out["rpo_s"] = round(disaster_epoch - committed.timestamp(), 2)
            out["newest_restored_row"] = {"id": row_id, "committed_at": committed.isoformat()}
            out["restored_rows_exact"] = check_rows(target, load, row_id, "our restore")
            target.stop("fast")
        if pgbr:
            target = Cluster(workdir / "pgbackrest-restore", free_port())
            log(f"pgbackrest restore --type=time to {disaster.isoformat()} into {target.datadir}")
            with rounds.sample("pgbackrest_restore_s") as r:
                started = time.monotonic()
                pgbr.restore(target.datadir, disaster)
                target.start(wait=False)
                target.wait_writable()
                r["s"] = time.monotonic() - started
            row_id, committed, _ = newest_row(target)
            out["pgbackrest_restore_newest_row"] = {
                "id": row_id,
                "committed_at": committed.isoformat(),
                "age_at_disaster_s": round(disaster_epoch - committed.timestamp(), 3),
            }
            out["pgbackrest_restored_rows_exact"] = check_rows(target, load, row_id, "pgBackRest's restore")
            target.stop("fast")
        rounds.summarize(out, 1)
        if rss:
            out["peak_rss_mb_by_phase"] = rss
            out["peak_rss_mb"] = max(rss.values())
    finally:
        if load is not None and load.is_alive():
            load.stop_event.set()
            load.join(timeout=10)
        if ours is not None:
            ours.capture_stop.set()
            if ours.capture_thread is not None:
                ours.capture_thread.join(timeout=60)
        stop_all_clusters()
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    add_ratios(out)
    return out


def add_ratios(out: dict) -> None:
    ratio(out, "backup_vs_pgbackrest", "backup_s", "pgbackrest_backup_s")
    ratio(out, "stored_vs_pgbackrest_bytes", "stored_bytes", "pgbackrest_stored_bytes")
    ratio(out, "pitr_restore_vs_pgbackrest", "pitr_restore_s", "pgbackrest_restore_s")
    ratio(out, "incremental_vs_full", "incremental_bytes", "full_bytes")
    add_goals(out, GOALS)


def print_text(out: dict) -> None:
    mb = 1 << 20
    print(
        f"cluster with {out['dbname']}: {out['db_bytes'] / mb:.0f} MB (pg_database_size), PostgreSQL "
        f"{out.get('server_version')}, {out['cpus']} CPUs; load {out['tps']} tx/s ({out.get('load_rows')} rows, "
        f"{out.get('load_late', 0)} late); one round"
    )
    print_steps(
        out,
        [
            ("pgbackrest backup --type=full", "pgbackrest_backup_s", "pgbackrest_stored_bytes"),
            ("genesis-dr physical full backup", "backup_s", "stored_bytes"),
            ("1 % change (UPDATE)", "change_s", None),
            ("genesis-dr incremental", "incremental_backup_s", "incremental_bytes"),
            ("pgbackrest backup --type=incr", "pgbackrest_incremental_backup_s", "pgbackrest_incremental_bytes"),
            ("genesis-dr PITR restore (until writable)", "pitr_restore_s", None),
            ("pgbackrest restore --type=time (until writable)", "pgbackrest_restore_s", None),
        ],
    )
    if "rpo_s" in out:
        row = out["newest_restored_row"]
        print(
            f"  RPO ours: {out['rpo_s']} s (disaster {out['disaster_at']}, newest restored row {row['id']} committed "
            f"{row['committed_at']}; rows exact: {out['restored_rows_exact']}; plan said {out['plan_data_loss_s']} s)"
        )
    if "pgbackrest_rpo_s" in out:
        print(
            f"  RPO pgBackRest: {out['pgbackrest_rpo_s']} s (computed: newest archived WAL at the disaster "
            f"{out['pgbackrest_last_archived_wal_at_disaster']})"
        )
    for side, key in (("ours", "rpo_window"), ("pgBackRest", "pgbackrest_rpo_window")):
        if key in out:
            w = out[key]
            print(
                f"  age of the newest restorable write while the load ran ({side}, {w['samples']} samples, "
                f"one a second): median {w['median_s']} s, max {w['max_s']} s"
            )
    if "peak_rss_mb_by_phase" in out:
        phases = ", ".join(f"{k} {v}" for k, v in out["peak_rss_mb_by_phase"].items())
        print(f"  peak RSS of our process by phase (MB): {phases}")
    for goal in out.get("goals", {}).values():
        verdict = "met   " if goal["pass"] else "missed"
        limit = f"< {goal['goal']}" if goal["label"].endswith("(MB)") else f"<= {goal['goal']}"
        print(f"  {verdict} {goal['label']:40s} {goal['value']:>8}  (goal {limit})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--db-mb", "--size-mb", dest="db_mb", type=int, default=1024, help="size of genesis_bench")
    parser.add_argument("--tps", type=float, default=20.0, help="write load: transactions a second")
    parser.add_argument("--settle-s", type=float, default=30.0, help="load between the full and the 1 %% change")
    parser.add_argument("--load-s", type=float, default=90.0, help="load between the incremental and the disaster")
    parser.add_argument("--archive-timeout", type=int, default=60, help="pgBackRest side: archive_timeout (s)")
    parser.add_argument("--process-max", type=int, default=2, help="pgBackRest process-max")
    parser.add_argument("--rpo-seconds", type=int, help="our capture's rpo_seconds (default: the config's)")
    parser.add_argument("--sides", default=",".join(SIDES), help="pgbackrest,ours (default both)")
    parser.add_argument("--reseed", action="store_true", help="seed the template cluster again")
    parser.add_argument("--workdir", help="where the template, clusters, repository and vault go (default: tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (clusters stopped)")
    args = parser.parse_args(argv)
    # A kill (timeout, CI cancel) unwinds like Ctrl-C, so run()'s cleanup stops every cluster we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    emit(run(args), args, print_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
