"""Retrying throttled cloud calls with backoff and jitter, and heartbeats only where someone listens.

Cloud APIs throttle bursts (Route53 allows five requests a second per account, Cloud DNS has per-minute
quotas), and a failover is exactly such a burst. A throttled call did not run, so it is always safe to retry;
a call that failed on the way back (5xx, connection lost) may have run, so only reads and conditional writes
are retried here. Delays grow exponentially with full jitter, so workers throttled together do not retry
together.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from temporalio import activity

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly between 0 and min(cap, base * 2^n)."""

    attempts: int = 8
    base_seconds: float = 0.25
    cap_seconds: float = 10.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))


DEFAULT_BACKOFF = Backoff()

Verdict = Literal["retry", "raise"]


def with_backoff(
    call: Callable[[], T],
    classify: Callable[[Exception], Verdict],
    backoff: Backoff,
    what: str,
    *,
    provider: str | None = None,
    throttled: Callable[[Exception], bool] | None = None,
) -> T:
    """Run ``call``; while ``classify`` says an error is worth retrying, wait and run it again.

    Blocking by design: providers run it in a worker thread (sync activities or ``asyncio.to_thread``). Each
    wait heartbeats (where a heartbeat timeout is set), so a long throttling spell is not taken for a dead
    worker.
    """
    attempt = 0
    while True:
        try:
            return call()
        except Exception as error:
            attempt += 1
            if classify(error) == "raise" or attempt >= backoff.attempts:
                raise
            delay = backoff.delay(attempt)
            if provider is not None and throttled is not None and throttled(error):
                count_throttled(provider)
            if activity.in_activity():
                activity.logger.info(
                    "%s: %s, retry %d of %d in %.2fs",
                    what,
                    _short(error),
                    attempt,
                    backoff.attempts - 1,
                    delay,
                )
            heartbeat(f"{what}: retry {attempt} after {type(error).__name__}")
            time.sleep(delay)


def count_throttled(provider: str) -> None:
    """``drflow_provider_throttled_total{provider}`` (docs/observability.md), through the activity's meter."""
    if activity.in_activity():
        activity.metric_meter().create_counter(
            "drflow_provider_throttled_total", "provider calls throttled and retried by drflow's backoff"
        ).add(1, {"provider": provider})


def heartbeat(*details: object) -> None:
    """Heartbeat only where the caller set a heartbeat timeout: otherwise nobody waits on it, and each
    heartbeat still reaches the server as a (billable) action."""
    if activity.in_activity() and activity.info().heartbeat_timeout:
        activity.heartbeat(*details)


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:200] + "..."
