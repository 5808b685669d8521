"""``genesis-dr serve`` as an operator runs it: a subprocess with its own Prefect home and port, a stack applied
by it, the scheduler planning its runs, a backup run by its worker into the vault, a kill -9 (the server's
port freed at once), a restart (the same deployments, none doubled or paused, a backup again), SIGTERM
(exit 0, nothing paused); and the systemd unit checked by systemd-analyze."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy
import yaml

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
GENESIS_DR = str(Path(sys.executable).with_name("genesis-dr"))
READY = "serving stack"


def serve_env(home: Path, **extra: str) -> dict[str, str]:
    """This run's environment without pytest's or Prefect's settings (a fresh shell), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PREFECT_"))}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "GENESIS_DR_SERVE_STOP_GRACE": "10",
        "GENESIS_DR_STATE_DIR": str(home.parent / "state"),
    }
    return env | extra


class Served:
    """A running ``genesis-dr serve`` and its output."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0  # several serves share one log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

    def output(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_ready(self, timeout: float = 150) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.output():
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}:\n{self.output()[-5000:]}"
            assert time.monotonic() < deadline, f"serve not ready in {timeout} s:\n{self.output()[-5000:]}"
            time.sleep(0.3)

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def serving(argv: list[str], env: dict[str, str], log: Path):
    served = Served(argv, env, log)
    try:
        served.wait_ready()
        yield served
    finally:
        served.kill()


@contextmanager
def client_at(port: int):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
        with get_client(sync_client=True) as client:
            yield client


def run_deployment_and_wait(client, full_name: str, timeout: float = 150, **parameters):
    """Start a run of ``full_name`` (as the UI's "Quick run" does) and wait for its final state."""
    deployment = client.read_deployment_by_name(full_name)
    run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters or None)
    return wait_final(client, run.id, timeout)


def wait_final(client, run_id, timeout: float = 150):
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run {run.name} still {run.state and run.state.name}"
        time.sleep(0.5)


def wait_state(client, full_name: str, state: str, timeout: float = 120):
    """The first flow run of ``full_name`` in ``state`` (waits for one)."""
    deployment = client.read_deployment_by_name(full_name)
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id]
        found = [r for r in runs if r.state_type and r.state_type.value == state]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no run of {full_name} {state}: {[(r.name, r.state_name) for r in runs]}"
        time.sleep(0.5)


