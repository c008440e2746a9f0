"""Canary failback, whatever the traffic manager: read and set region weights, and judge an analysis window.

The runbook's ``traffic.provider`` picks the manager (``registry``): HAProxy's runtime API, or the DNS
provider's weighted records for ``dns-weighted``. Every write reads back: HAProxy reports a refusal as text on
an otherwise normal answer, and a DNS provider may be changed by another writer.
"""

from __future__ import annotations

from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ConcurrentChange, ErrorType, TrafficManagerRefused, TrafficManagerUnreachable
from activities.heartbeat import beating_async
from activities.traffic.analysis import analyse
from activities.traffic.provider import TrafficManager, TrafficWeightsState
from activities.traffic.registry import traffic_manager_for
from runbooks.model import DnsConfig, StrictModel, TrafficConfig


class ReadWeightsRequest(StrictModel):
    traffic: TrafficConfig
    dns: DnsConfig | None = Field(default=None, description="the runbook's DNS, for dns-weighted traffic")


class SetWeightsRequest(StrictModel):
    traffic: TrafficConfig
    weights: dict[str, int] = Field(
        description="region -> percent, summing to 100; regions of the traffic section left out get 0"
    )
    dns: DnsConfig | None = Field(default=None, description="the runbook's DNS, for dns-weighted traffic")


class SetWeightsResult(StrictModel):
    before: TrafficWeightsState
    after: TrafficWeightsState
    applied: bool = Field(description="False when the weights were already these (nothing written)")


@activity.defn(name="traffic_read_weights")
async def read_weights(req: ReadWeightsRequest) -> TrafficWeightsState:
    async with beating_async():
        return await _read(traffic_manager_for(req.traffic, req.dns))


@activity.defn(name="traffic_set_weights")
async def set_weights(req: SetWeightsRequest) -> SetWeightsResult:
    """Set every region's weight unless it already holds, then read back what the manager really serves."""
    async with beating_async():
        desired = _desired_weights(req.traffic, req.weights)
        manager = traffic_manager_for(req.traffic, req.dns)
        before = await _read(manager)
        try:
            applied = await manager.write(desired)
        except TrafficManagerRefused as err:
            raise ApplicationError(
                f"{manager.name} {err}", type=ErrorType.TRAFFIC_WEIGHTS_REFUSED, non_retryable=True
            ) from None
        except TrafficManagerUnreachable as err:
            raise ApplicationError(str(err), type=ErrorType.TRAFFIC_MANAGER_UNREACHABLE) from None
        except ConcurrentChange as err:
            raise ApplicationError(f"{err}; planning again", type=ErrorType.PLAN_STALE) from None
        if not applied:
            return SetWeightsResult(before=before, after=before, applied=False)
        after = await _read(manager)
        wrong = {
            region: after.raw[region] for region, weight in desired.items() if after.weights[region] != weight
        }
        if wrong:
            raise ApplicationError(
                f"{manager.name} did not take the weights: asked {desired}, reads back "
                + ", ".join(f"{region} {raw}" for region, raw in sorted(wrong.items())),
                type=ErrorType.TRAFFIC_WEIGHTS_REFUSED,
                non_retryable=True,
            )
        activity.logger.info(
            "traffic weights (%s): %s -> %s", manager.name, before.describe(), after.describe()
        )
        return SetWeightsResult(before=before, after=after, applied=True)


def _desired_weights(traffic: TrafficConfig, weights: dict[str, int]) -> dict[str, int]:
    problems = []
    unknown = sorted(set(weights) - set(traffic.servers))
    if unknown:
        problems.append(
            f"{', '.join(unknown)} not in the traffic section ({', '.join(sorted(traffic.servers))})"
        )
    out_of_range = [
        f"{region}={weight}" for region, weight in sorted(weights.items()) if not 0 <= weight <= 100
    ]
    if out_of_range:
        problems.append(f"weights are percents, 0..100: {', '.join(out_of_range)}")
    if sum(weights.values()) != 100:
        problems.append(
            f"weights must add up to 100 (percent of the traffic), these add up to {sum(weights.values())}"
        )
    if problems:
        raise ApplicationError(
            "cannot set traffic weights: " + "; ".join(problems),
            type=ErrorType.INVALID_TRAFFIC_WEIGHTS,
            non_retryable=True,
        )
    return {region: weights.get(region, 0) for region in traffic.servers}


async def _read(manager: TrafficManager) -> TrafficWeightsState:
    try:
        return await manager.read()
    except TrafficManagerUnreachable as err:
        raise ApplicationError(str(err), type=ErrorType.TRAFFIC_MANAGER_UNREACHABLE) from None
    except TrafficManagerRefused as err:
        raise ApplicationError(
            f"cannot read the weights from {manager.name}: {err}",
            type=ErrorType.TRAFFIC_WEIGHTS_REFUSED,
            non_retryable=True,
        ) from None


TRAFFIC_ACTIVITIES = [read_weights, set_weights, analyse]
