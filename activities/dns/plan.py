"""DNS change plans: what the provider serves, what the runbook wants, and a checksum over both.

Pure types and functions, no I/O: the plan is computed by ``dns_plan_change`` from observed state, shown for
approval, and ``dns_apply_change`` refuses one whose checksum or observed state no longer holds, so an
approval never covers a change nobody saw.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json

from pydantic import Field
from temporalio.exceptions import ApplicationError

from activities.dns.reader import RecordType
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
