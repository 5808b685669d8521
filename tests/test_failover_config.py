"""The stack file's `failover:` section: parsed, every bad field named, stored as blocks without its passwords
in the stack's document, and described locally without secrets."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
from pydantic import SecretStr

from core.errors import ConfigError
from core.failover.topology import FailoverConfig, dns_session, rds_session
from core.stack import StackConfig, load_stack_file, parse_stack

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_ENV = {"BACKUP_ENCRYPTION_PASSWORD": "unused"}  # the example reads no other variable without a default


def stack_data(failover: dict | None = None, **extra) -> dict:
    data = {"vault": {"path": "/tmp/v"}, "sources": [{"name": "cache", "kind": "redis"}], **extra}
    if failover is not None:
        data["failover"] = failover
    return data


def two_regions(**change) -> dict:
    west = {"name": "us-west-2", "priority": 1, "postgres": {"host": "10.0.0.5"}}
    east = {"name": "us-east-1", "priority": 2, "redis": {"port": 6380}}
    data = {"active_region": "us-west-2", "regions": [west, east]}
    for key, value in change.items():
        where, _, field = key.partition("__")
        if where in ("west", "east"):
            (west if where == "west" else east)[field] = value
        else:
            data[key] = value
    return data


# -- the section parses ---------------------------------------------------------------------------------
def test_apply_warns_when_no_channel_would_page_for_a_lost_region():
    from core.notify.config import NotificationsConfig

    config = load_stack_file(REPO / "examples" / "failover.yaml", env=EXAMPLE_ENV)
    with_channels = lambda channels: config.model_copy(  # noqa: E731
        update={"notifications": NotificationsConfig.model_validate(channels)}
    )
    # No channel at all, and channels whose activity lists predate failover: a lost region pages nobody.
    for channels in ({}, {"pagerduty": {"routing_key": "k", "activities": ["backup", "drill"]}}):
        (warning,) = with_channels(channels).warnings()
        assert "receives monitor or failover events" in warning and "failover, failback, monitor" in warning
    only_failover = {"slack": {"webhook_url": "https://hooks.example/x", "activities": ["failover"]}}
    assert "receives monitor events" in with_channels(only_failover).warnings()[0]
    # A channel without a list gets every activity; a stack without failover: has nothing to page about.
    assert with_channels({"slack": {"webhook_url": "https://hooks.example/x"}}).warnings() == []
    assert config.model_copy(update={"failover": None}).warnings() == []


def test_example_failover_stack_parses_as_documented():
    config = load_stack_file(REPO / "examples" / "failover.yaml", env=EXAMPLE_ENV)
    fo = config.failover
    assert (fo.policy, fo.active_region, fo.max_data_loss_seconds, fo.failures_before_down) == (
        "manual",
        "us-west-2",
        5,
        3,
    )
    got = [
        (
            r.name,
            r.priority,
            r.aws_region,
            r.rds_instance_id,
            [k for k in ("postgres", "mysql", "redis") if getattr(r, k)],
        )
        for r in fo.by_priority()
    ]
    assert got == [
        ("us-west-2", 1, "us-west-2", None, ["postgres", "mysql", "redis"]),
        ("us-east-1", 2, "us-east-1", None, ["postgres", "mysql", "redis"]),
        ("eu-west-1", 3, "eu-west-1", "app-mysql-eu-west-1", ["mysql", "redis"]),
    ]
    west = fo.region("us-west-2")
    assert west.postgres.name == "us-west-2-postgres"
    assert west.postgres_rebuild.model_dump() == {
        "data_directory": "/var/lib/postgresql/16/main",
        "bin_dir": "/usr/lib/postgresql/16/bin",
        "run_as": "postgres",
        "options": "-c config_file=/etc/postgresql/16/main/postgresql.conf",
    }
    assert [(r.dns.zone, r.dns.record_name, r.dns.value) for r in fo.by_priority()] == [
        ("Z0123456789EXAMPLE", "app.example.com.", "lb.us-west-2.example.com"),
        ("Z0123456789EXAMPLE", "app.example.com.", "lb.us-east-1.example.com"),
        ("Z0123456789EXAMPLE", "app.example.com.", "lb.eu-west-1.example.com"),
    ]
    assert config.schedules.monitor == "* * * * *"


def test_no_failover_section_and_the_monitor_schedule():
    from deployments.schedules import DEPLOYMENTS

    plain = parse_stack(stack_data(), "s.yaml")
    assert plain.failover is None
    assert plain.schedules.deployment_schedules()["monitor"] == {"cron": "* * * * *", "timezone": "UTC", "active": True}
    assert DEPLOYMENTS["monitor"] == "monitor/monitor"
    paused = parse_stack(stack_data(schedules={"monitor": "off"}), "s.yaml")
    assert paused.schedules.deployment_schedules()["monitor"] == {
        "cron": "* * * * *",
        "timezone": "UTC",
        "active": False,
    }


def test_region_aws_settings_and_rebuild_defaults():
    fo = parse_stack(
        stack_data(
            two_regions(
                west__rds_instance_id="app-west",
                west__aws_region="us-gov-west-1",
                west__aws_endpoint_url="http://127.0.0.1:5000",
                west__aws_credentials="aws-rds",
                west__postgres_rebuild={"data_directory": "/srv/pg"},
                east__name="dr-site",
            )
            | {"active_region": "dr-site"}
        ),
        "s.yaml",
    ).failover
    west, east = fo.regions
    assert (west.aws_region, west.aws_endpoint_url, west.aws_credentials) == (
        "us-gov-west-1",
        "http://127.0.0.1:5000",
        "aws-rds",
    )
    assert west.postgres_rebuild.model_dump() == {
        "data_directory": "/srv/pg",
        "bin_dir": None,
        "run_as": None,
        "options": "",
    }
    assert east.aws_region is None  # not an AWS region's name, and no RDS instance that would need one
    # A dump validates again (what the stack's block stores and reloads).
    assert FailoverConfig.model_validate(fo.model_dump()) == fo


# -- every bad field is named ---------------------------------------------------------------------------
W = "failover.regions[0] (us-west-2)"
E = "failover.regions[1] (us-east-1)"


@pytest.mark.parametrize(
    ("failover", "message"),
    [
        (two_regions(active_region="ap-south-1"), "field 'failover.active_region': 'ap-south-1' is not a region"),
        (two_regions(east__name="us-west-2"), "field 'failover.regions[1] (us-west-2).name': region name 'us-west-2'"),
        (two_regions(east__priority=1), f"field '{E}.priority': priority 1 is also that of regions[0]"),
        (two_regions(regions=[{"name": "a", "priority": 1}]), "field 'failover.regions': list at least 2 regions"),
        (two_regions(polcy="automatic"), "unknown field 'failover.polcy'; did you mean 'policy'?"),
        (two_regions(policy="auto"), "field 'failover.policy': Input should be 'manual' or 'automatic'"),
        (two_regions(west__prio=2), f"unknown field '{W}.prio'; did you mean 'priority'?"),
        (two_regions(west__postgres={"hots": "x"}), f"unknown field '{W}.postgres.hots'; did you mean 'host'?"),
        (two_regions(east__redis={"port": 0}), f"field '{E}.redis.port'"),
        (
            two_regions(west__dns={"provider": "route53", "zone": "Z1", "record_name": "app.example.com."}),
            f"missing required field '{W}.dns.value'",
        ),
        (
            two_regions(west__dns={"provider": "route53", "zone": "Z1", "record_name": "a.", "value": "x", "ttl": -5}),
            f"field '{W}.dns.ttl'",
        ),
        (
            two_regions(west__dns={"provider": "route53", "zone": "Z1", "record_name": "a.", "value": "x", "tl": 5}),
            f"unknown field '{W}.dns.tl'; did you mean 'ttl'?",
        ),
        (
            two_regions(west__dns={"provider": "bind", "zone": "Z1", "record_name": "a.", "value": "x"}),
            f"field '{W}.dns.provider'",
        ),
        (
            two_regions(west__postgres_rebuild={"data_directory": "pgdata"}),
            f"field '{W}.postgres_rebuild.data_directory': 'pgdata' is not an absolute path",
        ),
        (
            two_regions(west__postgres_rebuild={"data_directory": "/"}),
            f"field '{W}.postgres_rebuild.data_directory': '/' cannot be a data directory",
        ),
        (
            two_regions(west__postgres_rebuild={"data_directory": "/srv/pg", "bin_dir": "bin"}),
            f"field '{W}.postgres_rebuild.bin_dir': 'bin' is not an absolute path",
        ),
        (
            two_regions(west__postgres_rebuild={"data_directory": "/srv/pg", "run_as": "postgres; rm"}),
            f"field '{W}.postgres_rebuild.run_as': 'postgres; rm' is not an OS user name",
        ),
        (
            two_regions(west__postgres_rebuild={"data_directory": "/srv/pg", "options": "-c a=1\n-c b=2"}),
            f"field '{W}.postgres_rebuild.options': options must be one line",
        ),
        (
            two_regions(west__postgres_rebuild={"datadir": "/srv/pg"}),
            f"unknown field '{W}.postgres_rebuild.datadir'; did you mean 'data_directory'?",
        ),
        (
            two_regions(east__postgres_rebuild={"data_directory": "/srv/pg"}),
            f"field '{E}.postgres_rebuild': the region has no 'postgres' to rebuild",
        ),
        (two_regions(west__aws_region="Oregon"), f"field '{W}.aws_region': 'Oregon' is not an AWS region"),
        (
            two_regions(east__name="dr-site", east__rds_instance_id="db-1", active_region="dr-site"),
            "field 'failover.regions[1] (dr-site).aws_region': region 'dr-site' is not an AWS region name",
        ),
        (
            two_regions(west__aws_endpoint_url="localhost:5000"),
            f"field '{W}.aws_endpoint_url': localhost:5000 is not an http(s) URL; give https://host[:port]",
        ),
        (
            two_regions(west__aws_endpoint_url="http://rds.internal"),
            f"field '{W}.aws_endpoint_url': http://rds.internal is plain http to another host",
        ),
        (
            two_regions(west__aws_credentials="My Creds"),
            f"field '{W}.aws_credentials': 'My Creds' is not a block name",
        ),
        (two_regions(west__health_urls=["app:80/health"]), f"field '{W}.health_urls[0]': 'app:80/health' is not"),
    ],
)
def test_bad_failover_fields_are_named(failover, message):
    with pytest.raises(ConfigError) as info:
        parse_stack(stack_data(failover), "stack.yaml")
    text = str(info.value)
    assert text.startswith("stack.yaml: ") and message in text, text
    assert "\n" not in text


def test_bad_monitor_schedule_is_named():
    with pytest.raises(ConfigError, match=r"field 'schedules.monitor': 'every minute' is not a cron expression"):
        parse_stack(stack_data(schedules={"monitor": "every minute"}), "stack.yaml")


# -- blocks: passwords stay in the region source blocks -------------------------------------------------
PASSWORDS = {"pg": "west-Pg-Secret-1", "my": "east-My-Secret-2", "redis": "east-Redis-Secret-3"}


def secret_stack(name: str) -> StackConfig:
    return StackConfig(
        stack=name,
        vault={"path": "/tmp/unused-vault"},
        encryption={"passphrase_from": "env:NOPE"},
        sources=[{"name": "cache", "kind": "redis"}],
        failover={
            "policy": "automatic",
            "active_region": "us-west-2",
            "regions": [
                {
                    "name": "us-west-2",
                    "priority": 1,
                    "postgres": {"host": "pg.west", "password": PASSWORDS["pg"], "database": "app"},
                    "postgres_rebuild": {"data_directory": "/srv/pg", "run_as": "postgres"},
                    "health_urls": ["https://west.example.com/healthz"],
                    "dns": {"provider": "route53", "zone": "Z1", "record_name": "app.example.com.", "value": "w.lb"},
                },
                {
                    "name": "us-east-1",
                    "priority": 2,
                    "mysql": {"host": "my.east", "password": PASSWORDS["my"], "database": "shop"},
                    "redis": {"host": "redis.east", "password": PASSWORDS["redis"]},
                    "rds_instance_id": "app-east",
                    "aws_credentials": "aws-rds-east",
                    "dns": {
                        "provider": "route53",
                        "zone": "Z1",
                        "record_name": "app.example.com.",
                        "value": "e.lb",
                        "credentials": "aws-dns",
                    },
                },
            ],
        },
    )


def revealed(config) -> dict:
    def walk(node):
        if isinstance(node, SecretStr):
            return node.get_secret_value()
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(config.model_dump())


def test_apply_and_load_keep_region_passwords_in_their_source_blocks(prefect_api):
    from prefect.client.orchestration import get_client

    from blocks import MySQLSource, PostgresSource
    from blocks.apply import apply_stack, load_stack

    name = f"fo-{secrets.token_hex(3)}"
    config = secret_stack(name)
    written = apply_stack(config)
    region_blocks = {
        f"postgres-source/{name}-region-us-west-2-postgres",
        f"mysql-source/{name}-region-us-east-1-mysql",
        f"redis-source/{name}-region-us-east-1-redis",
    }
    assert region_blocks <= set(written)

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(name, block_type_slug="dr-stack", include_secrets=True)
    stored = doc.data["failover"]
    assert [{k: r.get(k) for k in ("postgres", "mysql", "redis")} for r in stored["regions"]] == [
        {"postgres": f"postgres-source/{name}-region-us-west-2-postgres", "mysql": None, "redis": None},
        {
            "postgres": None,
            "mysql": f"mysql-source/{name}-region-us-east-1-mysql",
            "redis": f"redis-source/{name}-region-us-east-1-redis",
        },
    ]
    document = json.dumps(doc.data)
    for secret in PASSWORDS.values():
        assert secret not in document  # even read with include_secrets: the stack's document never held them

    assert PostgresSource.load(f"{name}-region-us-west-2-postgres").password.get_secret_value() == PASSWORDS["pg"]
    assert MySQLSource.load(f"{name}-region-us-east-1-mysql").host == "my.east"

    loaded = load_stack(name)
    assert revealed(loaded.failover) == revealed(config.failover)
    assert loaded.failover.region("us-east-1").redis.password.get_secret_value() == PASSWORDS["redis"]
    assert loaded.failover.region("us-west-2").postgres_rebuild.run_as == "postgres"

    # Without the region's block, the stack does not load half a topology: it says how to repair it.
    with get_client(sync_client=True) as client:
        block = client.read_block_document_by_name(
            f"{name}-region-us-east-1-redis", block_type_slug="redis-source", include_secrets=False
        )
        client.delete_block_document(block.id)
    with pytest.raises(ConfigError) as info:
        load_stack(name)
    assert str(info.value) == (
        f"stack block: failover region 'us-east-1' redis: block 'redis-source/{name}-region-us-east-1-redis' is "
        "missing or invalid; re-run 'genesis-dr apply'"
    )

    # Re-applied without failover: the stack has none.
    plain = StackConfig(**(config.model_dump(exclude={"failover"}) | {"stack": name}))
    apply_stack(plain)
    assert load_stack(name).failover is None


def test_credentials_block_names_are_resolved_at_use(prefect_api):
    from prefect_aws import AwsCredentials

    import blocks.failover  # noqa: F401 - installs the resolver core uses

    config = secret_stack("unused")
    west, east = config.failover.regions
    assert dns_session(west.dns) is None and rds_session(west) is None  # the default chain

    AwsCredentials(aws_access_key_id="AKIAFAILOVERTEST", aws_secret_access_key="not-a-real-secret").save(
        "aws-rds-east", overwrite=True
    )
    session = rds_session(east)
    assert session.get_credentials().access_key == "AKIAFAILOVERTEST"
    with pytest.raises(ConfigError) as info:
        dns_session(east.dns)
    assert str(info.value) == (
        "failover: no AwsCredentials block named 'aws-dns'; create it (prefect block create aws-credentials) or drop "
        "the credentials setting to use the default chain"
    )


# -- the local description: the topology without its secrets --------------------------------------------
def test_stack_description_has_the_failover_part_without_secrets(tmp_path, monkeypatch):
    from core import stack_description

    monkeypatch.setenv("GENESIS_DR_STATE_DIR", str(tmp_path / "state"))
    config = secret_stack("described")
    path = stack_description.save(config, "http://127.0.0.1:4200/api")
    text = path.read_text()
    for secret in PASSWORDS.values():
        assert secret not in text
    described = stack_description.load("described")
    fo = described.failover
    assert (fo.policy, fo.active_region) == ("automatic", "us-west-2")
    assert [(r.name, r.priority, r.dns.value) for r in fo.by_priority()] == [
        ("us-west-2", 1, "w.lb"),
        ("us-east-1", 2, "e.lb"),
    ]
    assert (fo.region("us-east-1").mysql.host, fo.region("us-east-1").mysql.password) == ("my.east", None)
    assert fo.region("us-east-1").rds_instance_id == "app-east"
    assert described.failover_secret_fields == [
        "regions[0].postgres.password",
        "regions[1].mysql.password",
        "regions[1].redis.password",
    ]
    assert stack_description.failover_lines(fo) == [
        "failover: policy automatic, initial active region us-west-2, max data loss 5 s, down after 3 failed checks "
        "every 60 s",
        "  1. us-west-2: postgres pg.west:5432, 1 health URL(s); dns app.example.com. CNAME -> w.lb (route53 Z1)",
        "  2. us-east-1: mysql my.east:3306, redis redis.east:6379, rds app-east (us-east-1); dns app.example.com. "
        "CNAME -> e.lb (route53 Z1)",
    ]
    plain = parse_stack(stack_data(), "s.yaml")
    stack_description.save(plain.model_copy(update={"stack": "plain"}), "x")
    assert stack_description.load("plain").failover is None
