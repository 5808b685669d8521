"""Point a region's DNS record at it: Route53 (UPSERT) or Google Cloud DNS (a change of deletions + additions).

The record switch is the last step of a failover that moves traffic, so it must be bounded and say exactly what
went wrong: every call has a timeout, waiting for the provider to apply the change is a bounded poll, and every
failure is one ``DnsSwitchError`` line naming the provider, zone, record and what the operator should do.

``session`` carries the credentials, resolved by the caller (a flow turns ``DnsConfig.credentials``, a block name,
into one; core never reads blocks): a ``boto3.session.Session`` for Route53, ``google.auth`` credentials for Cloud
DNS. Without it boto3's default chain or Application Default Credentials are used; against a test endpoint
(``endpoint_url``) Cloud DNS uses anonymous credentials, as the GCS vault does for its emulator.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from core.errors import DnsSwitchError
from core.tls import check_endpoint, https_error

if TYPE_CHECKING:
    from core.failover.topology import DnsConfig

# One request never hangs a failover for long; a provider that is down is reported, not waited for.
REQUEST_TIMEOUT_S = 10.0
# Route53 usually reaches INSYNC within 60 s; past this the change stays submitted and the error says so.
SYNC_TIMEOUT_S = 120.0
POLL_INTERVAL_S = 1.0


@dataclass(frozen=True)
class DnsChange:
    """What a switch did: the record (``name TYPE``), the value it now points at, the provider's change id
    (None when the record already had that value and TTL, so nothing was sent), and how long it took."""

    provider: str
    record: str
    value: str
    change_id: str | None
    seconds: float
    previous: str | None = None
    changed: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def switch_record(
    dns: DnsConfig,
    *,
    session: Any = None,
    sync_timeout: float = SYNC_TIMEOUT_S,
    poll_interval: float = POLL_INTERVAL_S,
) -> DnsChange:
    """Point ``dns.record_name`` at ``dns.value`` (with ``dns.ttl``) and wait until the provider has applied it."""
    start = time.monotonic()
    provider = _provider(dns)
    want = _values(dns.record_type, dns.value)
    record = f"{_fqdn(dns.record_name)} {dns.record_type}"
    if provider == "route53":
        previous, change_id = _route53_switch(dns, want, session, sync_timeout, poll_interval)
    else:
        previous, change_id = _clouddns_switch(dns, want, session, sync_timeout, poll_interval)
    return DnsChange(
        provider=provider,
        record=record,
        value=dns.value,
        change_id=change_id,
        seconds=round(time.monotonic() - start, 3),
        previous=previous,
        changed=change_id is not None,
    )


def current_value(dns: DnsConfig, session: Any = None) -> str | None:
    """The record's value now (several A/AAAA values joined by ','; a CNAME without its trailing dot), or None
    when the zone has no such record."""
    provider = _provider(dns)
    if provider == "route53":
        found = _route53_lookup(_route53_client(dns, session), dns)
    else:
        found = _clouddns_lookup(_clouddns_zone(dns, session), dns)
    return None if found is None else _show(found[0])


# -- shared ---------------------------------------------------------------------------------------------------------


def _provider(dns: DnsConfig) -> str:
    if dns.provider not in ("route53", "clouddns"):
        raise DnsSwitchError(f"dns provider {dns.provider!r} is not supported; use 'route53' or 'clouddns'")
    return dns.provider


def _fqdn(name: str) -> str:
    name = name.strip().lower()
    return name if name.endswith(".") else name + "."


def _values(record_type: str, value: str) -> list[str]:
    # A and AAAA may list several addresses ("10.0.0.1, 10.0.0.2"); a CNAME is one fully qualified name.
    if record_type == "CNAME":
        return [_fqdn(value)]
    return sorted(v.strip() for v in value.replace(" ", ",").split(",") if v.strip())


def _same(current: list[str], want: list[str]) -> bool:
    return sorted(_fqdn(v) for v in current) == sorted(_fqdn(v) for v in want)


def _show(values: list[str]) -> str:
    return ",".join(sorted(v.rstrip(".") for v in values))


def _where(dns: DnsConfig) -> str:
    zone = f"{dns.project}/{dns.zone}" if dns.provider == "clouddns" and dns.project else dns.zone
    return f"{dns.provider} zone {zone} record {_fqdn(dns.record_name)} {dns.record_type}"


def _one_line(text: Any, limit: int = 200) -> str:
    return " ".join(str(text).split())[:limit]


# -- Route53 --------------------------------------------------------------------------------------------------------


def _check_endpoint(dns: DnsConfig) -> None:
    """The DNS API's endpoint: https, or plain http to a test server on this machine (the credentials travel)."""
    if dns.endpoint_url:
        try:
            check_endpoint(dns.endpoint_url)
        except ValueError as exc:
            raise DnsSwitchError(f"{_where(dns)}: endpoint_url: {exc}") from None


