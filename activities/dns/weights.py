"""Weighted DNS records as traffic shares between regions: the pure types of a weight change.

Like a record change, a weight change is planned from what the provider serves, shown, checksummed, and
applied only while what it was planned from still holds. Each region's share is found by the region's name
(the Route53 SetIdentifier) or its address (a Cloud DNS WRR item's rrdatas); entries belonging to no region of
the runbook are reported and left alone. Backends implement ``provider.WeightedDnsProvider``.
"""

from __future__ import annotations

import hashlib
import json

from pydantic import Field
from temporalio.exceptions import ApplicationError

from activities.dns.plan import normalise_value
from activities.dns.reader import RecordType
from activities.errors import ErrorType
from runbooks.model import StrictModel

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