def group_alive(pgid: int) -> bool:
    """Whether a (non-zombie) process of group ``pgid`` runs."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def port_free(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def scrape(port: int, name: str, timeout: float = 30) -> dict[tuple, float]:
    """(stack, source, type) -> value of ``name`` on the metrics endpoint (waits for it to listen)."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
            break
        except OSError:
            assert time.monotonic() < deadline, f"no metrics endpoint on port {port} after {timeout} s"
            time.sleep(0.5)
    return {
        (s.labels.get("stack"), s.labels.get("source"), s.labels.get("type")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


def children_of(pid: int, word: str) -> list[int]:
    """Pids of ``pid``'s children whose command line contains ``word``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid and word.encode() in argv:
            found.append(int(entry))
    return found


def write_stack(path: Path, stack: dict) -> Path:
    path.write_text(yaml.safe_dump(stack, sort_keys=False))
    return path


def secret_file(path: Path) -> str:
    path.write_text("serve-test-passphrase-" + os.urandom(6).hex() + "\n")
    path.chmod(0o600)
    return f"file:{path}"


def all_off(**on: str) -> dict[str, str]:
    """Every schedule of the stack off but ``on``: nothing else starts while a test runs."""
    from core.stack import SchedulesConfig

    return {key: "off" for key in SchedulesConfig.model_fields} | on


def prefect_yaml_names() -> set[str]:
    return {d["name"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def test_serve_runs_a_backup_stops_and_restarts_without_pausing(tmp_path, redis_factory):
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    from core.repository.manifest import COMPLETED
    from core.stack import load_stack_file

    files = tmp_path / "app-files"
    (files / "config").mkdir(parents=True)
    (files / "config" / "app.conf").write_text("mode=serve-test\n")
    stack = {
        "stack": "default",
        "vault": {"type": "local", "path": str(tmp_path / "vault")},
        "encryption": {"passphrase_from": secret_file(tmp_path / "passphrase")},
        "sources": [{"name": "app-files", "kind": "files", "root": str(files), "paths": ["config"]}],
        # One schedule on (a daily full): the scheduler must plan its runs; the run itself is started now.
        "schedules": all_off(full="0 3 * * *"),
    }
    stack_file = write_stack(tmp_path / "dr.yaml", stack)
    home, port = tmp_path / "prefect-home", free_port()
    env = serve_env(home)
    log = tmp_path / "serve.log"
    argv = [GENESIS_DR, "serve", "--port", str(port)]

    # 1. First start: a server, the stack applied, every deployment registered, a worker; a full runs.
    with serving([*argv, "--apply", str(stack_file)], env, log) as served:
        with client_at(port) as client:
            deployments = client.read_deployments()
            assert sorted(d.name for d in deployments) == sorted(prefect_yaml_names())
            first_ids = {d.name: d.id for d in deployments}
            assert [d.name for d in deployments if d.paused] == []
            # The scheduler planned runs for every deployment whose schedule is on (the full), none for the others.
            active = [d for d in deployments if any(s.active for s in d.schedules)]
            assert [d.name for d in active] == ["full"]
            deadline = time.monotonic() + 60
            while True:
                planned = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[active[0].id])),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
                    ),
                )
                if planned or time.monotonic() > deadline:
                    break
                time.sleep(1)
            # (Prefect 3.8.8's scheduler fails on SQLAlchemy 2.1: "Can't evaluate bulk DML statement" in the log.)
            assert planned, f"the scheduler planned no run of backup/full (SQLAlchemy {sqlalchemy.__version__})"
            assert all(r.auto_scheduled for r in planned)
            assert all(r.expected_start_time.hour == 3 and r.expected_start_time.minute == 0 for r in planned)

            run = run_deployment_and_wait(client, "backup/full")
            assert run.state_type == StateType.COMPLETED, run.state
            assert run.work_pool_name == "genesis-dr"
            assert run.labels["prefect.worker.name"] == f"{socket.gethostname()}-genesis-dr"
            # An operator pauses a deployment: serve leaves that choice alone from now on.
            client.pause_deployment(first_ids["hold"])
        backups = load_stack_file(stack_file).vault.open().list_backups("app-files")
        assert [(b.type, b.status) for b in backups] == [("full", COMPLETED)]

        # kill -9: the server dies with serve (PR_SET_PDEATHSIG), so its port is free for the next start at once.
        served.kill()
        deadline = time.monotonic() + 10
        while not port_free(port):
            assert time.monotonic() < deadline, "the server outlived a kill -9 of serve"
            time.sleep(0.2)

    # 2. Start again, the stack now with a Redis source whose log is captured: the same database and
    # deployments, none doubled, none paused; serve starts the capture; a killed worker is restarted; a backup
    # runs again; SIGTERM stops it all (the live capture too) and exits 0.
    cache = redis_factory()
    cache.client().set("session:1", "alive")
    stack["sources"].append({"name": "cache", "kind": "redis", "host": "127.0.0.1", "port": cache.port})
    stack["schedules"]["capture"] = "*/5 * * * *"
    write_stack(stack_file, stack)
    metrics_port = free_port()
    argv2 = [*argv, "--apply", str(stack_file), "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    workers: list[int] = []
    with serving(argv2, env, log) as served:
        with client_at(port) as client:
            again = client.read_deployments()
            assert {d.name: d.id for d in again} == first_ids
            assert [d.name for d in again if d.paused] == ["hold"]
            assert "deployment hold is paused (by an operator" in served.output()
            assert sorted(d.name for d in again if any(s.active for s in d.schedules)) == ["capture", "full"]
            assert "no capture was running: started flow run" in served.output()
            capture = wait_state(client, "capture/capture", "RUNNING")
            # A worker that dies is restarted (one line says so); the backup below needs the new one.
            workers += children_of(served.proc.pid, "worker")
            os.kill(workers[0], signal.SIGKILL)
            run = run_deployment_and_wait(client, "backup/full")
            assert run.state_type == StateType.COMPLETED, run.state
            assert "worker for pool genesis-dr exited with code -9" in served.output()
            workers += children_of(served.proc.pid, "worker")
        # The metrics endpoint child: the vault's last full of the source, as Prometheus reads it.
        ended = max(b.ended_at for b in load_stack_file(stack_file).vault.open().list_backups("app-files"))
        samples = scrape(metrics_port, "genesis_dr_backup_last_success_timestamp_seconds")
        last = datetime.fromisoformat(ended.replace("Z", "+00:00")).timestamp()
        assert samples[("default", "app-files", "full")] == pytest.approx(last, abs=1)
        code, took = served.terminate()
        assert code == 0, served.output()[-3000:]
        assert took < 30, f"SIGTERM took {took:.1f} s"
    assert "SIGTERM: stopping" in served.output() and "did not stop within" not in served.output()
    assert port_free(port)
    # Nothing left running: no worker, no flow run (the capture included, though a killed worker had started it).
    assert len(workers) == 2 and [pgid for pgid in workers if group_alive(pgid)] == []
    vault = load_stack_file(stack_file).vault.open()
    assert [(b.type, b.status) for b in vault.list_backups("app-files")] == [("full", COMPLETED)] * 2
    assert [(b.type, b.status) for b in vault.list_backups("cache")] == [("full", COMPLETED)]

    # After the stop, read from the server's database itself: nothing paused but the operator's, schedules on.
    with sqlite3.connect(home / "prefect.db") as db:
        paused = db.execute("SELECT name FROM deployment WHERE paused").fetchall()
        on = db.execute(
            "SELECT d.name FROM deployment d JOIN deployment_schedule s ON s.deployment_id = d.id WHERE s.active"
        ).fetchall()
        count = db.execute("SELECT count(*) FROM deployment").fetchone()[0]
        state = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (str(capture.id),)).fetchone()[0]
    assert (paused, sorted(on), count) == ([("hold",)], [("capture",), ("full",)], len(first_ids))
    assert state != "RUNNING"


def test_systemd_unit_is_valid_and_runs_a_real_serve_command_line(tmp_path):
    """systemd-analyze verifies the unit (with the venv's genesis-dr in place of /opt/genesis-dr), and its
    ExecStart parses as a genesis-dr serve command line."""
    from cli.main import build_parser

    unit_text = (REPO / "deployments" / "genesis-dr.service").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read_string(unit_text)
    service = unit["Service"]
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) >= 10 + 5 + 30 + 10  # the workers' grace, kill steps, the server's
    assert service["User"] == "genesis-dr" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["PrivateTmp"] == "yes"
    assert "/var/lib/genesis-dr" in service["ReadWritePaths"].split()
    assert "PREFECT_HOME=/var/lib/genesis-dr/prefect" in unit_text
    assert "GENESIS_DR_PASSPHRASE_FROM=file:" in unit_text

    argv = shlex.split(service["ExecStart"])
    assert argv[0] == "/opt/genesis-dr/.venv/bin/genesis-dr"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.apply == "/etc/genesis-dr/dr.yaml" and args.port == 4200

    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze, "systemd-analyze not found; install systemd (see .ci/run)"
    local = tmp_path / "genesis-dr.service"
    local.write_text(unit_text.replace("/opt/genesis-dr/.venv/bin/genesis-dr", GENESIS_DR))
    proc = subprocess.run([systemd_analyze, "verify", str(local)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
