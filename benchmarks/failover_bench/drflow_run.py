"""One failover through drflow: fresh sandbox, dev server and worker; the gate approved once it opens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.search_attributes import SEARCH_ATTRIBUTES, run_attributes
from activities.service_lock import lock_workflow_id
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.support.temporal import venv_binary
from workers.sandbox.named import free_port
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest

from .history import (
    activity_hops,
    estimate_heartbeats,
    event_name,
    event_seconds,
    frontend_requests,
    history_actions,
    phases,
    workflow_tasks,
)
from .records import APPROVER, REQUESTER, TARGET, DrflowRun, Irreducible, step_key


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """The dev server prints a banner on the stdout it inherits: send it to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


async def start_dev_server(database_file: Path | None, metrics_port: int) -> WorkflowEnvironment:
    with quiet_stdout():
        return await WorkflowEnvironment.start_local(
            dev_server_existing_path=venv_binary("temporal"),
            search_attributes=list(SEARCH_ATTRIBUTES),
            data_converter=pydantic_data_converter,
            dev_server_database_filename=str(database_file) if database_file else None,
            dev_server_log_level="error",
            dev_server_extra_args=["--metrics-port", str(metrics_port)],
        )


async def wait_for_gate(client: Client, workflow_id: str, poll: float) -> tuple[FailoverReport, int]:
    handle = client.get_workflow_handle(workflow_id)
    queries = 0
    async with asyncio.timeout(120):
        while True:
            queries += 1
            try:
                report: FailoverReport | None = await handle.query("status", result_type=FailoverReport)
            except (WorkflowQueryFailedError, RPCError):  # before the first workflow task
                report = None
            if report is not None and report.open_gate == "failover":
                return report, queries
            if report is not None and report.outcome != "running":
                raise RuntimeError(
                    f"the failover ended as {report.outcome} before its gate: {report.messages}"
                )
            await asyncio.sleep(poll)


async def run_drflow(memory: bool, poll: float) -> DrflowRun:
    with sandbox_world() as world, tempfile.TemporaryDirectory(prefix="drflow-bench-") as scratch:
        metrics_port = free_port()
        env = await start_dev_server(None if memory else Path(scratch) / "temporal.db", metrics_port)
        try:
            return await _drive_failover(env, world, metrics_port, poll)
        finally:
            await env.shutdown()


async def _drive_failover(
    env: WorkflowEnvironment, world: SandboxWorld, metrics_port: int, poll: float
) -> DrflowRun:
    client = env.client
    task_queue = f"drflow-bench-{uuid.uuid4().hex[:8]}"
    request = FailoverRequest(
        service=world.service, target=TARGET, reason="benchmark", requested_by=REQUESTER, mode="planned"
    )
    async with build_worker(client, world.runbooks, task_queue=task_queue):
        before = frontend_requests(metrics_port)
        handle = await client.start_workflow(
            FailoverWorkflow.run,
            request,
            id=f"failover-bench-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            search_attributes=run_attributes(request.service, "failover", "preflight"),  # as the CLI does
        )
        started = time.monotonic()
        _, queries = await wait_for_gate(client, handle.id, poll)
        gate_seen = time.monotonic()
        approve_sent = time.time()
        await handle.execute_update(
            FailoverWorkflow.approve, ApprovalInput(approver=APPROVER, reason="benchmark", channel="api")
        )
        approved = time.monotonic()
        report = await handle.result()
        ended = time.monotonic()
        result_received = time.time()
        if report.outcome != "completed":
            raise RuntimeError(f"the failover ended as {report.outcome}: {report.messages}")
        lock = client.get_workflow_handle(lock_workflow_id(world.service))
        async with asyncio.timeout(30):
            await lock.result()  # it ends once released
        history = await handle.fetch_history()
        lock_history = await lock.fetch_history()
        after = frontend_requests(metrics_port)

    events = list(history.events)
    accepted = next(e for e in events if event_name(e) == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED")
    completed = next(e for e in events if event_name(e) == "WORKFLOW_EXECUTION_COMPLETED")
    hops = activity_hops(events, event_seconds(accepted))
    wfts = workflow_tasks(events, accepted.event_id)
    heartbeats = sum(
        after[op] - before[op] for op in ("RecordActivityTaskHeartbeat", "RecordActivityTaskHeartbeatById")
    )
    runbook = world.runbook
    assert report.promotion is not None and report.propagation is not None and report.health is not None
    assert report.plan is not None and report.finished_at is not None and report.achieved_rto_seconds
    approval = next(a for a in report.approvals if a.decision == "approved")
    failover_actions = history_actions(events) | {"heartbeats": heartbeats}
    steps: dict[str, float] = {}
    for step in report.steps:
        key = step_key(step.name)
        if key is not None and step.duration is not None:
            steps[key] = step.duration.total_seconds()
    return DrflowRun(
        rto_after_approval_s=ended - gate_seen,
        rto_after_approval_history_s=event_seconds(completed) - event_seconds(accepted),
        rto_after_approval_report_s=(report.finished_at - approval.at).total_seconds(),
        achieved_rto_s=report.achieved_rto_seconds,
        approval_wait_s=report.approval_wait_seconds,
        gate_seen_after_s=gate_seen - started,
        approve_round_trip_s=approved - gate_seen,
        irreducible=Irreducible(
            promotion_s=report.promotion.duration_ms / 1000,
            propagation_s=report.propagation.elapsed_ms / 1000,
            ttl_s=float(report.plan.dns.current.ttl or runbook.dns.ttl),
            health_minimum_s=runbook.health_minimum.total_seconds(),
        ),
        ttl_timer_s=report.ttl_wait_seconds or 0.0,
        health_elapsed_s=report.health.elapsed_ms / 1000,
        steps_s=steps,
        history_events=len(events),
        lock_history_events=len(lock_history.events),
        failover_actions=failover_actions,
        lock_actions=history_actions(list(lock_history.events)) | {"heartbeats": 0},
        heartbeats_measured=heartbeats,
        heartbeats_estimated=estimate_heartbeats(report, hops),
        status_queries=queries,
        phases_ms=phases(events, approve_sent, result_received),
        wft_schedule_to_start_ms=wfts[0],
        wft_start_to_complete_ms=wfts[1],
        hops=hops,
    )
