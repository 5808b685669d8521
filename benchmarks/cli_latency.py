"""How fast the commands answer, where a flow command's time goes, and whether a kill -9 leaves a server behind.

    python benchmarks/cli_latency.py [--runs 7] [--flow-runs 5] [--kills 3] [--sections readonly,flows,kill] [--json]

Runs as an operator does: the console script next to this Python
(``.venv/bin/genesis-dr``), a throw-away Prefect home and state directory.

1. ``readonly``: no ``PREFECT_API_URL`` (commands that run flows start a
   temporary server). Setup: ``apply`` a small stack (a files source) and take
   a ``backup full`` (both timed once: they start the temporary server). Then
   the median (and min/max) wall time of N runs of ``--help``, ``--version``,
   ``list``, ``stacks``, ``restore --dry-run``, ``key generate``, against
   ``python -c pass`` and ``python -c 'import prefect'``.
2. ``flows``: one ``prefect server start`` (its own Prefect home),
   ``PREFECT_API_URL`` pointing at it, a stack with one tiny files source (the
   engine's own work is ~0). Interleaved rounds of ``backup full --source`` and
   ``restore`` (into a fresh directory) against the floor Prefect itself sets:
   ``python -c 'import prefect'`` and a bare no-op flow run (``noop_flow``), and
   the same flow with two no-op tasks (``noop_flow_tasks``). Wall time and CPU
   (user + system of the process and its children) per command, medians; then
   **ours minus the floor**. Every round also runs each command once more under
   a tracer (``TRACER``: the same ``cli.main.main()`` with a few functions
   wrapped, httpx requests counted) for the breakdown by phase.
3. ``kill``: K times, start ``backup full`` of a source that hangs (a port that
   accepts and never answers) with no server configured, wait until its
   temporary server answers, ``kill -9`` the command, and count the server
   processes still alive 1 s and 5 s later (it must be 0).
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
import threading
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


# The tracer: run in a child as ``python -c TRACER OUT.json ARGS...``. It runs ``cli.main.main()`` exactly as
# the console script does, with a few functions wrapped to mark phases, and writes what it saw at exit. It
# imports nothing heavy itself (httpx is patched only once Prefect has imported it), so the phases it reports
# are the command's own.
TRACER = r"""
import atexit, functools, json, os, sys, threading, time
from contextlib import contextmanager
SPAWN = float(os.environ["GDR_BENCH_SPAWN"])
BOOT, T0 = time.time(), time.perf_counter()
def now():
    return BOOT - SPAWN + (time.perf_counter() - T0)
marks, spans, http = {"boot": now()}, {}, []
def mark(name, first=True):
    if not (first and name in marks):
        marks[name] = now()
def span(name, seconds):
    entry = spans.setdefault(name, [0.0, 0])
    entry[0] += seconds
    entry[1] += 1
out, sys.argv = sys.argv[1], ["genesis-dr", *sys.argv[2:]]
def write():
    mark("atexit_last")
    with open(out, "w") as fh:
        json.dump({"marks": marks, "spans": spans, "http": http}, fh)
atexit.register(write)  # registered first, so it runs after Prefect's own exit handlers (log and event drains)

