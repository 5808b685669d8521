"""Benchmark: replication of a local vault to S3 against rclone, and an S3-vault backup against a local one.

In one run, on one moto server (its own process: ``moto_server``, real HTTP on
127.0.0.1), round after round:

* **replicate** - ``core.replication.replicate`` of a local vault holding about
  ``--size-mb`` of backups (a files backup of incompressible data, so stored
  bytes = data bytes) into a fresh bucket, in a child process (startup included)
  whose peak RSS (its VmHWM) is recorded and whose RSS is sampled, to show it
  stays flat; verified as in production: each object checked against its
  manifest's SHA-256 before it is sent, and the bucket's own MD5 of what it
  stored (the ETag of the conditional PUT) compared with the bytes sent;
* **rclone** - ``rclone copy`` of the same vault directory into another fresh
  bucket on the same server (Debian's ``rclone``, installed when missing;
  configured through ``RCLONE_CONFIG_MOTO_*``), its peak RSS (VmHWM) too;
* **backups** - a full backup of the 1 GB PostgreSQL database of
  ``backup_postgres.py`` (seeded the same way when missing) into a local vault and
  into an S3 vault on the same moto server (``core.operations.backup_source`` in
  this process, peak RSS of each).

Buckets are emptied after each round (moto keeps objects in its own memory).
Goals (issue 9): replicate / rclone <= 1.0; replication peak RSS < 250 MB and
flat; S3-vault backup / local-vault backup <= 1.2. Usage::

    python benchmarks/replicate.py [--size-mb 1024] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402 - after the path set-up
    Rounds,
    add_goals,
    bench_keyring,
    chosen_steps,
    common_arguments,
    emit,
    ensure_debian_packages,
    free_port,
    log,
    measured_backup,
    print_goals,
    print_steps,
    ratio,
)

STEPS = ("replicate", "rclone", "local_backup", "s3_backup")
REGION = "us-east-1"
MB = 1 << 20

# moto accepts any key; these are not secrets.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")


# -- moto ----------------------------------------------------------------------------------


class Moto:
    """A moto server in its own process (in-process moto would share our GIL and memory)."""

    def __init__(self, workdir: Path) -> None:
        binary = Path(sys.executable).with_name("moto_server")
        if not binary.exists():
            raise SystemExit("moto_server is not installed in this environment; run 'make bootstrap'")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT
        )
        import boto3

        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client.list_buckets()
                break
            except Exception:  # not up yet
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit(f"moto_server did not start; see {workdir / 'moto.log'}") from None
                time.sleep(0.3)

    def bucket(self, what: str) -> str:
        name = f"bench-{what}-{uuid.uuid4().hex[:8]}"
        self.client.create_bucket(Bucket=name)
        return name

    def drop(self, bucket: str) -> None:
        """Empty and delete ``bucket`` (moto holds objects in memory)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        self.client.delete_bucket(Bucket=bucket)

    def bucket_bytes(self, bucket: str) -> tuple[int, int]:
        count = size = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                count, size = count + 1, size + obj["Size"]
        return count, size

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def s3_store(endpoint: str, bucket: str, prefix: str = "vault"):
    from core.storage.retry import RetryingStore
    from core.storage.s3 import S3Store

    return RetryingStore(S3Store(bucket=bucket, prefix=prefix, region=REGION, endpoint_url=endpoint))


# -- the replicated vault ----------------------------------------------------------------------


def replication_vault(workdir: Path, size_mb: int, keyring) -> tuple[Path, int, int]:
    """A local vault holding one files backup of ``size_mb`` of incompressible data; (path, objects, bytes)."""
    from core.engines import engine_for
    from core.operations import backup_source
    from core.repository.vault import Vault
    from core.sources import FilesSourceConfig
    from core.storage.local import LocalStore

    data = workdir / "replicated-data"
    data.mkdir()
    left, n = size_mb * MB, 0
    while left > 0:  # 16 MiB files of random bytes: zstd stores them as they are
        size = min(left, 16 * MB)
        (data / f"blob-{n:04d}.bin").write_bytes(os.urandom(size))
        left, n = left - size, n + 1
    vault_dir = workdir / "replicated-vault"
    vault = Vault.open(LocalStore(vault_dir), create=True)
    log(f"backing up {size_mb} MB of random data into the local vault to replicate")
    backup_source(vault, keyring, engine_for(FilesSourceConfig(name="bench-files", root=str(data))), "full")
    shutil.rmtree(data)
    files = [p for p in vault_dir.rglob("*") if p.is_file() and not p.name.startswith(".tmp")]
    return vault_dir, len(files), sum(p.stat().st_size for p in files)


def _vm_hwm_mb(pid: int) -> float | None:
    """Peak RSS of process ``pid`` so far (the kernel's VmHWM, reset by exec), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return None


def run_child(argv: list[str], env: dict | None = None) -> tuple[float, float, str]:
    """Run a process; (seconds, its peak RSS in MB, stdout).

    The peak is the child's own VmHWM, read every 20 ms while it runs: ``wait4``'s ``ru_maxrss`` would also
    count the pages it shared with this (large) process between fork and exec.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        time.sleep(0.005)  # let it exec, so the first sample is the new program's
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _vm_hwm_mb(proc.pid) or 0.0)
            time.sleep(0.02)
        seconds = time.monotonic() - started
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} ... failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    return seconds, round(peak, 1), stdout


