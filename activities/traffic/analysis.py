"""A canary stage's analysis window: real requests through the traffic manager's frontend, judged.

The analysis measures what clients got: errors, p95 latency and which region answered (the ``region`` field
of each answer, or the ``X-Served-By`` header), so a stage passes only if the split the traffic manager really
made matches its weight. A failed analysis is a result, never an activity failure: the workflow rolls back.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

import httpx
from pydantic import Field
from temporalio import activity

from runbooks.model import CanaryAnalysis, StrictModel

MAX_CONCURRENCY = 32
MIN_REQUEST_TIMEOUT = 1.0
HEARTBEAT_EVERY = 1.0
# Which server answered, when the traffic manager says so: the sandbox's HAProxy sets it on every answer,
# its own error pages included, so a 503 for a region that refused is attributed to that region.
SERVED_BY_HEADER = "X-Served-By"
_DETAIL_EXCERPT = 160


def expected_share(weights: Mapping[str, int]) -> dict[str, float]:
    """Percent weights as the shares an analysis expects: ``{"region-a": 25, ...}`` -> ``0.25``."""
    return {region: weight / 100 for region, weight in weights.items()}


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
