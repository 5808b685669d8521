"""A region's RDS instance in a failover: what it is (primary or read replica) and promoting its read replica.

``promote_rds`` is a promotion step like those of ``core.failover.promote``: it returns one ``Step`` and never
raises. ``session`` carries the credentials, resolved by the caller from ``RegionConfig.aws_credentials`` (a
block name; core never reads blocks); None: boto3's default chain.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import ConfigError
from core.failover.promote import Step
from core.failover.topology import RegionConfig
from core.tls import check_endpoint, https_error

# One request never hangs a failover; PromoteReadReplica itself is quick, the instance then restarts.
REQUEST_TIMEOUT_S = 10.0
# A promoted replica reboots once; RDS usually reports it available again within a few minutes.
PROMOTE_TIMEOUT_S = 900.0
POLL_INTERVAL_S = 5.0


@dataclass(frozen=True)
class RdsStatus:
    """An RDS instance as DescribeDBInstances shows it. ``status`` None: it could not be read (``detail`` says
    why); ``replica_of`` is the source of a read replica (None for a primary)."""

    instance_id: str
    aws_region: str
    status: str | None
    replica_of: str | None = None
    replicas: tuple[str, ...] = ()
    detail: str = ""

    @property
    def role(self) -> str | None:
        if self.status is None:
            return None
        return "replica" if self.replica_of else "primary"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"role": self.role}


def _label(region: RegionConfig) -> str:
    return f"rds '{region.rds_instance_id}' in {region.aws_region or region.name}"


def _client(region: RegionConfig, session: Any):
    import boto3
    from botocore.config import Config

    if region.aws_endpoint_url:
        try:  # the credentials' signature travels to it: https, or plain http to a test server on this machine
            check_endpoint(region.aws_endpoint_url)
        except ValueError as exc:
            raise ConfigError(f"aws_endpoint_url of region {region.name}: {exc}") from None
    config = Config(
        connect_timeout=REQUEST_TIMEOUT_S,
        read_timeout=REQUEST_TIMEOUT_S,
        retries={"max_attempts": 3, "mode": "standard"},
    )
    return (session or boto3.session.Session()).client(
        "rds", region_name=region.aws_region or region.name, endpoint_url=region.aws_endpoint_url, config=config
    )


def _problem(region: RegionConfig, exc: BaseException) -> str:
    """What went wrong with an RDS call and the remedy, in one line."""
    from botocore.exceptions import SSLError

    if isinstance(exc, SSLError):
        return https_error("HTTPS", region.aws_endpoint_url, exc, None, "AWS_CA_BUNDLE").message
    if isinstance(exc, ConfigError):
        return exc.message
    return f"{_why(exc)}; {_remedy(exc)}"


def _why(exc: BaseException) -> str:
    """One line for a botocore failure: the service's error code and message, or the exception's first line."""
    error = getattr(exc, "response", {}).get("Error", {}) if hasattr(exc, "response") else {}
    if error.get("Code"):
        return f"{error['Code']}: {' '.join(str(error.get('Message', '')).split())[:200]}"
    text = " ".join(str(exc).split())[:200]
    return text or type(exc).__name__


def _remedy(exc: BaseException) -> str:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""
    if code in ("DBInstanceNotFound", "DBInstanceNotFoundFault"):
        return "check rds_instance_id and aws_region of the region"
    if code in ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId"):
        return "check the region's aws_credentials allow rds:DescribeDBInstances and rds:PromoteReadReplica"
    return "check the RDS API is reachable (aws_endpoint_url, network) and retry"


def _describe(client, instance_id: str, aws_region: str) -> RdsStatus:
    found = client.describe_db_instances(DBInstanceIdentifier=instance_id)["DBInstances"][0]
    return RdsStatus(
        instance_id=instance_id,
        aws_region=aws_region,
        status=found.get("DBInstanceStatus"),
        replica_of=found.get("ReadReplicaSourceDBInstanceIdentifier") or None,
        replicas=tuple(found.get("ReadReplicaDBInstanceIdentifiers") or ()),
    )


def rds_status(region: RegionConfig, session: Any = None) -> RdsStatus:
    """The region's RDS instance (status, primary or replica); never raises: an unreadable one has status None
    and a one-line detail naming it and the remedy."""
    if region.rds_instance_id is None:
        raise ValueError(f"region {region.name} has no rds_instance_id")
    aws_region = region.aws_region or region.name
    try:
        status = _describe(_client(region, session), region.rds_instance_id, aws_region)
    except Exception as exc:  # noqa: BLE001 - the status of a region in trouble is reported, never raised
        return RdsStatus(region.rds_instance_id, aws_region, None, detail=f"{_label(region)}: {_problem(region, exc)}")
    role = f"read replica of {status.replica_of}" if status.replica_of else "primary"
    return RdsStatus(**{**asdict(status), "detail": f"{_label(region)}: {status.status}, {role}"})


def promote_rds(
    region: RegionConfig,
    session: Any = None,
    timeout: float = PROMOTE_TIMEOUT_S,
    *,
    poll_interval: float = POLL_INTERVAL_S,
) -> Step:
    """Promote the region's RDS read replica (PromoteReadReplica) and wait until it is available as a primary.

    An instance that is a primary already is left as it is (ok: nothing to do). A replica whose promotion is
    already under way (not 'available') is not asked again, only waited for.
    """
    started = time.monotonic()
    label = _label(region)

    def step(ok: bool, detail: str) -> Step:
        return Step("promote", ok, f"{label}: {detail}", round(time.monotonic() - started, 3))

    if region.rds_instance_id is None:
        return step(False, "the region has no rds_instance_id; nothing to promote")
    aws_region = region.aws_region or region.name
    try:
        client = _client(region, session)
        before = _describe(client, region.rds_instance_id, aws_region)
        if before.replica_of is None:
            return step(True, f"is a primary already ({before.status})")
        synchronous = False
        if before.status == "available":
            answer = client.promote_read_replica(DBInstanceIdentifier=region.rds_instance_id)["DBInstance"]
            # RDS answers 'modifying' and drops the replication source once the instance restarted; an API that
            # answers 'available' applied the promotion before answering (moto does, and keeps the source name).
            synchronous = answer.get("DBInstanceStatus") == "available"
        deadline = time.monotonic() + timeout
        while True:
            now = _describe(client, region.rds_instance_id, aws_region)
            if now.status == "available" and (now.replica_of is None or synchronous):
                return step(True, f"promoted from read replica of {before.replica_of} (available)")
            if time.monotonic() >= deadline:
                return step(
                    False,
                    f"promotion requested but the instance is still {now.status}"
                    + (f" (read replica of {now.replica_of})" if now.replica_of else "")
                    + f" after {timeout:g}s; watch it in the RDS console, then re-run the failover with --force",
                )
            time.sleep(poll_interval)
    except Exception as exc:  # noqa: BLE001 - a step reports every failure as a failed Step, never raises
        return step(False, f"promotion failed: {_problem(region, exc)}")
