"""`genesis-dr failover status|health|run` and `genesis-dr failback` as an operator types them (a subprocess
against the test harness's API): read-only commands on the session's replicated pairs, a failover and a
failback on a throw-away Redis pair of this module."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.commands import clean_environment, command_runner, error_line
from tests.test_failover_monitor import in_sync

PASSPHRASE = "failover-cli-Qe81"


def region_yaml(kind: str, cfg, password_var: str) -> str:
    """One database of a region as the stack file writes it, its password read from the environment."""
    fields = {"host": cfg.host, "port": cfg.port}
    if kind != "redis":
        fields |= {"user": cfg.user, "database": cfg.database}
    inner = ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items())
    return f"{kind}: {{{inner}, password: '${{{password_var}}}'}}"


def stack_file(tmp_path: Path, name: str, regions: list[tuple[str, list[str], dict]], **failover) -> Path:
    """A stack file with a files source and a ``failover:`` section of ``regions`` (name, databases, extra)."""
    (tmp_path / "app").mkdir(exist_ok=True)
    lines = [
        f"stack: {name}",
        f"vault: {{path: ./vault-{name}}}",
        "encryption: {passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD}",
        f"sources: [{{name: app-files, kind: files, root: {tmp_path / 'app'}}}]",
        "failover:",
        f"  active_region: {regions[0][0]}",
        *(f"  {key}: {json.dumps(value)}" for key, value in failover.items()),
        "  regions:",
    ]
    for priority, (region, databases, extra) in enumerate(regions, 1):
        lines += [f"    - name: {region}", f"      priority: {priority}"]
        lines += [f"      {db}" for db in databases]
        lines += [f"      {key}: {json.dumps(value)}" for key, value in extra.items()]
    path = tmp_path / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


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


def test_status_and_health_of_the_session_pairs(cli, tmp_path, pg_replica_pair, mysql_replica_pair, redis_replica_pair):
    pg, my, rd = pg_replica_pair, mysql_replica_pair, redis_replica_pair
    regions = [
        (
            "primary",
            [
                region_yaml("postgres", pg.primary.config(), "PG_PW"),
                region_yaml("mysql", my.primary.config(), "MY_PW"),
                region_yaml("redis", rd.primary.config(), "RD_PW"),
            ],
            {"weights": {"postgres.connect": 3}},
        ),
        (
            "standby",
            [
                region_yaml("postgres", pg.standby.config(), "PG_PW"),
                region_yaml("mysql", my.replica.config(), "MY_PW"),
                region_yaml("redis", rd.replica.config(), "RD_PW"),
            ],
            {},
        ),
    ]
    name = f"fo{secrets.token_hex(3)}"
    cli("apply", str(stack_file(tmp_path, name, regions)))

    status = cli("failover", "status", "--stack", name).stdout
    lines = status.splitlines()
    assert lines[0] == (
        f"stack {name}: active region primary, epoch 0 (since 1970-01-01T00:00:00+00:00: initial: the stack file)"
    )
    assert lines[1].startswith("active region: primary (up) at ")
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert rows["primary"][1:4] == ["*", "1.00", "healthy"] and rows["standby"][1:3] == ["1.00", "healthy"], status
    assert "failover target" not in status

    data = json.loads(cli("failover", "status", "--stack", name, "--json").stdout)
    assert data["state"]["epoch"] == 0 and data["last_report"] is None
    assert {n: r["score"] for n, r in data["assessment"]["regions"].items()} == {"primary": 1.0, "standby": 1.0}

    health = cli("failover", "health", "standby", "--stack", name).stdout
    assert health.splitlines()[0] == "standby (priority 2): score 1.00, healthy"
    checks = {line.split()[0]: line.split()[1:3] for line in health.splitlines()[2:]}
    assert checks["postgres.connect"] == ["ok", "1"] and checks["postgres.role"] == ["ok", "0"], health
    assert {c for c, (result, _) in checks.items() if result != "ok"} == set(), health
    assert [line for line in health.splitlines() if not line.startswith(" ")] == [health.splitlines()[0]]

    # Status never counts towards the monitor's failures: no tracker was written.
    assert not (tmp_path / f"vault-{name}" / "failover" / "monitor.json").exists()

    proc = cli("failover", "health", "nowhere", "--stack", name, expect=2)
    assert "unknown region 'nowhere'; choose one of the stack's regions: primary, standby" in error_line(proc)
    out = status + health + json.dumps(data) + proc.stderr
    assert all(password not in out for password in (my.primary.password, rd.primary.password, pg.primary.password))


def test_status_of_a_stack_without_failover_names_the_remedy(cli, tmp_path):
    name = f"nf{secrets.token_hex(3)}"
    (tmp_path / "app").mkdir()
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"stack: {name}\nvault: {{path: ./vault-{name}}}\nencryption: {{passphrase_from: env:BACKUP_ENCRYPTION_PASSWORD}}\n"
        f"sources: [{{name: app-files, kind: files, root: {tmp_path / 'app'}}}]\n"
    )
    cli("apply", str(path))
    proc = cli("failover", "status", "--stack", name, expect=2)
    assert f"stack '{name}' has no 'failover:' section" in error_line(proc)
