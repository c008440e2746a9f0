"""dns_plan_change and dns_apply_change against the real BIND primary (the session fixture ``dns_world``).

Each test owns a record ``t-<uuid>.drflow.test.`` created by a signed update, so the shared zone's other
records and the other tests' expectations are never disturbed.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.dns.activities import apply_dns_change, plan_dns_change
from activities.dns.plan import (
    ApplyDnsChangeRequest,
    DnsChangePlan,
    DnsChangeResult,
    PlanDnsChangeRequest,
    normalise_value,
)
from activities.dns.registry import dns_provider_for
from activities.dns.rfc2136 import Rfc2136Provider
from activities.errors import ConcurrentChange
from runbooks.model import CloudDns, DnsConfig, Nameserver, Rfc2136Dns, Route53Dns, TsigKey
from tests.support.dns import RECORD_TTL, TSIG_NAME, ZONE, signed_update
from workers.sandbox.named import LOOPBACK, NamedPair, free_port

OLD, NEW, SOMEONE_ELSES = "127.0.1.1", "127.0.2.1", "127.0.3.3"


@pytest.fixture
def record(dns_world: NamedPair) -> Iterator[str]:
    """A record of this test's own that the primary serves as OLD; deleted afterwards."""
    name = f"t-{uuid.uuid4().hex[:12]}.{ZONE}"
    signed_update(dns_world, lambda update: update.replace(name, RECORD_TTL, "A", OLD))
    yield name
    signed_update(dns_world, lambda update: update.delete(name))


def runbook_dns(pair: NamedPair, record: str, secret_ref: str | None = None) -> Rfc2136Dns:
    return Rfc2136Dns(
        provider="rfc2136",
        zone=ZONE,
        record=record,
        type="A",
        ttl=RECORD_TTL,
        nameservers=pair.nameservers,
        server=pair.primary_nameserver,
        tsig=TsigKey(name=TSIG_NAME, algorithm="hmac-sha256", secret=secret_ref or pair.tsig_secret_ref),
    )


async def plan_change(pair: NamedPair, dns: DnsConfig, target: str) -> DnsChangePlan:
    request = PlanDnsChangeRequest(dns=dns, target_address=target)
    plan = await ActivityEnvironment().run(plan_dns_change, request)
    assert_no_secret(pair, request.model_dump_json(), plan.model_dump_json())
    return plan


async def apply_change(pair: NamedPair, dns: DnsConfig, plan: DnsChangePlan) -> DnsChangeResult:
    request = ApplyDnsChangeRequest(dns=dns, plan=plan)
    result = await ActivityEnvironment().run(apply_dns_change, request)
    assert_no_secret(pair, request.model_dump_json(), result.model_dump_json())
    return result


async def apply_fails(pair: NamedPair, dns: DnsConfig, plan: DnsChangePlan) -> ApplicationError:
    request = ApplyDnsChangeRequest(dns=dns, plan=plan)
    with pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(apply_dns_change, request)
    assert_no_secret(pair, request.model_dump_json(), raised.value.message, repr(raised.value.details))
    return raised.value


def assert_no_secret(pair: NamedPair, *texts: str) -> None:
    for text in texts:
        assert pair.tsig_secret not in text


def primary_serial(pair: NamedPair) -> int:
    serial = pair.primary.serial()
    assert serial is not None
    return serial


async def test_a_plan_shows_the_current_and_the_desired_record_with_a_checksum(
    dns_world: NamedPair, record: str
) -> None:
    plan = await plan_change(dns_world, runbook_dns(dns_world, record), NEW)

    assert (plan.provider, plan.zone, plan.record, plan.type) == ("rfc2136", ZONE, record, "A")
    assert (plan.current.values, plan.current.ttl) == ([OLD], RECORD_TTL)
    assert (plan.desired.values, plan.desired.ttl) == ([NEW], RECORD_TTL)
    assert not plan.no_op
    assert plan.markdown() == f"- {record} {RECORD_TTL} IN A {OLD}\n+ {record} {RECORD_TTL} IN A {NEW}"
    assert len(plan.checksum) == 64
    assert plan.checksum == plan.content_checksum()
    again = await plan_change(dns_world, runbook_dns(dns_world, record), NEW)
    assert again.checksum == plan.checksum, "the same observation and target give the same checksum"
    elsewhere = await plan_change(dns_world, runbook_dns(dns_world, record), SOMEONE_ELSES)
    assert elsewhere.checksum != plan.checksum


