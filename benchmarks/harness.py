"""What every benchmark shares: timing, CPU and memory meters, rounds with medians, goals, setup.

A benchmark script measures our code and the reference tools *in the same
run*, interleaving them round by round, so a busy moment on a shared machine
hits every tool alike; only medians count (a goal met only by the luckiest
round is not met). The pieces:

* ``log(msg)`` - a timestamped progress line on stderr (stdout is the result);
* ``timed(argv_or_shell)`` - run a command, return (seconds, stdout); a string
  runs under ``bash -o pipefail``; a failure stops the benchmark;
* ``CpuMeter(server_pids)`` - core-seconds a step used by the server, by the
  tools we ran, by this process, and by the whole machine (interference shows
  as machine >> the sum); ``server_pids`` returns the pids whose CPU counts as
  the server's (their reaped children included);
* ``PeakRSS()`` - peak resident memory of this process while a block runs;
* ``Rounds(meter)`` - ``with rounds.sample("backup_s") as r: r["s"] = ...``
  records one timed sample and its CPU; ``rounds.summarize(out)`` adds the
  medians, fastest/slowest, samples and the CPU of the median round;
* ``ratio``/``add_goals``/``print_goals`` - ratios and PASS/MISS per goal;
* ``ensure_debian_packages`` - the reference tools, installed from Debian's
  packages when missing (as root, or through sudo);
* ``bench_keyring``/``bench_vault`` - our side: a local vault and a keyring
  with a throw-away passphrase and the real PBKDF2 cost;
* ``common_arguments``/``emit`` - the flags every script takes and its output.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager, nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BENCH_PASS = "genesis-bench-passphrase"  # a throw-away secret for throw-away data


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(argv: list[str] | str, **kwargs) -> tuple[float, str]:
    """Run a command (a string runs under bash with pipefail); returns (seconds, stdout)."""
    if isinstance(argv, str):
        argv = ["bash", "-o", "pipefail", "-c", argv]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return seconds, proc.stdout.strip()


# -- CPU -------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def process_cpu_s(pid: int, with_children: bool = True) -> float | None:
    """CPU seconds of ``pid`` (user + system), plus its reaped and live children's; None if gone."""
    try:
        st = _proc_stat(pid)
    except OSError:
        return None
    total = sum(int(x) for x in st[11:15]) if with_children else int(st[11]) + int(st[12])
    if with_children:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    child = _proc_stat(entry)
                except OSError:
                    continue
                if int(child[1]) == pid:
                    total += int(child[11]) + int(child[12])
    return total / _TICK


class CpuMeter:
    """Core-seconds a step used: by the server, by the tools we ran, by this process, by the machine.

    The machine figure shows interference: if it is well above the sum of the
    others, something else was competing for the CPUs during the step.
    """

    def __init__(self, server_pids: Callable[[], Iterable[int]] | None = None) -> None:
        self._server_pids = server_pids

    def _server(self) -> float | None:
        if self._server_pids is None:
            return None
        used = [process_cpu_s(pid) for pid in self._server_pids()]
        return None if not used or any(u is None for u in used) else sum(used)  # type: ignore[arg-type]

    @staticmethod
    def _machine() -> float:
        with open("/proc/stat") as fh:
            ticks = [int(x) for x in fh.readline().split()[1:]]
        return (sum(ticks) - ticks[3] - ticks[4]) / _TICK  # all but idle and iowait

    def _snapshot(self) -> tuple:
        t = os.times()
        return self._server(), t.children_user + t.children_system, t.user + t.system, self._machine()

    @contextmanager
    def measure(self):
        record: dict = {}
        before = self._snapshot()
        yield record
        time.sleep(0.3)  # servers reap finished workers; only then is their CPU counted
        after = self._snapshot()
        for name, a, b in zip(("server", "tools", "ours", "machine"), before, after, strict=True):
            record[name] = None if a is None or b is None else round(b - a, 2)


# -- memory ----------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class PeakRSS:
    """Peak resident memory of this process while the block runs.

    Two views, the larger wins: VmHWM (the kernel's high-water mark, reset at the
    start through /proc/self/clear_refs) and VmRSS sampled every 50 ms by a thread.
    Children (the reference tools) have their own RSS and are not included.
    """

    def __init__(self) -> None:
        self.baseline_kb = self.peak_kb = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kb = max(self.peak_kb, _status_kb("VmRSS"))

    def __enter__(self) -> PeakRSS:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass  # the sampler alone still gives a (slightly coarser) peak
        self.baseline_kb = self.peak_kb = _status_kb("VmRSS")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, _status_kb("VmHWM"))

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kb / 1024, 1)

    @property
    def increase_mb(self) -> float:
        return round((self.peak_kb - self.baseline_kb) / 1024, 1)


