"""The DNS activities: plan and apply a record change, wait for the provider's word, move weights, preflight.

Each goes through ``registry`` to the runbook's provider. The plan is computed from what the provider serves
and checksummed; apply re-reads and refuses a plan whose checksum or observed state no longer holds. Every
activity is safe to retry: apply of a plan that already took effect reports ``applied=False`` instead of
writing again, and the status wait is a plain read that heartbeats every poll.

``dns_wait_for_change`` is the provider's word (Route53 INSYNC, Cloud DNS done), not proof:
``dns_verify_propagation`` still asks every authoritative nameserver. It comes first because it is cheap and
because until then no nameserver is expected to answer the new value.
"""

from __future__ import annotations

import asyncio
import time

from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.cloud.preflight import PreflightReport
from activities.cloud.retry import heartbeat
from activities.dns import registry
from activities.dns.plan import (
    ApplyDnsChangeRequest,
    DnsChangePlan,
    DnsChangeResult,
    DnsRecordState,
    PlanDnsChangeRequest,
    desired_state,
)
from activities.dns.weights import TrafficState, WeightPlan, desired_weights
from activities.errors import ConcurrentChange, ErrorType
from activities.heartbeat import beating, beating_async, previous_progress, progress
from runbooks.model import DnsConfig, StrictModel


# ------------------------------------------------------------------------------------------ record changes
@activity.defn(name="dns_plan_change")
async def plan_dns_change(req: PlanDnsChangeRequest) -> DnsChangePlan:
    """Observe the provider and compute the change to approve; writes nothing."""
    async with beating_async():
        desired = desired_state(req.dns, req.target_address)
        provider = registry.dns_provider_for(req.dns)
        current = await provider.read(req.dns.record, req.dns.type)
        plan = DnsChangePlan.build(provider.name, req.dns.zone, current, desired)
        activity.logger.info("DNS plan for %s: %s", req.dns.record, plan.markdown().replace("\n", " / "))
        return plan


@activity.defn(name="dns_apply_change")
async def apply_dns_change(req: ApplyDnsChangeRequest) -> DnsChangeResult:
    """Apply an approved plan if what it was computed from still holds; idempotent under retries."""
    async with beating_async():
        plan = req.plan
        _check_plan_fits(req.dns, plan)
        provider = registry.dns_provider_for(req.dns)
        before = await provider.read(plan.record, plan.type)
        if before == plan.desired:
            return _applied_earlier(plan, before) or _already_desired(plan, before)
        if before != plan.current:
            raise _stale(plan, before)

        progress({"dns_apply": plan.checksum})  # before the write: a retry after a lost answer knows it
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
                f"{after.describe()} instead of {plan.desired.describe()}; "
                "look for another writer, then re-plan",
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


def _applied_earlier(plan: DnsChangePlan, state: DnsRecordState) -> DnsChangeResult | None:
    """The change of the previous attempt of this activity, whose answer was lost (its worker died after
    the write): reported as this run's change, from the plan's state, not as found in place. The provider's
    change id went with the lost answer, so the provider's own status is not waited for; propagation is
    still proven on every nameserver."""
    sent = any(isinstance(d, dict) and d.get("dns_apply") == plan.checksum for d in previous_progress())
    if not sent or plan.no_op:
        return None
    return DnsChangeResult(
        applied=True,
        before=plan.current,
        after=state,
        change_id=None,
        detail=f"{plan.record} {plan.type}: {plan.current.describe()} -> {state.describe()} "
        f"({plan.provider}), applied by attempt {activity.info().attempt - 1}, whose answer was lost; "
        "not applied again",
    )


def _stale(plan: DnsChangePlan, now: DnsRecordState) -> ApplicationError:
    ttl = "" if now.ttl is None else f" with TTL {now.ttl}"
    return ApplicationError(
        f"{plan.record} changed since the plan was approved: it now answers {now.describe()}{ttl}, "
        f"the plan expected {plan.current.describe()}; re-plan and re-approve",
        type=ErrorType.PLAN_STALE,
        non_retryable=True,
    )


# ---------------------------------------------------------------------------------- provider status
class DnsChangeStatusRequest(StrictModel):
    dns: DnsConfig
    change_id: str
    timeout_seconds: float = Field(gt=0, le=86400, description="the runbook's propagation_budget")
    poll_interval_seconds: float = Field(default=1.0, gt=0, le=60)


class DnsChangeStatus(StrictModel):
    provider: str
    change_id: str
    status: str = Field(
        description="the provider's last word: PENDING/INSYNC (Route53), pending/done (Cloud DNS)"
    )
    in_sync: bool
    waited_ms: float
    polls: int


