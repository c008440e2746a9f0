"""Canary failback, whatever the traffic manager: read and set region weights, and judge an analysis window.

The runbook's ``traffic.provider`` picks the code: ``traffic_manager`` for HAProxy; ``dns-weighted`` uses the
DNS provider's weighted records through ``activities.traffic`` (plan from the served weights, apply
conditionally, read back). Weights are percents of the traffic, 0..100 summing to 100. The analysis sends
real requests through the traffic manager's frontend and measures what the clients got: errors, p95 latency
and which region answered (the ``region`` field of each answer), so a canary stage passes only if the split
the traffic manager really made matches its weight.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Protocol

import httpx
from pydantic import Field
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import ErrorType
from runbooks.model import (
    CanaryAnalysis,
    DnsConfig,
    DnsWeightedTraffic,
    HaproxyTraffic,
    StrictModel,
    TrafficConfig,
)

if TYPE_CHECKING:
    from activities.haproxy import HaproxyWeights
    from activities.traffic import TrafficState

MAX_CONCURRENCY = 32
MIN_REQUEST_TIMEOUT = 1.0
HEARTBEAT_EVERY = 1.0
# Which server answered, when the traffic manager says so: the sandbox's HAProxy sets it on every answer,
# its own error pages included, so a 503 for a region that refused is attributed to that region.
SERVED_BY_HEADER = "X-Served-By"
_DETAIL_EXCERPT = 160


# ------------------------------------------------------------------------------------- traffic managers
class TrafficManagerUnreachable(RuntimeError):
    """The traffic manager's control API does not answer: retrying may help."""


class TrafficManagerRefused(RuntimeError):
    """The traffic manager refused a command or answered nonsense: retrying will not help."""


class RegionWeight(Protocol):
    @property
    def current(self) -> int: ...

    @property
    def raw(self) -> str: ...


class TrafficManager(Protocol):
    """Per-region weights of one traffic manager; implementations raise the two errors above."""

    @property
    def name(self) -> str: ...

    def read(self) -> Mapping[str, RegionWeight]: ...

    def write(self, region: str, weight: int) -> None: ...

    def describe(self, region: str) -> str: ...


def traffic_manager(traffic: TrafficConfig) -> TrafficManager:
    """The implementation for ``traffic.provider``; a new provider is one more branch here.

    ``dns-weighted`` is not one: its weights are planned and applied through ``activities.traffic``
    (``read_weights`` and ``set_weights`` branch to it), as the DNS provider changes records in one batch.
    """
    if isinstance(traffic, HaproxyTraffic):
        return _haproxy(traffic)
    raise ApplicationError(
        f"traffic provider {traffic.provider!r} is not supported by this worker",
        type=ErrorType.UNSUPPORTED_PROVIDER,
        non_retryable=True,
    )


def _haproxy(traffic: HaproxyTraffic) -> HaproxyWeights:
    from activities.haproxy import HaproxyWeights

    return HaproxyWeights(traffic)


# ----------------------------------------------------------------------------------------- weights
class ReadWeightsRequest(StrictModel):
    traffic: TrafficConfig
    dns: DnsConfig | None = Field(default=None, description="the runbook's DNS, for dns-weighted traffic")


class TrafficWeightsState(StrictModel):
    weights: dict[str, int] = Field(description="region -> percent of the traffic it gets now")
    raw: dict[str, str] = Field(description="region -> the weight as the traffic manager reports it")

    def describe(self) -> str:
        return ", ".join(f"{region} {weight}%" for region, weight in sorted(self.weights.items()))


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
def read_weights(req: ReadWeightsRequest) -> TrafficWeightsState:
    if isinstance(req.traffic, DnsWeightedTraffic):
        traffic, dns = req.traffic, _weighted_dns(req.traffic, req.dns)
        return _dns_state(traffic, asyncio.run(_dns_read(traffic, dns)))
    return _state(_read(traffic_manager(req.traffic)))