# -- rounds ----------------------------------------------------------------------------


def _median_low(values: list[float]) -> float:
    return sorted(values)[(len(values) - 1) // 2]


class Rounds:
    """Timed samples per step, with the CPU each used; medians at the end."""

    def __init__(self, meter: CpuMeter | None = None) -> None:
        self.meter = meter or CpuMeter()
        self.samples: dict[str, list[float]] = {}
        self.cpu: dict[str, list[dict]] = {}

    @contextmanager
    def sample(self, key: str):
        """Times the step (its body sets ``result["s"]``) and meters the CPU around it."""
        result: dict = {}
        with self.meter.measure() as used:
            yield result
        self.samples.setdefault(key, []).append(round(result["s"], 3))
        self.cpu.setdefault(key, []).append(used)

    def summarize(self, out: dict, repeat: int) -> None:
        out.update({key: round(statistics.median(values), 2) for key, values in self.samples.items()})
        out["fastest"] = {key: min(values) for key, values in self.samples.items()}
        out["slowest"] = {key: max(values) for key, values in self.samples.items()}
        out["repeat"], out["samples"] = repeat, self.samples
        # CPU of the median round (the lower middle one when the count is even).
        out["cpu_s"] = {key: self.cpu[key][values.index(_median_low(values))] for key, values in self.samples.items()}


# -- goals -----------------------------------------------------------------------------


def ratio(out: dict, key: str, num: str, den: str) -> None:
    if out.get(num) is not None and out.get(den):
        out[key] = round(out[num] / out[den], 3)


def add_goals(out: dict, goals: dict[str, tuple[str, float, bool]]) -> None:
    """``goals``: label -> (value key, limit, True if the value must stay strictly below the limit)."""
    found = {}
    for label, (key, limit, strict) in goals.items():
        if key in out:
            ok = out[key] < limit if strict else out[key] <= limit
            found[key] = {"label": label, "value": out[key], "goal": limit, "pass": ok}
    out["goals"] = found


def print_goals(out: dict) -> None:
    for goal in out.get("goals", {}).values():
        verdict = "PASS" if goal["pass"] else "MISS"
        limit = f"< {goal['goal']}" if goal["label"].endswith("(MB)") else f"<= {goal['goal']}"
        print(f"  {verdict}  {goal['label']:36s} {goal['value']:>8}  (goal {limit})")


def print_steps(out: dict, rows: list[tuple[str, str, str | None]]) -> None:
    """One line per timed step: median wall time, size, CPU of the median round, spread."""
    mb = 1 << 20

    def fmt(value) -> str:
        return "   -" if value is None else f"{value:5.1f}"

    print(f"  {'':46s} {'wall':>10s} {'size':>12s}   CPU core-s: server tools ours machine")
    for label, seconds, size in rows:
        if seconds not in out:
            continue
        extra = f"{out[size] / mb:9.1f} MB" if size and out.get(size) is not None else ""
        used = out.get("cpu_s", {}).get(seconds)
        cpu = "   ".join(fmt(used[k]) for k in ("server", "tools", "ours", "machine")) if used else ""
        spread = (
            f" ({out['fastest'][seconds]:.2f}-{out['slowest'][seconds]:.2f})"
            if out.get("repeat", 1) > 1 and seconds in out.get("fastest", {})
            else ""
        )
        print(f"  {label:46s} {out[seconds]:8.2f} s {extra:>12s}   {cpu}{spread}")


# -- setup -----------------------------------------------------------------------------


def ensure_debian_packages(binaries: dict[str, str]) -> None:
    """Install the Debian package of every binary (name -> package) not on PATH.

    Runs ``apt-get install`` as root, or through sudo; stops the benchmark with
    the command to run by hand when neither is possible.
    """
    missing = sorted({package for binary, package in binaries.items() if shutil.which(binary) is None})
    if not missing:
        return
    command = ["apt-get", "install", "-y", "-q", *missing]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            raise SystemExit(f"reference tools missing; run as root: {shlex.join(command)}")
        command = ["sudo", "-n", *command]
    log(f"installing {', '.join(missing)} from Debian's packages")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:  # the package lists may be stale on a fresh machine
        subprocess.run([*command[: command.index("install")], "update", "-q"], capture_output=True, env=env)
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"could not install {', '.join(missing)}: {proc.stderr.strip()[-500:]}")
    still = sorted(binary for binary in binaries if shutil.which(binary) is None)
    if still:
        raise SystemExit(f"installed {', '.join(missing)} but {', '.join(still)} is still not on PATH")


