"""How fast the read-only commands answer, and whether a kill -9 leaves a Prefect server behind.

    python benchmarks/cli_latency.py [--runs 7] [--kills 3] [--json]

Runs as an operator does on a fresh machine: the console script next to this
Python (``.venv/bin/genesis-dr``), no ``PREFECT_API_URL`` (so commands that run
flows start a temporary server), a throw-away Prefect home and state directory.

1. Setup: ``apply`` a small stack (a files source) and take a ``backup full``
   (both timed once: they start the temporary server).
2. Latency: the median (and min/max) wall time of N runs of ``--help``,
   ``--version``, ``list``, ``stacks``, ``restore --dry-run``, ``key generate``,
   against ``python -c pass`` (the interpreter's own start) and ``python -c
   'import prefect'`` (what the read-only path no longer pays).
3. Orphans: K times, start ``backup full`` of a source that hangs (a port that
   accepts and never answers), wait until the temporary server answers, ``kill
   -9`` the command, and count the server processes still alive 1 s and 5 s
   later (it must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def program() -> str:
    local = Path(sys.executable).parent / "genesis-dr"
    return str(local) if local.exists() else (shutil.which("genesis-dr") or "genesis-dr")


def timed(argv: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_bytes()
            except OSError:
                continue
            children.setdefault(int(stat[stat.rfind(b")") + 2 :].split()[1]), []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def kill_trial(env: dict, cwd: Path) -> dict:
    """Start a hanging backup, kill -9 it once its server answers; count what is left."""
    proc = subprocess.Popen(
        [program(), "backup", "full", "--stack", "bench-hang"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started = time.monotonic()
    servers: set[int] = set()
    try:
        while time.monotonic() - started < 300 and not servers:
            for pid in descendants(proc.pid):
                line = cmdline(pid)
                port = re.search(r"--port (\d+)", line)
                if "prefect.server.api.server:create_app" in line and port and healthy(int(port.group(1))):
                    servers = {pid} | descendants(pid)
            time.sleep(0.2)
        if not servers:
            raise SystemExit("no temporary Prefect server appeared")
        up = time.monotonic() - started
        time.sleep(1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        left = {}
        for after in (1, 5):
            time.sleep(max(0.0, killed + after - time.monotonic()))
            left[after] = sum(alive(pid) for pid in servers)
        for pid in servers:  # clean up whatever outlived the command (a failure)
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        return {"server_up_s": round(up, 1), "server_processes": len(servers), "left_after_1s": left[1],
                "left_after_5s": left[5]}  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per command (median reported)")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 trials")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gdr-cli-bench-"))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
        env |= {
            "PREFECT_HOME": str(work / "prefect-home"),
            "GENESIS_DR_STATE_DIR": str(work / "state"),
            "BACKUP_ENCRYPTION_PASSWORD": "cli-latency-benchmark-passphrase",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        files = work / "app"
        (files / "conf").mkdir(parents=True)
        (files / "conf" / "app.ini").write_text("[app]\nanswer = 42\n")
        stack = work / "bench.yaml"
        stack.write_text(
            f"stack: bench\nvault:\n  path: ./vault\nsources:\n  - name: app-files\n    kind: files\n    root: {files}\n"
        )
        hang = work / "hang.yaml"
        hang.write_text(
            "stack: bench-hang\nvault:\n  path: ./vault-hang\nsources:\n  - name: hangs\n    kind: postgres\n"
            f"    port: {listener.getsockname()[1]}\n    database: app\n"
        )
        setup = {
            "apply (fresh Prefect home: temporary server + migrations)": timed([program(), "apply", str(stack)], env, work),
            "backup full (temporary server)": timed([program(), "backup", "full", "--stack", "bench"], env, work),
            "apply (second stack)": timed([program(), "apply", str(hang)], env, work),
        }  # fmt: skip
        listing = subprocess.run(
            [program(), "list", "--stack", "bench", "--json"], env=env, cwd=work, capture_output=True, text=True
        )
        backup_id = json.loads(listing.stdout)[0]["id"]

        commands = {
            "python -c pass (reference)": [sys.executable, "-c", "pass"],
            "python -c 'import prefect'": [sys.executable, "-c", "import prefect"],
            "genesis-dr --help": [program(), "--help"],
            "genesis-dr --version": [program(), "--version"],
            "genesis-dr list": [program(), "list", "--stack", "bench"],
            "genesis-dr stacks": [program(), "stacks"],
            "genesis-dr restore --dry-run": [
                program(), "restore", "--stack", "bench", "--source", "app-files", "--backup-id", backup_id,
                "--target", f"root={work / 'restored'}", "--dry-run",
            ],
            "genesis-dr key generate": [program(), "key", "generate"],
        }  # fmt: skip
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):  # interleaved, so a slow moment of the machine hits every command alike
            for name, argv in commands.items():
                samples[name].append(timed(argv, env, work))
        kills = [kill_trial(env, work) for _ in range(args.kills)]
    finally:
        listener.close()
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "runs": args.runs,
        "setup_s": {k: round(v, 2) for k, v in setup.items()},
        "latency_s": {
            name: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
            for name, v in samples.items()
        },
        "kill9": kills,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Read-only commands, wall time over {args.runs} runs (seconds):")
    print(f"  {'command':<36} {'median':>7} {'min':>7} {'max':>7}")
    for name, stats in result["latency_s"].items():
        print(f"  {name:<36} {stats['median']:>7.3f} {stats['min']:>7.3f} {stats['max']:>7.3f}")
    print("\nCommands that start a temporary Prefect server (one run each, seconds):")
    for name, value in result["setup_s"].items():
        print(f"  {name:<58} {value:>6.1f}")
    print(f"\nkill -9 of 'genesis-dr backup full' once its temporary server answered ({args.kills} trials):")
    for i, trial in enumerate(kills, 1):
        print(
            f"  trial {i}: server up after {trial['server_up_s']} s ({trial['server_processes']} process(es)); "
            f"still alive 1 s after the kill: {trial['left_after_1s']}, 5 s after: {trial['left_after_5s']}"
        )
    orphans = sum(t["left_after_5s"] for t in kills)
    print(f"  orphaned server processes: {orphans}")
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