def _route53_client(dns: DnsConfig, session: Any):
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=REQUEST_TIMEOUT_S, read_timeout=REQUEST_TIMEOUT_S, retries={"total_max_attempts": 2}
    )
    _check_endpoint(dns)
    # Route53 is a global service answered from us-east-1; the region only matters for signing.
    return (session or boto3.session.Session()).client(
        "route53", region_name="us-east-1", endpoint_url=dns.endpoint_url, config=config
    )


def _route53_call(dns: DnsConfig, what: str, call, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, SSLError

    try:
        return call(**kwargs)
    except NoCredentialsError:
        raise DnsSwitchError(
            f"{_where(dns)}: no AWS credentials to {what}; configure the DNS credentials block or the AWS environment"
        ) from None
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        remedy = {
            "NoSuchHostedZone": "check the hosted zone id (ROUTE53_HOSTED_ZONE_ID)",
            "AccessDenied": "grant route53:ChangeResourceRecordSets, ListResourceRecordSets and GetChange",
            "InvalidChangeBatch": "check the record type and value (a CNAME cannot share its name with other records)",
            "Throttling": "retry in a minute",
            "PriorRequestNotComplete": "retry in a minute",
        }.get(code, "check the zone and record in the stack file")
        raise DnsSwitchError(
            f"{_where(dns)}: route53 refused to {what}: {code} {_one_line(err.get('Message', ''))}; {remedy}"
        ) from None
    except SSLError as exc:  # a DnsSwitchError, as every failure of the switch (the failover records it)
        raise DnsSwitchError(https_error(_where(dns), dns.endpoint_url, exc, None, "AWS_CA_BUNDLE").message) from None
    except BotoCoreError as exc:
        raise DnsSwitchError(
            f"{_where(dns)}: cannot {what}: {_one_line(exc)}; check the network path to Route53 and retry"
        ) from None


def _route53_lookup(client, dns: DnsConfig) -> tuple[list[str], int] | None:
    name = _fqdn(dns.record_name)
    answer = _route53_call(
        dns,
        "list the record",
        client.list_resource_record_sets,
        HostedZoneId=dns.zone,
        StartRecordName=name,
        StartRecordType=dns.record_type,
        MaxItems="1",
    )
    for rrset in answer.get("ResourceRecordSets", []):
        # Listing starts at the name, so the first set is ours only if name and type match exactly.
        if _fqdn(rrset["Name"]) == name and rrset["Type"] == dns.record_type:
            values = [r["Value"] for r in rrset.get("ResourceRecords", [])]
            return values, int(rrset.get("TTL", 0))
    return None


def _route53_switch(
    dns: DnsConfig, want: list[str], session: Any, sync_timeout: float, poll_interval: float
) -> tuple[str | None, str | None]:
    client = _route53_client(dns, session)
    found = _route53_lookup(client, dns)
    previous = None if found is None else _show(found[0])
    if found is not None and _same(found[0], want) and found[1] == dns.ttl:
        return previous, None
    answer = _route53_call(
        dns,
        "change the record",
        client.change_resource_record_sets,
        HostedZoneId=dns.zone,
        ChangeBatch={
            "Comment": "genesis-dr failover",
            "Changes": [
                {
                    "Action": "UPSERT",
                    "ResourceRecordSet": {
                        "Name": _fqdn(dns.record_name),
                        "Type": dns.record_type,
                        "TTL": dns.ttl,
                        "ResourceRecords": [{"Value": v} for v in want],
                    },
                }
            ],
        },
    )
    info = answer["ChangeInfo"]
    change_id = info["Id"]
    deadline = time.monotonic() + sync_timeout
    status = info.get("Status")
    while status != "INSYNC":
        if time.monotonic() >= deadline:
            raise DnsSwitchError(
                f"{_where(dns)}: change {change_id} still {status} after {sync_timeout:g}s; it was submitted and "
                "will apply: check it with 'aws route53 get-change' before switching again"
            )
        time.sleep(poll_interval)
        status = _route53_call(dns, "read the change", client.get_change, Id=change_id)["ChangeInfo"]["Status"]
    return previous, change_id


# -- Google Cloud DNS -----------------------------------------------------------------------------------------------


def _clouddns_zone(dns: DnsConfig, session: Any):
    import google.auth
    from google.auth import exceptions as auth_exc
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import dns as clouddns

    if not dns.project:
        raise DnsSwitchError(f"{_where(dns)}: no project; set 'project' of the region's dns in the stack file")
    credentials = session
    if credentials is None:
        if dns.endpoint_url:
            credentials = AnonymousCredentials()
        else:
            try:
                credentials, _ = google.auth.default(scopes=list(clouddns.Client.SCOPE))
            except auth_exc.DefaultCredentialsError:
                raise DnsSwitchError(
                    f"{_where(dns)}: no Google credentials; configure the DNS credentials block or "
                    "Application Default Credentials"
                ) from None
    _check_endpoint(dns)
    options = {"api_endpoint": dns.endpoint_url.rstrip("/")} if dns.endpoint_url else None
    client = clouddns.Client(project=dns.project, credentials=credentials, client_options=options)
    return client.zone(dns.zone)


def _clouddns_call(dns: DnsConfig, what: str, call, *args):
    import requests
    from google.api_core import exceptions as api_exc
    from google.auth import exceptions as auth_exc

    try:
        return call(*args)
    except api_exc.GoogleAPICallError as exc:
        code = getattr(exc, "code", None)
        remedy = {
            404: "check the managed zone name and project",
            403: "grant roles/dns.admin (dns.changes.create, dns.resourceRecordSets.list) on the project",
            401: "check the DNS credentials",
            409: "the record changed meanwhile; read it again and retry",
            412: "the record changed meanwhile; read it again and retry",
            429: "retry in a minute",
        }.get(code, "check the zone and record in the stack file")
        raise DnsSwitchError(
            f"{_where(dns)}: Cloud DNS refused to {what}: HTTP {code} {_one_line(exc.message)}; {remedy}"
        ) from None
    except auth_exc.GoogleAuthError as exc:
        raise DnsSwitchError(
            f"{_where(dns)}: cannot authenticate to {what}: {_one_line(exc)}; check the DNS credentials"
        ) from None
    except requests.exceptions.SSLError as exc:
        raise DnsSwitchError(
            https_error(_where(dns), dns.endpoint_url, exc, None, "REQUESTS_CA_BUNDLE").message
        ) from None
    except requests.RequestException as exc:
        raise DnsSwitchError(
            f"{_where(dns)}: cannot {what}: {type(exc).__name__}; check the network path to Cloud DNS and retry"
        ) from None


def _clouddns_lookup(zone, dns: DnsConfig) -> tuple[list[str], int, Any] | None:
    name = _fqdn(dns.record_name)

    def scan():
        # The client lists the whole zone (paged); failover zones are small.
        for rrset in zone.list_resource_record_sets():
            if _fqdn(rrset.name) == name and rrset.record_type == dns.record_type:
                return list(rrset.rrdatas), int(rrset.ttl), rrset
        return None

    return _clouddns_call(dns, "list the record", scan)


def _clouddns_switch(
    dns: DnsConfig, want: list[str], session: Any, sync_timeout: float, poll_interval: float
) -> tuple[str | None, str | None]:
    zone = _clouddns_zone(dns, session)
    found = _clouddns_lookup(zone, dns)
    previous = None if found is None else _show(found[0])
    if found is not None and _same(found[0], want) and found[1] == dns.ttl:
        return previous, None
    # Cloud DNS has no UPSERT: one change deletes the exact old set and adds the new one, atomically; if someone
    # changed the record in between, the deletion no longer matches and the whole change is refused (412).
    changes = zone.changes()
    if found is not None:
        changes.delete_record_set(found[2])
    changes.add_record_set(zone.resource_record_set(_fqdn(dns.record_name), dns.record_type, dns.ttl, want))
    _clouddns_call(dns, "change the record", changes.create)
    deadline = time.monotonic() + sync_timeout
    while changes.status != "done":
        if time.monotonic() >= deadline:
            raise DnsSwitchError(
                f"{_where(dns)}: change {changes.name} still {changes.status} after {sync_timeout:g}s; it was "
                "submitted and will apply: check it with 'gcloud dns record-sets changes describe' before "
                "switching again"
            )
        time.sleep(poll_interval)
        _clouddns_call(dns, "read the change", changes.reload)
    return previous, changes.name
