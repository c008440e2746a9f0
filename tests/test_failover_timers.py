"""Failover timers on the time-skipping server: the approval timeout and the wait for the old TTL.

The activities are the real ones, against the real BIND pair and real HTTP apps; only the clock skips.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from activities.dns.reader import DnsQuery, read_dns_record
from tests.support.failover import StatelessService, stateless_service, wait_for_gate
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest


@pytest_asyncio.fixture
async def timed(
    ts_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, task_queue: str
) -> AsyncIterator[tuple[WorkflowEnvironment, StatelessService, str]]:
    with stateless_service(tmp_path, dns_world, ttl=300, rto="10m") as service:
        async with build_worker(ts_env.client, tmp_path, task_queue=task_queue):
            yield ts_env, service, task_queue


async def served(service: StatelessService) -> list[list[str]]:
    readout = await read_dns_record(
        DnsQuery(record=service.record, type="A", zone="drflow.test.", nameservers=service.dns.nameservers)
    )
    return [a.values for a in readout.answers]


async def test_unanswered_approval_expires_after_the_runbook_timeout_and_changes_nothing(
    timed: tuple[WorkflowEnvironment, StatelessService, str],
) -> None:
    env, service, task_queue = timed
    report: FailoverReport = await env.client.execute_workflow(
        FailoverWorkflow.run,
        FailoverRequest(service=service.service, target="region-b", reason="drill", requested_by="alice"),
        id=f"failover-{uuid.uuid4()}",
        task_queue=task_queue,
    )
    assert report.outcome == "expired"
    [expired] = report.approvals
    assert (expired.gate, expired.decision, expired.by) == ("failover", "expired", None)
    assert report.approval_wait_seconds >= 30 * 60
    assert report.fence is None and report.dns_change is None
    assert await served(service) == [["127.0.1.1"], ["127.0.1.1"]]


async def test_failover_waits_out_the_old_ttl_before_declaring_clients_moved(
    timed: tuple[WorkflowEnvironment, StatelessService, str],
) -> None:
    env, service, task_queue = timed
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
    report = await handle.result()
    assert report.outcome == "completed", report.messages
    assert report.ttl_wait_seconds is not None and 300 <= report.ttl_wait_seconds < 301
    assert report.achieved_rto_seconds is not None and report.achieved_rto_seconds >= 300
    ttl_step = next(s for s in report.steps if s.name.startswith("wait out the old TTL"))
    assert ttl_step.name == "wait out the old TTL (300s)" and ttl_step.outcome == "ok"
    assert await served(service) == [["127.0.2.1"], ["127.0.2.1"]]
