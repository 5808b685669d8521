"""The stack's metrics published to CloudWatch (``put_metric_data``), for stacks watched from AWS.

The same figures as the Prometheus exposition (``core.observe.metrics.families``), one datum per sample:
the metric name is the Prometheus name without ``genesis_dr_`` (``backup_last_success_timestamp_seconds``,
``backups_total``), each label a dimension (``Stack``, ``Source``, ``Type``, ...), the unit from the name's
suffix, the snapshot's time as the timestamp. CloudWatch takes no infinite value: an RPO of +Inf (nothing
recoverable) is left out there, so alarm on missing data too. Credentials are resolved by the caller (a
boto3 Session from the stack's AwsCredentials block, or boto3's default chain).
"""

from __future__ import annotations

import math
from typing import Any

from core.errors import ConfigError, DRError
from core.observe.metrics import PREFIX, families
from core.observe.snapshot import StackSnapshot
from core.tls import check_endpoint, https_error

BATCH = 500  # CloudWatch takes 1000 metrics and 1 MB per call; 500 small data stay far below both


class CloudWatchError(DRError):
    """CloudWatch refused the metrics or could not be reached. Exit 1."""


def _unit(name: str) -> str:
    if name.endswith("_timestamp_seconds"):
        return "None"  # a point in time, not a duration
    if name.endswith("_seconds"):
        return "Seconds"
    if name.endswith("_bytes"):
        return "Bytes"
    return "Count"


def _dimension(label: str) -> str:
    return "".join(part.capitalize() for part in label.split("_"))  # error_class -> ErrorClass


def metric_data(snap: StackSnapshot) -> list[dict[str, Any]]:
    """The MetricData entries of ``snap`` (non-finite values left out)."""
    data = []
    for family in families(snap):
        for sample in family.samples:
            if sample.name.endswith("_created") or not math.isfinite(sample.value):
                continue
            name = sample.name.removeprefix(PREFIX)
            data.append(
                {
                    "MetricName": name,
                    "Dimensions": [
                        {"Name": _dimension(k), "Value": v or "-"} for k, v in sorted(sample.labels.items())
                    ],
                    "Timestamp": snap.taken,
                    "Value": float(sample.value),
                    "Unit": _unit(name),
                }
            )
    return data


def publish_cloudwatch(snap: StackSnapshot, cfg: Any, session_or_client: Any = None, *, batch: int = BATCH) -> int:
    """Put the metrics of ``snap`` into ``cfg.namespace`` (``cfg``: the stack's CloudWatchConfig); returns the
    number of data published (``batch`` per call). ``session_or_client``: a boto3 CloudWatch client, a boto3 Session, or None for
    boto3's default chain. CloudWatchError (one line, no credentials) if a call is refused or unanswered."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, SSLError

    if cfg.endpoint_url:
        try:  # the metrics and the credentials' signature travel to it: https, or http on this machine only
            check_endpoint(cfg.endpoint_url)
        except ValueError as exc:
            raise ConfigError(f"operations.cloudwatch.endpoint_url: {exc}") from None
    if hasattr(session_or_client, "put_metric_data"):
        client = session_or_client
    else:
        import boto3

        session = session_or_client or boto3.session.Session()
        # Bounded: a metrics push must not hang a scrape loop on an endpoint that does not answer.
        bounded = Config(connect_timeout=5, read_timeout=15, retries={"total_max_attempts": 3, "mode": "standard"})
        client = session.client("cloudwatch", region_name=cfg.region, endpoint_url=cfg.endpoint_url, config=bounded)
    data = metric_data(snap)
    where = cfg.endpoint_url or f"CloudWatch {cfg.region or client.meta.region_name}"
    for start in range(0, len(data), batch):
        try:
            client.put_metric_data(Namespace=cfg.namespace, MetricData=data[start : start + batch])
        except ClientError as exc:
            err = exc.response.get("Error", {})
            text = " ".join(str(err.get("Message", "")).split())[:160]
            raise CloudWatchError(
                f"{where} refused the metrics of stack {snap.stack} (namespace {cfg.namespace}): "
                f"{err.get('Code', '?')} {text}; check the credentials' cloudwatch:PutMetricData permission"
            ) from None
        except SSLError as exc:
            raise https_error(
                f"operations.cloudwatch of stack {snap.stack}", cfg.endpoint_url, exc, None, "AWS_CA_BUNDLE"
            ) from None
        except BotoCoreError as exc:
            raise CloudWatchError(
                f"{where}: {' '.join(str(exc).split())[:200]}; check operations.cloudwatch (region, endpoint_url) "
                "and the network"
            ) from None
    return len(data)
