"""``genesis-dr serve``: the Prefect server, every deployment on its schedule and the workers that run them.

One supervised process (see ``cli.supervisor``), the embedded default for production on one machine:

1. the server: the one ``PREFECT_API_URL`` names, else a local ``prefect server start`` on ``--port``
   (Prefect's SQLite database in ``PREFECT_HOME``, the UI included), a child that dies with serve;
2. ``--apply FILE``: the stack file applied first, as ``genesis-dr apply`` does;
3. every deployment of prefect.yaml registered for the stack (``deployments.register``), idempotently:
   a restart finds the same deployments, never a second copy;
4. one process worker per work pool of the stack (``--pool`` restricts them to the pools this machine
   serves: workers next to the data), polling every few seconds;
5. a capture run started when none runs (its schedule restarts a dead one every few minutes anyway);
6. ``--metrics-listen``: the Prometheus endpoint (``genesis-dr metrics --listen``) as a child too.

Children that die are restarted with a backoff; the server is health-checked. SIGTERM or SIGINT stops
the workers first (their flow runs get a grace), then the server, and exits 0. Serve never pauses,
resumes or deletes a deployment: workers do not pause what they serve (``flow.serve()`` does, on exit,
so it is not used), and a deployment an operator paused stays paused (serve names it at start).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cli.replicate import STACK_HELP
from cli.supervisor import Child, Supervisor
from core.errors import ConfigError

HEALTH_EVERY = 15.0  # seconds between health checks of the server
HEALTH_FAILURES = 3  # consecutive failed checks before serve restarts a server of its own
WORKER_QUERY_SECONDS = "5"  # how often a worker asks for due runs (Prefect's default is 10 s)
WORKER_GRACE = float(os.environ.get("GENESIS_DR_SERVE_STOP_GRACE", "30"))
EXTERNAL_WAIT = 60.0  # seconds to wait for the server PREFECT_API_URL names before giving up (exit 1)
UNFINISHED = ("RUNNING", "PENDING", "CANCELLING")


def register(subparsers) -> None:
    """Add ``serve`` to the ``genesis-dr`` parser."""
    s = subparsers.add_parser(
        "serve",
        help="run the Prefect server, every deployment on its schedule and their workers (one supervised process)",
        description="Start (or use, with PREFECT_API_URL) a Prefect server with its UI, register every deployment "
        "of prefect.yaml for the stack with its schedule, and run one process worker per work pool of the stack; "
        "keep the log capture running; restart whatever dies. SIGTERM or Ctrl-C stops the workers (their runs "
        "get a grace), then the server; no deployment is paused. Under systemd: deployments/genesis-dr.service.",
        epilog="exit 0: stopped by a signal; 1: the server did not start; 2: the stack is not applied or --pool "
        "names a pool the stack does not use.",
    )
    s.add_argument("--stack", default="default", help=STACK_HELP)
    s.add_argument("--apply", metavar="FILE", help="apply this stack file first (as 'genesis-dr apply FILE')")
    s.add_argument(
        "--pool",
        action="append",
        metavar="POOL",
        help="run workers only for this work pool of the stack (repeatable; default: all of them). For many "
        "machines: each one serves the pools of the sources next to it, against one central server",
    )
    s.add_argument("--port", type=int, default=4200, help="port of the local server and its UI (default 4200)")
    s.add_argument("--host", default="127.0.0.1", help="address the local server listens on (default 127.0.0.1)")
    s.add_argument("--metrics-listen", metavar="HOST:PORT", help="also serve Prometheus metrics here, e.g. :9464")
    s.set_defaults(func=cmd_serve)


def say(message: str) -> None:
    print(f"genesis-dr serve: {message}", file=sys.stderr, flush=True)


def cmd_serve(args) -> int:
    stop = threading.Event()
    supervisor = Supervisor(say)
    with _signals(stop, supervisor):
        try:
            return Serve(args, stop, supervisor).run()
        finally:
            _stop_all(supervisor)


@contextmanager
def _signals(stop: threading.Event, supervisor: Supervisor) -> Iterator[None]:
    """SIGTERM/SIGINT: stop in order. A second one: kill every child at once and exit 130."""

    def handle(signum, _frame) -> None:
        if stop.is_set():
            say(f"{signal.Signals(signum).name} again: killing every child now")
            supervisor.kill_all()
            os._exit(130)
        say(f"{signal.Signals(signum).name}: stopping (workers first, then the server)")
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stop_all(supervisor: Supervisor) -> None:
    servers = [c for c in supervisor.children if c.name == "prefect server"]
    others = [c for c in supervisor.children if c not in servers]
    supervisor.stop(others)  # workers (their flow runs still reach the server) and metrics first
    supervisor.stop(servers)


def _program(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ConfigError(f"'{name}' is not installed beside {sys.executable} nor on PATH; install genesis-dr's venv")
    return found


class Serve:
    def __init__(self, args, stop: threading.Event, supervisor: Supervisor) -> None:
        self.args = args
        self.stop = stop
        self.supervisor = supervisor
        self.server: Child | None = None
        self.api_url = ""

    def run(self) -> int:
        from cli.prefect_api import _set_api_url

        began = time.monotonic()
        configured = os.environ.get("PREFECT_API_URL") or _profile_api_url()
        if configured:
            self.api_url = configured.rstrip("/")
            say(f"using the Prefect server at {self.api_url}")
            if not self._wait_for_external():
                return 0  # stopped while waiting
        else:
            self.api_url = self._start_server()
            if self.api_url == "":
                return 0  # stopped while the server was starting
        _set_api_url(self.api_url)

        config = self._stack()
        from prefect.client.orchestration import get_client

        from deployments.queues import ensure_pool
        from deployments.register import pools_of

        pools = self._served_pools(pools_of(config))
        # The pools first, then the workers (seconds of imports each), while the deployments are registered.
        with get_client(sync_client=True) as client:
            for pool in pools:
                for line in ensure_pool(client, pool):
                    say(line)
        for pool in pools:
            self.supervisor.start(self._worker(pool))
        from cli.main import apply_operations

        for line in apply_operations(config):  # deployments, automations, the stack-wide limit
            say(line)
        self._name_paused(config.stack)
        self._keep_capture_alive(config, pools)
        if self.args.metrics_listen:
            self.supervisor.start(self._metrics(config.stack))
        where = f"; UI at {self.api_url.removesuffix('/api')}" if self.server else ""
        say(
            f"serving stack '{config.stack}': workers for pool(s) {', '.join(pools)}{where}; ready in "
            f"{time.monotonic() - began:.0f} s (SIGTERM or Ctrl-C stops; no deployment is paused)"
        )
        self._supervise()
        return 0

    # -- the server -------------------------------------------------------------------------------------

    def _start_server(self) -> str:
        from cli.prefect_api import STARTUP_TIMEOUT, ServerStartError

        host, port = self.args.host, self.args.port
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        url = f"http://{local}:{port}/api"
        if _healthy(url):
            raise ServerStartError(
                f"a Prefect server already answers on port {port}: to use it, set PREFECT_API_URL={url}; or "
                "choose another --port"
            )
        if not _port_free(host, port):
            raise ServerStartError(f"port {port} on {host} is in use by another program; choose another --port")
        env = {
            **os.environ,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": host,
            "PREFECT_SERVER_API_PORT": str(port),
        }
        env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
        env.pop("PREFECT_API_URL", None)
        argv = [_program("prefect"), "server", "start", "--host", host, "--port", str(port)]
        # umask 077: the server's SQLite database holds the blocks (source passwords).
        self.server = self.supervisor.start(Child("prefect server", argv, env, umask=0o077))
        say(f"starting a Prefect server on {host}:{port} (its database: PREFECT_HOME; UI at http://{local}:{port})")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.stop.is_set():
            assert self.server.process is not None
            code = self.server.process.poll()
            if code is not None:
                raise ServerStartError(
                    f"the Prefect server exited with code {code} while starting (its output is above); fix that, "
                    "or start one yourself and set PREFECT_API_URL"
                )
            if _healthy(url):
                return url
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the Prefect server did not answer within {STARTUP_TIMEOUT:.0f} s (set "
                    "GENESIS_DR_SERVER_STARTUP_TIMEOUT for a slow machine)"
                )
            self.stop.wait(0.25)
        return ""

    def _wait_for_external(self) -> bool:
        """Wait for the configured server (a central one may start after this machine); False if stopped."""
        from cli.prefect_api import ServerStartError

        deadline = time.monotonic() + EXTERNAL_WAIT
        while not self.stop.is_set():
            if _healthy(self.api_url, timeout=5):
                return True
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"the Prefect server at {self.api_url} (PREFECT_API_URL) does not answer after "
                    f"{EXTERNAL_WAIT:.0f} s; start it, or unset PREFECT_API_URL to run a local one"
                )
            self.stop.wait(1.0)
        return False

    def _supervise(self) -> None:
        failures, next_check = 0, time.monotonic() + HEALTH_EVERY
        while not self.stop.wait(1.0):
            self.supervisor.poll()
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + HEALTH_EVERY
            if _healthy(self.api_url, timeout=5):
                if failures >= HEALTH_FAILURES or (failures and self.server is None):
                    say(f"the Prefect server at {self.api_url} answers again")
                failures = 0
                continue
            failures += 1
            if self.server is None:
                if failures == 1:
                    say(f"the Prefect server at {self.api_url} does not answer (the workers keep retrying)")
            elif failures == HEALTH_FAILURES and self.server.running:
                self.supervisor.restart(
                    self.server, f"did not answer {HEALTH_FAILURES} health checks {HEALTH_EVERY:.0f} s apart"
                )

    # -- the stack and its deployments --------------------------------------------------------------------

    def _stack(self):
        """The stack as applied: its blocks, and the schedules ``genesis-dr apply`` stored beside them."""
        from cli.stacks import from_blocks
        from deployments.schedules import stored_schedules

        stack = self.args.stack
        if self.args.apply:
            from cli.main import cmd_apply
            from core.stack import load_stack_file

            applied = load_stack_file(self.args.apply).stack
            if stack not in ("default", applied):
                raise ConfigError(
                    f"--stack {stack} but {self.args.apply} defines stack '{applied}'; drop --stack or name "
                    "the file of that stack"
                )
            cmd_apply(argparse.Namespace(file=self.args.apply, blocks_only=True))  # registered below
            stack = applied
        config = from_blocks(stack)
        return config.model_copy(update={"schedules": stored_schedules(stack)})

    def _served_pools(self, pools: list[str]) -> list[str]:
        if not self.args.pool:
            return pools
        unknown = [p for p in self.args.pool if p not in pools]
        if unknown:
            raise ConfigError(
                f"--pool {unknown[0]}: the stack sends no work to it (its pools: {', '.join(pools)}); name one of "
                "them, or route a source there with its work_pool and apply the stack"
            )
        return [p for p in pools if p in self.args.pool]

    def _worker(self, pool: str) -> Child:
        env = {**os.environ, "PREFECT_API_URL": self.api_url}
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", WORKER_QUERY_SECONDS)
        name = f"{socket.gethostname()}-{pool}"
        argv = [_program("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name]
        # SIGINT: a Prefect worker stops on it (it ignored SIGTERM for 25 s); its runs get the grace.
        return Child(f"worker for pool {pool}", argv, env, stop_signal=signal.SIGINT, grace=WORKER_GRACE)

    def _metrics(self, stack: str) -> Child:
        env = {**os.environ, "PREFECT_API_URL": self.api_url}
        argv = [sys.executable, "-m", "cli.main", "metrics", "--stack", stack, "--listen", self.args.metrics_listen]
        return Child("metrics endpoint", argv, env)

    def _name_paused(self, stack: str) -> None:
        """An operator's pause is left alone; say which deployments it holds back."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            for deployment in client.read_deployments():
                if (deployment.parameters or {}).get("stack", "default") == stack and deployment.paused:
                    say(
                        f"deployment {deployment.name} is paused (by an operator, or a 'flow.serve()' that "
                        f"exited); left so: 'prefect deployment resume <flow>/{deployment.name}' runs it again"
                    )

    def _keep_capture_alive(self, config, pools: list[str]) -> None:
        """Start a run of each capture deployment of the served pools that has none running (and a source
        with a log to capture: a stack of files has none)."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowFilter,
            FlowFilterName,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        from core.engines import engine_class

        logs = {s.name for s in config.sources if engine_class(s.kind).captures_log}
        with get_client(sync_client=True) as client:
            for deployment in client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["capture"]))):
                parameters = deployment.parameters or {}
                if parameters.get("stack", "default") != config.stack:
                    continue
                if not logs.intersection(parameters.get("sources") or logs):
                    continue
                if deployment.work_pool_name not in pools or deployment.paused:
                    continue
                if deployment.schedules and not any(s.active for s in deployment.schedules):
                    continue  # the stack's schedules say capture: off
                running = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in UNFINISHED]))
                    ),
                    limit=1,
                )
                if running:
                    continue
                run = client.create_flow_run_from_deployment(deployment.id)
                say(f"no capture was running: started flow run '{run.name}' of deployment capture/{deployment.name}")


def _profile_api_url() -> str | None:
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


def _healthy(api_url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
