"""Talking to a service's lock workflow needs the Temporal client, which only activities may use."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from activities.heartbeat import beating_async
from activities.search_attributes import run_attributes
from activities.start_input import StartInput
from runbooks.model import StrictModel


def lock_workflow_id(service: str) -> str:
    return f"drflow-lock-{service}"


class LockHolder(StrictModel):
    workflow_id: str
    run_id: str
    kind: str
    since: datetime | None = None

    def same_run(self, other: LockHolder) -> bool:
        return (self.workflow_id, self.run_id) == (other.workflow_id, other.run_id)


class LockRequest(StartInput):
    service: str


class AcquireLockRequest(StrictModel):
    service: str
    contender: LockHolder
    task_queue: str


class AcquireResult(StrictModel):
    granted: bool
    holder: LockHolder
    note: str | None = None


class ReleaseRequest(StrictModel):
    workflow_id: str
    run_id: str


class LockHistory(StrictModel):
    service: str
    holders: list[LockHolder]


class HolderStatusRequest(StrictModel):
    workflow_id: str
    run_id: str


class HolderStatus(StrictModel):
    running: bool
    status: str


class ServiceLockActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="acquire_service_lock")
    async def acquire(self, request: AcquireLockRequest) -> AcquireResult:
        """Idempotent: a retry by the same run is granted the lock it already holds."""
        async with beating_async():
            start: WithStartWorkflowOperation[Any, LockHistory] = WithStartWorkflowOperation(
                "ServiceLock",
                LockRequest(service=request.service),
                id=lock_workflow_id(request.service),
                task_queue=request.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"Lock: one failover, failback or drill of {request.service} at a time",
                search_attributes=run_attributes(request.service, "lock", "held"),
                execution_timeout=timedelta(days=30),
                result_type=LockHistory,
            )
            result: AcquireResult = await self._client.execute_update_with_start_workflow(
                "acquire",
                request.contender,
                start_workflow_operation=start,
                result_type=AcquireResult,
                id=f"acquire-{request.contender.workflow_id}-{request.contender.run_id}",
            )
            return result

    @activity.defn(name="lock_holder_status")
    async def holder_status(self, request: HolderStatusRequest) -> HolderStatus:
        async with beating_async():
            try:
                described = await self._client.get_workflow_handle(
                    request.workflow_id, run_id=request.run_id
                ).describe()
            except RPCError as err:
                if err.status == RPCStatusCode.NOT_FOUND:
                    return HolderStatus(running=False, status="not found")
                raise
            status = described.status
            running = status == WorkflowExecutionStatus.RUNNING
            return HolderStatus(running=running, status=status.name.lower() if status else "unknown")
