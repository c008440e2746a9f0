"""Route53 provider against emulator servers over HTTP: moto for records, weights and throttling; ministack
where moto is not like AWS (a change PENDING before INSYNC; a stale DELETE refused with AWS's error)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.cloud.retry import Backoff
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
from activities.dns.plan import ApplyDnsChangeRequest, DnsChangePlan, PlanDnsChangeRequest
from activities.dns.route53 import Route53Provider
from activities.errors import ConcurrentChange
from runbooks.model import Route53Dns
from tests.support.aws import (
    Route53Extras,
    client,
    clients_for,
    hosted_zone,
    isolate_aws_environment,
    ministack_server,  # noqa: F401  (session fixture ministack_endpoint)
    moto_server,  # noqa: F401  (session fixture moto_endpoint)
    point_aws_at,
    throttling_proxy,
    unique,
)

OLD, NEW = "203.0.113.10", "198.51.100.20"
FAST = Backoff(attempts=6, base_seconds=0.01, cap_seconds=0.05)


@dataclass
class Zone:
    endpoint: str
    dns: Route53Dns

    def upsert(self, value: str, ttl: int = 30) -> None:
        """Another writer (an operator in the console): a change that does not go through drflow."""
        client("route53", self.endpoint).change_resource_record_sets(
            HostedZoneId=self.dns.hosted_zone_id,
            ChangeBatch={"Changes": [{"Action": "UPSERT", "ResourceRecordSet": {
                "Name": self.dns.record, "Type": "A", "TTL": ttl, "ResourceRecords": [{"Value": value}]}}]},
        )  # fmt: skip

    def record_sets(self) -> list[dict[str, object]]:
        listed = client("route53", self.endpoint).list_resource_record_sets(
            HostedZoneId=self.dns.hosted_zone_id
        )
        return [rs for rs in listed["ResourceRecordSets"] if rs["Name"] == self.dns.record]


def make_zone(endpoint: str, value: str | None = OLD) -> Zone:
    name = f"{unique('zone')}.example."
    zone_id = hosted_zone(endpoint, name)
    dns = Route53Dns(provider="route53", hosted_zone_id=zone_id, zone=name, record=f"checkout.{name}", ttl=30)
    zone = Zone(endpoint, dns)
    if value is not None:
        zone.upsert(value)
    return zone


@pytest.fixture
def moto_zone(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Zone]:
    point_aws_at(monkeypatch, route53=moto_endpoint, sts=moto_endpoint)
    yield make_zone(moto_endpoint)


@pytest.fixture
def ministack_zone(ministack_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Zone]:
    point_aws_at(monkeypatch, route53=ministack_endpoint, sts=ministack_endpoint)
    yield make_zone(ministack_endpoint)


async def plan(dns: Route53Dns, target: str = NEW) -> DnsChangePlan:
    result: DnsChangePlan = await ActivityEnvironment().run(
        plan_dns_change, PlanDnsChangeRequest(dns=dns, target_address=target)
    )
    return result


async def test_the_plan_shows_the_record_as_route53_serves_it_and_apply_changes_exactly_that(
    moto_zone: Zone,
) -> None:
    planned = await plan(moto_zone.dns)
    assert planned.current.values == [OLD] and planned.current.ttl == 30
    assert planned.markdown() == (
        f"- {moto_zone.dns.record} 30 IN A {OLD}\n+ {moto_zone.dns.record} 30 IN A {NEW}"
    )

    result = await ActivityEnvironment().run(
        apply_dns_change, ApplyDnsChangeRequest(dns=moto_zone.dns, plan=planned)
    )

    assert result.applied and result.after.values == [NEW] and result.change_id
    assert [rs["ResourceRecords"] for rs in moto_zone.record_sets()] == [[{"Value": NEW}]]
    again = await ActivityEnvironment().run(
        apply_dns_change, ApplyDnsChangeRequest(dns=moto_zone.dns, plan=planned)
    )
    assert not again.applied and "already in the desired state" in again.detail


async def test_a_record_that_does_not_exist_yet_is_created(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_aws_at(monkeypatch, route53=moto_endpoint)
    zone = make_zone(moto_endpoint, value=None)
    planned = await plan(zone.dns)
    assert planned.current.values == []

    result = await ActivityEnvironment().run(
        apply_dns_change, ApplyDnsChangeRequest(dns=zone.dns, plan=planned)
    )

    assert result.applied and result.after.values == [NEW]


async def test_the_wait_for_the_change_sees_pending_then_insync_and_records_how_long(
    ministack_zone: Zone,
) -> None:
    planned = await plan(ministack_zone.dns)
    result = await ActivityEnvironment().run(
        apply_dns_change, ApplyDnsChangeRequest(dns=ministack_zone.dns, plan=planned)
    )
    assert result.change_id is not None

    status = await ActivityEnvironment().run(
        wait_for_change,
        DnsChangeStatusRequest(
            dns=ministack_zone.dns, change_id=result.change_id, timeout_seconds=10, poll_interval_seconds=0.05
        ),
    )

    assert status.in_sync and status.status == "INSYNC"
    assert status.polls >= 2, "ministack answers PENDING first: the wait must have polled again"
    assert status.waited_ms > 0


async def test_a_change_already_insync_is_reported_after_one_poll(moto_zone: Zone) -> None:
    planned = await plan(moto_zone.dns)
    result = await ActivityEnvironment().run(
        apply_dns_change, ApplyDnsChangeRequest(dns=moto_zone.dns, plan=planned)
    )
    assert result.change_id is not None
    status = await ActivityEnvironment().run(
        wait_for_change,
        DnsChangeStatusRequest(dns=moto_zone.dns, change_id=result.change_id, timeout_seconds=5),
    )
    assert status.in_sync and status.polls == 1


async def test_a_record_changed_after_the_plan_is_refused_as_stale(ministack_zone: Zone) -> None:
    planned = await plan(ministack_zone.dns)
    ministack_zone.upsert("192.0.2.99")

    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            apply_dns_change, ApplyDnsChangeRequest(dns=ministack_zone.dns, plan=planned)
        )

    assert raised.value.type == "PlanStale" and raised.value.non_retryable
    assert "192.0.2.99" in raised.value.message
    assert [rs["ResourceRecords"] for rs in ministack_zone.record_sets()] == [[{"Value": "192.0.2.99"}]]


async def test_route53_itself_refuses_a_batch_whose_delete_no_longer_matches(ministack_zone: Zone) -> None:
    """The write is conditional at Route53, not only checked before: a change landing between our read and
    our batch makes Route53 refuse the whole batch, and nothing is overwritten."""
    provider = Route53Provider(ministack_zone.dns, clients=clients_for(ministack_zone.endpoint), backoff=FAST)
    stale = {
        "Name": ministack_zone.dns.record,
        "Type": "A",
        "TTL": 30,
        "ResourceRecords": [{"Value": "192.0.2.1"}],
    }
    new = {**stale, "ResourceRecords": [{"Value": NEW}]}

    with pytest.raises(ConcurrentChange, match="do not match"):
        provider._submit([{"Action": "DELETE", "ResourceRecordSet": stale}, {"Action": "CREATE", "ResourceRecordSet": new}],
                         "test", ministack_zone.dns.record)  # fmt: skip
    with pytest.raises(ConcurrentChange, match="already exists"):
        provider._submit([{"Action": "CREATE", "ResourceRecordSet": new}], "test", ministack_zone.dns.record)
    assert [rs["ResourceRecords"] for rs in ministack_zone.record_sets()] == [[{"Value": OLD}]]


def rrset_post(method: str, path: str, body: str) -> bool:
    return method == "POST" and path.rstrip("/").endswith("/rrset")


def rrset_list(method: str, path: str, body: str) -> bool:
    return method == "GET" and "/rrset?" in path


async def test_throttled_calls_are_retried_with_backoff_and_the_change_lands_exactly_once(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = make_zone(moto_endpoint)
    with throttling_proxy(moto_endpoint) as proxy:
        point_aws_at(monkeypatch, route53=proxy.endpoint)
        planned = await plan(zone.dns)
        proxy.add(rrset_list, 2, "Throttling")
        proxy.add(rrset_post, 1, "Throttling")
        proxy.add(rrset_post, 1, "PriorRequestNotComplete")

        result = await ActivityEnvironment().run(
            apply_dns_change, ApplyDnsChangeRequest(dns=zone.dns, plan=planned)
        )

    assert result.applied and result.after.values == [NEW]
    assert [code for _, _, code in proxy.refused] == [
        "Throttling",
        "Throttling",
        "Throttling",
        "PriorRequestNotComplete",
    ]
    assert proxy.count(rrset_post) == 1, "the change batch reached Route53 exactly once"


async def test_an_answer_lost_after_the_change_landed_is_not_applied_again_on_retry(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = make_zone(moto_endpoint)
    with throttling_proxy(moto_endpoint) as proxy:
        point_aws_at(monkeypatch, route53=proxy.endpoint)
        planned = await plan(zone.dns)
        proxy.add(rrset_post, 1, "lose")
        request = ApplyDnsChangeRequest(dns=zone.dns, plan=planned)

        with pytest.raises(ApplicationError) as raised:
            await ActivityEnvironment().run(apply_dns_change, request)
        assert raised.value.type == "DnsProviderUnavailable" and not raised.value.non_retryable
        assert "may or may not have been applied" in raised.value.message
        retried = await ActivityEnvironment().run(apply_dns_change, request)  # what Temporal's retry does

    assert not retried.applied and retried.after.values == [NEW]
    assert proxy.count(rrset_post) == 1


async def test_weights_move_traffic_between_the_regions_records_in_one_batch(moto_zone: Zone) -> None:
    addresses = {"us-east-1": OLD, "us-west-2": NEW}
    env = ActivityEnvironment()

    async def set_weights(weights: dict[str, int]) -> tuple[str, bool]:
        planned = await env.run(
            plan_weights, PlanWeightsRequest(dns=moto_zone.dns, addresses=addresses, weights=weights)
        )
        result = await env.run(
            apply_weights, ApplyWeightsRequest(dns=moto_zone.dns, addresses=addresses, plan=planned)
        )
        return planned.markdown(), result.applied

    shown, applied = await set_weights({"us-east-1": 90, "us-west-2": 10})
    assert applied and f"plain record {OLD}" in shown and "us-west-2 10" in shown
    assert sorted((rs["SetIdentifier"], rs["Weight"]) for rs in moto_zone.record_sets()) == [
        ("us-east-1", 90), ("us-west-2", 10),
    ]  # fmt: skip
    _, applied = await set_weights({"us-east-1": 0, "us-west-2": 100})
    assert applied
    assert sorted((rs["SetIdentifier"], rs["Weight"], rs["ResourceRecords"][0]["Value"]) for rs in moto_zone.record_sets()) == [
        ("us-east-1", 0, OLD), ("us-west-2", 100, NEW),
    ]  # fmt: skip
    _, applied = await set_weights({"us-east-1": 0, "us-west-2": 100})
    assert not applied

    with pytest.raises(ApplicationError) as raised:
        await plan(moto_zone.dns)
    assert raised.value.type == "UnsupportedDnsRecord" and "us-east-1, us-west-2" in raised.value.message


async def test_weights_that_would_send_no_traffic_anywhere_are_refused(moto_zone: Zone) -> None:
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(
            plan_weights,
            PlanWeightsRequest(dns=moto_zone.dns, addresses={"a": OLD, "b": NEW}, weights={"a": 0, "b": 0}),
        )
    assert raised.value.type == "InvalidTrafficWeights" and "all weights are 0" in raised.value.message


def test_preflight_checks_credentials_zone_and_record_and_says_what_it_cannot_verify(moto_zone: Zone) -> None:
    report = Route53Provider(moto_zone.dns).preflight()

    assert report.ok, report.markdown()
    # moto has no GetHostedZoneLimit: the quota is unknown, never guessed
    assert [check.ok for check in report.checks] == [True, True, None, True, None]
    assert "record-set quota: could not be read: 404" in report.markdown()
    assert "serves 203.0.113.10" in report.markdown()


def test_accelerated_recovery_the_runbook_expects_is_advice_until_route53_reports_it_enabled(
    moto_zone: Zone, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GetHostedZone's Features and UpdateHostedZoneFeatures, which moto lacks, from the wire stand-in."""
    expecting = moto_zone.dns.model_copy(update={"accelerated_recovery": True})
    with throttling_proxy(moto_zone.endpoint) as proxy:
        Route53Extras(proxy).install()
        point_aws_at(monkeypatch, route53=proxy.endpoint, sts=moto_zone.endpoint)

        off = Route53Provider(expecting).preflight()
        assert off.ok and off.problems == [], "advice never refuses a failover"
        [advice] = off.advice
        assert advice.warning == "accelerated-recovery-off"
        assert "--enable-accelerated-recovery" in advice.detail, advice.detail
        assert "- ! accelerated recovery: the runbook expects it" in off.markdown()

        client("route53", proxy.endpoint).update_hosted_zone_features(
            HostedZoneId=moto_zone.dns.hosted_zone_id, EnableAcceleratedRecovery=True
        )
        enabling = Route53Provider(expecting).preflight()
        [advice] = enabling.advice
        assert advice.detail.startswith("ENABLING, the runbook expects ENABLED"), advice.detail
        assert "--enable" not in advice.detail, "it is on its way: nothing to run"

        enabled = Route53Provider(expecting).preflight()
        assert enabled.advice == [] and "- ✓ accelerated recovery: ENABLED" in enabled.markdown()

        # A runbook that does not ask for it still sees what the zone reports.
        told = Route53Provider(moto_zone.dns).preflight()
        assert "- ✓ accelerated recovery: ENABLED (the runbook does not ask for it)" in told.markdown()


