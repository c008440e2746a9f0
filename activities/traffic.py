"""Traffic shares between regions (canary failback): the ``TrafficWeights`` protocol and its activities.

Like a DNS change, a weight change is planned from what the provider serves, shown, checksummed, and applied
only while what it was planned from still holds. Each region's share is found by the region's name (the
Route53 SetIdentifier) or its address (a Cloud DNS WRR item's rrdatas); entries belonging to no region of the
runbook are reported and left alone. Implementations: Route53 weighted records (``activities.route53``),
Cloud DNS weighted round robin (``activities.clouddns``); HAProxy joins with the failback work.
"""

from __future__ import annotations

import hashlib
import json
from typing import Protocol

from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.dns_providers import ConcurrentChange, normalise_value
from activities.dns_reader import RecordType
from activities.errors import ErrorType
from runbooks.model import CloudDns, DnsConfig, Route53Dns, StrictModel

MAX_WEIGHT = 255  # Route53's limit; Cloud DNS accepts any non-negative weight, so this fits both.


class TrafficShare(StrictModel):
    region: str
    values: list[str] = Field(description="what this region's entry answers, sorted")
    weight: int = Field(ge=0, le=MAX_WEIGHT)


class TrafficState(StrictModel):
    record: str
    type: RecordType
    ttl: int | None
    shares: list[TrafficShare] = Field(description="one per region that has an entry, sorted by region")
    plain_values: list[str] = Field(
        default_factory=list, description="a plain (unweighted) record that weights would replace"
    )
    foreign: list[str] = Field(
        default_factory=list,
        description="weighted entries that belong to no region of the runbook, untouched",
    )

    def weights(self) -> dict[str, int]:
        return {share.region: share.weight for share in self.shares}

    def describe(self) -> str:
        parts = [f"{s.region} {s.weight} ({', '.join(s.values)})" for s in self.shares]
        if self.plain_values:
            parts.append(f"plain record {', '.join(self.plain_values)}")
        return "; ".join(parts) or "no weighted entries"


class WeightPlan(StrictModel):
    provider: str
    record: str
    type: RecordType
    current: TrafficState
    desired: TrafficState
    no_op: bool
    checksum: str

    @classmethod
    def build(cls, provider: str, current: TrafficState, desired: TrafficState) -> WeightPlan:
        return cls(
            provider=provider,
            record=desired.record,
            type=desired.type,
            current=current,
            desired=desired,
            no_op=current == desired,
            checksum=_checksum(provider, current, desired),
        )

    def content_checksum(self) -> str:
        return _checksum(self.provider, self.current, self.desired)

    def markdown(self) -> str:
        return f"{self.record} {self.type}: {self.current.describe()} → {self.desired.describe()}"


