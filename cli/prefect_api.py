"""The Prefect API for the commands that run flows, and the runs a killed command left behind.

Only commands that run flows (or save blocks) import this module, and with it
Prefect; read-only commands never do (see ``core.stack_description``).

* **No server is ever left behind.** With no API configured (no
  ``PREFECT_API_URL`` in the environment or the Prefect profile), Prefect would
  start a temporary server itself, and a ``kill -9`` of the command orphans it
  (~200 MB each). Instead we start that server ourselves, as a child that the
  kernel kills when this process dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``,
  set before the server's program starts), point ``PREFECT_API_URL`` at it, and
  stop it when the command ends. It uses Prefect's local SQLite database, so
  run history is kept; ``prefect server start`` shows it later.
* **A killed command's run does not stay RUNNING.** Every flow run a command
  starts is tagged with its process (host, pid and the pid's start time). Each
  command that talks to the API first marks Crashed the runs of our flows still
  RUNNING (or PENDING, PAUSED, CANCELLING) whose process is gone from this host.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from cli.children import dying_with_parent
from core.errors import DRError
from core.repository.lock import holder_alive_here, process_start_time

RUN_TAG = "genesis-dr"
PROCESS_TAG = "genesis-dr-process:"  # + host:pid:start-time

STARTUP_TIMEOUT = float(os.environ.get("GENESIS_DR_SERVER_STARTUP_TIMEOUT", "180"))


class ServerStartError(DRError):
    """The temporary Prefect server did not start. Exit 1."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TemporaryServer:
    """A Prefect server for this command only: a child process that dies with it."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def _spawn(self) -> subprocess.Popen:
        import prefect
        from prefect.settings import get_current_settings

        self.port = _free_port()
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            "--app-dir",
            str(prefect.__module_path__.parent),
            "--factory",
            "prefect.server.api.server:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "error",
            "--lifespan",
            "on",
        ]
        # What Prefect's own temporary server gets: no UI, ephemeral-server settings, our settings.
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
            **get_current_settings().to_environment_variables(exclude_unset=True),
        }
        env.pop("PREFECT_API_URL", None)
        return subprocess.Popen(
            # The server's files (Prefect's SQLite database holds block secrets) are created private.
            dying_with_parent(argv, umask=0o077),
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def start(self, timeout: float = STARTUP_TIMEOUT, while_starting: Callable[[], None] | None = None) -> None:
        """Spawn the server and wait until it answers; ``while_starting`` runs meanwhile (the server takes
        seconds to import and migrate; the command's own imports fit in that time, on another core)."""
        self.process = self._spawn()
        if while_starting is not None:
            try:
                while_starting()
            except BaseException:
                self.stop()
                raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code == 3:  # uvicorn: the port was taken meanwhile
                self.process = self._spawn()
                continue
            if code is not None:
                self.process = None
                raise ServerStartError(
                    f"the temporary Prefect server exited with code {code} while starting; start one with "
                    "'prefect server start' and set PREFECT_API_URL=http://127.0.0.1:4200/api"
                )
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise ServerStartError(
            f"the temporary Prefect server did not answer within {timeout:.0f} s; start one with "
            "'prefect server start' and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _set_api_url(url: str | None) -> None:
    from prefect.context import refresh_global_settings_context

    if url is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = url
    refresh_global_settings_context()


@contextmanager
def api(announce: Callable[[str], None]) -> Iterator[str]:
    """Yield where the blocks and runs of this command go; start a temporary server if nothing is configured."""
    from prefect.settings import get_current_settings

    configured = get_current_settings().api.url
    if configured:
        yield str(configured)
        return
    server = TemporaryServer()
    announce(
        "no PREFECT_API_URL: starting a temporary Prefect server for this command (it stops with it; run history "
        "stays in Prefect's local database)"
    )
    server.start(while_starting=_import_run_machinery)
    _set_api_url(server.api_url)
    try:
        yield "the local Prefect database (no PREFECT_API_URL)"
    finally:
        _drain_to_api()
        server.stop()
        _set_api_url(None)


def _import_run_machinery() -> None:
    """What every command that runs a flow imports next anyway (about 0.4 s), imported while the temporary
    server starts instead of after."""
    import prefect.client.orchestration  # noqa: F401
    import prefect.flow_engine  # noqa: F401
    import prefect.task_engine  # noqa: F401


def _drain_to_api() -> None:
    """Send the run logs and events still queued while the server is up (at exit it would be gone)."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5, at_exit=False)
        EventsWorker.drain_all(timeout=5, at_exit=False)
    except Exception:  # best effort: the command's outcome is already decided
        pass


def process_tag(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{PROCESS_TAG}{socket.gethostname()}:{pid}:{process_start_time(pid)}"


def _holder_of(tags: list[str]) -> dict | None:
    for tag in tags:
        if tag.startswith(PROCESS_TAG):
            body = tag[len(PROCESS_TAG) :]
            host_pid, _, start = body.rpartition(":")
            host, _, pid = host_pid.rpartition(":")
            try:
                return {"host": host, "pid": int(pid), "pid_start": None if start == "None" else int(start)}
            except ValueError:
                return None
    return None


def mark_dead_runs_crashed(announce: Callable[[str], None]) -> list[str]:
    """Mark Crashed the unfinished runs of commands whose process is gone from this host; returns their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    unfinished = [StateType.RUNNING, StateType.PENDING, StateType.PAUSED, StateType.CANCELLING]
    crashed = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[RUN_TAG]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=unfinished)),
            ),
            limit=200,
        )
        for run in runs:
            holder = _holder_of(run.tags)
            if holder is None or holder_alive_here(holder) is not False:
                continue  # another host's run, or its process is alive
            message = (
                f"the genesis-dr command running it (pid {holder['pid']} on {holder['host']}) is gone; "
                "marked Crashed by a later genesis-dr command"
            )
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
                task_run_filter=TaskRunFilter(
                    state=TaskRunFilterState(type=TaskRunFilterStateType(any_=unfinished[:2]))
                ),
            )
            for task_run in tasks:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            crashed.append(str(run.id))
            announce(
                f"flow run '{run.name}' ({run.id}) of a killed genesis-dr command (pid {holder['pid']}) was still "
                f"{run.state_type.value if run.state_type else 'unfinished'}; marked it Crashed"
            )
    return crashed


@contextmanager
def session(announce: Callable[[str], None], stack_name: str | None = None) -> Iterator[str]:
    """The Prefect side of a command: an API (a temporary server if needed), dead runs marked Crashed,
    and this command's runs tagged with its process and its stack. Yields where the API is."""
    with ExitStack() as contexts:
        where = contexts.enter_context(api(announce))
        from prefect import tags

        try:
            mark_dead_runs_crashed(announce)
        except DRError:
            raise
        except Exception as exc:  # never stop a backup because the bookkeeping of old runs failed
            announce(f"could not check for runs of killed commands ({type(exc).__name__}: {exc})")
        from deployments.tags import stack_tag

        run_tags = [RUN_TAG, process_tag()] + ([stack_tag(stack_name)] if stack_name else [])
        contexts.enter_context(tags(*run_tags))
        yield where
