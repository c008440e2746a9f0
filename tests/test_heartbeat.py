"""Liveness heartbeats beside a blocking call (activities/heartbeat.py), on the real dev server.

An activity that blocks longer than its heartbeat timeout survives only if something beats beside it; the
control activity, which blocks the same way without the helper, is timed out by the server. So the tests
fail if the helper stops beating, and a lost beat never fails the body.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from temporalio import activity, workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, TimeoutError, TimeoutType
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.heartbeat import beating, beating_async

BLOCK = 2.5  # seconds each activity blocks: more than twice the heartbeat timeout below
EVERY = 0.2


@activity.defn(name="test_blocks_beating")
def blocks_beating(seconds: float) -> str:
    with beating(every=EVERY):
        time.sleep(seconds)
    return "done"


@activity.defn(name="test_blocks_silent")
def blocks_silent(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


@activity.defn(name="test_awaits_beating")
async def awaits_beating(seconds: float) -> str:
    async with beating_async(every=EVERY):
        await asyncio.sleep(seconds)
    return "done"


@activity.defn(name="test_awaits_beating_failing_beats")
async def awaits_beating_failing_beats(seconds: float) -> str:
    """Every beat raises (as a heartbeat of a cancelled or finished activity can): the body still returns."""
    original = activity.heartbeat

    def broken(*details: object) -> None:
        raise RuntimeError("heartbeat lost")

    activity.heartbeat = broken  # type: ignore[assignment]
    try:
        async with beating_async(every=0.05):
            await asyncio.sleep(0.3)
    finally:
        activity.heartbeat = original  # type: ignore[assignment]
    return "done"


@activity.defn(name="test_short_timeout_unset")
def no_heartbeat_timeout(seconds: float) -> bool:
    """Without a heartbeat timeout nobody listens: the helper starts no thread (and sends no beat)."""
    with beating(every=0.01):
        names = [t.name for t in threading.enumerate()]
        time.sleep(seconds)
    return not any(n.startswith("heartbeat-") for n in names)


@workflow.defn(name="HeartbeatProbe", sandboxed=False)
class HeartbeatProbe:
    @workflow.run
    async def run(self, name: str, heartbeat_seconds: float | None) -> object:
        return await workflow.execute_activity(
            name,
            BLOCK if heartbeat_seconds is not None else 0.1,
            start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=None if heartbeat_seconds is None else timedelta(seconds=heartbeat_seconds),
            retry_policy=RetryPolicy(maximum_attempts=1),
        )


async def probe(
    env: WorkflowEnvironment, task_queue: str, name: str, heartbeat: float | None = 1.0
) -> object:
    with ThreadPoolExecutor(4) as executor:
        async with Worker(
            env.client, task_queue=task_queue, workflows=[HeartbeatProbe], activity_executor=executor,
            activities=[blocks_beating, blocks_silent, awaits_beating, awaits_beating_failing_beats,
                        no_heartbeat_timeout],
        ):  # fmt: skip
            return await env.client.execute_workflow(
                HeartbeatProbe.run, args=[name, heartbeat], id=f"heartbeat-{name}-{task_queue}",
                task_queue=task_queue,
            )  # fmt: skip


@pytest.mark.parametrize("name", ["test_blocks_beating", "test_awaits_beating"])
async def test_a_call_blocking_past_the_heartbeat_timeout_lives_while_the_helper_beats(
    dev_env: WorkflowEnvironment, task_queue: str, name: str
) -> None:
    assert await probe(dev_env, task_queue, name) == "done"


async def test_the_same_call_without_the_helper_is_timed_out_by_the_heartbeat_timeout(
    dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    with pytest.raises(WorkflowFailureError) as failed:
        await probe(dev_env, task_queue, "test_blocks_silent")
    cause = failed.value.cause
    assert isinstance(cause, ActivityError) and isinstance(cause.cause, TimeoutError)
    assert cause.cause.type == TimeoutType.HEARTBEAT


async def test_a_lost_beat_never_fails_the_activity_and_no_timeout_means_no_beats(
    dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    assert await probe(dev_env, task_queue, "test_awaits_beating_failing_beats") == "done"
    assert await probe(dev_env, f"{task_queue}-b", "test_short_timeout_unset", heartbeat=None) is True
