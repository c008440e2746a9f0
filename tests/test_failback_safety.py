"""A failback whose old primary cannot be re-synced finishes forward instead of stranding the service.

Found by reading the path: the re-sync after promotion refused non-retryably for any node drflow does not
manage on its host, the step could not be skipped, and an abort undid nothing, so the database was home while
DNS still pointed at the now read-only region.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from tests.support.failover import wait_for_gate
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.test_failback_sandbox import approve, fail_over, refusal, start_failback, wait_for_failback_gate
from tests.test_failover_sandbox import answers, in_recovery
from workers.cli.signing import Signer, sign_decision
from workers.worker import build_worker
from workflows.failback import FailbackWorkflow
from workflows.failback_models import FailbackReport
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, DecisionInput, FailoverReport, FailoverRequest


@pytest.fixture
def world() -> Iterator[SandboxWorld]:
    with sandbox_world() as built:
        yield built


@pytest_asyncio.fixture
async def worker_on(dev_env: WorkflowEnvironment, world: SandboxWorld, task_queue: str) -> AsyncIterator[str]:
    async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
        yield task_queue


async def test_an_old_primary_drflow_cannot_resync_is_skipped_and_the_failback_finishes_home(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    await fail_over(dev_env, world, worker_on)
    # region-b (serving now) is a node drflow does not manage on its host, and its re-sync hook fails;
    # no canary, one stage.
    world.write_runbook(
        **{"database__nodes__region-b__data_directory": None, "traffic": None, "failback": None},
        **world.remote_declarations(resync=["sh", "-c", "echo no route to db-{region}; exit 4"]),
    )
    handle = await start_failback(dev_env, world, worker_on)
    await approve(handle, dev_env, "failback")
    async with asyncio.timeout(180):
        while True:
            report: FailbackReport = await handle.query(FailbackWorkflow.status)
            if report.waiting_step is not None:
                break
            assert report.outcome == "running", report.messages
            await asyncio.sleep(0.1)
    assert report.waiting_step == "re-sync region-b as a standby of region-a", report.steps
    assert report.promotion is not None and report.promotion.writable
    failed = next(step for step in report.steps if step.name == report.waiting_step)
    assert failed.error is not None and "exited with status 4" in failed.error, failed
    assert "no route to db-region-b" in failed.error, failed.error
    assert report.dns_change is None, "DNS has not moved yet"

    with pytest.raises(WorkflowUpdateFailedError):  # not an approver: refused, nothing decided
        await handle.execute_update(
            FailbackWorkflow.decide, DecisionInput(decision="skip", operator="nobody")
        )
    await handle.execute_update(
        FailbackWorkflow.decide,
        DecisionInput(decision="skip", operator="carol", reason="region-b is rebuilt by the DBA team"),
    )
    final = await handle.result()
    assert final.outcome == "completed", final.messages
    assert final.resynced is None
    assert any("NOT re-synced" in m for m in final.messages), final.messages
    assert not in_recovery(world, "region-a")
    assert await answers(world) == [["127.0.1.1"], ["127.0.1.1"]]


async def test_a_failback_after_an_emergency_failover_rewinds_the_old_primary_and_completes(
    dev_env: WorkflowEnvironment, world: SandboxWorld, worker_on: str
) -> None:
    """The local topology's emergency row of the matrix: the old primary was shut down by an emergency
    fence, then pg_rewind (with prepare) makes it the standby, and the failback brings everything home."""
    world.write_runbook(traffic=None, failback=None)
    handle = await dev_env.client.start_workflow(
        FailoverWorkflow.run,
        FailoverRequest(
            service=world.service,
            target="region-b",
            mode="emergency",
            reason="region-a lost",
            requested_by="alice",
        ),
        id=f"failover-{uuid.uuid4().hex[:8]}",
        task_queue=worker_on,
    )
    await wait_for_gate(dev_env.client, handle.id)
    await handle.execute_update(FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="region down"))
    failover: FailoverReport = await handle.result()
    assert failover.outcome == "completed", failover.messages
    assert failover.fence is not None and failover.fence.method == "shutdown" and failover.fence.fenced
    back = await start_failback(dev_env, world, worker_on)
    await approve(back, dev_env, "failback")
    home = await back.result()
    assert home.outcome == "completed", home.messages
    assert home.prepared is not None and home.prepared.rewound and home.prepared.hook is None
    assert home.resynced is not None and home.resynced.streaming
    assert not in_recovery(world, "region-a") and in_recovery(world, "region-b")
    assert await answers(world) == [["127.0.1.1"], ["127.0.1.1"]]


async def test_with_people_a_stale_or_wrong_checksum_at_failback_100_is_refused_as_such_signed_or_not(
    dev_env: WorkflowEnvironment, task_queue: str
) -> None:
    """The people branch of the validators: the failback gate's checksum is stale at failback-100 (its own
    plan since failback-100-plan), whether sent unsigned or signed, and a made-up one is wrong."""
    with sandbox_world(people=True) as world:
        world.write_runbook(
            approvals__unsigned="record", failback__analysis__duration="1s", failback__analysis__requests=100
        )
        keys = world.sandbox.state_dir / "keys"
        async with build_worker(dev_env.client, world.runbooks, task_queue=task_queue):
            over = await dev_env.client.start_workflow(
                FailoverWorkflow.run,
                FailoverRequest(
                    service=world.service, target="region-b", reason="first", requested_by="alice"
                ),
                id=f"failover-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
            )
            gate: FailoverReport = await wait_for_gate(dev_env.client, over.id)
            await over.execute_update(
                FailoverWorkflow.approve,
                ApprovalInput(approver="bob", reason="go", plan_checksum=gate.gate_checksum),
            )
            assert (await over.result()).outcome == "completed"

            back = await start_failback(dev_env, world, task_queue)
            first = await wait_for_failback_gate(dev_env, back.id, "failback")
            assert first.requester is not None and first.gate_checksum is not None
            await back.execute_update(
                FailbackWorkflow.approve,
                ApprovalInput(approver="carol", reason="go", plan_checksum=first.gate_checksum),
            )
            last = await wait_for_failback_gate(dev_env, back.id, "failback-100")
            old, current = first.gate_checksum, last.gate_checksum
            assert current is not None and current != old
            stale = re.compile(
                rf"stale: that plan \({old}\) was replaced by {current} at [\d-]+ [\d:]+ UTC; "
                r"read it \(drflow status\) and answer again"
            )

            def signed(plan: str, field: str | None = None) -> ApprovalInput:
                text, signature = sign_decision(
                    Signer("carol", keys / "carol"), workflow_id=back.id, run_id=last.run_id,
                    gate="failback-100", decision="approve", plan_checksum=plan,
                )  # fmt: skip
                return ApprovalInput(
                    approver="carol",
                    channel="cli",
                    plan_checksum=field or plan,
                    signed=text,
                    signature=signature,
                )

            unsigned = await refusal(back, ApprovalInput(approver="carol", plan_checksum=old))
            assert stale.fullmatch(unsigned), unsigned
            assert stale.fullmatch(await refusal(back, signed(old))), "the CLI signs what --plan says"
            only_signed = await refusal(back, signed(old, field=current))
            assert only_signed.startswith("refused (payload-mismatch): ") and stale.fullmatch(
                only_signed.removeprefix("refused (payload-mismatch): ")
            ), only_signed
            wrong = "0" * 64
            assert await refusal(back, signed(wrong)) == (
                f"wrong checksum: {wrong} is not a plan of this run; the current plan is {current}"
            )
            still = await back.query(FailbackWorkflow.status)
            assert still.open_gate == "failback-100" and len(still.approvals) == 1

            await back.execute_update(FailbackWorkflow.approve, signed(current))
            home = await back.result()
    assert home.outcome == "completed", home.messages
    assert [(a.gate, a.plan_checksum, a.identity) for a in home.approvals] == [
        ("failback", old, "unverified"),
        ("failback-100", current, "ssh-key"),
    ]
