"""Health validation for every interval and timeout the runbook model accepts.

The workflow gives ``validate_health`` a 10 s heartbeat timeout; a check probed every 25 s used to fail on it
five times in a row (the activity slept the whole interval without a heartbeat). Here a real failover on the
dev server validates such a check, in real time: the one test of the suite that waits 25 s on purpose.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.health import (
    HEARTBEAT_EVERY,
    HealthProbe,
    HealthValidationRequest,
    ValidatedProbe,
    validate_health,
    validation_budget,
)
from runbooks.model import HttpCheck
from tests.support.failover import HealthSettings, StatelessService, stateless_service, wait_for_gate
from tests.support.http import AppBehaviour, serve_app
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest
from workflows.run_state import HEARTBEAT

LONG_INTERVAL = HealthSettings(timeout="5s", interval="25s", consecutive_successes=2)


@pytest_asyncio.fixture
async def long_interval(
    dev_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, task_queue: str
) -> AsyncIterator[tuple[WorkflowEnvironment, StatelessService, str]]:
    with stateless_service(tmp_path, dns_world, health=LONG_INTERVAL) as service:
        async with build_worker(dev_env.client, tmp_path, task_queue=task_queue):
            yield dev_env, service, task_queue


async def finish(handle: WorkflowHandle[FailoverWorkflow, FailoverReport], limit: float) -> FailoverReport:
    """The run's report once it ends; a step waiting for an operator's decision fails the test at once."""
    async with asyncio.timeout(limit):
        while True:
            report = await handle.query(FailoverWorkflow.status)
            if report.outcome != "running":
                return report
            if report.waiting_step is not None:
                failed = [s.error for s in report.steps if s.outcome == "failed"]
                raise AssertionError(f"{report.waiting_step} failed and waits for a decision: {failed}")
            await asyncio.sleep(0.5)


async def test_a_check_probed_every_25s_validates_within_the_heartbeat_timeout(
    long_interval: tuple[WorkflowEnvironment, StatelessService, str],
) -> None:
    env, service, task_queue = long_interval
    handle = await env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(service=service.service, target="region-b", reason="drill", requested_by="alice"),
        id=f"failover-{uuid.uuid4()}",
        task_queue=task_queue,
    )
    await wait_for_gate(env.client, handle.id)
    await handle.execute_update(
        FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go", channel="cli")
    )
    report = await finish(handle, limit=120)
    assert report.outcome == "completed", report.messages
    assert report.health is not None and report.health.passed
    [check] = report.health.checks
    assert (check.attempts, check.required) == (2, 2)
    assert check.passed_after_ms is not None and check.passed_after_ms >= 25_000

    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "validate_health"
    ]
    assert len(scheduled) == 1, "one attempt: no retry after a heartbeat timeout"
    [validation] = scheduled
    assert validation.heartbeat_timeout.ToTimedelta() == HEARTBEAT
    # the activity may take one clean streak of the check: 2 x (25s interval + 5s timeout)
    assert validation.start_to_close_timeout.ToTimedelta() >= 2 * timedelta(seconds=30)
    timed_out = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT]
    assert timed_out == []


def validated(url: str, interval: float, timeout: float, successes: int) -> ValidatedProbe:
    probe = HealthProbe(
        region="region-b", check="app", url=url, http=HttpCheck(url=url), timeout=timedelta(seconds=timeout)
    )
    return ValidatedProbe(probe=probe, consecutive_successes=successes, interval=timedelta(seconds=interval))


async def test_validation_heartbeats_while_a_slow_probe_is_waiting_for_its_answer() -> None:
    """A probe whose timeout is longer than the heartbeat timeout must not go silent while it waits."""
    beats: list[float] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(time.monotonic())
    with serve_app(behaviour=AppBehaviour(delay=3 * HEARTBEAT_EVERY)) as app:
        started = time.monotonic()
        result = await env.run(
            validate_health,
            HealthValidationRequest(
                probes=[validated(f"{app.url}/healthz", interval=20, timeout=20, successes=1)],
                timeout=timedelta(seconds=30),
            ),
        )
    assert result.passed
    during_probe = [b - started for b in beats if b - started < 3 * HEARTBEAT_EVERY]
    assert len(during_probe) >= 2, f"heartbeats while the answer took 3 slices: {during_probe}"
    gaps = [later - earlier for earlier, later in pairwise([0.0, *during_probe])]
    assert max(gaps) < HEARTBEAT_EVERY + 1, f"silence between heartbeats: {gaps}"


@pytest.mark.parametrize(
    ("interval", "timeout", "successes"),
    [(25, 5, 2), (60, 60, 1), (1, 1, 100), (3600, 3600, 3), (0.5, 0.5, 2)],
    ids=["long-interval", "one-success-long-timeout", "many-successes", "hourly", "sub-second"],
)
def test_the_activity_timeout_covers_a_clean_streak_of_every_check(
    interval: float, timeout: float, successes: int
) -> None:
    probes = [
        validated("http://127.0.0.1/healthz", interval, timeout, successes),
        validated("http://127.0.0.1/other", 1, 1, 1),
    ]
    minimum = timedelta(seconds=interval * (successes - 1))
    window, start_to_close = validation_budget(probes, minimum)
    streak = successes * timedelta(seconds=interval + timeout)
    assert window >= max(3 * minimum, streak, timedelta(seconds=30))
    # the last probe may start as the window closes, and still needs its timeout to answer
    assert start_to_close >= window + timedelta(seconds=timeout)