def _checksum(provider: str, current: TrafficState, desired: TrafficState) -> str:
    canonical = json.dumps(
        {
            "provider": provider,
            "current": current.model_dump(mode="json"),
            "desired": desired.model_dump(mode="json"),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class TrafficWeights(Protocol):
    """Moves traffic shares between regions' entries of one record."""

    @property
    def name(self) -> str: ...

    async def read_weights(self, record: str, type: RecordType, addresses: dict[str, str]) -> TrafficState:
        """Each region's entry (by region name or address) with its weight, as the provider serves it."""
        ...

    async def apply_weights(self, plan: WeightPlan, addresses: dict[str, str]) -> str | None:
        """Write ``plan.desired`` only if the provider still serves ``plan.current``; returns the change id.

        Raises ``ConcurrentChange`` when the provider refused for that reason.
        """
        ...


def weights_provider_for(dns: DnsConfig) -> TrafficWeights:
    if isinstance(dns, Route53Dns):
        from activities.route53 import Route53Provider

        return Route53Provider(dns)
    if isinstance(dns, CloudDns):
        from activities.clouddns import CloudDnsProvider

        return CloudDnsProvider(dns)
    raise ApplicationError(
        f"DNS provider {dns.provider!r} has no traffic weights; use route53 or clouddns (HAProxy comes with "
        "failback)",
        type=ErrorType.DNS_PROVIDER_NOT_SUPPORTED,
        non_retryable=True,
    )


def desired_weights(
    current: TrafficState, weights: dict[str, int], addresses: dict[str, str], ttl: int
) -> TrafficState:
    """The state after the change: every region of ``weights`` has an entry, its values kept if it had one."""
    problems = []
    unknown = sorted(set(weights) - set(addresses))
    if unknown:
        problems.append(f"{', '.join(unknown)} not among the regions ({', '.join(sorted(addresses))})")
    out_of_range = [
        f"{region}={weight}" for region, weight in weights.items() if not 0 <= weight <= MAX_WEIGHT
    ]
    if out_of_range:
        problems.append(f"weights must be 0..{MAX_WEIGHT}: {', '.join(out_of_range)}")
    if weights and sum(weights.values()) == 0:
        problems.append("all weights are 0, which DNS providers answer as equal shares: keep one above 0")
    if not weights:
        problems.append("no weights given")
    if problems:
        raise ApplicationError(
            "cannot set traffic weights: " + "; ".join(problems),
            type=ErrorType.INVALID_TRAFFIC_WEIGHTS,
            non_retryable=True,
        )
    existing = {share.region: share for share in current.shares}
    shares = [
        TrafficShare(
            region=region,
            values=existing[region].values
            if region in existing
            else [normalise_value(current.type, addresses[region])],
            weight=weight,
        )
        for region, weight in sorted(weights.items())
    ]
    kept = [share for share in current.shares if share.region not in weights]
    return TrafficState(
        record=current.record,
        type=current.type,
        ttl=current.ttl if current.shares else ttl,
        shares=sorted([*shares, *kept], key=lambda share: share.region),
        plain_values=[],
        foreign=current.foreign,
    )


# ------------------------------------------------------------------------------------------ activities
class PlanWeightsRequest(StrictModel):
    dns: DnsConfig
    addresses: dict[str, str] = Field(description="region -> the address its entry answers (runbook regions)")
    weights: dict[str, int] = Field(description="region -> new weight; regions left out keep theirs")


class ApplyWeightsRequest(StrictModel):
    dns: DnsConfig
    addresses: dict[str, str]
    plan: WeightPlan


class WeightsResult(StrictModel):
    applied: bool
    before: TrafficState
    after: TrafficState
    change_id: str | None
    detail: str


@activity.defn(name="traffic_plan_weights")
async def plan_weights(req: PlanWeightsRequest) -> WeightPlan:
    """Observe the provider and compute the weight change to approve; writes nothing."""
    provider = weights_provider_for(req.dns)
    current = await provider.read_weights(req.dns.record, req.dns.type, req.addresses)
    desired = desired_weights(current, req.weights, req.addresses, req.dns.ttl)
    return WeightPlan.build(provider.name, current, desired)


@activity.defn(name="traffic_apply_weights")
async def apply_weights(req: ApplyWeightsRequest) -> WeightsResult:
    """Apply an approved weight plan if what it was planned from still holds; idempotent under retries."""
    plan = req.plan
    if (
        plan.checksum != plan.content_checksum()
        or plan.provider != req.dns.provider
        or plan.record != req.dns.record
    ):
        raise ApplicationError(
            f"the weight plan for {plan.record} was altered or belongs to another record; re-plan and "
            "re-approve",
            type=ErrorType.PLAN_CHECKSUM_MISMATCH,
            non_retryable=True,
        )
    provider = weights_provider_for(req.dns)
    before = await provider.read_weights(plan.record, plan.type, req.addresses)
    if before == plan.desired:
        return WeightsResult(
            applied=False, before=before, after=before, change_id=None, detail=f"already {before.describe()}"
        )
    if before != plan.current:
        raise _stale(plan, before)
    try:
        change_id = await provider.apply_weights(plan, req.addresses)
    except ConcurrentChange as refused:
        now = await provider.read_weights(plan.record, plan.type, req.addresses)
        if now == plan.desired:
            return WeightsResult(
                applied=False, before=now, after=now, change_id=None, detail=f"already {now.describe()}"
            )
        raise _stale(plan, now) from refused
    after = await provider.read_weights(plan.record, plan.type, req.addresses)
    detail = f"{plan.record} {plan.type}: {before.describe()} -> {after.describe()} ({provider.name})"
    activity.logger.info("traffic weights applied: %s", detail)
    return WeightsResult(applied=True, before=before, after=after, change_id=change_id, detail=detail)


def _stale(plan: WeightPlan, now: TrafficState) -> ApplicationError:
    return ApplicationError(
        f"{plan.record} changed since the weight plan was approved: it now serves {now.describe()}, the plan "
        f"expected {plan.current.describe()}; re-plan and re-approve",
        type=ErrorType.PLAN_STALE,
        non_retryable=True,
    )


TRAFFIC_ACTIVITIES = [plan_weights, apply_weights]
