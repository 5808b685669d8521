"""`genesis-dr failover status|health|run` and `genesis-dr failback` as an operator types them (a subprocess
against the test harness's API; the stacks are registered in-process): read-only commands on the session's
replicated pairs, a failover and a failback on a throw-away Redis pair."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.failover.state import STATE_KEY, TRACKER_KEY
from core.sources import FilesSourceConfig
from tests.commands import REPO, clean_environment, command_runner, error_line
from tests.fixtures_replication import RedisPair, started_redis_pair
from tests.test_failover_monitor import in_sync, pair_config

PASSPHRASE = "failover-cli-Qe81"


@pytest.fixture
def cli_env(session_passwords) -> dict[str, str]:
    return clean_environment(BACKUP_ENCRYPTION_PASSWORD=PASSPHRASE, **session_passwords)


@pytest.fixture
def session_passwords(pg_replica_pair, mysql_replica_pair, redis_replica_pair) -> dict[str, str]:
    in_sync(pg_replica_pair, mysql_replica_pair, redis_replica_pair)
    return {
        "PG_PW": pg_replica_pair.primary.password,
        "MY_PW": mysql_replica_pair.primary.password,
        "RD_PW": redis_replica_pair.primary.password,
    }


@pytest.fixture
def cli(prefect_api, tmp_path, cli_env):
    return command_runner(tmp_path, cli_env, timeout=300)


def app_files(tmp_path: Path) -> list[FilesSourceConfig]:
    (tmp_path / "app").mkdir(exist_ok=True)
    return [FilesSourceConfig(name="app-files", root=str(tmp_path / "app"))]


def test_status_and_health_of_the_session_pairs(
    cli, tmp_path, make_stack, pg_replica_pair, mysql_replica_pair, redis_replica_pair
):
    pg, my, rd = pg_replica_pair, mysql_replica_pair, redis_replica_pair
    stack = make_stack(app_files(tmp_path), failover=pair_config(pg, my, rd))
    name = stack.name

    status = cli("failover", "status", "--stack", name).stdout
    lines = status.splitlines()
    assert lines[0] == (
        f"stack {name}: active region primary, epoch 0 (since 1970-01-01T00:00:00+00:00: initial: the stack file)"
    )
    assert lines[1].startswith("active region: primary (up) at ")
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert rows["primary"][1:4] == ["*", "1.00", "healthy"] and rows["standby"][1:3] == ["1.00", "healthy"], status
    assert "failover target" not in status

    health = cli("failover", "health", "standby", "--stack", name).stdout
    assert health.splitlines()[0] == "standby (priority 2): score 1.00, healthy"
    checks = {line.split()[0]: line.split()[1:3] for line in health.splitlines()[2:]}
    assert checks["postgres.connect"] == ["ok", "1"] and checks["postgres.role"] == ["ok", "0"], health
    assert {c for c, (result, _) in checks.items() if result != "ok"} == set(), health
    assert [line for line in health.splitlines() if not line.startswith(" ")] == [health.splitlines()[0]]

    # Status never counts towards the monitor's failures: no tracker was written.
    assert not stack.config.vault.store().exists(TRACKER_KEY)

    out = status + health
    assert all(password not in out for password in (my.primary.password, rd.primary.password, pg.primary.password))


@pytest.fixture
def redis_pair() -> Iterator[RedisPair]:
    """A throw-away Redis primary ("west") and replica ("east") this module fails over and back."""
    with started_redis_pair() as pair:
        yield pair


def typed(env: dict[str, str], cwd: Path, answer: str, *args: str) -> subprocess.CompletedProcess:
    """The command with ``answer`` typed at its confirmation prompt."""
    from prefect.settings import PREFECT_API_URL

    env = env | {"PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=cwd, env=env, input=answer, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_run_confirmed_fails_over_then_failback_returns(cli, cli_env, tmp_path, make_stack, redis_pair):
    def db(node) -> dict:
        return {"host": "127.0.0.1", "port": node.port, "password": node.password}

    failover = {
        "active_region": "west",
        "regions": [
            {"name": "west", "priority": 1, "redis": db(redis_pair.primary)},
            {"name": "east", "priority": 2, "redis": db(redis_pair.replica)},
        ],
    }
    stack = make_stack(app_files(tmp_path), failover=failover)
    name, store = stack.name, stack.config.vault.store()
    redis_pair.primary.client().set("order:1", "written in west")
    redis_pair.wait_linked()

    plan = cli("failover", "run", "east", "planned move", "--stack", name, "--dry-run").stdout
    assert plan.splitlines()[0] == "failover to east: from west (epoch 0 -> 1)", plan
    assert plan.splitlines()[-1] == "dry run: nothing was changed"

    declined = typed(cli_env, tmp_path, "no\n", "failover", "run", "east", "planned move", "--stack", name)
    assert declined.returncode == 1, declined.stderr
    assert declined.stdout.startswith(plan.rsplit("\n", 2)[0])  # the plan, as --dry-run printed it, then the question
    assert f"fail stack {name} over to east: not confirmed (no); nothing was changed" in error_line(declined)
    assert not store.exists(STATE_KEY) and redis_pair.replica.client().info("replication")["role"] == "slave"

    done = typed(cli_env, tmp_path, "yes\n", "failover", "run", "east", "planned move", "--stack", name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "## failover to east: completed" in done.stdout, done.stdout
    state = json.loads(store.get(STATE_KEY))
    assert (state["active_region"], state["epoch"], state["reason"]) == ("east", 1, "planned move")
    assert redis_pair.replica.client().info("replication")["role"] == "master"
    redis_pair.replica.client().set("order:2", "written in east")

    back = cli("failback", "west is back", "--stack", name, "--yes", "--json")
    report = json.loads(back.stdout)["report"]
    assert (report["kind"], report["outcome"], report["target"], report["epoch"]) == (
        "failback",
        "completed",
        "west",
        2,
    )
    assert redis_pair.primary.client().info("replication")["role"] == "master"
    assert redis_pair.primary.client().mget("order:1", "order:2") == [b"written in west", b"written in east"]
    assert json.loads(store.get(STATE_KEY))["active_region"] == "west"
    assert redis_pair.primary.password not in done.stdout + back.stdout
