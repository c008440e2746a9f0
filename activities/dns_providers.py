"""DNS changes as plan, then apply: the provider-neutral activities and the ``DnsProvider`` protocol.

The plan is computed from what the provider serves and what the runbook wants, shown for approval, and
checksummed; apply re-reads and refuses a plan whose checksum or observed state no longer holds, so an
approval never covers a change nobody saw. Both activities are safe to retry: apply of a plan that already
took effect reports ``applied=False`` instead of writing again.

Vendor SDKs are imported only by the module of their provider (``activities.rfc2136``, ...).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Protocol

from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.dns_reader import RecordType
from activities.errors import ErrorType
from runbooks.model import DnsConfig, StrictModel


class DnsRecordState(StrictModel):
    record: str
    type: RecordType
    ttl: int | None
    values: list[str] = Field(description="sorted; empty means there is no such RRset")

    def describe(self) -> str:
        """For operator messages: ``127.0.1.1`` or ``nothing (no such record)``."""
        return ", ".join(self.values) if self.values else "nothing (no such record)"

    def zone_lines(self) -> list[str]:
        ttl = "?" if self.ttl is None else str(self.ttl)
        return [f"{self.record} {ttl} IN {self.type} {value}" for value in self.values]


class DnsChangePlan(StrictModel):
    provider: str
    zone: str
    record: str
    type: RecordType
    current: DnsRecordState = Field(description="observed from the provider at planning time")
    desired: DnsRecordState
    no_op: bool = Field(description="the provider already serves the desired state")
    checksum: str = Field(description="sha256 over provider, zone, record, type, current and desired")

    @classmethod
    def build(
        cls, provider: str, zone: str, current: DnsRecordState, desired: DnsRecordState
    ) -> DnsChangePlan:
        return cls(
            provider=provider,
            zone=zone,
            record=desired.record,
            type=desired.type,
            current=current,
            desired=desired,
            no_op=current == desired,
            checksum=plan_checksum(provider, zone, desired.record, desired.type, current, desired),
        )

    def content_checksum(self) -> str:
        """What the checksum must be for this content; differs from ``checksum`` when the plan was altered."""
        return plan_checksum(self.provider, self.zone, self.record, self.type, self.current, self.desired)

    def markdown(self) -> str:
        if self.no_op:
            return "no change: " + "\n".join(self.desired.zone_lines())
        removed = [f"- {line}" for line in self.current.zone_lines()]
        added = [f"+ {line}" for line in self.desired.zone_lines()]
        return "\n".join(removed + added)


def plan_checksum(
    provider: str, zone: str, record: str, type: str, current: DnsRecordState, desired: DnsRecordState
) -> str:
    canonical = json.dumps(
        {
            "provider": provider,
            "zone": zone,
            "record": record,
            "type": type,
            "current": current.model_dump(mode="json"),
            "desired": desired.model_dump(mode="json"),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class PlanDnsChangeRequest(StrictModel):
    dns: DnsConfig
    target_address: str = Field(description="the target region's address (a name ending in a dot for CNAME)")


class ApplyDnsChangeRequest(StrictModel):
    dns: DnsConfig
    plan: DnsChangePlan = Field(description="the plan as approved")


class DnsChangeResult(StrictModel):
    applied: bool = Field(description="False when the provider already served the desired state")
    before: DnsRecordState
    after: DnsRecordState
    change_id: str | None = Field(description="the provider's id for the change, where it has one")
    detail: str


class ConcurrentChange(Exception):
    """The provider refused the write because the record no longer holds ``plan.current``.

    Raised by ``DnsProvider.apply`` only; the apply activity turns it into a result or ``PlanStale``.
    """


class DnsProvider(Protocol):
    """One DNS service: what it serves for a record, and one conditional write of a plan."""

    @property
    def name(self) -> str: ...

    @property
    def supports_weights(self) -> bool: ...

    @property
    def reports_change_status(self) -> bool:
        """``apply`` returns a change id whose status can be polled (Route53 INSYNC, Cloud DNS done)."""
        ...

    async def read(self, record: str, type: RecordType) -> DnsRecordState:
        """The RRset as the provider itself serves it, not through a resolver's cache."""
        ...

    async def apply(self, plan: DnsChangePlan) -> str | None:
        """Replace ``plan.current`` by ``plan.desired`` only if the record still holds ``plan.current``.

        Raises ``ConcurrentChange`` when the provider refused for that reason; returns the change id.
        """
        ...


def provider_for(dns: DnsConfig) -> DnsProvider:
    if dns.provider == "rfc2136":
        from activities.rfc2136 import Rfc2136Provider

        return Rfc2136Provider(dns)
    if dns.provider == "route53":
        from activities.route53 import Route53Provider

        return Route53Provider(dns)
    if dns.provider == "clouddns":
        from activities.clouddns import CloudDnsProvider

        return CloudDnsProvider(dns)
    raise ApplicationError(
        f"DNS provider {dns.provider!r} is not supported",
        type=ErrorType.DNS_PROVIDER_NOT_SUPPORTED,
        non_retryable=True,
    )