@activity.defn(name="traffic_set_weights")
def set_weights(req: SetWeightsRequest) -> SetWeightsResult:
    """Set every region's weight unless it already holds, then read back: HAProxy refuses in plain text.

    Raised weights go first and lowered ones after, so the total never drops to 0 on the way (HAProxy would
    answer 503 to everyone in between).
    """
    desired = _desired_weights(req.traffic, req.weights)
    if isinstance(req.traffic, DnsWeightedTraffic):
        return asyncio.run(_dns_set(req.traffic, _weighted_dns(req.traffic, req.dns), desired))
    manager = traffic_manager(req.traffic)
    current = _read(manager)
    before = _state(current)
    changes = {region: weight for region, weight in desired.items() if current[region].current != weight}
    if not changes:
        return SetWeightsResult(before=before, after=before, applied=False)
    for region in sorted(changes, key=lambda r: changes[r] - current[r].current, reverse=True):
        try:
            manager.write(region, changes[region])
        except TrafficManagerRefused as err:
            raise ApplicationError(
                f"{manager.name} refused weight {changes[region]} for {region} "
                f"({manager.describe(region)}): {err}",
                type=ErrorType.TRAFFIC_WEIGHTS_REFUSED,
                non_retryable=True,
            ) from None
        except TrafficManagerUnreachable as err:
            raise ApplicationError(str(err), type=ErrorType.TRAFFIC_MANAGER_UNREACHABLE) from None
    read_back = _read(manager)
    after = _state(read_back)
    wrong = {
        region: read_back[region].raw
        for region, weight in desired.items()
        if read_back[region].current != weight
    }
    if wrong:
        raise ApplicationError(
            f"{manager.name} did not take the weights: asked {desired}, reads back "
            + ", ".join(f"{region} {raw}" for region, raw in sorted(wrong.items())),
            type=ErrorType.TRAFFIC_WEIGHTS_REFUSED,
            non_retryable=True,
        )
    activity.logger.info("traffic weights (%s): %s -> %s", manager.name, before.describe(), after.describe())
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


def _read(manager: TrafficManager) -> Mapping[str, RegionWeight]:
    try:
        return manager.read()
    except TrafficManagerUnreachable as err:
        raise ApplicationError(str(err), type=ErrorType.TRAFFIC_MANAGER_UNREACHABLE) from None
    except TrafficManagerRefused as err:
        raise ApplicationError(
            f"cannot read the weights from {manager.name}: {err}",
            type=ErrorType.TRAFFIC_WEIGHTS_REFUSED,
            non_retryable=True,
        ) from None


def _state(weights: Mapping[str, RegionWeight]) -> TrafficWeightsState:
    total = sum(weight.current for weight in weights.values())
    return TrafficWeightsState(
        weights={region: round(100 * w.current / total) if total else 0 for region, w in weights.items()},
        raw={region: w.raw for region, w in weights.items()},
    )


# ------------------------------------------------------------------- dns-weighted: the DNS provider's weights
# Percents are the provider's weights as they are (0..100 fits Route53's 0..255 and Cloud DNS's any); a
# region's percent is read back as its share of the total, so weights another writer set (9/1) read as 90/10.
def _weighted_dns(traffic: DnsWeightedTraffic, dns: DnsConfig | None) -> DnsConfig:
    if dns is None:
        raise ApplicationError(
            f"traffic provider {traffic.provider!r} moves the DNS provider's weighted records, but the "
            "request carries no dns section (a workflow older than dns-weighted?)",
            type=ErrorType.INVALID_TRAFFIC_WEIGHTS,
            non_retryable=True,
        )
    return dns


async def _dns_read(traffic: DnsWeightedTraffic, dns: DnsConfig) -> TrafficState:
    from activities.traffic import weights_provider_for

    return await weights_provider_for(dns).read_weights(dns.record, dns.type, dict(traffic.servers))


def _dns_state(traffic: DnsWeightedTraffic, state: TrafficState) -> TrafficWeightsState:
    """Each region of the traffic section as a percent; a region without a weighted entry gets 0 (a plain
    record still in place answers one region only: that region gets 100)."""
    shares = {share.region: share for share in state.shares}
    if shares:
        current = {region: shares[region].weight if region in shares else 0 for region in traffic.servers}
        raw = {
            region: f"weight {shares[region].weight}" if region in shares else "no weighted entry"
            for region in traffic.servers
        }
    else:
        plain = set(state.plain_values)
        current = {
            region: 100 if plain and _normalised(state, address) in plain else 0
            for region, address in traffic.servers.items()
        }
        raw = {
            region: "plain record" if current[region] else "no weighted entry" for region in traffic.servers
        }
    total = sum(current.values())
    return TrafficWeightsState(
        weights={region: round(100 * w / total) if total else 0 for region, w in current.items()}, raw=raw
    )


