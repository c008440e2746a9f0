"""Failback with canary stages on a real sandbox (HAProxy weights, pg_rewind, analysis windows)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.slack.blocks import gate_blocks
from activities.slack.models import Approvers, GateMessageRequest
from activities.traffic.activities import ReadWeightsRequest, read_weights
from runbooks.model import Runbook
from tests.support.failover import wait_for_gate
from tests.support.sandbox import SandboxWorld, Writer, sandbox_world
from tests.test_cli_check import drflow, target
from tests.test_failover_sandbox import answers, in_recovery
from workers.run_views import view_for
from workers.sandbox.processes import stop_process
from workers.worker import build_worker
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackReport, FailbackRequest, render_failback
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest
from workflows.slack_facts import gate_facts

REGION_A = "127.0.1.1"
REGION_B = "127.0.2.1"


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


async def refusal(handle: WorkflowHandle[FailbackWorkflow, FailbackReport], answer: ApprovalInput) -> str:
    """The validator's message; the refused Update changes nothing (checked by the caller)."""
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(FailbackWorkflow.approve, answer)
    cause = caught.value.cause
    return str(getattr(cause, "message", cause))


def gate_facts_in(text: str, report: FailbackReport) -> None:
    """What a failback gate must show wherever it is shown: plan steps, DNS diff, data at stake, checksum."""
    assert report.plan is not None and report.gate_checksum is not None
    dns = report.plan.dns
    assert "Approving lets these happen:" in text, text
    assert f"DNS: {dns.record} → {REGION_A}" in text, text
    assert (
        f"`{dns.record}` A (rfc2136, zone {dns.zone}): {REGION_B} → {REGION_A}, TTL {dns.current.ttl}s"
        in text
    )
    assert f"- {dns.record} {dns.current.ttl} IN A {REGION_B}" in text and f"+ {dns.record}" in text, text
    assert "**Data at stake**" in text, text
    assert f"Plan checksum: `{report.gate_checksum}`" in text, text
    assert f"--plan {report.gate_checksum}" in text, text


async def shows_what_the_gate_approves(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[FailbackWorkflow, FailbackReport],
    report: FailbackReport,
    runbook: Runbook,
) -> None:
    """The status query, its Markdown, the Web UI's current details, `drflow status ID`, the --wait lines."""
    assert report.plan is not None and report.gate_checksum == report.plan.checksum
    markdown = render_failback(report)
    gate_facts_in(markdown, report)
    assert (
        "1. database switch (postgres): fence region-b, wait until region-a has replayed its final LSN, "
        in markdown
    )
    assert "2. canary: region-a's weight 5% → 25% → 50% → 100%" in markdown, markdown
    stake = re.search(r"region-a's database is \d+ bytes / \d+\.\ds behind region-b now", markdown)
    assert stake is not None, markdown
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    gate_facts_in(metadata.current_details, report)
    shown = await drflow("status", handle.id, "--address", target(env))
    assert shown.returncode == 0, shown.stderr
    gate_facts_in(shown.stdout, report)
    waiting = [line for key, line in view_for("Failback").progress(report) if key.startswith("gate failback")]
    assert len(waiting) == 1, waiting
    gate_facts_in(waiting[0], report)

    # The Slack gate message of the same gate: the plan's facts, the data at stake, the full checksum.
    slack = gate_facts(report, runbook, "failback", "failback", report.gate_checksum, None)
    by_label = {fact.label: fact.text for fact in slack.facts}
    assert f"+ {report.plan.dns.record}" in by_label["DNS change"], by_label
    assert by_label["Canary stages"] == "5% → 25% → 50% → 100%", by_label
    assert stake.group(0) in by_label["Data at stake"], by_label
    request = GateMessageRequest(channel="C0DRFLOW", facts=slack, approvers=Approvers(user_ids=["U0CAROL"]))
    assert f"plan `{report.gate_checksum}`" in json.dumps(
        gate_blocks(request, "http://ui"), ensure_ascii=False
    )


async def test_failback_with_canary_brings_data_and_traffic_home_with_no_row_lost(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    await fail_over(dev_env, world, worker_on)
    writer = Writer(world, "region-b")
    writer.start()
    handle = await start_failback(dev_env, world, worker_on)
    at_gate = await wait_for_failback_gate(dev_env, handle.id, "failback")
    await shows_what_the_gate_approves(dev_env, handle, at_gate, world.runbook)
    first = at_gate.gate_checksum
    assert first is not None
    wrong = "0" * 64
    assert await refusal(handle, ApprovalInput(approver="carol", plan_checksum=wrong)) == (
        f"wrong checksum: {wrong} is not a plan of this run; the current plan is {first}"
    )
    unchanged = await handle.query(FailbackWorkflow.status)
    assert unchanged.open_gate == "failback" and unchanged.approvals == [] and unchanged.promotion is None
    await handle.execute_update(
        FailbackWorkflow.approve, ApprovalInput(approver="carol", reason="go", plan_checksum=first)
    )

    # The failback-100 gate approves its own plan (the last stage after the canary's results): the failback
    # gate's checksum is stale there, and said so.
    at_100 = await wait_for_failback_gate(dev_env, handle.id, "failback-100")
    final_stage = at_100.gate_checksum
    assert final_stage is not None and final_stage != first
    gate_facts_in(render_failback(at_100), at_100)
    assert (
        "the last stage: region-a 100 %, region-b 0 % (canary so far: 5% passed, 25% passed, 50% passed)"
        in (render_failback(at_100))
    )
    assert "nothing is lost (proven)" in render_failback(at_100), "the switch already happened: its proof"
    stale = await refusal(handle, ApprovalInput(approver="carol", plan_checksum=first))
    assert re.fullmatch(
        rf"stale: that plan \({first}\) was replaced by {final_stage} at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC; "
        r"read it \(drflow status\) and answer again",
        stale,
    ), stale
    unchanged = await handle.query(FailbackWorkflow.status)
    assert unchanged.open_gate == "failback-100" and len(unchanged.approvals) == 1
    await handle.execute_update(
        FailbackWorkflow.approve, ApprovalInput(approver="carol", reason="go 100", plan_checksum=final_stage)
    )
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
    assert [(a.gate, a.decision, a.plan_checksum) for a in report.approvals] == [
        ("failback", "approved", first),
        ("failback-100", "approved", final_stage),
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