@activity.defn(name="dns_wait_for_change")
async def wait_for_change(req: DnsChangeStatusRequest) -> DnsChangeStatus:
    """Poll the change until the provider reports it live; past the budget, fail with what it last said."""
    provider = registry.dns_provider_for(req.dns)
    if not provider.reports_change_status:
        raise ApplicationError(
            f"DNS provider {req.dns.provider!r} reports no change status; verify propagation directly",
            type=ErrorType.NOT_APPLICABLE,
            non_retryable=True,
        )
    started = time.monotonic()
    polls = 0
    while True:
        in_sync, status = await provider.change_status(req.change_id)
        polls += 1
        waited_ms = round((time.monotonic() - started) * 1000, 1)
        result = DnsChangeStatus(
            provider=req.dns.provider,
            change_id=req.change_id,
            status=status,
            in_sync=in_sync,
            waited_ms=waited_ms,
            polls=polls,
        )
        if in_sync:
            activity.logger.info(
                "%s change %s is %s after %.0f ms", req.dns.provider, req.change_id, status, waited_ms
            )
            return result
        heartbeat(result.model_dump(mode="json"))
        remaining = req.timeout_seconds - (time.monotonic() - started)
        if remaining <= 0:
            raise ApplicationError(
                f"{req.dns.provider} change {req.change_id} is still {status} after {req.timeout_seconds:g}s",
                result.model_dump(mode="json"),
                type=ErrorType.PROPAGATION_TIMEOUT,
                non_retryable=True,
            )
        await asyncio.sleep(min(req.poll_interval_seconds, remaining))


# ------------------------------------------------------------------------------------------ weights
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
    async with beating_async():
        provider = registry.weights_provider_for(req.dns)
        current = await provider.read_weights(req.dns.record, req.dns.type, req.addresses)
        desired = desired_weights(current, req.weights, req.addresses, req.dns.ttl)
        return WeightPlan.build(provider.name, current, desired)


@activity.defn(name="traffic_apply_weights")
async def apply_weights(req: ApplyWeightsRequest) -> WeightsResult:
    """Apply an approved weight plan if what it was planned from still holds; idempotent under retries."""
    async with beating_async():  # a throttled provider's backoff may outlast the heartbeat timeout
        return await _apply_weights(req)


async def _apply_weights(req: ApplyWeightsRequest) -> WeightsResult:
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
    provider = registry.weights_provider_for(req.dns)
    before = await provider.read_weights(plan.record, plan.type, req.addresses)
    if before == plan.desired:
        return WeightsResult(
            applied=False, before=before, after=before, change_id=None, detail=f"already {before.describe()}"
        )
    if before != plan.current:
        raise _stale_weights(plan, before)
    try:
        change_id = await provider.apply_weights(plan, req.addresses)
    except ConcurrentChange as refused:
        now = await provider.read_weights(plan.record, plan.type, req.addresses)
        if now == plan.desired:
            return WeightsResult(
                applied=False, before=now, after=now, change_id=None, detail=f"already {now.describe()}"
            )
        raise _stale_weights(plan, now) from refused
    after = await provider.read_weights(plan.record, plan.type, req.addresses)
    detail = f"{plan.record} {plan.type}: {before.describe()} -> {after.describe()} ({provider.name})"
    activity.logger.info("traffic weights applied: %s", detail)
    return WeightsResult(applied=True, before=before, after=after, change_id=change_id, detail=detail)


def _stale_weights(plan: WeightPlan, now: TrafficState) -> ApplicationError:
    return ApplicationError(
        f"{plan.record} changed since the weight plan was approved: it now serves {now.describe()}, the plan "
        f"expected {plan.current.describe()}; re-plan and re-approve",
        type=ErrorType.PLAN_STALE,
        non_retryable=True,
    )


# ------------------------------------------------------------------------------------------ preflight
class DnsPreflightRequest(StrictModel):
    dns: DnsConfig
    weighted: dict[str, str] | None = Field(
        default=None,
        description="dns-weighted traffic: region -> the address of its weighted entry; the record is then "
        "read as weighted entries, not as one simple record",
    )


@activity.defn(name="dns_preflight")
def dns_preflight(request: DnsPreflightRequest) -> PreflightReport:
    with beating():
        return registry.dns_provider_for(request.dns).preflight(request.weighted)


DNS_ACTIVITIES = [
    plan_dns_change,
    apply_dns_change,
    wait_for_change,
    plan_weights,
    apply_weights,
    dns_preflight,
]