def _normalised(state: TrafficState, address: str) -> str:
    from activities.dns_providers import normalise_value

    return normalise_value(state.type, address)


async def _dns_set(traffic: DnsWeightedTraffic, dns: DnsConfig, desired: dict[str, int]) -> SetWeightsResult:
    """Plan from the served weights, apply only while they still hold, read back: as ``set_weights``."""
    from activities.dns_providers import ConcurrentChange
    from activities.traffic import WeightPlan, desired_weights, weights_provider_for

    provider = weights_provider_for(dns)
    addresses = dict(traffic.servers)
    current = await provider.read_weights(dns.record, dns.type, addresses)
    before = _dns_state(traffic, current)
    plan = WeightPlan.build(provider.name, current, desired_weights(current, desired, addresses, dns.ttl))
    if plan.no_op:
        return SetWeightsResult(before=before, after=before, applied=False)
    try:
        await provider.apply_weights(plan, addresses)
    except ConcurrentChange as err:
        # Planned and applied within this attempt: a retry plans again from what is served then.
        raise ApplicationError(
            f"{dns.record} changed while its weights were being set ({err}); planning again",
            type=ErrorType.PLAN_STALE,
        ) from None
    after = _dns_state(traffic, await provider.read_weights(dns.record, dns.type, addresses))
    wrong = {
        region: after.raw[region] for region, weight in desired.items() if after.weights[region] != weight
    }
    if wrong:
        raise ApplicationError(
            f"{provider.name} did not take the weights of {dns.record}: asked {desired}, reads back "
            + ", ".join(f"{region} {raw}" for region, raw in sorted(wrong.items())),
            type=ErrorType.TRAFFIC_WEIGHTS_REFUSED,
            non_retryable=True,
        )
    activity.logger.info(
        "traffic weights (%s %s): %s -> %s", provider.name, dns.record, before.describe(), after.describe()
    )
    return SetWeightsResult(before=before, after=after, applied=True)


def expected_share(weights: Mapping[str, int]) -> dict[str, float]:
    """Percent weights as the shares an analysis expects: ``{"region-a": 25, ...}`` -> ``0.25``."""
    return {region: weight / 100 for region, weight in weights.items()}


# ----------------------------------------------------------------------------------------- analysis
Share = Annotated[float, Field(ge=0, le=1)]


class CanaryRequest(StrictModel):
    url: str = Field(description="the traffic manager's frontend, e.g. http://127.0.0.1:18090")
    analysis: CanaryAnalysis
    expected_share: dict[str, Share] = Field(
        description="region -> share of the answers it should give, 0..1"
    )


class CanaryResult(StrictModel):
    requests: int
    errors: int = Field(description="answers other than 200 with a region, timeouts and connection errors")
    error_rate: float
    p95_ms: float | None = Field(
        description="over every request, failed ones included; None if none was sent"
    )
    split: dict[str, float] = Field(description="region -> share of the successful answers it gave, 0..1")
    error_kinds: dict[str, int] = Field(description="e.g. {'HTTP 503 from region-a': 12, 'timeout': 2}")
    passed: bool
    reasons: list[str] = Field(description="why it did not pass; empty when it passed")
    duration_ms: float


@dataclass
class _Sample:
    latency_ms: float
    region: str | None
    error: str | None
    detail: str | None = None


