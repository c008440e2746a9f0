"""A canary stage's analysis window: real requests through the traffic manager's frontend, judged.

The analysis measures what clients got: errors, p95 latency and which region answered (the ``region`` field
of each answer, or the ``X-Served-By`` header), so a stage passes only if the split the traffic manager really
made matches its weight. With a ``write_path`` a share of the requests write: a standby answers reads, so a
canary of reads alone passes while a region refuses every write. Write failures are counted apart and fail
the stage on their own. A failed analysis is a result, never an activity failure: the workflow decides.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
from pydantic import Field, SerializerFunctionWrapHandler, model_serializer
from temporalio import activity

from activities.heartbeat import beating_async
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
    write_requests: int = Field(default=0, description="requests sent to the write path (in requests)")
    write_errors: int = Field(default=0, description="write requests that did not commit (counted in errors)")
    write_error_kinds: dict[str, int] = Field(
        default_factory=dict, description="e.g. {'HTTP 503 from region-b': 9}: where writes were refused"
    )

    @model_serializer(mode="wrap")
    def _without_writes_when_none(self, handler: SerializerFunctionWrapHandler) -> Any:
        """An analysis without a write path serialises as before it had one (previous workers decode it)."""
        data = handler(self)
        if isinstance(data, dict) and not data.get("write_requests"):
            for key in ("write_requests", "write_errors", "write_error_kinds"):
                data.pop(key, None)
        return data

    @property
    def write_error_rate(self) -> float | None:
        return round(self.write_errors / self.write_requests, 4) if self.write_requests else None


@dataclass
class _Sample:
    latency_ms: float
    region: str | None
    error: str | None
    detail: str | None = None
    write: bool = False


def write_indexes(count: int, share: float) -> set[int]:
    """Which of ``count`` requests write: ``share`` of them (at least one), drawn over the whole window.

    Drawn, not every other one: a round-robin balancer at 50/50 would send every write to one region and
    every read to the other. Seeded, so the same analysis always writes with the same requests.
    """
    writes = min(count, max(1, round(count * share)))
    return set(random.Random(count).sample(range(count), writes))


@activity.defn(name="canary_analyse")
async def analyse(req: CanaryRequest) -> CanaryResult:
    """Send ``analysis.requests`` requests evenly over ``analysis.duration``, then judge them.

    Reads GET ``path``; with a ``write_path``, ``write_share`` of the requests call it instead. A failed
    analysis is a result (passed=False with reasons). Requests go straight to the frontend (no proxy from
    the environment), at most ``MAX_CONCURRENCY`` at a time.
    """
    async with beating_async():
        analysis = req.analysis
        base = req.url.rstrip("/") + "/"
        url = base + analysis.path.lstrip("/")
        write_url = base + analysis.write_path.lstrip("/") if analysis.write_path is not None else None
        count = analysis.requests
        writes = write_indexes(count, analysis.write_share) if write_url is not None else set()
        interval = analysis.duration.total_seconds() / count
        timeout = max(MIN_REQUEST_TIMEOUT, 2 * analysis.max_p95_latency.total_seconds())
        concurrency = min(count, MAX_CONCURRENCY)
        slots = asyncio.Semaphore(concurrency)
        samples: list[_Sample] = []
        started = time.monotonic()

        async def one(client: httpx.AsyncClient, write: bool) -> None:
            try:
                if write and write_url is not None:
                    sample = await _request(client, write_url, timeout, analysis.write_method)
                    sample.write = True
                else:
                    sample = await _request(client, url, timeout, "GET")
                samples.append(sample)
            finally:
                slots.release()

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, limits=limits) as client:
            tasks: set[asyncio.Task[None]] = set()
            last_beat = started
            for index in range(count):
                await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
                await slots.acquire()
                task = asyncio.create_task(one(client, index in writes))
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


async def _request(client: httpx.AsyncClient, url: str, timeout: float, method: str) -> _Sample:
    sent = time.monotonic()

    def sample(region: str | None, error: str | None, detail: str | None = None) -> _Sample:
        return _Sample(round((time.monotonic() - sent) * 1000, 2), region, error, detail)

    try:
        async with asyncio.timeout(timeout):
            response = await client.request(method, url, timeout=timeout)
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
    written = [s for s in samples if s.write]
    write_failed = [s for s in written if s.error is not None]
    write_kinds = Counter(s.error for s in write_failed if s.error is not None)
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
    if written and len(write_failed) / len(written) > analysis.max_error_rate:
        worst = ", ".join(
            f"{n}x {kind}" + (f" ({details[kind]})" if kind in details else "")
            for kind, n in write_kinds.most_common(3)
        )
        reasons.append(
            f"writes failed: {len(write_failed)} of {len(written)} requests to {analysis.write_path} did not "
            f"commit, above the {analysis.max_error_rate:.1%} allowed ({worst})"
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
        write_requests=len(written),
        write_errors=len(write_failed),
        write_error_kinds=dict(write_kinds.most_common()),
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