async def test_a_plan_to_the_value_already_served_is_a_no_op_and_applying_it_writes_nothing(
    dns_world: NamedPair, record: str
) -> None:
    dns = runbook_dns(dns_world, record)
    plan = await plan_change(dns_world, dns, OLD)
    serial = primary_serial(dns_world)

    result = await apply_change(dns_world, dns, plan)

    assert plan.no_op
    assert plan.markdown() == f"no change: {record} {RECORD_TTL} IN A {OLD}"
    assert not result.applied
    assert "already in the desired state" in result.detail
    assert primary_serial(dns_world) == serial


async def test_apply_changes_what_the_primary_serves_and_reports_before_and_after(
    dns_world: NamedPair, record: str
) -> None:
    dns = runbook_dns(dns_world, record)
    plan = await plan_change(dns_world, dns, NEW)

    result = await apply_change(dns_world, dns, plan)

    assert result.applied
    assert result.before == plan.current
    assert result.after == plan.desired
    assert result.change_id is None, "RFC 2136 has no change ids: the update is synchronous"
    assert OLD in result.detail and NEW in result.detail
    assert (await plan_change(dns_world, dns, NEW)).no_op


async def test_applying_the_same_plan_twice_sends_exactly_one_update(
    dns_world: NamedPair, record: str
) -> None:
    dns = runbook_dns(dns_world, record)
    plan = await plan_change(dns_world, dns, NEW)
    serial = primary_serial(dns_world)

    first = await apply_change(dns_world, dns, plan)
    second = await apply_change(dns_world, dns, plan)

    assert (first.applied, second.applied) == (True, False)
    assert second.detail == f"{record} A is already in the desired state ({NEW})"
    assert second.before == second.after == plan.desired
    assert primary_serial(dns_world) == serial + 1, "one update reached the zone, not two"


async def test_a_plan_for_a_record_that_does_not_exist_yet_creates_it(dns_world: NamedPair) -> None:
    record = f"t-{uuid.uuid4().hex[:12]}.{ZONE}"
    dns = runbook_dns(dns_world, record)
    try:
        plan = await plan_change(dns_world, dns, NEW)
        result = await apply_change(dns_world, dns, plan)
    finally:
        signed_update(dns_world, lambda update: update.delete(record))

    assert (plan.current.values, plan.current.ttl) == ([], None)
    assert plan.markdown() == f"+ {record} {RECORD_TTL} IN A {NEW}"
    assert result.applied
    assert result.after.values == [NEW]


async def test_a_plan_made_before_someone_else_changed_the_record_is_stale_and_changes_nothing(
    dns_world: NamedPair, record: str
) -> None:
    dns = runbook_dns(dns_world, record)
    plan = await plan_change(dns_world, dns, NEW)
    signed_update(dns_world, lambda update: update.replace(record, RECORD_TTL, "A", SOMEONE_ELSES))
    serial = primary_serial(dns_world)

    error = await apply_fails(dns_world, dns, plan)

    assert error.type == "PlanStale"
    assert error.non_retryable
    assert error.message.startswith(
        f"{record} changed since the plan was approved: it now answers {SOMEONE_ELSES}"
    )
    assert "re-plan and re-approve" in error.message
    assert primary_serial(dns_world) == serial
    assert (await plan_change(dns_world, dns, SOMEONE_ELSES)).no_op, "the other writer's value stands"


async def test_someone_else_already_making_the_planned_change_is_not_an_error(
    dns_world: NamedPair, record: str
) -> None:
    dns = runbook_dns(dns_world, record)
    plan = await plan_change(dns_world, dns, NEW)
    signed_update(dns_world, lambda update: update.replace(record, RECORD_TTL, "A", NEW))

    result = await apply_change(dns_world, dns, plan)

    assert not result.applied
    assert result.after == plan.desired


async def test_the_update_prerequisite_refuses_a_change_made_between_the_check_and_the_write(
    dns_world: NamedPair, record: str
) -> None:
    """The race the activity's re-read cannot close: the server itself checks the planned current value."""
    dns = runbook_dns(dns_world, record)
    plan = await plan_change(dns_world, dns, NEW)
    signed_update(dns_world, lambda update: update.replace(record, RECORD_TTL, "A", SOMEONE_ELSES))
    serial = primary_serial(dns_world)

    with pytest.raises(ConcurrentChange, match="NXRRSET"):
        await Rfc2136Provider(dns).apply(plan)

    assert primary_serial(dns_world) == serial
    assert (await Rfc2136Provider(dns).read(record, "A")).values == [SOMEONE_ELSES]


