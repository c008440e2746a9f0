"""Cloud DNS provider through google-cloud-dns's own client and transport, against the local REST stand-in
(anonymous credentials, the endpoint set through the client options). The zone holds a weighted round robin
record set, as real zones often do: the library's own listing cannot read such a zone, drflow's JSON path can."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.cloud.retry import Backoff
from activities.dns import registry as dns_registry
from activities.dns.activities import (
    ApplyWeightsRequest,
    DnsChangeStatusRequest,
    PlanWeightsRequest,
    apply_dns_change,
    apply_weights,
    plan_dns_change,
    plan_weights,
    wait_for_change,
)
from activities.dns.clouddns import REQUIRED_PERMISSIONS, CloudDnsProvider
from activities.dns.plan import ApplyDnsChangeRequest, DnsChangePlan, PlanDnsChangeRequest
from activities.errors import ConcurrentChange
from runbooks.model import CloudDns, DnsConfig
from tests.support.clouddns_standin import CloudDnsStandIn, library_client, serve_clouddns

ZONE, RECORD = "example.com.", "search.example.com."
OLD, NEW = "192.0.2.10", "192.0.2.40"
CANARY = {
    "name": f"canary.{ZONE}",
    "type": "A",
    "ttl": 30,
    "routingPolicy": {
        "wrr": {
            "items": [{"weight": 0.9, "rrdatas": ["192.0.2.1"]}, {"weight": 0.1, "rrdatas": ["192.0.2.2"]}]
        }
    },
}
FAST = Backoff(attempts=6, base_seconds=0.01, cap_seconds=0.05)


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudDnsStandIn]:
    with serve_clouddns() as server:
        server.add_zone(
            "example-com",
            ZONE,
            [
                {"name": ZONE, "type": "SOA", "ttl": 21600, "rrdatas": ["ns-cloud-a1.googledomains.com. cloud-dns-hostmaster.google.com. 1 21600 3600 259200 300"]},
                {"name": RECORD, "type": "A", "ttl": 60, "rrdatas": [OLD]},
                CANARY,
            ],
        )  # fmt: skip

        def provider(dns: DnsConfig) -> CloudDnsProvider:
            assert isinstance(dns, CloudDns)
            return CloudDnsProvider(dns, client=library_client(server), backoff=FAST)

        # The activities build providers from the runbook; here they get the library client of the stand-in.
        monkeypatch.setattr(dns_registry, "dns_provider_for", provider)
        monkeypatch.setattr(dns_registry, "weights_provider_for", provider)
        yield server


def config(standin: CloudDnsStandIn, record: str = RECORD) -> CloudDns:
    return CloudDns(
        provider="clouddns",
        project=standin.project,
        managed_zone="example-com",
        zone=ZONE,
        record=record,
        ttl=60,
    )


async def plan(dns: CloudDns, target: str = NEW) -> DnsChangePlan:
    result: DnsChangePlan = await ActivityEnvironment().run(
        plan_dns_change, PlanDnsChangeRequest(dns=dns, target_address=target)
    )
    return result


def test_the_library_alone_cannot_list_a_zone_holding_a_routing_policy(standin: CloudDnsStandIn) -> None:
    """Why drflow reads record sets as JSON (google-cloud-dns 0.37): its own listing raises on this zone."""
    zone = library_client(standin).zone("example-com", ZONE)
    with pytest.raises(KeyError, match="rrdatas"):
        list(zone.list_resource_record_sets())


async def test_plan_apply_and_wait_change_the_record_through_a_conditional_change(
    standin: CloudDnsStandIn,
) -> None:
    dns = config(standin)
    planned = await plan(dns)
    assert planned.current.values == [OLD] and planned.current.ttl == 60

    result = await ActivityEnvironment().run(apply_dns_change, ApplyDnsChangeRequest(dns=dns, plan=planned))
    assert result.applied and result.after.values == [NEW] and result.change_id is not None
    change = standin.changes[result.change_id]
    assert change["deletions"] == [
        {"kind": "dns#resourceRecordSet", "name": RECORD, "type": "A", "ttl": 60, "rrdatas": [OLD]}
    ]
    assert change["additions"][0]["rrdatas"] == [NEW]

    status = await ActivityEnvironment().run(
        wait_for_change,
        DnsChangeStatusRequest(
            dns=dns, change_id=result.change_id, timeout_seconds=5, poll_interval_seconds=0.05
        ),
    )
    assert status.in_sync and status.status == "done" and status.polls == 2

    again = await ActivityEnvironment().run(apply_dns_change, ApplyDnsChangeRequest(dns=dns, plan=planned))
    assert not again.applied and standin.landed_changes == 1
    assert standin.rrset("example-com", f"canary.{ZONE}", "A") == {"kind": "dns#resourceRecordSet", **CANARY}


async def test_a_record_changed_after_the_plan_is_refused_as_stale(standin: CloudDnsStandIn) -> None:
    dns = config(standin)
    planned = await plan(dns)
    standin.zones["example-com"].rrsets[(RECORD, "A")]["rrdatas"] = ["192.0.2.99"]

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(apply_dns_change, ApplyDnsChangeRequest(dns=dns, plan=planned))

    assert raised.value.type == "PlanStale" and "192.0.2.99" in raised.value.message
    assert standin.landed_changes == 0


def test_cloud_dns_itself_refuses_a_change_whose_deletion_no_longer_matches(standin: CloudDnsStandIn) -> None:
    provider = CloudDnsProvider(config(standin), client=library_client(standin), backoff=FAST)
    stale = {"name": RECORD, "type": "A", "ttl": 60, "rrdatas": ["192.0.2.1"]}

    with pytest.raises(ConcurrentChange, match="Precondition not met"):
        provider._change([{**stale, "rrdatas": [NEW]}], [stale], RECORD)
    with pytest.raises(ConcurrentChange, match="already exists"):
        provider._change([{**stale, "rrdatas": [NEW]}], [], RECORD)
    assert standin.landed_changes == 0


async def test_rate_limited_calls_are_retried_and_the_change_lands_exactly_once(
    standin: CloudDnsStandIn,
) -> None:
    dns = config(standin)
    planned = await plan(dns)
    standin.throttle.update({"GET rrsets": 2, "POST changes": 2})

    result = await ActivityEnvironment().run(apply_dns_change, ApplyDnsChangeRequest(dns=dns, plan=planned))

    assert result.applied and result.after.values == [NEW]
    assert standin.landed_changes == 1
    assert standin.requests.count("POST changes") == 3, "two refused with 429, then the one that landed"


async def test_weighted_round_robin_moves_traffic_and_keeps_other_items(standin: CloudDnsStandIn) -> None:
    dns = config(standin)
    addresses = {"europe-west1": OLD, "europe-west4": NEW}
    env = ActivityEnvironment()

    async def set_weights(weights: dict[str, int]) -> bool:
        planned = await env.run(
            plan_weights, PlanWeightsRequest(dns=dns, addresses=addresses, weights=weights)
        )
        result = await env.run(apply_weights, ApplyWeightsRequest(dns=dns, addresses=addresses, plan=planned))
        return result.applied

    assert await set_weights({"europe-west1": 90, "europe-west4": 10})
    rrset = standin.rrset("example-com", RECORD, "A")
    assert rrset is not None and "rrdatas" not in rrset
    assert rrset["routingPolicy"]["wrr"]["items"] == [
        {"weight": 90.0, "rrdatas": [OLD]}, {"weight": 10.0, "rrdatas": [NEW]},
    ]  # fmt: skip
    assert await set_weights({"europe-west1": 0, "europe-west4": 100})
    assert not await set_weights({"europe-west1": 0, "europe-west4": 100})

    with pytest.raises(ApplicationError) as raised:
        await plan(dns)
    assert raised.value.type == "UnsupportedDnsRecord" and "routing policy (wrr)" in raised.value.message


def test_preflight_reports_the_zone_the_record_and_the_permissions(standin: CloudDnsStandIn) -> None:
    report = CloudDnsProvider(config(standin), client=library_client(standin)).preflight()
    assert report.ok, report.markdown()
    assert "all granted" in report.markdown()

    standin.granted = set(REQUIRED_PERMISSIONS) - {"dns.changes.create"}
    report = CloudDnsProvider(config(standin), client=library_client(standin)).preflight()
    assert not report.ok
    assert report.problems == ["permissions: missing dns.changes.create (see infra/gcp/role.yaml)"]


def test_preflight_names_a_missing_managed_zone(standin: CloudDnsStandIn) -> None:
    missing = config(standin).model_copy(update={"managed_zone": "nope"})
    report = CloudDnsProvider(missing, client=library_client(standin)).preflight()
    assert not report.ok
    assert "managed zone nope" in report.problems[0] and "does not exist" in report.problems[0]


async def test_without_application_default_credentials_the_error_says_where_drflow_looks(
    standin: CloudDnsStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from google.auth.compute_engine import _metadata

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))
    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)  # never probe a metadata server from a test

    with pytest.raises(ApplicationError) as raised:
        await CloudDnsProvider(config(standin)).read(RECORD, "A")

    assert raised.value.type == "CloudCredentialsInvalid" and raised.value.non_retryable
    assert "application default credentials" in raised.value.message