@pytest.mark.parametrize(("limit", "warned"), [(10000, False), (3, True)])
def test_a_zone_near_its_record_set_quota_is_advice_with_what_to_ask_for(
    moto_zone: Zone, monkeypatch: pytest.MonkeyPatch, limit: int, warned: bool
) -> None:
    """GetHostedZoneLimit (moto lacks it) counts the zone's real record sets: SOA, NS and the record."""
    with throttling_proxy(moto_zone.endpoint) as proxy:
        Route53Extras(proxy, limit=limit).install()
        point_aws_at(monkeypatch, route53=proxy.endpoint, sts=moto_zone.endpoint)
        report = Route53Provider(moto_zone.dns).preflight()

    [quota] = [check for check in report.checks if check.name == "record-set quota"]
    assert quota.detail.startswith(f"3 of {limit} record sets"), quota.detail
    assert report.ok
    if warned:
        assert quota.ok is False and quota.warning == "zone-quota-near"
        assert "Service Quotas" in quota.detail
    else:
        assert quota.ok is True and report.advice == []


def test_preflight_names_a_missing_hosted_zone(moto_zone: Zone) -> None:
    missing = moto_zone.dns.model_copy(update={"hosted_zone_id": "ZNOSUCHZONE1"})

    report = Route53Provider(missing).preflight()

    assert not report.ok
    assert "hosted zone ZNOSUCHZONE1" in report.problems[0] and "NoSuchHostedZone" in report.problems[0]


async def test_missing_credentials_fail_at_once_saying_where_drflow_looks(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = make_zone(moto_endpoint)
    isolate_aws_environment(monkeypatch, credentials=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROUTE_53", moto_endpoint)

    with pytest.raises(ApplicationError) as raised:
        await Route53Provider(zone.dns).read(zone.dns.record, "A")

    assert raised.value.type == "CloudCredentialsInvalid" and raised.value.non_retryable
    assert "standard chain" in raised.value.message
