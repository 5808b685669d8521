"""Benchmark: genesis-dr's Redis backup and restore against redis-cli and the seed pipeline.

Starts its own ``redis-server`` (the source) on a free port under a temp dir,
seeds ``--keys`` keys of mixed types through ``redis-cli --pipe`` (strings,
hashes, lists, sets, sorted sets, a few streams with a consumer group, a fifth
of the keys with a TTL), then times, round by round:

* ``redis-cli --rdb FILE`` - the native dump path (``native_s``);
* ``redis-cli --rdb - | gzip | openssl enc -aes-256-cbc -pbkdf2 | wc -c`` - the
  source documents' approach (``seed_backup_s``, ``seed_stored_bytes``), and
  its restore: ``openssl -d | gunzip`` into ``dump.rdb`` of a fresh directory,
  start ``redis-server`` on it and wait until it has loaded (``seed_restore_s``);
* our backup (``core.operations.backup_source``, in process, local vault) in
  mode rdb (``backup_s``, ``stored_bytes``) and logical (``backup_logical_s``);
* our restore, verification included, of each into a fresh empty
  ``redis-server`` (``restore_s``, ``restore_logical_s``).

Peak RSS is that of this process (``peak_rss_mb``) and, separately, of the
walker child it starts (``walker_peak_rss_mb``). Usage::

    python benchmarks/backup_redis.py [--keys 1000000] [--json] [--repeat 3] [--steps native,seed,backup]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
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
)

GOALS = {
    # name: (value key, limit, True if the value must stay strictly below the limit)
    "backup / redis-cli --rdb": ("backup_vs_native", 1.5, False),
    "backup / seed pipeline": ("backup_vs_seed_pipeline", 1.0, False),
    "restore / seed restore": ("restore_vs_seed_restore", 1.0, False),
    "backup peak RSS (MB)": ("peak_rss_mb", 200.0, True),
    "walker peak RSS (MB)": ("walker_peak_rss_mb", 200.0, True),
}
STEPS = ("native", "seed", "seed_restore", "backup", "restore", "logical", "logical_restore")
KEYS_PER_MB = 1_000_000 / 110  # the mix below makes an RDB of about 110 MB per million keys
WORDS = b"alpha beta gamma delta order invoice user session cart token region north south".split()


# -- servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throw-away redis-server under ``directory`` (no persistence of its own)."""

    def __init__(self, directory: Path, rdb: Path | None = None) -> None:
        self.dir = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        conf = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "save ''",
            "appendonly no",
            f"dir {directory}",
            "dbfilename dump.rdb",
            "repl-diskless-sync yes",
            # redis-cli and we are the only replicas: nobody to wait for (the default waits 5 s).
            "repl-diskless-sync-delay 0",
            f"logfile {directory / 'redis.log'}",
        ]
        (directory / "redis.conf").write_text("\n".join(conf) + "\n")
        self.proc = subprocess.Popen(["redis-server", str(directory / "redis.conf")], stdout=subprocess.DEVNULL)
        self.wait_loaded()

    def cli(self, *args: str) -> str:
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    def wait_loaded(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"redis-server exited; see {self.dir / 'redis.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        raise SystemExit(f"redis-server on port {self.port} did not come up")

    def config(self, name: str, mode: str):
        from core.sources import RedisSourceConfig

        return RedisSourceConfig(name=name, host="127.0.0.1", port=self.port, mode=mode)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- data --------------------------------------------------------------------------------


def _cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def seed_commands(keys: int, write) -> None:
    """RESP for ``keys`` keys: 50 % strings, 15 % hashes, 10 % lists, 10 % sets, 15 % sorted sets,
    a fifth with a TTL, and 5 streams of 10,000 entries with a consumer group."""
    rnd = random.Random(7)
    buf: list[bytes] = []
    for i in range(keys):
        r = i % 20
        if r < 10:
            key = b"str:%d" % i
            if r < 3:
                value = b"%d" % rnd.randrange(10**9)
            elif r < 7:
                value = b"user:%d:" % i + b" ".join(rnd.choice(WORDS) for _ in range(6))
            else:
                value = rnd.randbytes(rnd.randrange(20, 200))
            buf.append(_cmd(b"SET", key, value))
        elif r < 13:
            key = b"hash:%d" % i
            fields = []
            for j in range(8):
                fields += [b"f%d" % j, b"%s-%d" % (rnd.choice(WORDS), rnd.randrange(10**6))]
            buf.append(_cmd(b"HSET", key, *fields))
        elif r < 15:
            key = b"list:%d" % i
            buf.append(_cmd(b"RPUSH", key, *[b"item-%d" % rnd.randrange(10**6) for _ in range(10)]))
        elif r < 17:
            key = b"set:%d" % i
            if r == 15:
                buf.append(_cmd(b"SADD", key, *[b"m-%d" % rnd.randrange(10**6) for _ in range(8)]))
            else:
                buf.append(_cmd(b"SADD", key, *[b"%d" % rnd.randrange(10**6) for _ in range(8)]))
        else:
            key = b"zset:%d" % i
            members = []
            for j in range(10):
                members += [b"%.3f" % (rnd.random() * 1000), b"member-%d" % j]
            buf.append(_cmd(b"ZADD", key, *members))
        if i % 5 == 0:
            buf.append(_cmd(b"PEXPIRE", key, b"%d" % (86_400_000 + rnd.randrange(86_400_000))))
        if len(buf) >= 20_000:
            write(b"".join(buf))
            buf = []
    for s in range(5):
        for e in range(10_000):
            buf.append(_cmd(b"XADD", b"stream:%d" % s, b"*", b"event", b"click", b"user", b"%d" % e))
        buf.append(_cmd(b"XGROUP", b"CREATE", b"stream:%d" % s, b"workers", b"0"))
    write(b"".join(buf))


def seed(server: RedisServer, keys: int) -> None:
    log(f"seeding {keys} keys (redis-cli --pipe)")
    started = time.monotonic()
    proc = subprocess.Popen(
        ["redis-cli", "-p", str(server.port), "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    seed_commands(keys, proc.stdin.write)
    proc.stdin.close()
    output = proc.stdout.read().decode()
    if proc.wait() != 0 or "errors: 0" not in output:
        raise SystemExit(f"seeding failed: {output[-500:]}")
    log(f"seeded in {time.monotonic() - started:.0f} s: {server.cli('DBSIZE')} keys")


# -- our side -----------------------------------------------------------------------------


class WalkerRSS:
    """Peak RSS of the walker child processes this process starts (sampled every 50 ms)."""

    def __init__(self) -> None:
        self.peak_kb = 0
        self._stop = threading.Event()

    def _walkers(self) -> list[int]:
        me = str(os.getpid())
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parent = fh.read().rsplit(")", 1)[1].split()[1]
                if parent == me and b"redis_walker" in Path(f"/proc/{entry}/cmdline").read_bytes():
                    pids.append(int(entry))
            except OSError:
                continue
        return pids

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            for pid in self._walkers():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                except OSError:
                    continue

    def __enter__(self) -> WalkerRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kb / 1024, 1)


class Ours:
    """genesis-dr's backup and restore, in this process, into a local vault under ``workdir``."""

    def __init__(self, source: RedisServer, workdir: Path, out: dict, targets: list[RedisServer]) -> None:
        self.source, self.workdir, self.out = source, workdir, out
        self.targets = targets  # the CPU meter counts their server time
        self.keyring = bench_keyring(out)
        self.vault = bench_vault(workdir / "vault", out)
        self.manifests: dict[str, object] = {}

    def backup(self, mode: str, step) -> None:
        from core.engines.redis.engine import RedisEngine

        out = self.out
        log(f"genesis-dr backup, mode {mode} (in process)")
        engine = RedisEngine(self.source.config("bench", mode))
        suffix = "" if mode == "rdb" else "_logical"
        walker = WalkerRSS()
        manifest = measured_backup(self.vault, self.keyring, engine, step, out, prefix=f"backup{suffix}", also=walker)
        self.manifests[mode] = manifest
        out[f"walker{suffix}_peak_rss_mb"] = max(out.get(f"walker{suffix}_peak_rss_mb", 0), walker.peak_mb)
        out[f"stored{suffix}_bytes"], out[f"plain{suffix}_bytes"] = manifest.stored_bytes, manifest.plain_bytes

    def restore(self, mode: str, step) -> None:
        from core.engines.redis.engine import RedisEngine

        out = self.out
        target = RedisServer(self.workdir / f"target-{mode}")
        self.targets.append(target)
        try:
            log(f"genesis-dr restore, mode {mode}, into a fresh redis-server (includes verification)")
            engine = RedisEngine(target.config("bench-restore", mode))
            suffix = "" if mode == "rdb" else "_logical"
            walker = WalkerRSS()
            measured_restore(
                self.vault, self.keyring, self.manifests[mode].id, engine, step, out, f"restore{suffix}", walker
            )
            out[f"restore{suffix}_walker_peak_rss_mb"] = walker.peak_mb
            out[f"restore{suffix}_verified_by"] = getattr(engine, "verified_by", None)
            if target.cli("DBSIZE") != self.source.cli("DBSIZE"):
                raise SystemExit(f"restore {mode}: {target.cli('DBSIZE')} keys, source {self.source.cli('DBSIZE')}")
        finally:
            target.stop()


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    ensure_debian_packages({"redis-server": "redis-server", "redis-cli": "redis-tools", "openssl": "openssl"})
    steps = chosen_steps(args, STEPS)
    keys = int(args.size_mb * KEYS_PER_MB) if args.size_mb else args.keys
    workdir = Path(tempfile.mkdtemp(prefix="genesis-bench-redis-", dir=args.workdir))
    source = RedisServer(workdir / "source")
    targets: list[RedisServer] = []
    out: dict = {
        "keys_requested": keys,
        "server_version": source.cli("INFO", "server").split("redis_version:")[1].split()[0],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    rounds = Rounds(CpuMeter(lambda: [source.proc.pid, *(t.proc.pid for t in targets if t.proc.poll() is None)]))
    sample = rounds.sample
    env = dict(os.environ, BENCH_PASS=BENCH_PASS)
    port = source.port
    try:
        seed(source, keys)
        out["keys"] = int(source.cli("DBSIZE"))
        out["used_memory_mb"] = round(int(source.cli("INFO", "memory").split("used_memory:")[1].split()[0]) / 2**20)
        ours = (
            Ours(source, workdir, out, targets) if steps & {"backup", "restore", "logical", "logical_restore"} else None
        )
        sealed = workdir / "seed.rdb.gz.enc"
        if "seed_restore" in steps:
            log("seed pipeline output kept as the seed restore's input (not timed)")
            timed(
                f"redis-cli -p {port} --rdb - | gzip | openssl enc -aes-256-cbc -pbkdf2 -pass env:BENCH_PASS > {sealed}",
                env=env,
            )
        for round_no in range(1, args.repeat + 1):
            if args.repeat > 1:
                log(f"round {round_no} of {args.repeat}")
            if "native" in steps:
                log("redis-cli --rdb FILE (native)")
                rdb = workdir / "native.rdb"
                with sample("native_s") as r:
                    r["s"] = timed(["redis-cli", "-p", str(port), "--rdb", str(rdb)])[0]
                out["native_bytes"] = rdb.stat().st_size
                rdb.unlink()
            if "seed" in steps:
                log("redis-cli --rdb - | gzip | openssl enc (seed pipeline)")
                pipeline = f"redis-cli -p {port} --rdb - | gzip | openssl enc -aes-256-cbc -pbkdf2 -pass env:BENCH_PASS | wc -c"
                with sample("seed_backup_s") as r:
                    r["s"], count = timed(pipeline, env=env)
                out["seed_stored_bytes"] = int(count)
            if "seed_restore" in steps:
                log("openssl -d | gunzip > dump.rdb; redis-server loads it (seed restore)")
                fresh = workdir / "seed-restore"
                fresh.mkdir()
                with sample("seed_restore_s") as r:
                    started = time.monotonic()
                    timed(
                        f"openssl enc -d -aes-256-cbc -pbkdf2 -pass env:BENCH_PASS < {sealed} | gunzip > {fresh}/dump.rdb",
                        env=env,
                    )
                    server = RedisServer(fresh)
                    targets.append(server)
                    r["s"] = time.monotonic() - started
                if server.cli("DBSIZE") != str(out["keys"]):
                    raise SystemExit(f"seed restore loaded {server.cli('DBSIZE')} keys")
                server.stop()
            if ours and "backup" in steps:
                ours.backup("rdb", sample("backup_s"))
                if "restore" in steps:
                    ours.restore("rdb", sample("restore_s"))
            if ours and "logical" in steps:
                ours.backup("logical", sample("backup_logical_s"))
                if "logical_restore" in steps:
                    ours.restore("logical", sample("restore_logical_s"))
    finally:
        source.stop()
        for t in targets:
            if t.proc.poll() is None:
                t.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    rounds.summarize(out, args.repeat)
    add_ratios(out)
    return out


def add_ratios(out: dict) -> None:
    ratio(out, "backup_vs_native", "backup_s", "native_s")
    ratio(out, "backup_vs_seed_pipeline", "backup_s", "seed_backup_s")
    ratio(out, "stored_vs_seed_pipeline_bytes", "stored_bytes", "seed_stored_bytes")
    ratio(out, "restore_vs_seed_restore", "restore_s", "seed_restore_s")
    ratio(out, "backup_logical_vs_native", "backup_logical_s", "native_s")
    ratio(out, "restore_logical_vs_seed_restore", "restore_logical_s", "seed_restore_s")
    ratio(out, "stored_logical_vs_seed_pipeline_bytes", "stored_logical_bytes", "seed_stored_bytes")
    if "backup_peak_rss_mb" in out:
        out["peak_rss_mb"] = out["backup_peak_rss_mb"]
    add_goals(out, GOALS)


def print_text(out: dict) -> None:
    print(
        f"{out.get('keys', out['keys_requested'])} keys ({out.get('used_memory_mb', '?')} MB in memory), "
        f"Redis {out['server_version']}, {out['cpus']} CPUs; times are the median of {out['repeat']} interleaved round(s)"
    )
    rows = [
        ("redis-cli --rdb FILE (native)", "native_s", "native_bytes"),
        ("redis-cli --rdb - | gzip | openssl (seed)", "seed_backup_s", "seed_stored_bytes"),
        ("openssl -d | gunzip; redis-server loads (seed)", "seed_restore_s", None),
        ("genesis-dr backup, rdb", "backup_s", "stored_bytes"),
        ("genesis-dr restore, rdb (+verify)", "restore_s", None),
        ("genesis-dr backup, logical", "backup_logical_s", "stored_logical_bytes"),
        ("genesis-dr restore, logical (+verify)", "restore_logical_s", None),
    ]
    print_steps(out, rows)
    for key in ("restore_verified_by", "restore_logical_verified_by"):
        if out.get(key):
            print(f"  {key.replace('_', ' ')}: {out[key]}")
    print_goals(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys to seed (--size-mb, if given, wins)")
    common_arguments(parser, STEPS, size_mb=0)
    args = parser.parse_args(argv)
    emit(run(args), args, print_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