def timed(name, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            span(name, time.perf_counter() - started)
    return wrapper

def rebind(attr, new, old):
    # Replace ``old`` wherever our modules imported it by name (``from x import f``).
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("cli", "flows", "tasks", "blocks", "core") and getattr(module, attr, None) is old:
            setattr(module, attr, new)

def patch_httpx():
    import httpx
    if getattr(httpx.Client.send, "_traced", False):
        return
    sync_send, async_send = httpx.Client.send, httpx.AsyncClient.send
    def record(request, started, response):
        http.append([now(), threading.current_thread().name, request.method, request.url.path,
                     time.perf_counter() - started, getattr(response, "status_code", None)])
    def send(self, request, *a, **k):
        started, response = time.perf_counter(), None
        try:
            response = sync_send(self, request, *a, **k)
            return response
        finally:
            record(request, started, response)
    async def asend(self, request, *a, **k):
        started, response = time.perf_counter(), None
        try:
            response = await async_send(self, request, *a, **k)
            return response
        finally:
            record(request, started, response)
    send._traced = True
    httpx.Client.send, httpx.AsyncClient.send = send, asend

def patch_run():
    # Once the command imported its flow: flow call and body, task bodies, stack loads, slots, the engine.
    import prefect.flows
    import prefect.tasks
    import prefect.flow_engine
    import prefect.task_engine

    call = prefect.flows.Flow.__call__
    depth = [0]
    def flow_call(self, *args, **kwargs):
        depth[0] += 1
        if depth[0] == 1:
            mark("flow_call")
        try:
            return call(self, *args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                mark("flow_return", first=False)
    prefect.flows.Flow.__call__ = flow_call
    # Bodies: the engines call the user's function through call_with_parameters (wrapping .fn would
    # change what Prefect validates the parameters against).
    flow_fn_call = prefect.flow_engine.call_with_parameters
    def flow_body(fn, parameters):
        mark("flow_body_start")
        try:
            return flow_fn_call(fn, parameters)
        finally:
            mark("flow_body_end", first=False)
    prefect.flow_engine.call_with_parameters = flow_body
    task_fn_call = prefect.task_engine.call_with_parameters
    def task_body(fn, parameters):
        started = time.perf_counter()
        try:
            return task_fn_call(fn, parameters)
        finally:
            span(f"task {getattr(fn, '__name__', '?')}", time.perf_counter() - started)
    prefect.task_engine.call_with_parameters = task_body
    import core.operations as ops
    for attr in ("backup_source", "restore_backup"):
        setattr(ops, attr, timed(f"engine ({attr})", getattr(ops, attr)))
    try:
        import blocks.apply as apply
        old = apply.load_stack
        new = timed("stack resolution (blocks)", old)
        apply.load_stack = new
        rebind("load_stack", new, old)
    except ImportError:
        pass
    import tasks.limits as limits
    old_exclusive = limits.exclusive
    @contextmanager
    def exclusive(*args, **kwargs):
        started = time.perf_counter()
        with old_exclusive(*args, **kwargs):
            acquired = time.perf_counter()
            span("slot acquire", acquired - started)
            try:
                yield
            finally:
                released = time.perf_counter()
                span("slot body", released - acquired)
        span("slot release", time.perf_counter() - released)
    limits.exclusive = exclusive
    rebind("exclusive", exclusive, old_exclusive)

import cli.prefect_api as prefect_api
original_session, original_api = prefect_api.session, prefect_api.api
original_dead = prefect_api.mark_dead_runs_crashed
@contextmanager
def session(*args, **kwargs):
    mark("session_start")
    with original_session(*args, **kwargs) as where:
        yield where
@contextmanager
def api(*args, **kwargs):
    with original_api(*args, **kwargs) as where:
        mark("api_ready")
        patch_httpx()
        yield where
def mark_dead_runs_crashed(*args, **kwargs):
    mark("dead_runs_start")
    try:
        return original_dead(*args, **kwargs)
    finally:
        mark("dead_runs_end")
        # The command imports its flow module next; patch it when it first calls a flow.
        import prefect.flows
        flow_call = prefect.flows.Flow.__call__
        def first_call(self, *a, **k):
            prefect.flows.Flow.__call__ = flow_call
            patch_run()
            return prefect.flows.Flow.__call__(self, *a, **k)
        prefect.flows.Flow.__call__ = first_call
prefect_api.session, prefect_api.api, prefect_api.mark_dead_runs_crashed = session, api, mark_dead_runs_crashed
prefect_api.TemporaryServer.start = timed("temporary server start", prefect_api.TemporaryServer.start)
import cli.main
mark("main_start")
try:
    code = cli.main.main()
finally:
    mark("main_return")
sys.exit(code)
"""


NOOP_FLOW = """
from prefect import flow, task
@flow(name="noop")
def noop() -> int:
    return 1
noop()
"""
# The same shape as ours (parameters, a planning task, then one task per source), doing nothing.
NOOP_FLOW_TASKS = """
from prefect import flow, task
@task
def plan(stack: str) -> list:
    return ["app-files"]
@task
def work(stack: str, source: str) -> dict:
    return {"source": source}
@flow(name="noop-tasks")
def noop(stack: str = "bench", sources: list | None = None) -> list:
    return [work.submit(stack, s).result() for s in plan(stack)]
noop(stack="bench", sources=["app-files"])
"""

# Phases of a flow command, from the tracer's marks (seconds since the parent spawned it).
PHASES = [
    ("interpreter start", None, "boot"),
    ("CLI import, arguments", "boot", "session_start"),
    ("import prefect, settings, API check", "session_start", "api_ready"),
    ("runs of killed commands (1 query)", "dead_runs_start", "dead_runs_end"),
    ("our imports (flows, tasks, blocks, core)", "dead_runs_end", "flow_call"),
    ("flow run creation", "flow_call", "flow_body_start"),
    ("flow body (tasks, blocks, slots, engine)", "flow_body_start", "flow_body_end"),
    ("flow end (final state, heartbeat join)", "flow_body_end", "flow_return"),
    ("report printed, session closed", "flow_return", "main_return"),
    ("exit: worker threads, log/event drains", "main_return", "atexit_last"),
    ("exit: interpreter teardown", "atexit_last", "end"),
]


def http_kind(path: str) -> str:
    for needle, kind in (
        ("/block_documents", "block loads"),
        ("/concurrency_limits/increment", "slot acquire"),
        ("/concurrency_limits/decrement", "slot release"),
        ("/renew", "slot lease renewal"),
        ("/concurrency_limits", "slot limit read/create"),
        ("/logs", "logs"),
        ("/artifacts", "artifacts"),
        ("/csrf-token", "CSRF tokens"),
        ("/flow_runs/filter", "runs of killed commands"),
        ("/flow_runs", "flow run"),
        ("/flows", "flow"),
        ("/task_runs", "task runs"),
        ("/admin", "server version/storage"),
    ):
        if needle in path:
            return kind
    return "other"


def run_with_rusage(argv: list[str], env: dict, cwd: Path) -> dict:
    spawned = time.time()
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env | {"GDR_BENCH_SPAWN": repr(spawned)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read())),
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read())),
    ]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    ended = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    stdout, stderr = b"".join(out_chunks).decode(), b"".join(err_chunks).decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}\n{stdout}\n{stderr}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "end": ended - spawned, "stdout": stdout}


def traced(args: list[str], env: dict, cwd: Path) -> dict:
    """One run of ``genesis-dr ARGS`` under the tracer: phases (seconds), spans, HTTP requests by kind."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    try:
        run = run_with_rusage([sys.executable, "-c", TRACER, str(out), *args], env, cwd)
        trace = json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)
    marks = trace["marks"] | {"end": run["end"]}
    phases = {}
    for name, start, end in PHASES:
        if end in marks and (start is None or start in marks):
            phases[name] = marks[end] - (marks[start] if start else 0.0)
    requests: dict[str, list[float]] = {}
    for _, _, _, path, seconds, _ in trace["http"]:
        requests.setdefault(http_kind(path), []).append(seconds)
    return {
        "wall": run["wall"],
        "cpu": run["cpu"],
        "phases": phases,
        "spans": {k: v[0] for k, v in trace["spans"].items()},
        "span_counts": {k: v[1] for k, v in trace["spans"].items()},
        "http": {k: len(v) for k, v in requests.items()},
        "http_total": len(trace["http"]),
        "http_503": sum(1 for h in trace["http"] if h[5] == 503),
    }


def start_prefect_server(work: Path, env: dict) -> tuple[subprocess.Popen, str]:
    """``prefect server start`` on a free port with its own Prefect home; returns (process, API URL)."""
    port = free_port()
    server_env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"} | {
        "PREFECT_HOME": str(work / "server-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    prefect = Path(sys.executable).parent / "prefect"
    proc = subprocess.Popen(
        [
            str(prefect) if prefect.exists() else "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # stopped as a group at the end
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"prefect server start exited with code {proc.returncode}")
        if healthy(port):
            return proc, f"http://127.0.0.1:{port}/api"
        time.sleep(0.3)
    stop_group(proc)
    raise SystemExit("prefect server start: no answer within 180 s")


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def median_of(samples: list[dict], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def flows_section(work: Path, base_env: dict, runs: int) -> dict:
    """Backup and restore of a tiny files source against a running server, the floor, and the breakdown."""
    server, api_url = start_prefect_server(work, base_env)
    try:
        env = base_env | {"PREFECT_API_URL": api_url, "PREFECT_HOME": str(work / "client-home")}
        files = work / "tiny"
        (files / "conf").mkdir(parents=True)
        (files / "conf" / "app.ini").write_text("[app]\nanswer = 42\n")
        stack = work / "tiny.yaml"
        stack.write_text(
            f"stack: tiny\nvault:\n  path: ./vault-tiny\nsources:\n  - name: app-files\n    kind: files\n"
            f"    root: {files}\n"
        )
        timed([program(), "apply", str(stack)], env, work)
        backup_args = ["backup", "full", "--stack", "tiny", "--source", "app-files"]
        timed([program(), *backup_args], env, work)  # the first backup creates the vault and the limit
        listing = subprocess.run(
            [program(), "list", "--stack", "tiny", "--json"], env=env, cwd=work, capture_output=True, text=True
        )
        backup_id = json.loads(listing.stdout)[0]["id"]
        targets = iter(range(10**6))

        def restore_args() -> list[str]:
            return ["restore", "--stack", "tiny", "--source", "app-files", "--backup-id", backup_id,
                    "--target", f"root={work / 'flows-restored' / str(next(targets))}"]  # fmt: skip

        commands = {
            "python -c pass": lambda: [sys.executable, "-c", "pass"],
            "python -c 'import prefect'": lambda: [sys.executable, "-c", "import prefect"],
            "no-op flow (floor)": lambda: [sys.executable, "-c", NOOP_FLOW],
            "no-op flow, 2 no-op tasks": lambda: [sys.executable, "-c", NOOP_FLOW_TASKS],
            "genesis-dr backup full --source": lambda: [program(), *backup_args],
            "genesis-dr restore": lambda: [program(), *restore_args()],
        }
        samples: dict[str, list[dict]] = {name: [] for name in commands}
        traces: dict[str, list[dict]] = {"backup": [], "restore": []}
        for _ in range(runs):  # interleaved: a busy moment of the shared machine hits every command alike
            for name, argv in commands.items():
                samples[name].append(run_with_rusage(argv(), env, work))
            traces["backup"].append(traced(backup_args, env, work))
            traces["restore"].append(traced(restore_args(), env, work))
    finally:
        stop_group(server)

    result: dict = {"runs": runs, "commands": {}, "breakdown": {}}
    for name, runs_ in samples.items():
        result["commands"][name] = {
            "wall_median": round(median_of(runs_, "wall"), 3),
            "wall_min": round(min(r["wall"] for r in runs_), 3),
            "wall_max": round(max(r["wall"] for r in runs_), 3),
            "cpu_median": round(median_of(runs_, "cpu"), 3),
        }
    floor = result["commands"]["no-op flow (floor)"]
    for ours, key in (("genesis-dr backup full --source", "backup"), ("genesis-dr restore", "restore")):
        c = result["commands"][ours]
        result[f"{key}_minus_floor"] = {
            "wall": round(c["wall_median"] - floor["wall_median"], 3),
            "cpu": round(c["cpu_median"] - floor["cpu_median"], 3),
        }
    for key, runs_ in traces.items():
        phases = [name for name, _, _ in PHASES]
        spans = sorted({k for r in runs_ for k in r["spans"]})
        kinds = sorted({k for r in runs_ for k in r["http"]})
        result["breakdown"][key] = {
            "wall_median": round(median_of(runs_, "wall"), 3),
            "cpu_median": round(median_of(runs_, "cpu"), 3),
            "phases_median_s": {p: round(statistics.median(r["phases"].get(p, 0.0) for r in runs_), 3) for p in phases},
            "spans_median_s": {s: round(statistics.median(r["spans"].get(s, 0.0) for r in runs_), 3) for s in spans},
            "span_counts": {s: max(r["span_counts"].get(s, 0) for r in runs_) for s in spans},
            "http_requests_median": {k: statistics.median(r["http"].get(k, 0) for r in runs_) for k in kinds},
            "http_total_median": statistics.median(r["http_total"] for r in runs_),
            "http_503_total": sum(r["http_503"] for r in runs_),
        }
    return result


def print_flows(result: dict) -> None:
    print(f"\nFlow commands against a running Prefect server, tiny files source, {result['runs']} interleaved rounds:")
    print(f"  {'command':<36} {'wall median':>11} {'min':>7} {'max':>7} {'CPU median':>11}")
    for name, c in result["commands"].items():
        print(
            f"  {name:<36} {c['wall_median']:>11.3f} {c['wall_min']:>7.3f} {c['wall_max']:>7.3f} {c['cpu_median']:>11.3f}"
        )
    for key in ("backup", "restore"):
        d = result[f"{key}_minus_floor"]
        print(f"  ours minus the floor (no-op flow), {key:<8}: wall {d['wall']:+.3f} s, CPU {d['cpu']:+.3f} s")
    for key, b in result["breakdown"].items():
        print(f"\n  {key}, traced (median wall {b['wall_median']:.3f} s, CPU {b['cpu_median']:.3f} s), by phase:")
        for phase, seconds in b["phases_median_s"].items():
            print(f"    {phase:<48} {seconds:>7.3f}")
        print("    inside the flow body (summed over tasks; count):")
        for name, seconds in b["spans_median_s"].items():
            print(f"      {name:<46} {seconds:>7.3f}  ({b['span_counts'][name]})")
        requests = ", ".join(f"{k} {v:g}" for k, v in b["http_requests_median"].items())
        print(f"    API requests: {b['http_total_median']:g} ({requests}); HTTP 503 retried: {b['http_503_total']}")


SECTIONS = ("readonly", "flows", "kill")


def readonly_section(work: Path, env: dict, runs: int) -> dict:
    """Setup through the temporary server, then the read-only commands (which never start one)."""
    files = work / "app"
    (files / "conf").mkdir(parents=True)
    (files / "conf" / "app.ini").write_text("[app]\nanswer = 42\n")
    stack = work / "bench.yaml"
    stack.write_text(
        f"stack: bench\nvault:\n  path: ./vault\nsources:\n  - name: app-files\n    kind: files\n    root: {files}\n"
    )
    setup = {
        "apply (fresh Prefect home: temporary server + migrations)": timed([program(), "apply", str(stack)], env, work),
        "backup full (temporary server)": timed([program(), "backup", "full", "--stack", "bench"], env, work),
        "apply (again: temporary server)": timed([program(), "apply", str(stack)], env, work),
    }  # fmt: skip
    temporary = traced(["backup", "full", "--stack", "bench"], env, work)
    setup["backup full (temporary server), traced"] = temporary["wall"]
    setup["  of which the temporary server's start"] = temporary["spans"].get("temporary server start", 0.0)
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
    for _ in range(runs):  # interleaved, so a slow moment of the machine hits every command alike
        for name, argv in commands.items():
            samples[name].append(timed(argv, env, work))
    return {
        "runs": runs,
        "setup_s": {k: round(v, 2) for k, v in setup.items()},
        "latency_s": {
            name: {"median": round(statistics.median(v), 3), "min": round(min(v), 3), "max": round(max(v), 3)}
            for name, v in samples.items()
        },
    }


def kill_section(work: Path, env: dict, kills: int) -> list[dict]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        hang = work / "hang.yaml"
        hang.write_text(
            "stack: bench-hang\nvault:\n  path: ./vault-hang\nsources:\n  - name: hangs\n    kind: postgres\n"
            f"    port: {listener.getsockname()[1]}\n    database: app\n"
        )
        timed([program(), "apply", str(hang)], env, work)
        return [kill_trial(env, work) for _ in range(kills)]
    finally:
        listener.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per read-only command (median reported)")
    parser.add_argument("--flow-runs", type=int, default=5, help="rounds of the flow commands (median reported)")
    parser.add_argument("--kills", type=int, default=3, help="kill -9 trials")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {','.join(SECTIONS)}")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    if not sections or sections - set(SECTIONS):
        parser.error(f"--sections: choose from {','.join(SECTIONS)}")

    work = Path(tempfile.mkdtemp(prefix="gdr-cli-bench-"))
    result: dict = {}
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
        env |= {
            "PREFECT_HOME": str(work / "prefect-home"),
            "GENESIS_DR_STATE_DIR": str(work / "state"),
            "BACKUP_ENCRYPTION_PASSWORD": "cli-latency-benchmark-passphrase",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        if "flows" in sections:
            result["flows"] = flows_section(work, env, args.flow_runs)
        if "readonly" in sections:
            result["readonly"] = readonly_section(work, env, args.runs)
        if "kill" in sections:
            result["kill9"] = kill_section(work, env, args.kills)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    orphans = sum(t["left_after_5s"] for t in result.get("kill9", []))
    if args.json:
        print(json.dumps(result, indent=2))
        return 1 if orphans else 0
    if "readonly" in result:
        r = result["readonly"]
        print(f"Read-only commands, wall time over {r['runs']} runs (seconds):")
        print(f"  {'command':<36} {'median':>7} {'min':>7} {'max':>7}")
        for name, stats in r["latency_s"].items():
            print(f"  {name:<36} {stats['median']:>7.3f} {stats['min']:>7.3f} {stats['max']:>7.3f}")
        print("\nCommands that start a temporary Prefect server (one run each, seconds):")
        for name, value in r["setup_s"].items():
            print(f"  {name:<58} {value:>6.1f}")
    if "flows" in result:
        print_flows(result["flows"])
    if "kill9" in result:
        kills = result["kill9"]
        print(f"\nkill -9 of 'genesis-dr backup full' once its temporary server answered ({len(kills)} trials):")
        for i, trial in enumerate(kills, 1):
            print(
                f"  trial {i}: server up after {trial['server_up_s']} s ({trial['server_processes']} process(es)); "
                f"still alive 1 s after the kill: {trial['left_after_1s']}, 5 s after: {trial['left_after_5s']}"
            )
        print(f"  orphaned server processes: {orphans}")
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