def bench_keyring(out: dict):
    """Our keyring with the benchmark passphrase; records the real PBKDF2 cost per backup in ``out``."""
    from core.crypto.keys import Keyring, kdf_iterations

    keyring = Keyring(passphrase=BENCH_PASS)
    started = time.monotonic()
    keyring.wrap("backup_20000101_000000_00000000", os.urandom(32))
    out["kdf_iterations"], out["kdf_wrap_s"] = kdf_iterations(), round(time.monotonic() - started, 3)
    return keyring


def bench_vault(path: Path, out: dict):
    """A new local vault at ``path`` (default chunk size, zstd), recorded in ``out``."""
    from core.repository.vault import Vault, default_chunk_size
    from core.storage.local import LocalStore

    out["chunk_size"], out["compression"] = default_chunk_size(), "zstd"
    return Vault.open(LocalStore(path), create=True)


def measured_backup(vault, keyring, engine, step, out: dict, prefix: str = "backup", also=None):
    """Our full backup in this process, timed by ``step`` (a ``Rounds.sample`` context); returns its manifest.

    Records the peak RSS of this process under ``<prefix>_*`` keys (the first
    backup's counts: later rounds start from a heap earlier restores grew);
    ``also``: one more context manager around the backup (another meter).
    """
    from core.operations import backup_source

    with PeakRSS() as rss, also or nullcontext(), step as result:
        started = time.monotonic()
        manifest = backup_source(vault, keyring, engine, "full")
        result["s"] = time.monotonic() - started
    out.setdefault(f"{prefix}_peak_rss_mb", rss.peak_mb)
    out.setdefault(f"{prefix}_rss_increase_mb", rss.increase_mb)
    out.setdefault(f"{prefix}_rss_baseline_mb", round(rss.baseline_kb / 1024, 1))
    out.setdefault(f"{prefix}_peak_rss_mb_rounds", []).append(rss.peak_mb)
    return manifest


def measured_restore(vault, keyring, backup_id: str, engine, step, out: dict, prefix: str = "restore", also=None):
    """Our restore (verification included) in this process, timed by ``step``; returns its report."""
    from core.operations import restore_backup

    with PeakRSS() as rss, also or nullcontext(), step as result:
        started = time.monotonic()
        report = restore_backup(vault, keyring, backup_id, engine)
        result["s"] = time.monotonic() - started
    out.setdefault(f"{prefix}_peak_rss_mb", rss.peak_mb)
    out.setdefault(f"{prefix}_peak_rss_mb_rounds", []).append(rss.peak_mb)
    out[f"{prefix}_verified_checks"] = report.verified_checks
    return report


def verification_seconds(vault, keyring, backup_id: str, engine) -> float:
    """What the restore's checks cost as a pass of their own, computed again on ``engine``'s target."""
    reader = vault.open_backup(backup_id, keyring)
    try:
        started = time.monotonic()
        engine.collect_checks(reader.result.checks)
        return round(time.monotonic() - started, 2)
    finally:
        reader.close()


def common_arguments(parser: argparse.ArgumentParser, steps: Iterable[str], size_mb: int) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every step; the median counts")
    parser.add_argument("--steps", help=f"comma-separated subset of {','.join(steps)} (default: all)")
    parser.add_argument("--size-mb", type=int, default=size_mb, help="size of the data set")
    parser.add_argument("--reseed", action="store_true", help="recreate the data set even if its marker matches")
    parser.add_argument("--workdir", help="where vaults and reference outputs go (default: system temp dir)")


def chosen_steps(args: argparse.Namespace, steps: Iterable[str]) -> set[str]:
    chosen = set(args.steps.split(",")) if args.steps else set(steps)
    unknown = chosen - set(steps)
    if unknown:
        raise SystemExit(f"--steps: unknown {', '.join(sorted(unknown))}; choose from {', '.join(steps)}")
    return chosen


def emit(out: dict, args: argparse.Namespace, print_text: Callable[[dict], None]) -> None:
    for key, value in list(out.items()):
        if key.endswith("_s") and isinstance(value, float):
            out[key] = round(value, 2)
    if args.json:
        print(json.dumps(out, sort_keys=True))
    else:
        print_text(out)


# -- small generic helpers (ports, sizes, service users) ------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (each inode counted once; hard links share one)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue  # removed while we walked
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def as_user(user: str, argv: list[str]) -> list[str]:
    """``argv`` run as ``user`` when this process is root (servers such as PostgreSQL refuse root)."""
    return ["runuser", "-u", user, "--", *argv] if os.geteuid() == 0 else argv
