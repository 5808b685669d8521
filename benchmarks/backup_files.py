"""Benchmark: genesis-dr's files backup and restore against tar, the seed pipeline and restic.

Creates (or reuses) a tree of about ``--size-mb`` under the work directory -
many small text files, compressible logs, incompressible binaries - then
times, in one run, round after round:

* ``tar -cf - . | cat > /dev/null`` - the native dump path (the reference).
  The ``| cat`` matters: GNU tar does not read file contents at all when its
  archive is ``/dev/null``, so ``tar -cf - . > /dev/null`` measures a walk;
* ``tar -cf - . | zstd -T0 -3 | openssl enc -aes-256-cbc -pbkdf2 > FILE`` - the
  source documents' approach, and its restore ``openssl -d | zstd -d | tar -x``
  into an empty directory;
* restic (the best tool): a first backup into a fresh repository, a restore of
  it (``restic restore latest --target``), and a second backup after a 1 %
  change (an extra: restic only reads what changed);
* our full backup (``core.operations.backup_source``, in process, local vault,
  default chunk size, zstd, the real PBKDF2 cost) with the peak RSS of this
  process, our restore (``core.operations.restore_backup``, verification
  included) into an empty directory, and our full backup again after the same
  1 % change (an extra: incrementals come in a later issue, so today this is a
  second full backup).

The data set is kept for the next run (a marker records its seed version and
size); vaults, repositories, archives and restored trees are removed. Usage::

    python benchmarks/backup_files.py [--size-mb 1024] [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402 - after the path set-up
    BENCH_PASS,
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

SEED_VERSION = 1
STEPS = ("native", "seed", "restic", "backup", "restore", "change")
GOALS = {
    # name: (value key, limit, True if the value must stay strictly below the limit)
    "backup / native tar | cat": ("backup_vs_native", 1.5, False),
    "backup / seed pipeline": ("backup_vs_seed", 1.0, False),
    "restore / seed pipeline restore": ("restore_vs_seed_restore", 1.0, False),
    "backup peak RSS (MB)": ("backup_peak_rss_mb", 200.0, True),
    "restore peak RSS (MB)": ("restore_peak_rss_mb", 200.0, True),
}
# Shares of --size-mb; 20,000 small files per GB.
SMALL_SHARE, LOG_SHARE = 0.10, 0.45  # the rest: incompressible binaries
SMALL_FILES_PER_GB = 20_000
SMALL_PER_DIR = 100
LOG_FILE_MB, BIN_FILE_MB = 24, (4, 32)
CHANGE_SHARE = 0.01

WORDS = (
    "the customer order was shipped after payment invoice delayed warehouse quarter revenue increase decrease "
    "because of and a to in region north south east west product service contract renewal support ticket "
    "resolved pending review approved manager team report figures budget forecast risk compliance audit "
    "backup restore database latency error success config deploy release cache session token user request"
).split()
LEVELS = ("INFO", "INFO", "INFO", "INFO", "DEBUG", "DEBUG", "WARN", "ERROR")
SERVICES = ("api", "worker", "billing", "auth", "search", "mailer", "scheduler")
PATHS = ("/v1/orders", "/v1/orders/{}", "/v1/users/{}", "/v1/search", "/healthz", "/v1/invoices/{}/pdf", "/login")


# -- the data set ------------------------------------------------------------------------


def _text_file(rng: random.Random, size: int) -> bytes:
    words = rng.choices(WORDS, k=max(1, size // 6))
    text = " ".join(words)
    lines = [text[i : i + 72] for i in range(0, len(text), 72)]
    return ("\n".join(lines)[:size] + "\n").encode()


def _log_file(rng: random.Random, size: int, start: float) -> bytes:
    out, total, ts = [], 0, start
    rand, choice = rng.random, rng.choice
    while total < size:
        ts += rand() * 0.05
        path = choice(PATHS).format(int(rand() * 100000))
        line = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(ts))}.{int(ts * 1000) % 1000:03d}Z "
            f"{choice(LEVELS)} [{choice(SERVICES)}] req={int(rand() * 2**32):08x} user={int(rand() * 50000)} "
            f"{path} status={choice((200, 200, 200, 201, 204, 304, 404, 500))} dur_ms={int(rand() * rand() * 900)}\n"
        )
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def create_dataset(data: Path, size_mb: int) -> dict:
    """Write the tree below ``data``: small text files, logs, binaries; returns its counts."""
    rng = random.Random(SEED_VERSION)
    total = size_mb << 20
    small_count = max(100, SMALL_FILES_PER_GB * size_mb // 1024)
    small_avg = int(total * SMALL_SHARE / small_count)
    files = 0
    for i in range(small_count):
        folder = data / "app" / f"d{i // SMALL_PER_DIR:04d}"
        if i % SMALL_PER_DIR == 0:
            folder.mkdir(parents=True)
        size = max(64, int(rng.expovariate(1 / small_avg)))
        (folder / f"note-{i:06d}.txt").write_bytes(_text_file(rng, size))
        files += 1
    (data / "logs").mkdir()
    remaining, n = int(total * LOG_SHARE), 0
    while remaining > 0:
        size = min(remaining, LOG_FILE_MB << 20)
        (data / "logs" / f"service-{n:03d}.log").write_bytes(_log_file(rng, size, 1.7e9 + n * 86400))
        remaining -= size
        n, files = n + 1, files + 1
    (data / "bin").mkdir()
    remaining, n = total - int(total * SMALL_SHARE) - int(total * LOG_SHARE), 0
    while remaining > 0:
        size = min(remaining, rng.randint(*BIN_FILE_MB) << 20)
        (data / "bin" / f"blob-{n:03d}.bin").write_bytes(os.urandom(size))
        remaining -= size
        n, files = n + 1, files + 1
    return {"files": files, "small_files": small_count}


def dataset(root: Path, size_mb: int, reseed: bool) -> tuple[Path, dict]:
    """The data set under ``root`` (made once; reused while its marker matches)."""
    marker, data = root / "marker.json", root / "data"
    try:
        found = json.loads(marker.read_text())
    except (OSError, ValueError):
        found = {}
    if not reseed and found.get("seed_version") == SEED_VERSION and found.get("size_mb") == size_mb:
        log(f"reusing the data set in {data} ({size_mb} MB, seed version {SEED_VERSION})")
        return data, found
    log(f"creating a data set of about {size_mb} MB in {data}")
    started = time.monotonic()
    shutil.rmtree(root, ignore_errors=True)
    data.mkdir(parents=True)
    info = create_dataset(data, size_mb)
    info["bytes"] = sum(p.stat().st_size for p in data.rglob("*") if p.is_file())
    info.update(seed_version=SEED_VERSION, size_mb=size_mb)
    marker.write_text(json.dumps(info, sort_keys=True))
    log(f"created in {time.monotonic() - started:.0f} s: {info['files']} files, {info['bytes'] >> 20} MB")
    return data, info


class Change:
    """A 1 % change, undone afterwards: a line appended to 1 % of the small files and one new
    binary file of 1 % of the size. Undoing restores sizes and mtimes, so the next round and
    the next run see the same tree."""

    def __init__(self, data: Path, info: dict) -> None:
        rng = random.Random(7)
        small = sorted((data / "app").rglob("*.txt"))
        self.touched = rng.sample(small, max(1, len(small) // 100))
        self.added = data / "bin" / "changed-during-benchmark.bin"
        self.added_bytes = int(info["bytes"] * CHANGE_SHARE)
        self.saved: list[tuple[Path, int, int]] = []

    def apply(self) -> None:
        for path in self.touched:
            st = path.stat()
            self.saved.append((path, st.st_size, st.st_mtime_ns))
            with path.open("ab") as fh:
                fh.write(b"changed by the benchmark\n")
        self.added.write_bytes(os.urandom(self.added_bytes))

    def undo(self) -> None:
        for path, size, mtime in self.saved:
            os.truncate(path, size)
            os.utime(path, ns=(mtime, mtime))
        self.saved.clear()
        self.added.unlink(missing_ok=True)


# -- ours ----------------------------------------------------------------------------------


class Ours:
    """genesis-dr's backup and restore, in this process, into a local vault under ``scratch``."""

    def __init__(self, data: Path, scratch: Path, out: dict) -> None:
        self.data, self.scratch, self.out = data, scratch, out
        self.keyring = bench_keyring(out)
        self.vault = bench_vault(scratch / "vault", out)
        self.manifest = None

    def _engine(self, name: str, root: Path):
        from core.engines import engine_for
        from core.sources import FilesSourceConfig

        return engine_for(FilesSourceConfig(name=name, root=str(root), paths=["."]))

    def backup(self, step, first: bool = True) -> None:
        engine = self._engine("bench-files", self.data)
        if not first:  # after the 1 % change: only its time and size count
            self.out["change_stored_bytes"] = measured_backup(
                self.vault, self.keyring, engine, step, {}, prefix="change"
            ).stored_bytes
            return
        m = self.manifest = measured_backup(self.vault, self.keyring, engine, step, self.out)
        self.out["stored_bytes"], self.out["plain_bytes"] = m.stored_bytes, m.plain_bytes
        self.out["tool_versions"] = m.tool_versions

    def restore(self, step, target: Path) -> None:
        engine = self._engine("bench-files-restore", target)
        report = measured_restore(self.vault, self.keyring, self.manifest.id, engine, step, self.out)
        if report.notes:
            raise SystemExit(f"our restore was not exact: {report.notes[:3]}")
        # The verification's share, measured again on the restored (now cached) tree.
        self.out["restore_verify_s_estimate"] = verification_seconds(self.vault, self.keyring, self.manifest.id, engine)