@activity.defn(name="canary_analyse")
async def analyse(req: CanaryRequest) -> CanaryResult:
    """Send ``analysis.requests`` GETs evenly over ``analysis.duration``, then judge them by the thresholds.

    A failed analysis is a result (passed=False with reasons): the workflow rolls the weight back. Requests
    go straight to the frontend (no proxy from the environment), at most ``MAX_CONCURRENCY`` at a time.
    """
    analysis = req.analysis
    url = req.url.rstrip("/") + "/" + analysis.path.lstrip("/")
    count = analysis.requests
    interval = analysis.duration.total_seconds() / count
    timeout = max(MIN_REQUEST_TIMEOUT, 2 * analysis.max_p95_latency.total_seconds())
    concurrency = min(count, MAX_CONCURRENCY)
    slots = asyncio.Semaphore(concurrency)
    samples: list[_Sample] = []
    started = time.monotonic()

    async def one(client: httpx.AsyncClient) -> None:
        try:
            samples.append(await _request(client, url, timeout))
        finally:
            slots.release()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, limits=limits) as client:
        tasks: set[asyncio.Task[None]] = set()
        last_beat = started
        for index in range(count):
            await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
            await slots.acquire()
            task = asyncio.create_task(one(client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if time.monotonic() - last_beat >= HEARTBEAT_EVERY:
                last_beat = time.monotonic()
                _heartbeat(index, samples)
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
    return _judge(req, samples, round((time.monotonic() - started) * 1000, 1))


async def _request(client: httpx.AsyncClient, url: str, timeout: float) -> _Sample:
    sent = time.monotonic()

    def sample(region: str | None, error: str | None, detail: str | None = None) -> _Sample:
        return _Sample(round((time.monotonic() - sent) * 1000, 2), region, error, detail)

    try:
        async with asyncio.timeout(timeout):
            response = await client.get(url, timeout=timeout)
    except (TimeoutError, httpx.TimeoutException):
        return sample(None, "timeout", f"no answer within {timeout:g}s")
    except httpx.HTTPError as err:
        return sample(None, f"connection error ({type(err).__name__})", str(err) or None)
    try:
        body = response.json()
    except ValueError:
        body = None
    region = body.get("region") if isinstance(body, dict) else None
    region = region if isinstance(region, str) else None
    if response.status_code != 200:
        origin = region or response.headers.get(SERVED_BY_HEADER)
        source = f" from {origin}" if origin else ""
        detail = body.get("error") if isinstance(body, dict) else _TAG.sub(" ", response.text)
        return sample(region, f"HTTP {response.status_code}{source}", str(detail) if detail else None)
    if region is None:
        return sample(None, "HTTP 200 without a region field", response.text)
    return sample(region, None)


def _judge(req: CanaryRequest, samples: list[_Sample], duration_ms: float) -> CanaryResult:
    analysis = req.analysis
    total = len(samples)
    failed = [s for s in samples if s.error is not None]
    answered = Counter(s.region for s in samples if s.error is None and s.region is not None)
    successes = sum(answered.values())
    split = {region: round(n / successes, 4) for region, n in sorted(answered.items())} if successes else {}
    error_rate = round(len(failed) / total, 4) if total else 1.0
    kinds = Counter(s.error for s in failed if s.error is not None)
    details: dict[str, str] = {}
    for s in failed:
        if s.error is not None and s.detail and s.error not in details:
            details[s.error] = _excerpt(s.detail)
    latencies = sorted(s.latency_ms for s in samples)
    p95 = latencies[max(0, math.ceil(0.95 * total) - 1)] if latencies else None

    reasons: list[str] = []
    if error_rate > analysis.max_error_rate:
        worst = ", ".join(
            f"{n}x {kind}" + (f" ({details[kind]})" if kind in details else "")
            for kind, n in kinds.most_common(3)
        )
        reasons.append(
            f"error rate {error_rate:.1%} is above the {analysis.max_error_rate:.1%} allowed "
            f"({len(failed)} of {total}: {worst})"
        )
    max_p95_ms = analysis.max_p95_latency.total_seconds() * 1000
    if p95 is not None and p95 > max_p95_ms:
        reasons.append(f"p95 latency {p95:.0f} ms is above the {max_p95_ms:.0f} ms allowed")
    if not successes:
        reasons.append("no request was answered with a region: the split cannot be measured")
    else:
        for region in sorted(set(req.expected_share) | set(split)):
            expected, measured = req.expected_share.get(region, 0.0), split.get(region, 0.0)
            if abs(measured - expected) > analysis.split_tolerance + 1e-9:
                reasons.append(
                    f"{region} answered {measured:.1%} of the successful requests, expected "
                    f"{expected:.1%} ± {analysis.split_tolerance:.1%}"
                )
    return CanaryResult(
        requests=total,
        errors=len(failed),
        error_rate=error_rate,
        p95_ms=p95,
        split=split,
        error_kinds=dict(kinds.most_common()),
        passed=not reasons,
        reasons=reasons,
        duration_ms=duration_ms,
    )


def _heartbeat(sent: int, samples: list[_Sample]) -> None:
    if activity.in_activity():
        activity.heartbeat(
            {"sent": sent, "answered": len(samples), "errors": sum(s.error is not None for s in samples)}
        )


_TAG = re.compile(r"<[^>]*>")


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _DETAIL_EXCERPT else flat[:_DETAIL_EXCERPT] + "..."


CANARY_ACTIVITIES = [read_weights, set_weights, analyse]
