"""DNS switching (core/failover/dns.py): Route53 on a real moto server over HTTP; Cloud DNS against a local HTTP
receiver standing in for dns.googleapis.com (no Cloud DNS emulator exists), which keeps the zone's record sets,
applies changes as the API does (a deletion must match the stored set exactly) and records every request."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest

from core.failover.dns import DnsChange, DnsSwitchError, current_value, switch_record
from core.failover.topology import DnsConfig
from tests.fixtures_failover import route53_zone
from tests.servers import free_port

# -- Route53 on moto ------------------------------------------------------------------------------------------------


def _route53(endpoint: str):
    return boto3.client("route53", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def zone(moto_endpoint):
    """A fresh hosted zone 'gdr-<hex>.test.' whose app record points at the primary region (us-west-2)."""
    return route53_zone(moto_endpoint)


def _records(endpoint: str, zone_id: str, name: str, rtype: str) -> tuple[list[str], int] | None:
    """The record as Route53 itself lists it (read independently of the code under test)."""
    for rrset in _route53(endpoint).list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]:
        if rrset["Name"] == name and rrset["Type"] == rtype:
            return sorted(r["Value"] for r in rrset["ResourceRecords"]), rrset["TTL"]
    return None


def test_route53_switch_points_the_record_at_the_new_region(moto_endpoint, zone):
    zone_id, name = zone
    dns = DnsConfig(
        provider="route53",
        zone=zone_id,
        record_name=f"app.{name}",
        value="lb.us-east-1.example.com",
        endpoint_url=moto_endpoint,
    )
    assert current_value(dns) == "lb.us-west-2.example.com"

    change = switch_record(dns, poll_interval=0.1)

    assert isinstance(change, DnsChange)
    assert (change.provider, change.record, change.value) == ("route53", f"app.{name} CNAME", dns.value)
    assert change.previous == "lb.us-west-2.example.com"
    assert change.changed is True and change.change_id
    assert change.seconds < 5
    assert _records(moto_endpoint, zone_id, f"app.{name}", "CNAME") == (["lb.us-east-1.example.com."], 60)
    assert current_value(dns) == "lb.us-east-1.example.com"


def test_route53_switch_again_sends_nothing_and_a_new_ttl_is_applied(moto_endpoint, zone):
    zone_id, name = zone
    dns = DnsConfig(
        provider="route53",
        zone=zone_id,
        record_name=f"app.{name}",
        value="lb.eu-west-1.example.com",
        ttl=30,
        endpoint_url=moto_endpoint,
    )
    first = switch_record(dns, poll_interval=0.1)
    again = switch_record(dns, poll_interval=0.1)
    assert first.changed and first.change_id
    assert (again.changed, again.change_id, again.previous) == (False, None, "lb.eu-west-1.example.com")
    assert _records(moto_endpoint, zone_id, f"app.{name}", "CNAME") == (["lb.eu-west-1.example.com."], 30)

    longer = switch_record(dns.model_copy(update={"ttl": 300}), poll_interval=0.1)
    assert longer.changed
    assert _records(moto_endpoint, zone_id, f"app.{name}", "CNAME") == (["lb.eu-west-1.example.com."], 300)


def test_route53_creates_a_missing_a_record_with_several_addresses(moto_endpoint, zone, monkeypatch):
    zone_id, name = zone
    # Zone and name from the environment, as the source documents configure them.
    monkeypatch.setenv("ROUTE53_HOSTED_ZONE_ID", zone_id)
    monkeypatch.setenv("DNS_RECORD_NAME", f"db.{name}")
    dns = DnsConfig.model_validate(
        {"provider": "route53", "record_type": "A", "value": "10.1.0.7, 10.1.0.8", "endpoint_url": moto_endpoint}
    )
    assert current_value(dns) is None

    change = switch_record(dns, poll_interval=0.1)

    assert (change.previous, change.record) == (None, f"db.{name} A")
    assert _records(moto_endpoint, zone_id, f"db.{name}", "A") == (["10.1.0.7", "10.1.0.8"], 60)
    assert current_value(dns) == "10.1.0.7,10.1.0.8"
    # The CNAME of the same zone is untouched.
    assert _records(moto_endpoint, zone_id, f"app.{name}", "CNAME") == (["lb.us-west-2.example.com"], 60)


def test_route53_unknown_zone_is_one_line_naming_zone_record_and_remedy(moto_endpoint):
    dns = DnsConfig(
        provider="route53",
        zone="Z0NOSUCHZONE",
        record_name="app.example.test.",
        value="x.example.com",
        endpoint_url=moto_endpoint,
    )
    with pytest.raises(DnsSwitchError) as caught:
        switch_record(dns)
    text = str(caught.value)
    assert caught.value.exit_code == 25
    assert "\n" not in text
    assert text.startswith("route53 zone Z0NOSUCHZONE record app.example.test. CNAME: ")
    assert "NoSuchHostedZone" in text and "ROUTE53_HOSTED_ZONE_ID" in text
    assert "testing" not in text  # the (moto) secret key never appears


def test_route53_unreachable_endpoint_fails_fast(tmp_path):
    dns = DnsConfig(
        provider="route53",
        zone="Z123",
        record_name="app.example.test.",
        value="x.example.com",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    start = time.monotonic()
    with pytest.raises(DnsSwitchError, match=r"^route53 zone Z123 record app.example.test. CNAME: cannot list"):
        current_value(dns)
    assert time.monotonic() - start < 5


# -- Cloud DNS against a local receiver -----------------------------------------------------------------------------


class FakeCloudDns:
    """Speaks the part of the Cloud DNS v1 JSON API a switch uses: rrsets.list, changes.create, changes.get."""

    def __init__(self, project: str, zone: str, rrsets: list[dict], *, pending_polls: int = 1):
        self.base = f"/dns/v1/projects/{project}/managedZones/{zone}"
        self.rrsets = rrsets
        self.requests: list[tuple[str, str, dict | None]] = []
        self.changes: dict[str, dict] = {}
        self.pending_polls = pending_polls  # changes.get answers "pending" this many times before "done"
        self.fail: tuple[int, str] | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, code: int, message: str) -> None:
                self._send(code, {"error": {"code": code, "message": message, "errors": [{"message": message}]}})

            def do_GET(self):
                path = self.path.split("?")[0]  # the client adds ?prettyPrint=false
                outer.requests.append(("GET", path, None))
                if outer.fail:
                    return self._error(*outer.fail)
                if path == f"{outer.base}/rrsets":
                    return self._send(200, {"kind": "dns#resourceRecordSetsListResponse", "rrsets": outer.rrsets})
                if path.startswith(f"{outer.base}/changes/"):
                    change = outer.changes.get(path.rsplit("/", 1)[1])
                    if change is None:
                        return self._error(404, "change not found")
                    change["polls"] += 1
                    status = "done" if change["polls"] > outer.pending_polls else "pending"
                    return self._send(200, {**change["body"], "status": status})
                return self._error(404, f"The 'parameters.managedZone' resource named '{path}' does not exist.")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(("POST", self.path.split("?")[0], body))
                if outer.fail:
                    return self._error(*outer.fail)
                if self.path.split("?")[0] != f"{outer.base}/changes":
                    return self._error(404, "The 'parameters.managedZone' resource does not exist.")
                kept = list(outer.rrsets)
                for gone in body.get("deletions", []):
                    match = [r for r in kept if _same_rrset(r, gone)]
                    if not match:
                        return self._error(412, "Precondition not met for 'entity.change.deletions[0]'")
                    kept.remove(match[0])
                for added in body.get("additions", []):
                    if any(r["name"] == added["name"] and r["type"] == added["type"] for r in kept):
                        return self._error(409, "The resource 'entity.change.additions[0]' already exists")
                    kept.append({**added, "kind": "dns#resourceRecordSet"})
                outer.rrsets[:] = kept
                change_id = str(len(outer.changes) + 1)
                reply = {"kind": "dns#change", "id": change_id, "startTime": "2026-12-06T01:00:00Z", **body}
                outer.changes[change_id] = {"body": reply, "polls": 0}
                return self._send(200, {**reply, "status": "pending"})

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _same_rrset(stored: dict, deletion: dict) -> bool:
    return (
        stored["name"] == deletion["name"]
        and stored["type"] == deletion["type"]
        and int(stored["ttl"]) == int(deletion["ttl"])
        and sorted(stored["rrdatas"]) == sorted(deletion["rrdatas"])
    )


@pytest.fixture
def clouddns():
    api = FakeCloudDns(
        "gdr-project",
        "prod-zone",
        [
            {
                "kind": "dns#resourceRecordSet",
                "name": "example.com.",
                "type": "SOA",
                "ttl": 21600,
                "rrdatas": ["ns1.example.com. admin.example.com. 1 21600 3600 259200 300"],
            },
            {
                "kind": "dns#resourceRecordSet",
                "name": "app.example.com.",
                "type": "CNAME",
                "ttl": 60,
                "rrdatas": ["lb.us-west-2.example.com."],
            },
        ],
    )
    yield api
    api.close()


def _clouddns_config(api: FakeCloudDns, **overrides) -> DnsConfig:
    fields = {
        "provider": "clouddns",
        "project": "gdr-project",
        "zone": "prod-zone",
        "record_name": "app.example.com",
        "value": "lb.europe-west1.example.com",
        "endpoint_url": api.url,
    }
    return DnsConfig(**{**fields, **overrides})


def test_clouddns_switch_sends_one_atomic_change_and_waits_until_done(clouddns):
    dns = _clouddns_config(clouddns)
    assert current_value(dns) == "lb.us-west-2.example.com"

    change = switch_record(dns, poll_interval=0.05)

    assert (change.provider, change.record, change.change_id) == ("clouddns", "app.example.com. CNAME", "1")
    assert (change.previous, change.changed) == ("lb.us-west-2.example.com", True)
    posts = [r for r in clouddns.requests if r[0] == "POST"]
    assert posts == [
        (
            "POST",
            "/dns/v1/projects/gdr-project/managedZones/prod-zone/changes",
            {
                "deletions": [
                    {"name": "app.example.com.", "type": "CNAME", "ttl": "60", "rrdatas": ["lb.us-west-2.example.com."]}
                ],
                "additions": [
                    {
                        "name": "app.example.com.",
                        "type": "CNAME",
                        "ttl": "60",
                        "rrdatas": ["lb.europe-west1.example.com."],
                    }
                ],
            },
        )
    ]
    # The switch polled changes.get until the API said "done".
    assert [p for m, p, _ in clouddns.requests if m == "GET" and "/changes/" in p] == [
        "/dns/v1/projects/gdr-project/managedZones/prod-zone/changes/1"
    ] * 2
    assert current_value(dns) == "lb.europe-west1.example.com"

    again = switch_record(dns, poll_interval=0.05)
    assert (again.changed, again.change_id) == (False, None)
    assert len([r for r in clouddns.requests if r[0] == "POST"]) == 1


def test_clouddns_creates_a_missing_record_without_a_deletion(clouddns):
    dns = _clouddns_config(clouddns, record_name="db.example.com.", record_type="A", value="10.2.0.5", ttl=30)
    change = switch_record(dns, poll_interval=0.05)
    assert change.previous is None
    body = [b for m, _, b in clouddns.requests if m == "POST"][0]
    assert body == {
        "additions": [{"name": "db.example.com.", "type": "A", "ttl": "30", "rrdatas": ["10.2.0.5"]}],
        "deletions": [],
    }
    assert current_value(dns) == "10.2.0.5"


def test_clouddns_change_not_done_in_time_says_it_was_submitted(clouddns):
    clouddns.pending_polls = 10_000
    with pytest.raises(DnsSwitchError) as caught:
        switch_record(_clouddns_config(clouddns), sync_timeout=0.3, poll_interval=0.05)
    text = str(caught.value)
    assert text.startswith("clouddns zone gdr-project/prod-zone record app.example.com. CNAME: change 1 still pending")
    assert "submitted" in text and "\n" not in text


@pytest.mark.parametrize(
    ("code", "remedy"),
    [(403, "grant roles/dns.admin"), (404, "check the managed zone name and project"), (412, "read it again")],
)
def test_clouddns_refusals_are_one_line_with_a_remedy(clouddns, code, remedy):
    clouddns.fail = (code, "refused by the test receiver")
    with pytest.raises(DnsSwitchError) as caught:
        switch_record(_clouddns_config(clouddns))
    text = str(caught.value)
    assert caught.value.exit_code == 25 and "\n" not in text
    assert text.startswith("clouddns zone gdr-project/prod-zone record app.example.com. CNAME: Cloud DNS refused")
    assert f"HTTP {code}" in text and remedy in text


def test_clouddns_without_project_names_the_field():
    dns = DnsConfig(provider="clouddns", zone="prod-zone", record_name="app.example.com.", value="x.example.com.")
    with pytest.raises(DnsSwitchError, match=r"no project; set 'project'"):
        current_value(dns)


def test_clouddns_unreachable_endpoint_fails_fast():
    dns = DnsConfig(
        provider="clouddns",
        project="p",
        zone="z",
        record_name="app.example.com.",
        value="x.example.com.",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    start = time.monotonic()
    with pytest.raises(DnsSwitchError, match=r"cannot list the record: ConnectionError; check the network path"):
        switch_record(dns)
    assert time.monotonic() - start < 5