def child_replicate(args: argparse.Namespace) -> int:
    """In the child process: replicate the vault into the bucket; print the report and RSS samples as JSON."""
    from core.replication import replicate
    from core.repository.vault import Vault
    from core.storage.local import LocalStore

    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(0.25):
            with open("/proc/self/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
            samples.append((round(time.monotonic() - started, 2), round(rss / 1024, 1)))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    report = replicate(
        Vault.open(LocalStore(args.child_vault)),
        s3_store(args.child_endpoint, args.child_bucket),
        name="bench",
        max_lag_seconds=None,
    )
    stop.set()
    thread.join()
    print(json.dumps({"report": report.to_dict(), "rss": samples, "vm_hwm_mb": _vm_hwm_mb(os.getpid())}))
    return 0


def rss_flatness(samples: list[list[float]]) -> dict:
    """Median RSS of the second quarter of the run against the last quarter: flat memory keeps them equal."""
    if len(samples) < 8:
        return {}
    values = [rss for _t, rss in samples]
    q = len(values) // 4
    early, late = sorted(values[q : 2 * q]), sorted(values[3 * q :])
    return {"early_mb": early[len(early) // 2], "late_mb": late[len(late) // 2]}


# -- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    steps = chosen_steps(args, STEPS)
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-replicate-", dir=args.workdir))
    out: dict = {"size_mb_requested": args.size_mb, "cpus": os.cpu_count(), "python": platform.python_version()}
    if "rclone" in steps:
        ensure_debian_packages({"rclone": "rclone"})
        out["rclone_version"] = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.split(
            "\n"
        )[0]
    keyring = bench_keyring(out)
    moto = Moto(workdir)
    rounds = Rounds()
    try:
        vault_dir = None
        if steps & {"replicate", "rclone"}:
            vault_dir, out["objects"], out["bytes"] = replication_vault(workdir, args.size_mb, keyring)
            log(f"vault to replicate: {out['objects']} objects, {out['bytes'] / MB:.0f} MB")
        pg = _postgres(args, out) if steps & {"local_backup", "s3_backup"} else None
        # The endpoint is plain HTTP; rclone's AWS SDK refuses to start when AWS_CA_BUNDLE is set (as on machines
        # with a custom CA), so it goes, as does any rclone.conf of the user's.
        rclone_env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"} | dict(
            RCLONE_CONFIG=str(workdir / "rclone.conf"),
            RCLONE_CONFIG_MOTO_TYPE="s3",
            RCLONE_CONFIG_MOTO_PROVIDER="Other",
            RCLONE_CONFIG_MOTO_ENDPOINT=moto.endpoint,
            RCLONE_CONFIG_MOTO_ACCESS_KEY_ID="testing",
            RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY="testing",
            RCLONE_CONFIG_MOTO_REGION=REGION,
        )
        for round_no in range(1, args.repeat + 1):
            log(f"round {round_no} of {args.repeat}")

            def our_replication() -> None:
                bucket = moto.bucket("replica")
                log("genesis-dr replicate (child process) -> S3 on moto")
                with rounds.sample("replicate_s") as r:
                    r["s"], rss, stdout = run_child(
                        [
                            sys.executable, __file__, "--child-replicate", "--child-vault", str(vault_dir),
                            "--child-bucket", bucket, "--child-endpoint", moto.endpoint,
                        ]
                    )  # fmt: skip
                result = json.loads(stdout)
                out.setdefault("replicate_peak_rss_mb_rounds", []).append(max(rss, result["vm_hwm_mb"]))
                out.setdefault("replicate_rss_flat_rounds", []).append(rss_flatness(result["rss"]))
                report = result["report"]
                assert report["in_sync"] and report["bytes_copied"] >= out["bytes"] - 4096, report
                out["replicate_objects_verified"] = report["objects_verified"]
                out["replicate_verified_by_store_md5"] = report["verified_by_store_md5"]
                out.setdefault("replicate_in_process_s_rounds", []).append(report["seconds"])
                out["replicate_bucket_objects"], _ = moto.bucket_bytes(bucket)
                moto.drop(bucket)

            def rclone_copy() -> None:
                bucket = moto.bucket("rclone")
                log("rclone copy -> S3 on moto")
                with rounds.sample("rclone_s") as r:
                    r["s"], rss, _ = run_child(
                        ["rclone", "copy", str(vault_dir), f"moto:{bucket}/vault", "--s3-no-check-bucket"],
                        env=rclone_env,
                    )
                out.setdefault("rclone_peak_rss_mb_rounds", []).append(rss)
                out["rclone_bucket_objects"], _ = moto.bucket_bytes(bucket)
                moto.drop(bucket)

            # Alternate which goes first, so whatever state one leaves on the shared moto server (memory it is
            # still freeing, a warm connection pool) favours neither.
            order = [("replicate", our_replication), ("rclone", rclone_copy)]
            for step, run_step in order if round_no % 2 else order[::-1]:
                if step in steps:
                    run_step()
            if pg is not None and "local_backup" in steps:
                vault = _vault_local(workdir / f"pg-vault-{round_no}")
                log("PostgreSQL backup into a local vault (in process)")
                measured_backup(vault, keyring, pg, rounds.sample("local_backup_s"), out, prefix="local_backup")
                shutil.rmtree(workdir / f"pg-vault-{round_no}")
            if pg is not None and "s3_backup" in steps:
                bucket = moto.bucket("s3vault")
                from core.repository.vault import Vault

                vault = Vault.open(s3_store(moto.endpoint, bucket), create=True)
                log("PostgreSQL backup into an S3 vault on moto (in process)")
                measured_backup(vault, keyring, pg, rounds.sample("s3_backup_s"), out, prefix="s3_backup")
                moto.drop(bucket)
    finally:
        moto.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rounds.summarize(out, args.repeat)
    _summarize(out)
    return out


def _vault_local(path: Path):
    from core.repository.vault import Vault
    from core.storage.local import LocalStore

    return Vault.open(LocalStore(path), create=True)


def _postgres(args: argparse.Namespace, out: dict):
    """The 1 GB benchmark database of backup_postgres.py (seeded the same way when missing) and its engine."""
    from benchmarks.backup_postgres import Server, seed, seeded_size
    from core.engines import engine_for
    from core.sources import PostgresSourceConfig

    server = Server(args.host, args.port, args.user)
    if seeded_size(server, args.dbname) != args.pg_size_mb:
        seed(server, args.dbname, args.pg_size_mb)
    out["db_bytes"] = server.db_bytes(args.dbname)
    password = os.environ.get("PGPASSWORD") or None
    return engine_for(
        PostgresSourceConfig(
            name="bench", host=args.host, port=args.port, user=args.user, password=password, database=args.dbname
        )
    )


def _summarize(out: dict) -> None:
    median = lambda values: sorted(values)[(len(values) - 1) // 2]  # noqa: E731
    for key in ("replicate_peak_rss_mb", "rclone_peak_rss_mb", "replicate_in_process_s"):
        if out.get(f"{key}_rounds"):
            out[key] = median(out[f"{key}_rounds"])
    flat = [f for f in out.get("replicate_rss_flat_rounds", []) if f]
    if flat:
        out["replicate_rss_early_mb"] = median([f["early_mb"] for f in flat])
        out["replicate_rss_late_mb"] = median([f["late_mb"] for f in flat])
        ratio(out, "replicate_rss_growth", "replicate_rss_late_mb", "replicate_rss_early_mb")
    for key in ("replicate", "rclone"):
        if out.get(f"{key}_s") and out.get("bytes"):
            out[f"{key}_mb_s"] = round(out["bytes"] / MB / out[f"{key}_s"], 1)
    ratio(out, "replicate_vs_rclone", "replicate_s", "rclone_s")
    ratio(out, "s3_vs_local_backup", "s3_backup_s", "local_backup_s")
    add_goals(
        out,
        {
            "replication / rclone (time)": ("replicate_vs_rclone", 1.0, False),
            "replication peak RSS (MB)": ("replicate_peak_rss_mb", 250, True),
            "replication RSS late / early": ("replicate_rss_growth", 1.2, False),
            "S3-vault / local-vault backup": ("s3_vs_local_backup", 1.2, False),
        },
    )


def print_text(out: dict) -> None:
    print(f"Replication of {out.get('bytes', 0) / MB:.0f} MB ({out.get('objects')} objects) to S3 on moto, and backups")
    print_steps(
        out,
        [
            ("genesis-dr replicate (verified)", "replicate_s", "bytes"),
            ("rclone copy", "rclone_s", "bytes"),
            ("PostgreSQL backup, local vault", "local_backup_s", None),
            ("PostgreSQL backup, S3 vault (moto)", "s3_backup_s", None),
        ],
    )
    for key in ("replicate_mb_s", "rclone_mb_s", "replicate_peak_rss_mb", "rclone_peak_rss_mb"):
        if key in out:
            print(f"  {key:46s} {out[key]}")
    for key in ("local_backup_peak_rss_mb", "s3_backup_peak_rss_mb"):
        if key in out:
            print(f"  {key:46s} {out[key]}")
    print_goals(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="PostgreSQL server of the backup comparison")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres", help="password, if needed, from PGPASSWORD")
    parser.add_argument("--dbname", default="genesis_bench")
    parser.add_argument("--pg-size-mb", type=int, default=1024, help="size of the PostgreSQL database (default 1024)")
    common_arguments(parser, STEPS, size_mb=1024)
    parser.add_argument("--child-replicate", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-vault", help=argparse.SUPPRESS)
    parser.add_argument("--child-bucket", help=argparse.SUPPRESS)
    parser.add_argument("--child-endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_replicate:
        return child_replicate(args)
    emit(run(args), args, print_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
