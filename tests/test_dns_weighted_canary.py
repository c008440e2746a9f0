"""The canary's traffic manager as the DNS provider's weighted records (``traffic.provider: dns-weighted``):
``traffic_set_weights`` / ``traffic_read_weights`` move percents through Route53 weighted records (moto
server) and Cloud DNS weighted round robin (the REST stand-in), read back, and write nothing when the weights
already hold."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.cloud.retry import Backoff
from activities.dns import registry as dns_registry
from activities.dns.clouddns import CloudDnsProvider
from activities.traffic.activities import (
    ReadWeightsRequest,
    SetWeightsRequest,
    SetWeightsResult,
    read_weights,
    set_weights,
)
from activities.traffic.provider import TrafficWeightsState
from runbooks.model import CloudDns, DnsConfig, DnsWeightedTraffic, Route53Dns
from tests.support.aws import (
    client,
    hosted_zone,
    moto_server,  # noqa: F401  (session fixture moto_endpoint)
    point_aws_at,
    unique,
)
from tests.support.clouddns_standin import CloudDnsStandIn, library_client, serve_clouddns

EAST, WEST = "203.0.113.10", "198.51.100.20"
FAST = Backoff(attempts=6, base_seconds=0.01, cap_seconds=0.05)


def weighted(servers: dict[str, str]) -> DnsWeightedTraffic:
    return DnsWeightedTraffic(
        provider="dns-weighted", frontend_url="https://checkout.example.com", servers=servers
    )


async def set_to(
    traffic_config: DnsWeightedTraffic, dns: DnsConfig, weights: dict[str, int]
) -> SetWeightsResult:
    result: SetWeightsResult = await ActivityEnvironment().run(
        set_weights, SetWeightsRequest(traffic=traffic_config, weights=weights, dns=dns)
    )
    return result


async def read(traffic_config: DnsWeightedTraffic, dns: DnsConfig) -> TrafficWeightsState:
    state: TrafficWeightsState = await ActivityEnvironment().run(
        read_weights, ReadWeightsRequest(traffic=traffic_config, dns=dns)
    )
    return state


# ------------------------------------------------------------------------------------------------ Route53
@pytest.fixture
def route53(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Route53Dns, str]]:
    point_aws_at(monkeypatch, route53=moto_endpoint, sts=moto_endpoint)
    name = f"{unique('zone')}.example."
    zone_id = hosted_zone(moto_endpoint, name)
    dns = Route53Dns(provider="route53", hosted_zone_id=zone_id, zone=name, record=f"checkout.{name}", ttl=30)
    client("route53", moto_endpoint).change_resource_record_sets(
        HostedZoneId=zone_id,
        ChangeBatch={"Changes": [
            {"Action": "CREATE", "ResourceRecordSet": {
                "Name": dns.record, "Type": "A", "TTL": 30, "SetIdentifier": region, "Weight": weight,
                "ResourceRecords": [{"Value": address}]}}
            for region, weight, address in (("us-east-1", 5, EAST), ("us-west-2", 95, WEST))
        ]},
    )  # fmt: skip
    yield dns, moto_endpoint


def route53_weights(dns: Route53Dns, endpoint: str) -> list[tuple[str, int, str]]:
    listed = client("route53", endpoint).list_resource_record_sets(HostedZoneId=dns.hosted_zone_id)
    return sorted(
        (rs["SetIdentifier"], rs["Weight"], rs["ResourceRecords"][0]["Value"])
        for rs in listed["ResourceRecordSets"]
        if rs["Name"] == dns.record and "Weight" in rs
    )


async def test_route53_weighted_records_move_the_canary_5_50_100_and_read_back(
    route53: tuple[Route53Dns, str],
) -> None:
    dns, endpoint = route53
    config = weighted({"us-east-1": EAST, "us-west-2": WEST})
    assert (await read(config, dns)).weights == {"us-east-1": 5, "us-west-2": 95}

    result = await set_to(config, dns, {"us-east-1": 50, "us-west-2": 50})
    assert result.applied and result.before.weights == {"us-east-1": 5, "us-west-2": 95}
    assert result.after.weights == {"us-east-1": 50, "us-west-2": 50}
    assert route53_weights(dns, endpoint) == [("us-east-1", 50, EAST), ("us-west-2", 50, WEST)]

    result = await set_to(config, dns, {"us-east-1": 100, "us-west-2": 0})
    assert result.applied and result.after.weights == {"us-east-1": 100, "us-west-2": 0}
    assert route53_weights(dns, endpoint) == [("us-east-1", 100, EAST), ("us-west-2", 0, WEST)]
    assert await read(config, dns) == result.after

    again = await set_to(config, dns, {"us-east-1": 100})  # regions left out get 0: the same weights
    assert not again.applied and again.before == again.after == result.after
    assert route53_weights(dns, endpoint) == [("us-east-1", 100, EAST), ("us-west-2", 0, WEST)]


async def test_dns_weighted_without_the_dns_section_or_with_bad_percents_is_refused(
    route53: tuple[Route53Dns, str],
) -> None:
    dns, _ = route53
    config = weighted({"us-east-1": EAST, "us-west-2": WEST})
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            set_weights, SetWeightsRequest(traffic=config, weights={"us-east-1": 100})
        )
    assert raised.value.non_retryable and "carries no dns section" in raised.value.message
    with pytest.raises(ApplicationError) as raised:
        await set_to(config, dns, {"us-east-1": 60, "us-west-2": 60})
    assert raised.value.type == "InvalidTrafficWeights" and "add up to 120" in raised.value.message


# ---------------------------------------------------------------------------------------------- Cloud DNS
ZONE, RECORD = "example.com.", "search.example.com."


@pytest.fixture
def clouddns(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[CloudDns, CloudDnsStandIn]]:
    with serve_clouddns() as server:
        server.add_zone(
            "example-com",
            ZONE,
            [
                {"name": ZONE, "type": "SOA", "ttl": 21600, "rrdatas": ["ns-cloud-a1.googledomains.com. cloud-dns-hostmaster.google.com. 1 21600 3600 259200 300"]},
                {"name": RECORD, "type": "A", "ttl": 60, "routingPolicy": {"wrr": {"items": [
                    {"weight": 5.0, "rrdatas": [EAST]}, {"weight": 95.0, "rrdatas": [WEST]}]}}},
            ],
        )  # fmt: skip

        def provider(dns: DnsConfig) -> CloudDnsProvider:
            assert isinstance(dns, CloudDns)
            return CloudDnsProvider(dns, client=library_client(server), backoff=FAST)

        monkeypatch.setattr(dns_registry, "weights_provider_for", provider)
        dns = CloudDns(
            provider="clouddns",
            project=server.project,
            managed_zone="example-com",
            zone=ZONE,
            record=RECORD,
            ttl=60,
        )
        yield dns, server


async def test_clouddns_weighted_round_robin_moves_the_canary_and_reads_back(
    clouddns: tuple[CloudDns, CloudDnsStandIn],
) -> None:
    dns, server = clouddns
    config = weighted({"europe-west1": EAST, "europe-west4": WEST})
    assert (await read(config, dns)).weights == {"europe-west1": 5, "europe-west4": 95}

    for east in (50, 100):
        result = await set_to(config, dns, {"europe-west1": east, "europe-west4": 100 - east})
        assert result.applied and result.after.weights == {"europe-west1": east, "europe-west4": 100 - east}
    rrset = server.rrset("example-com", RECORD, "A")
    assert rrset is not None
    assert rrset["routingPolicy"]["wrr"]["items"] == [
        {"weight": 100.0, "rrdatas": [EAST]}, {"weight": 0.0, "rrdatas": [WEST]},
    ]  # fmt: skip
    landed = server.landed_changes

    again = await set_to(config, dns, {"europe-west1": 100, "europe-west4": 0})
    assert not again.applied and server.landed_changes == landed
