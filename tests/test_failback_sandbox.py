"""Failback with canary stages on a real sandbox (HAProxy weights, pg_rewind, analysis windows)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.traffic.activities import ReadWeightsRequest, read_weights
from tests.support.failover import wait_for_gate
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.test_failover_sandbox import answers, in_recovery
from workers.sandbox.processes import stop_process
from workers.worker import build_worker
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackReport, FailbackRequest
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest

REGION_A = "127.0.1.1"


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world() as built:
        built.write_runbook(failback__analysis__duration="1s", failback__analysis__requests=100)
        yield built


@pytest_asyncio.fixture
async def worker_on(dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str) -> AsyncIterator[str]:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        yield task_queue


async def fail_over(env: WorkflowEnvironment, world: SandboxWorld, queue: str) -> None:
    handle = await env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(
            service=world.service, target="region-b", reason="before failback", requested_by="alice"
        ),
        id=f"failover-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )
    await wait_for_gate(env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    assert (await handle.result()).outcome == "completed"


async def start_failback(
    env: WorkflowEnvironment, world: SandboxWorld, queue: str
) -> WorkflowHandle[FailbackWorkflow, FailbackReport]:
    return await env.client.start_workflow(
        FailbackWorkflow.run,
        FailbackRequest(
            service=world.service, reason="region-a repaired", requested_by="alice", prepare=True
        ),
        id=f"failback-{uuid.uuid4().hex[:8]}",
        task_queue=queue,
    )


async def approve(
    handle: WorkflowHandle[FailbackWorkflow, FailbackReport], env: WorkflowEnvironment, gate: str
) -> None:
    await wait_for_failback_gate(env, handle.id, gate)
    await handle.execute_update(
        FailbackWorkflow.approve, ApprovalInput(approver="carol", reason=f"go {gate}")
    )


async def wait_for_failback_gate(env: WorkflowEnvironment, workflow_id: str, gate: str) -> FailbackReport:
    handle = env.client.get_workflow_handle_for(FailbackWorkflow.run, workflow_id)
    async with asyncio.timeout(120):
        while True:
            report = await handle.query(FailbackWorkflow.status)
            if report.open_gate == gate:
                return report
            assert report.outcome == "running", (report.outcome, report.messages)
            await asyncio.sleep(0.1)


async def test_failback_with_canary_brings_data_and_traffic_home_with_no_row_lost(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    await fail_over(dev_env, world, worker_on)
    writer = Writer(world, "region-b")
    writer.start()
    handle = await start_failback(dev_env, world, worker_on)
    await approve(handle, dev_env, "failback")
    await approve(handle, dev_env, "failback-100")
    report = await handle.result()
    writer.stop()

    assert report.outcome == "completed", report.messages
    assert report.prepared is not None and report.prepared.streaming
    assert report.data_loss is not None and report.data_loss.zero_proven
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
    with world.connect("region-a") as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM acked_writes")}
    assert writer.acknowledged and set(writer.acknowledged) <= stored
    assert [stage.percent for stage in report.stages] == [5, 25, 50, 100]
    for stage in report.stages:
        assert stage.outcome == "passed" and stage.analysis is not None, stage
        assert abs(stage.analysis.split.get("region-a", 0.0) - stage.percent / 100) <= 0.1, stage.analysis
        # Half of each window wrote through the apps' writer connections, region-b's too (a standby now).
        assert stage.analysis.write_requests == 50 and stage.analysis.write_errors == 0, stage.analysis
    runbook = world.runbook
    assert runbook.traffic is not None
    weights = await read_weights(ReadWeightsRequest(traffic=runbook.traffic))
    assert weights.weights == {"region-a": 100, "region-b": 0}
    assert await answers(world) == [[REGION_A], [REGION_A]]
    assert [(a.gate, a.decision) for a in report.approvals] == [
        ("failback", "approved"),
        ("failback-100", "approved"),
    ]


async def test_a_failing_home_region_at_25_percent_rolls_the_canary_back_by_itself(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    # After the switch a rollback is automatic only as a declared policy, where the source's app follows the
    # primary (the sandbox's apps do: writes.follow_primary); the default asks (tests/test_canary_guard.py).
    world.write_runbook(failback__on_failed_analysis="roll-back")
    await fail_over(dev_env, world, worker_on)
    handle = await start_failback(dev_env, world, worker_on)
    await approve(handle, dev_env, "failback")
    async with asyncio.timeout(120):
        while True:
            report = await handle.query(FailbackWorkflow.status)
            if any(s.percent == 5 and s.outcome == "passed" for s in report.stages):
                break
            assert report.outcome == "running", report.messages
            await asyncio.sleep(0.05)
    pid = world.sandbox._app_pid("region-a")
    assert pid is not None
    stop_process(pid, 5)
    report = await handle.result()
    assert report.outcome == "aborted"
    failed = [s for s in report.stages if s.outcome == "rolled-back"]
    assert [s.percent for s in failed] == [25]
    assert failed[0].analysis is not None and failed[0].analysis.reasons
    runbook = world.runbook
    assert runbook.traffic is not None
    assert (await read_weights(ReadWeightsRequest(traffic=runbook.traffic))).weights == {
        "region-a": 0,
        "region-b": 100,
    }
    # The database moved home before the canary: stated in the report, and consistent.
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
    assert any("the database stays on region-a" in m for m in report.messages)