def desired_state(dns: DnsConfig, target_address: str) -> DnsRecordState:
    """The runbook's record answering ``target_address``, normalised as nameservers print it."""
    return DnsRecordState(
        record=dns.record, type=dns.type, ttl=dns.ttl, values=[normalise_value(dns.type, target_address)]
    )


def normalise_value(record_type: RecordType, address: str) -> str:
    """As nameservers print it: ``2001:db8::1`` for ``2001:DB8:0::1``, a lower-case CNAME target."""
    if record_type == "CNAME":
        if not address.endswith("."):
            raise _invalid_target(address, "a CNAME target must be a fully qualified name ending with a dot")
        return address.lower()
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise _invalid_target(
            address, f"it is not an IP address, and the record type is {record_type}"
        ) from None
    if (record_type == "A") != (parsed.version == 4):
        raise _invalid_target(address, f"an IPv{parsed.version} address does not fit an {record_type} record")
    return str(parsed)


def _invalid_target(address: str, reason: str) -> ApplicationError:
    return ApplicationError(
        f"cannot point the record at {address!r}: {reason}",
        type=ErrorType.INVALID_DNS_TARGET,
        non_retryable=True,
    )


@activity.defn(name="dns_plan_change")
async def plan_dns_change(req: PlanDnsChangeRequest) -> DnsChangePlan:
    """Observe the provider and compute the change to approve; writes nothing."""
    desired = desired_state(req.dns, req.target_address)
    provider = provider_for(req.dns)
    current = await provider.read(req.dns.record, req.dns.type)
    plan = DnsChangePlan.build(provider.name, req.dns.zone, current, desired)
    activity.logger.info("DNS plan for %s: %s", req.dns.record, plan.markdown().replace("\n", " / "))
    return plan


@activity.defn(name="dns_apply_change")
async def apply_dns_change(req: ApplyDnsChangeRequest) -> DnsChangeResult:
    """Apply an approved plan if what it was computed from still holds; idempotent under retries."""
    plan = req.plan
    _check_plan_fits(req.dns, plan)
    provider = provider_for(req.dns)
    before = await provider.read(plan.record, plan.type)
    if before == plan.desired:
        return _already_desired(plan, before)
    if before != plan.current:
        raise _stale(plan, before)

    try:
        change_id = await provider.apply(plan)
    except ConcurrentChange as refused:
        now = await provider.read(plan.record, plan.type)
        if now == plan.desired:
            return _already_desired(plan, now)
        raise _stale(plan, now) from refused

    after = await provider.read(plan.record, plan.type)
    if after != plan.desired:
        raise ApplicationError(
            f"{provider.name} accepted the update of {plan.record} {plan.type} but now serves "
            f"{after.describe()} instead of {plan.desired.describe()}; look for another writer, then re-plan",
            type=ErrorType.DNS_UPDATE_FAILED,
            non_retryable=True,
        )
    detail = f"{plan.record} {plan.type}: {before.describe()} -> {after.describe()} ({provider.name})"
    activity.logger.info("DNS change applied: %s", detail)
    return DnsChangeResult(applied=True, before=before, after=after, change_id=change_id, detail=detail)


def _check_plan_fits(dns: DnsConfig, plan: DnsChangePlan) -> None:
    expected = plan.content_checksum()
    if plan.checksum != expected:
        raise ApplicationError(
            f"the plan for {plan.record} does not match its checksum (it carries {plan.checksum[:12]}..., "
            f"its content hashes to {expected[:12]}...): it was altered after it was computed; re-plan and "
            "re-approve",
            type=ErrorType.PLAN_CHECKSUM_MISMATCH,
            non_retryable=True,
        )
    planned = (plan.provider, plan.zone, plan.record, plan.type)
    runbook = (dns.provider, dns.zone, dns.record, dns.type)
    consistent = plan.current.record == plan.desired.record == plan.record
    if planned != runbook or not consistent:
        raise ApplicationError(
            f"the plan changes {plan.provider} {plan.zone} {plan.record} {plan.type}, but the runbook's DNS "
            f"is {dns.provider} {dns.zone} {dns.record} {dns.type}; re-plan from the runbook",
            type=ErrorType.PLAN_MISMATCH,
            non_retryable=True,
        )


def _already_desired(plan: DnsChangePlan, state: DnsRecordState) -> DnsChangeResult:
    return DnsChangeResult(
        applied=False,
        before=state,
        after=state,
        change_id=None,
        detail=f"{plan.record} {plan.type} is already in the desired state ({state.describe()})",
    )


def _stale(plan: DnsChangePlan, now: DnsRecordState) -> ApplicationError:
    ttl = "" if now.ttl is None else f" with TTL {now.ttl}"
    return ApplicationError(
        f"{plan.record} changed since the plan was approved: it now answers {now.describe()}{ttl}, "
        f"the plan expected {plan.current.describe()}; re-plan and re-approve",
        type=ErrorType.PLAN_STALE,
        non_retryable=True,
    )
