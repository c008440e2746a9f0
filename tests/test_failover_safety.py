"""What an emergency failover does when the data or the fence is not what it should be, on a real sandbox.

Both defects were found by trying them: an old primary alive but unreachable from the worker was promoted
over once the data loss was accepted (two primaries), and a standby that had replayed everything it received
read a lag of 0 s while it lacked the primary's last writes, so the data-loss gate stayed shut.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from tests.support.failover import wait_for_decision, wait_for_gate
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.test_failover_sandbox import answers, in_recovery, start
from workers.sandbox.named import free_port
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, DecisionInput, FailoverReport, render_report


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
        **{"database__nodes__region-a__port": free_port(), "database__nodes__region-a__data_directory": None},
        **world.remote_declarations(),
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
    shown = render_report(report)  # what the unfenced gate puts at stake, and what it lets happen
    assert "the fence of region-a is NOT confirmed: if it still takes writes after the promotion" in shown
    assert "1. promote region-b, proven by a write although the fence of region-a is not confirmed" in shown
    assert f"Plan checksum: `{report.gate_checksum}`" in shown, shown

    with pytest.raises(WorkflowUpdateFailedError) as no_reason:
        await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="carol"))
    assert "needs a reason" in str(no_reason.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as from_slack:  # a click carries no typed reason
        await handle.execute_update(
            FailoverWorkflow.approve,
            ApprovalInput(approver="carol", reason="Slack: @carol", channel="slack", gate="unfenced"),
        )
    assert "cannot be approved from Slack" in str(from_slack.value.cause)
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
        **{"database__nodes__region-a__port": free_port(), "database__nodes__region-a__data_directory": None},
        **world.remote_declarations(),
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
    shown = render_report(report)  # the data-loss gate says what passing it loses, and how to pass it
    assert (
        f"passing this gate LOSES {loss.bytes} bytes (writes of unknown age) the old primary took: " in shown
    )
    checksum = report.gate_checksum
    assert checksum is not None and f"Plan checksum: `{checksum}`" in shown, shown
    assert f"drflow accept-data-loss {handle.id} --as <you> --plan {checksum}" in shown, shown
    wrong = "f" * 64
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            FailoverWorkflow.accept_data_loss,
            ApprovalInput(approver="carol", reason="replayable", plan_checksum=wrong),
        )
    assert getattr(refused.value.cause, "message", None) == (
        f"wrong checksum: {wrong} is not a plan of this run; the current plan is {checksum}"
    )
    still: FailoverReport = await wait_for_gate(dev_env.client, handle.id, gate="data-loss")
    assert still.approvals[-1].gate == "failover" and still.promotion is None
    await handle.execute_update(
        FailoverWorkflow.accept_data_loss,
        ApprovalInput(approver="carol", reason="the writes are replayable", plan_checksum=checksum),
    )
    final = await handle.result()
    assert final.outcome == "completed", final.messages
    assert final.unfenced_promotion is None, "a clean shutdown is a confirmed fence"


async def test_after_promotion_an_unanswered_decision_keeps_waiting_instead_of_aborting(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    world.write_runbook(dns__propagation_budget="2s", approvals__timeout="4s")
    world.sandbox._named_pair().stop_secondary()
    handle = await start(dev_env, world, worker_on)
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    waiting = await wait_for_decision(dev_env.client, handle.id)
    assert waiting.waiting_step == "verify propagation" and waiting.promotion is not None
    async with asyncio.timeout(60):  # one approval timeout passes unanswered, then another
        while True:
            report = await handle.query(FailoverWorkflow.status)
            notes = [m for m in report.messages if "does not abort by itself" in m]
            if len(notes) >= 2:
                break
            assert report.outcome == "running", report.messages
            await asyncio.sleep(0.2)
    assert report.waiting_step == "verify propagation" and not report.decisions
    await handle.execute_update(
        FailoverWorkflow.decide, DecisionInput(decision="skip", operator="carol", reason="ns2 is retired")
    )
    final = await handle.result()
    assert final.outcome == "completed", final.messages
    assert [(d.step, d.decision, d.by) for d in final.decisions] == [("verify propagation", "skip", "carol")]


async def test_a_promotion_that_cannot_write_stops_before_dns_until_it_can(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    # Every session on region-b is read-only, also once it is promoted: the write check cannot pass.
    with world.connect("region-b") as standby:
        standby.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        standby.execute("SELECT pg_reload_conf()")
    handle = await start(dev_env, world, worker_on)
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    waiting = await wait_for_decision(dev_env.client, handle.id, timeout=180)
    assert waiting.waiting_step == "promote region-b", waiting.steps
    assert waiting.promotion is not None and not waiting.promotion.writable
    assert waiting.dns_change is None and await answers(world) == [["127.0.1.1"], ["127.0.1.1"]]
    with world.connect("region-b") as promoted:
        promoted.execute("ALTER SYSTEM RESET default_transaction_read_only")
        promoted.execute("SELECT pg_reload_conf()")
    await handle.execute_update(
        FailoverWorkflow.decide, DecisionInput(decision="retry", operator="carol", reason="read-only off")
    )
    final = await handle.result()
    assert final.outcome == "completed", final.messages
    assert final.promotion is not None and final.promotion.writable and final.promotion.already_primary
    assert await answers(world) == [["127.0.2.1"], ["127.0.2.1"]]


async def test_a_failed_unfence_is_a_failed_step_that_a_person_answers(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    world.write_runbook(approvals__gates=["failover", "data-loss", "promote"])
    handle = await start(dev_env, world, worker_on)
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    fenced = await wait_for_gate(dev_env.client, handle.id, gate="promote")
    assert fenced.fence is not None and fenced.fence.method == "shutdown"
    # Something else took region-a's port while it was down: it cannot start again.
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", world.runbook.database.nodes["region-a"].port))  # type: ignore[union-attr]
    squatter.listen()
    try:
        await handle.execute_update(
            FailoverWorkflow.reject, ApprovalInput(approver="carol", reason="not today")
        )
        waiting = await wait_for_decision(dev_env.client, handle.id, timeout=120)
        assert waiting.waiting_step == "compensate: unfence region-a", waiting.steps
        failed = next(s for s in waiting.steps if s.name == "compensate: unfence region-a")
        assert failed.outcome == "failed" and failed.error
    finally:
        squatter.close()
    await handle.execute_update(
        FailoverWorkflow.decide, DecisionInput(decision="retry", operator="carol", reason="port freed")
    )
    final = await handle.result()
    assert final.outcome == "rejected", final.messages
    assert final.compensation is not None and final.compensation.restored
    assert not in_recovery(world, "region-a")
