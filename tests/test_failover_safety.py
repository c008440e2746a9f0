"""What an emergency failover does when the data or the fence is not what it should be, on a real sandbox.

Both defects were found by trying them: an old primary alive but unreachable from the worker was promoted
over once the data loss was accepted (two primaries), and a standby that had replayed everything it received
read a lag of 0 s while it lacked the primary's last writes, so the data-loss gate stayed shut.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from tests.support.failover import wait_for_gate
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.test_failover_sandbox import in_recovery, start
from workers.sandbox.named import free_port
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world() as built:
        yield built


@pytest_asyncio.fixture
async def worker_on(dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str) -> AsyncIterator[str]:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        yield task_queue


async def test_an_unconfirmed_fence_stops_promotion_at_the_unfenced_gate_until_someone_overrides_it(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    # region-a keeps serving its apps, but the worker reaches it on a port where nothing listens and may
    # not shut it down (no data_directory): the fence cannot be confirmed.
    world.write_runbook(
        **{"database__nodes__region-a__port": free_port(), "database__nodes__region-a__data_directory": None}
    )
    handle = await start(dev_env, world, worker_on, mode="emergency")
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down"))
    await wait_for_gate(dev_env.client, handle.id, gate="data-loss")
    await handle.execute_update(
        FailoverWorkflow.accept_data_loss, ApprovalInput(approver="carol", reason="minutes of writes at most")
    )
    report = await wait_for_gate(dev_env.client, handle.id, gate="unfenced")
    assert report.fence is not None and not report.fence.fenced and report.fence.errors
    assert report.promotion is None and in_recovery(world, "region-b"), "promoted before the override"
    assert any("NOT confirmed" in message for message in report.messages), report.messages

    with pytest.raises(WorkflowUpdateFailedError) as no_reason:
        await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="carol"))
    assert "needs a reason" in str(no_reason.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as data_loss:
        await handle.execute_update(
            FailoverWorkflow.accept_data_loss, ApprovalInput(approver="carol", reason="same thing")
        )
    assert "not data-loss" in str(data_loss.value.cause)
    assert in_recovery(world, "region-b")

    await handle.execute_update(
        FailoverWorkflow.approve, ApprovalInput(approver="carol", reason="region-a powered off at the PDU")
    )
    final = await handle.result()
    assert final.outcome == "completed", final.messages
    assert [(a.gate, a.decision, a.by) for a in final.approvals] == [
        ("failover", "approved", "bob"),
        ("data-loss", "data-loss-accepted", "carol"),
        ("unfenced", "approved", "carol"),
    ]
    assert final.unfenced_promotion is not None and "powered off at the PDU" in final.unfenced_promotion
    assert not in_recovery(world, "region-b")


async def test_rejecting_the_unfenced_gate_promotes_nothing(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    world.write_runbook(
        **{"database__nodes__region-a__port": free_port(), "database__nodes__region-a__data_directory": None}
    )
    handle = await start(dev_env, world, worker_on, mode="emergency")
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down"))
    await wait_for_gate(dev_env.client, handle.id, gate="data-loss")
    await handle.execute_update(
        FailoverWorkflow.accept_data_loss, ApprovalInput(approver="carol", reason="minutes of writes at most")
    )
    await wait_for_gate(dev_env.client, handle.id, gate="unfenced")
    await handle.execute_update(
        FailoverWorkflow.reject, ApprovalInput(approver="carol", reason="region-a may still be writing")
    )
    final = await handle.result()
    assert final.outcome == "rejected", final.messages
    assert final.promotion is None and final.unfenced_promotion is None
    assert in_recovery(world, "region-b")


async def test_known_lost_bytes_open_the_data_loss_gate_although_the_lag_reads_zero_seconds(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    # region-b stops receiving WAL: it then replays all it received, which reads as a lag of 0 s, while the
    # primary goes on writing.
    with world.connect("region-b") as standby:
        standby.execute("ALTER SYSTEM SET primary_conninfo = ''")
        standby.execute("SELECT pg_reload_conf()")
    writer = Writer(world, "region-a")
    writer.start()
    await asyncio.sleep(1.0)
    handle = await start(dev_env, world, worker_on, mode="emergency")
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down"))
    report = await wait_for_gate(dev_env.client, handle.id, gate="data-loss")
    writer.stop()
    loss = report.data_loss
    assert loss is not None and not loss.within_rpo and not loss.zero_proven
    assert loss.bytes is not None and loss.bytes > 0, loss
    assert loss.seconds is None and "age unknown" in loss.basis, loss
    assert loss.rpo_seconds == world.runbook.objectives.rpo.total_seconds()
    assert report.promotion is None and in_recovery(world, "region-b")
    await handle.execute_update(
        FailoverWorkflow.accept_data_loss, ApprovalInput(approver="carol", reason="the writes are replayable")
    )
    final = await handle.result()
    assert final.outcome == "completed", final.messages
    assert final.unfenced_promotion is None, "a clean shutdown is a confirmed fence"