CLEANUP_MARK = "genesis-bench-files.cleaned"
# ext4 without a journal skips inodes freed this recently when it allocates new ones
# (fs/ext4/ialloc.c recently_deleted: the dirty-expire interval, 30 s, + 5 s): files
# created meanwhile cost several times the usual system time.
SETTLE_S = 36


def settle_after_cleanup(base: Path) -> None:
    """Wait until the trees the previous run removed no longer slow down file creation."""
    try:
        since = time.time() - float((base / CLEANUP_MARK).read_text())
    except (OSError, ValueError):
        return
    if 0 <= since < SETTLE_S:
        log(f"waiting {SETTLE_S - since:.0f} s: the previous run removed its trees {since:.0f} s ago")
        time.sleep(SETTLE_S - since)


class _SyncedRounds(Rounds):
    """Rounds whose every step starts with no dirty pages: what one step wrote (a restored
    tree, an archive) is flushed before the next is timed, not charged to it."""

    def sample(self, key: str):
        os.sync()
        return super().sample(key)


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    steps = chosen_steps(args, STEPS)
    needs = {"tar": "tar", "zstd": "zstd", "openssl": "openssl"}
    if "restic" in steps:
        needs["restic"] = "restic"
    ensure_debian_packages(needs)
    base = Path(args.workdir or tempfile.gettempdir())
    data, info = dataset(base / f"genesis-bench-files-{args.size_mb}mb", args.size_mb, args.reseed)
    out: dict = {
        "data_bytes": info["bytes"],
        "data_files": info["files"],
        "size_mb_requested": args.size_mb,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tar_version": timed(["tar", "--version"])[1].splitlines()[0],
        "zstd_version": timed(["zstd", "--version"])[1],
    }
    if "restic" in steps:
        out["restic_version"] = timed(["restic", "version"])[1]
    settle_after_cleanup(base)
    scratch = Path(tempfile.mkdtemp(prefix="genesis-bench-files-", dir=base))
    os.environ["GENESIS_DR_STATE_DIR"] = str(scratch / "state")  # restore marks of scratch targets
    env = dict(os.environ, BENCH_PASS=BENCH_PASS, RESTIC_PASSWORD=BENCH_PASS)
    src = shlex.quote(str(data))
    rounds = _SyncedRounds()
    change = Change(data, info) if "change" in steps else None
    try:
        ours = Ours(data, scratch, out) if steps & {"backup", "restore", "change"} else None
        for round_no in range(1, args.repeat + 1):
            if args.repeat > 1:
                log(f"round {round_no} of {args.repeat}")
            # Rounds interleave the tools, so a busy moment on the machine hits each of them alike.
            if "native" in steps:
                log("tar -cf - . | cat > /dev/null (native dump path)")
                with rounds.sample("native_s") as r:
                    r["s"] = timed(f"tar -C {src} -cf - . | cat > /dev/null")[0]
            if "seed" in steps:
                seed_file = scratch / "seed.tar.zst.enc"
                log("tar | zstd -T0 -3 | openssl enc -aes-256-cbc -pbkdf2 > FILE (seed pipeline)")
                pipeline = (
                    f"tar -C {src} -cf - . | zstd -q -T0 -3 | openssl enc -aes-256-cbc -pbkdf2 -pass env:BENCH_PASS "
                    f"> {shlex.quote(str(seed_file))}"
                )
                with rounds.sample("seed_backup_s") as r:
                    r["s"] = timed(pipeline, env=env)[0]
                out["seed_stored_bytes"] = seed_file.stat().st_size
                target = scratch / f"restore-seed-{round_no}"
                target.mkdir()
                log("openssl -d | zstd -d | tar -x (seed pipeline restore)")
                restore = (
                    f"openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BENCH_PASS < {shlex.quote(str(seed_file))} "
                    f"| zstd -q -d | tar -C {shlex.quote(str(target))} -xf -"
                )
                with rounds.sample("seed_restore_s") as r:
                    r["s"] = timed(restore, env=env)[0]
                seed_file.unlink()
            repo = scratch / "restic-repo"
            restic = f"restic -q -r {shlex.quote(str(repo))} --cache-dir {shlex.quote(str(scratch / 'restic-cache'))}"
            if "restic" in steps:
                timed(f"{restic} init", env=env)  # a fresh repository per round: every first backup is a first
                log("restic backup (first, fresh repository)")
                with rounds.sample("best_tool_backup_s") as r:
                    r["s"] = timed(f"{restic} backup {src}", env=env)[0]
                out["best_tool_stored_bytes"] = int(timed(f"du -sb {shlex.quote(str(repo))} | cut -f1")[1])
                target = scratch / f"restore-restic-{round_no}"
                log("restic restore latest --target DIR")
                with rounds.sample("best_tool_restore_s") as r:
                    r["s"] = timed(f"{restic} restore latest --target {shlex.quote(str(target))}", env=env)[0]
            if ours and steps & {"backup", "restore"}:
                log("genesis-dr backup (in process)")
                ours.backup(rounds.sample("backup_s"))
            if ours and "restore" in steps:
                log("genesis-dr restore into an empty directory (includes verification)")
                ours.restore(rounds.sample("restore_s"), scratch / f"restore-ours-{round_no}")
            if change is not None:
                change.apply()
                try:
                    if "restic" in steps:
                        log("restic backup after a 1 % change")
                        with rounds.sample("best_tool_change_backup_s") as r:
                            r["s"] = timed(f"{restic} backup {src}", env=env)[0]
                    if ours:
                        log("genesis-dr backup after a 1 % change (a full: incrementals come later)")
                        ours.backup(rounds.sample("change_backup_s"), first=False)
                finally:
                    change.undo()
            shutil.rmtree(repo, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        (base / CLEANUP_MARK).write_text(str(time.time()))
    rounds.summarize(out, args.repeat)
    ratio(out, "backup_vs_native", "backup_s", "native_s")
    ratio(out, "backup_vs_seed", "backup_s", "seed_backup_s")
    ratio(out, "backup_vs_best_tool", "backup_s", "best_tool_backup_s")
    ratio(out, "stored_vs_seed_bytes", "stored_bytes", "seed_stored_bytes")
    ratio(out, "restore_vs_seed_restore", "restore_s", "seed_restore_s")
    ratio(out, "restore_vs_best_tool", "restore_s", "best_tool_restore_s")
    add_goals(out, GOALS)
    return out


def print_text(out: dict) -> None:
    mb = 1 << 20
    print(
        f"data set: {out['data_bytes'] / mb:.0f} MB in {out['data_files']} files, {out['cpus']} CPUs; "
        f"times are the median of {out['repeat']} interleaved round(s)"
    )
    print_steps(
        out,
        [
            ("tar -cf - . | cat > /dev/null (native)", "native_s", None),
            ("tar | zstd -T0 -3 | openssl > FILE (seed)", "seed_backup_s", "seed_stored_bytes"),
            ("openssl -d | zstd -d | tar -x (seed restore)", "seed_restore_s", None),
            ("restic backup (first, fresh repository)", "best_tool_backup_s", "best_tool_stored_bytes"),
            ("restic restore latest --target", "best_tool_restore_s", None),
            ("restic backup after a 1 % change", "best_tool_change_backup_s", None),
            ("genesis-dr backup", "backup_s", "stored_bytes"),
            ("genesis-dr restore (+verify)", "restore_s", None),
            ("genesis-dr full backup after a 1 % change", "change_backup_s", "change_stored_bytes"),
        ],
    )
    if "backup_s" in out:
        print(
            f"  backup peak RSS {out['backup_peak_rss_mb']} MB (+{out['backup_rss_increase_mb']} MB over a "
            f"{out['backup_rss_baseline_mb']} MB baseline); KDF {out['kdf_iterations']} PBKDF2 iterations "
            f"({out['kdf_wrap_s']} s); chunk size {out['chunk_size'] >> 20} MiB, {out['compression']}"
        )
    if "restore_s" in out:
        print(
            f"  restore peak RSS {out['restore_peak_rss_mb']} MB; verification about "
            f"{out['restore_verify_s_estimate']:.2f} s of the restore"
        )
    if "change_backup_s" in out:
        print("  (our backup after a change is a full one: incremental files backups come in a later issue)")
    print_goals(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_arguments(parser, STEPS, size_mb=1024)
    args = parser.parse_args(argv)
    emit(run(args), args, print_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
