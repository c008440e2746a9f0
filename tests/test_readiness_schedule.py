"""`drflow readiness schedule|list|history|pause|unpause|delete` as processes against the real dev server.

A schedule's run is triggered (not waited for) and is a real Readiness run on a real worker: real BIND, two
real app servers; its verdict comes back through `history` and `list` from visibility.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest_asyncio
from temporalio.client import ScheduleActionStartWorkflow, ScheduleOverlapPolicy
from temporalio.testing import WorkflowEnvironment

from tests.test_cli_check import drflow, target
from tests.test_readiness_workflow import World, world  # noqa: F401  (fixture)
from workers.cli.readiness import schedule_id
from workers.worker import build_worker
from workflows.common import TASK_QUEUE

SERVICE = "sched-web"  # its own name: other tests check `web` on the same session server


@pytest_asyncio.fixture
async def scheduled_world(dev_env: WorkflowEnvironment, world: World) -> AsyncIterator[World]:  # noqa: F811
    world.write_runbook(SERVICE)
    async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
        try:
            yield world
        finally:
            await drflow("--runbooks", str(world.runbooks), "readiness", "delete", "--all",
                         "--address", target(dev_env))  # fmt: skip


async def completed_checks(env: WorkflowEnvironment) -> int:
    query = f"WorkflowType = 'Readiness' AND DrflowService = '{SERVICE}' AND ExecutionStatus = 'Completed'"
    return len([w async for w in env.client.list_workflows(query)])


async def test_bad_schedules_are_refused_with_one_line_and_create_nothing(
    dev_env: WorkflowEnvironment, scheduled_world: World
) -> None:
    cli = ("--runbooks", str(scheduled_world.runbooks), "readiness")
    address = ("--address", target(dev_env))
    too_often = await drflow(*cli, "schedule", SERVICE, "--every", "10s", *address)
    assert too_often.returncode == 2
    assert "10s is below the minimum of 1m" in too_often.stderr
    not_a_duration = await drflow(*cli, "schedule", SERVICE, "--every", "15", *address)
    assert not_a_duration.returncode == 2 and "use a number with a unit" in not_a_duration.stderr
    unknown = await drflow(*cli, "schedule", "payments", *address)
    assert unknown.returncode == 1 and "unknown service 'payments'" in unknown.stderr
    listed = await drflow(*cli, "list", *address)
    assert listed.stdout.strip() == "no readiness schedules: create them with `drflow readiness schedule --all`"


async def test_a_scheduled_check_runs_and_its_verdict_shows_in_list_and_history(
    dev_env: WorkflowEnvironment, scheduled_world: World
) -> None:
    cli = ("--runbooks", str(scheduled_world.runbooks), "readiness")
    address = ("--address", target(dev_env))
    created = await drflow(*cli, "schedule", SERVICE, "--every", "1h", *address)
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"scheduled {schedule_id(SERVICE)}: every 1h; next ")

    handle = dev_env.client.get_schedule_handle(schedule_id(SERVICE))
    described = (await handle.describe()).schedule
    assert described.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert described.policy.catchup_window == timedelta(hours=1)
    assert [i.every for i in described.spec.intervals] == [timedelta(hours=1)]
    action = described.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert action.workflow == "Readiness" and action.priority.priority_key == 4

    before = await completed_checks(dev_env)
    await handle.trigger()
    async with asyncio.timeout(60):
        while await completed_checks(dev_env) == before:  # noqa: ASYNC110 (polling visibility)
            await asyncio.sleep(0.3)
    history = await drflow(*cli, "history", SERVICE, *address)
    assert history.returncode == 0, history.stderr
    assert history.stdout.splitlines()[0].endswith("UTC  ready"), history.stdout
    listed = await drflow(*cli, "list", *address)
    assert listed.stdout.startswith(SERVICE) and "active  every 1h" in listed.stdout
    assert "last ready at " in listed.stdout

    # A new interval replaces the old one and keeps a pause.
    paused = await drflow(*cli, "pause", "--all", *address)
    assert paused.stdout.strip() == f"{schedule_id(SERVICE)}: paused"
    updated = await drflow(*cli, "schedule", SERVICE, "--every", "5m", *address)
    assert updated.stdout.startswith(f"updated {schedule_id(SERVICE)}: every 5m")
    described = (await handle.describe()).schedule
    assert described.state.paused and [i.every for i in described.spec.intervals] == [timedelta(minutes=5)]
    listed = await drflow(*cli, "list", *address)
    assert "paused  every 5m" in listed.stdout

    deleted = await drflow(*cli, "delete", SERVICE, *address)
    assert deleted.stdout.strip() == f"{schedule_id(SERVICE)}: deleted"
    history = await drflow(*cli, "history", SERVICE, *address)
    assert "ready" in history.stdout  # past checks stay
