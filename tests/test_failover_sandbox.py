"""Failover end to end on a real sandbox: BIND pair, PostgreSQL primary and streaming standby, region apps.

Each test builds its own sandbox on free ports and runs the real worker against the real dev server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from activities.dns.reader import DnsQuery, read_dns_record
from activities.search_attributes import KIND_ATTR, SERVICE_ATTR, STEP_ATTR
from tests.support.failover import wait_for_decision, wait_for_gate
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.test_cli_check import drflow, target
from tests.test_cli_runbooks import DRFLOW
from workers.sandbox.named import soa_serial
from workers.worker import build_worker
from workflows.common import TASK_QUEUE
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, DecisionInput, FailoverReport, FailoverRequest
from workflows.readiness import ReadinessWorkflow
from workflows.readiness_report import ReadinessRequest

REGION_B = "127.0.2.1"


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world() as built:
        yield built


@pytest_asyncio.fixture
async def worker_on(dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str) -> AsyncIterator[str]:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        yield task_queue


async def start(
    env: WorkflowEnvironment,
    world: SandboxWorld,
    task_queue: str,
    mode: str = "planned",
    requester: str = "alice",
) -> WorkflowHandle[FailoverWorkflow, FailoverReport]:
    request = FailoverRequest.model_validate(
        {
            "service": world.service,
            "target": "region-b",
            "reason": "test",
            "requested_by": requester,
            "mode": mode,
        }
    )
    return await env.client.start_workflow(
        FailoverWorkflow.run,
        request,
        id=f"failover-{world.service}-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )


async def answers(world: SandboxWorld) -> list[list[str]]:
    dns = world.runbook.dns
    readout = await read_dns_record(
        DnsQuery(record=dns.record, type=dns.type, zone=dns.zone, nameservers=dns.nameservers)
    )
    return [a.values if a.error is None else [f"error: {a.error}"] for a in readout.answers]


def in_recovery(world: SandboxWorld, region: str) -> bool:
    with world.connect(region) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    assert row is not None
    return bool(row[0])


async def test_planned_failover_moves_dns_and_database_and_loses_no_acknowledged_write(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    writer = Writer(world, "region-a")
    writer.start()
    handle = await start(dev_env, world, worker_on)
    gate = await wait_for_gate(dev_env.client, handle.id)
    assert gate.plan is not None and gate.plan.dns.current.values == ["127.0.1.1"]
    approved = await drflow(
        "approve", handle.id, "--as", "bob", "--reason", "rehearsal go", "--address", target(dev_env)
    )
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == "failover gate approved by bob"
    report = await handle.result()
    writer.stop()

    assert report.outcome == "completed", report.messages
    assert await answers(world) == [[REGION_B], [REGION_B]]
    assert not in_recovery(world, "region-b")
    with world.connect("region-b") as conn:
        conn.execute("INSERT INTO acked_writes (id) VALUES (-1)")
        stored = {row[0] for row in conn.execute("SELECT id FROM acked_writes")}
    assert writer.acknowledged, "the writer committed nothing before the fence"
    assert writer.stopped_by is not None, "the old primary kept accepting writes after the fence"
    assert set(writer.acknowledged) <= stored, "acknowledged writes were lost"

    assert report.fence is not None and report.fence.method == "shutdown" and report.fence.fenced
    assert report.data_loss is not None and report.data_loss.zero_proven
    assert report.promotion is not None and report.promotion.writable and not report.promotion.already_primary
    assert report.dns_change is not None and report.dns_change.after.values == [REGION_B]
    assert report.propagation is not None and report.propagation.converged
    assert report.health is not None and report.health.passed
    assert [(a.gate, a.decision, a.by, a.channel) for a in report.approvals] == [
        ("failover", "approved", "bob", "cli")
    ]
    assert all(step.outcome == "ok" for step in report.steps), report.steps
    assert report.achieved_rto_seconds is not None and report.achieved_rto_seconds > 0


async def test_emergency_failover_stops_at_data_loss_gate_when_lag_exceeds_rpo(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    world.write_runbook(objectives__rpo="1s")
    with world.connect("region-b") as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
    writer = Writer(world, "region-a")
    writer.start()
    await asyncio.sleep(1.5)  # writes the standby does not replay: the lag the guard must see
    handle = await start(dev_env, world, worker_on, mode="emergency")
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down"))
    report = await wait_for_gate(dev_env.client, handle.id, gate="data-loss")
    writer.stop()
    assert (
        report.data_loss is not None and not report.data_loss.within_rpo and not report.data_loss.zero_proven
    )
    assert report.promotion is None and in_recovery(world, "region-b")

    with pytest.raises(WorkflowUpdateFailedError) as plain_approve:
        await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="carol", reason="ok"))
    assert "send accept_data_loss" in str(plain_approve.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as no_reason:
        await handle.execute_update(FailoverWorkflow.accept_data_loss, ApprovalInput(approver="carol"))
    assert "needs a reason" in str(no_reason.value.cause)

    await handle.execute_update(
        FailoverWorkflow.accept_data_loss,
        ApprovalInput(approver="carol", reason="region-a is gone; losing seconds beats staying down"),
    )
    final = await handle.result()
    assert final.outcome == "completed", final.messages
    assert [(a.gate, a.decision, a.by) for a in final.approvals] == [
        ("failover", "approved", "bob"),
        ("data-loss", "data-loss-accepted", "carol"),
    ]
    assert final.approvals[1].reason == "region-a is gone; losing seconds beats staying down"
    assert not in_recovery(world, "region-b")


async def test_stopped_secondary_times_out_propagation_naming_it_and_abort_leaves_a_record(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    world.write_runbook(dns__propagation_budget="3s")
    world.sandbox._named_pair().stop_secondary()
    handle = await start(dev_env, world, worker_on)
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    waiting = await wait_for_decision(dev_env.client, handle.id)
    assert waiting.waiting_step == "verify propagation"
    failed = next(s for s in waiting.steps if s.name == "verify propagation")
    assert failed.error is not None and "ns2.drflow.test." in failed.error

    with pytest.raises(WorkflowUpdateFailedError) as outsider:
        await handle.execute_update(
            FailoverWorkflow.decide, DecisionInput(decision="abort", operator="mallory")
        )
    assert "mallory is not an approver" in str(outsider.value.cause)
    decided = await drflow(
        "decide", handle.id, "abort", "--as", "carol", "--reason", "ns2 is down", "--address", target(dev_env)
    )
    assert decided.returncode == 0, decided.stderr
    report = await handle.result()
    assert report.outcome == "aborted"
    assert [(d.step, d.decision, d.by) for d in report.decisions] == [
        ("verify propagation", "abort", "carol")
    ]
    assert report.final_state is not None and report.final_state.dns is not None
    primary, secondary = report.final_state.dns.answers
    assert primary.values == [REGION_B] and secondary.error is not None
    assert report.final_state.replication is not None
    assert report.final_state.replication.standby_in_recovery is False


async def test_worker_killed_while_waiting_on_propagation_is_replaced_and_nothing_is_applied_twice(
    dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str
) -> None:
    names = world.sandbox._named_pair()
    serial_before = soa_serial(world.runbook.dns.zone, names.primary_port)
    names.stop_secondary()
    env = {**os.environ, "TEMPORAL_ADDRESS": target(dev_env), "DRFLOW_RUNBOOKS": str(world.runbooks)}

    async def spawn_worker() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *DRFLOW, "worker", "--task-queue", task_queue, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    first = await spawn_worker()
    handle = await start(dev_env, world, task_queue)
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="go"))
    async with asyncio.timeout(60):
        while True:
            report = await handle.query(FailoverWorkflow.status)
            if any(s.name == "verify propagation" and s.outcome == "running" for s in report.steps):
                break
            await asyncio.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    names.start_secondary()
    second = await spawn_worker()
    try:
        report = await asyncio.wait_for(handle.result(), 120)
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    assert report.outcome == "completed", report.messages
    assert soa_serial(world.runbook.dns.zone, names.primary_port) == (serial_before or 0) + 1
    assert report.promotion is not None and report.promotion.timeline == 2
    assert await answers(world) == [[REGION_B], [REGION_B]]


async def test_second_failover_of_the_same_service_is_refused_naming_the_holder(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    first = await start(dev_env, world, worker_on)
    await wait_for_gate(dev_env.client, first.id)
    second = await start(dev_env, world, worker_on)
    refused = await second.result()
    assert refused.outcome == "refused"
    assert refused.lock_holder is not None and refused.lock_holder.workflow_id == first.id
    assert refused.fence is None and refused.dns_change is None

    await first.execute_update(FailoverWorkflow.reject, ApprovalInput(approver="carol", reason="not today"))
    rejected = await first.result()
    assert rejected.outcome == "rejected"
    assert await answers(world) == [["127.0.1.1"], ["127.0.1.1"]]
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")

    third = await start(dev_env, world, worker_on)
    report = await wait_for_gate(dev_env.client, third.id)
    assert report.lock_holder is None
    await third.execute_update(
        FailoverWorkflow.reject, ApprovalInput(approver="carol", reason="done testing")
    )
    assert (await third.result()).outcome == "rejected"


async def test_approvals_refuse_outsiders_and_the_requester_and_change_nothing(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    handle = await start(dev_env, world, worker_on, requester="bob")
    await wait_for_gate(dev_env.client, handle.id)
    refusals = []
    for approver in ("mallory", "bob"):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                FailoverWorkflow.approve, ApprovalInput(approver=approver, reason="x")
            )
        cause = refused.value.cause
        assert isinstance(cause, ApplicationError)
        refusals.append(cause.message)
    assert refusals == [
        f"mallory is not an approver for {world.service} (approvers: bob, carol)",
        "separation of duties: bob requested this failover and cannot approve it",
    ]
    cli = await drflow("approve", handle.id, "--as", "mallory", "--address", target(dev_env))
    assert cli.returncode == 1
    assert (
        cli.stderr.strip()
        == f"drflow: refused: mallory is not an approver for {world.service} (approvers: bob, carol)"
    )
    report = await handle.query(FailoverWorkflow.status)
    assert report.open_gate == "failover" and report.approvals == []
    await handle.execute_update(FailoverWorkflow.reject, ApprovalInput(approver="carol", reason="no"))
    assert (await handle.result()).outcome == "rejected"
    assert not in_recovery(world, "region-a")


async def test_readiness_of_a_fresh_sandbox_is_ready_with_the_standby_streaming(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    report = await dev_env.client.execute_workflow(
        ReadinessWorkflow.run, ReadinessRequest(service=world.service), id=f"readiness-{uuid.uuid4()}",
        task_queue=worker_on,
    )  # fmt: skip
    assert report.verdict == "ready", report.reasons
    [status] = report.replication
    # The deep health check writes on the primary while lag is measured: a few KB in flight is normal. A
    # standby that has replayed no commit since it started has no replay timestamp, so while those bytes
    # are in flight its lag in seconds is honestly unknown (None), never a made-up zero.
    assert status.standby_in_recovery and status.lag_bytes is not None and status.lag_bytes < 1 << 20
    assert status.lag_seconds is None or status.lag_seconds <= 5
    assert [(r.region, [c.check for c in r.checks]) for r in report.regions] == [
        ("region-a", ["app-live", "app-deep"]),
        ("region-b", ["app-live"]),
    ]


async def test_cli_failover_wait_shows_each_step_and_status_prints_the_final_report(
    dev_env: WorkflowEnvironment, world: SandboxWorld
) -> None:
    async with build_worker(dev_env.client, world.runbooks, task_queue=TASK_QUEUE):
        process = await asyncio.create_subprocess_exec(
            *DRFLOW, "--runbooks", str(world.runbooks), "failover", world.service, "--to", "region-b",
            "--reason", "cli rehearsal", "--as", "alice", "--wait", "--address", target(dev_env),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        workflow_id = f"failover-{world.service}"
        await wait_for_gate(dev_env.client, workflow_id)
        duplicate = await drflow(
            "--runbooks", str(world.runbooks), "failover", world.service, "--to", "region-b", "--reason", "again",
            "--address", target(dev_env),
        )  # fmt: skip
        assert duplicate.returncode == 1
        assert f"a failover of {world.service} is already running ({workflow_id}" in duplicate.stderr
        approved = await drflow(
            "approve", workflow_id, "--as", "bob", "--reason", "go", "--address", target(dev_env)
        )
        assert approved.returncode == 0, approved.stderr
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, err.decode()
        status = await drflow("status", workflow_id, "--address", target(dev_env))
    attributes = (await dev_env.client.get_workflow_handle(workflow_id).describe()).typed_search_attributes
    assert (attributes.get(SERVICE_ATTR), attributes.get(KIND_ATTR), attributes.get(STEP_ATTR)) == (
        world.service,
        "failover",
        "completed",
    )
    lines = out.decode().splitlines()
    assert (
        lines[0] == f"started {workflow_id}  http://localhost:8233/namespaces/default/workflows/{workflow_id}"
    )
    assert "… preflight" in lines
    assert any(line.startswith("waiting for approval of the failover gate: drflow approve") for line in lines)
    assert "  failover: approved by bob via cli" in lines
    assert any(line.startswith("✓ promote region-b") for line in lines)
    assert any(line.startswith("✓ verify propagation") for line in lines)
    assert f"## Failover {world.service} region-a → region-b: COMPLETED" in lines
    assert status.returncode == 0
    assert status.stdout.startswith(f"## Failover {world.service} region-a → region-b: COMPLETED")
    assert "**Data-loss window at promotion**: none (proven)." in status.stdout