async def test_a_tampered_plan_is_refused_and_changes_nothing(dns_world: NamedPair, record: str) -> None:
    dns = runbook_dns(dns_world, record)
    plan = await plan_change(dns_world, dns, NEW)
    desired = plan.desired.model_copy(update={"values": ["127.6.6.6"]})
    tampered = plan.model_copy(update={"desired": desired})
    serial = primary_serial(dns_world)

    error = await apply_fails(dns_world, dns, tampered)

    assert error.type == "PlanChecksumMismatch"
    assert error.non_retryable
    assert "re-plan and re-approve" in error.message
    assert primary_serial(dns_world) == serial


async def test_a_plan_for_another_record_than_the_runbook_names_is_refused(
    dns_world: NamedPair, record: str
) -> None:
    plan = await plan_change(dns_world, runbook_dns(dns_world, record), NEW)

    error = await apply_fails(dns_world, runbook_dns(dns_world, f"other-{record}"), plan)

    assert error.type == "PlanMismatch"
    assert error.non_retryable


async def test_a_wrong_tsig_secret_is_refused_and_the_message_names_the_key_but_not_the_secret(
    dns_world: NamedPair, record: str, tmp_path: Path
) -> None:
    wrong_secret = base64.b64encode(secrets.token_bytes(32)).decode()
    secret_file = tmp_path / "wrong.secret"
    secret_file.write_text(wrong_secret + "\n")
    dns = runbook_dns(dns_world, record, secret_ref=f"file:{secret_file}")
    plan = await plan_change(dns_world, dns, NEW)
    serial = primary_serial(dns_world)

    error = await apply_fails(dns_world, dns, plan)

    assert error.type == "DnsUpdateRefused"
    assert error.non_retryable
    assert f"ns1.drflow.test. (127.0.0.1:{dns_world.primary_port})" in error.message
    assert f"TSIG key {TSIG_NAME}" in error.message
    assert "BADSIG" in error.message
    assert wrong_secret not in error.message
    assert error.__cause__ is None
    assert primary_serial(dns_world) == serial


async def test_a_secret_that_is_not_base64_is_reported_without_its_value(
    dns_world: NamedPair, record: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "garbled.secret"
    secret_file.write_text("not base64 at all!\n")
    dns = runbook_dns(dns_world, record, secret_ref=f"file:{secret_file}")
    plan = await plan_change(dns_world, dns, NEW)

    error = await apply_fails(dns_world, dns, plan)

    assert error.type == "SecretUnavailable"
    assert error.non_retryable
    assert str(secret_file) in error.message
    assert "not base64" not in error.message


async def test_an_address_that_does_not_fit_the_record_type_is_refused_at_planning(
    dns_world: NamedPair, record: str
) -> None:
    for target in ("app.example.com.", "::1"):
        with pytest.raises(ApplicationError) as raised:
            await ActivityEnvironment().run(
                plan_dns_change,
                PlanDnsChangeRequest(dns=runbook_dns(dns_world, record), target_address=target),
            )
        assert raised.value.type == "InvalidDnsTarget"
        assert raised.value.non_retryable
        assert target in raised.value.message


async def test_an_unreachable_primary_is_a_retryable_error_naming_it(
    dns_world: NamedPair, record: str
) -> None:
    closed = Nameserver(name="ns-gone.drflow.test.", address=LOOPBACK, port=free_port())
    dns = runbook_dns(dns_world, record).model_copy(update={"server": closed})

    with pytest.raises(ApplicationError) as raised:
        await Rfc2136Provider(dns, timeout_seconds=0.3).read(record, "A")

    assert raised.value.type == "DnsProviderUnavailable"
    assert not raised.value.non_retryable
    assert f"ns-gone.drflow.test. (127.0.0.1:{closed.port})" in raised.value.message


def test_the_runbook_provider_key_picks_the_provider(dns_world: NamedPair) -> None:
    from activities.dns.clouddns import CloudDnsProvider
    from activities.dns.route53 import Route53Provider

    assert isinstance(dns_provider_for(runbook_dns(dns_world, f"app.{ZONE}")), Rfc2136Provider)
    common = {"zone": ZONE, "record": f"app.{ZONE}", "ttl": 30}
    route53 = Route53Dns.model_validate(common | {"provider": "route53", "hosted_zone_id": "Z0123456789ABC"})
    clouddns = CloudDns.model_validate(common | {"provider": "clouddns", "project": "p", "managed_zone": "z"})
    assert isinstance(dns_provider_for(route53), Route53Provider)
    assert isinstance(dns_provider_for(clouddns), CloudDnsProvider)


def test_targets_are_compared_as_nameservers_print_them() -> None:
    assert normalise_value("A", "127.0.2.1") == "127.0.2.1"
    assert normalise_value("AAAA", "2001:DB8:0:0::1") == "2001:db8::1"
    assert normalise_value("CNAME", "EU.App.Example.com.") == "eu.app.example.com."
