"""One disruptive run per service: a lock held by a Temporal workflow, taken with update-with-start.

The Web UI lets a person start a Failover under any workflow id, so one-run-per-service cannot rest on the
id. Every Failover (and later Failback and Drill) asks the service's lock workflow first; a second one is
told who holds the lock and ends as ``refused``. The holder releases with a signal when it ends; a holder
that was terminated or cancelled cannot release, so a contender's request makes the lock check, through an
activity, whether its holder still runs.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.service_lock import (
        AcquireResult,
        HolderStatusRequest,
        LockHistory,
        LockHolder,
        LockRequest,
        ReleaseRequest,
        ServiceLockActivities,
        lock_workflow_id,
    )
    from workflows.common import HEARTBEAT, INFRA_RETRY, tag_run


__all__ = ["ServiceLockWorkflow", "lock_workflow_id"]


@workflow.defn(name="ServiceLock")
class ServiceLockWorkflow:
    @workflow.init
    def __init__(self, request: LockRequest) -> None:
        self._service = request.service
        self._holder: LockHolder | None = None
        self._granted: list[LockHolder] = []
        self._mutex = asyncio.Lock()

    @workflow.run
    async def run(self, request: LockRequest) -> LockHistory:
        tag_run(request.service, "lock", "held")
        # Started by update-with-start: the first acquire arrives with the first task. The lock ends when it
        # is free again, so an idle service has no running lock workflow.
        await workflow.wait_condition(
            lambda: bool(self._granted) and self._holder is None and workflow.all_handlers_finished()
        )
        return LockHistory(service=self._service, holders=self._granted)

    @workflow.update
    async def acquire(self, contender: LockHolder) -> AcquireResult:
        async with self._mutex:
            holder = self._holder
            if holder is None or holder.same_run(contender):
                return self._grant(contender, None if holder is None else "already held by this run")
            status = await workflow.execute_activity_method(
                ServiceLockActivities.holder_status,
                HolderStatusRequest(workflow_id=holder.workflow_id, run_id=holder.run_id),
                start_to_close_timeout=timedelta(seconds=30),
                heartbeat_timeout=HEARTBEAT,
                retry_policy=INFRA_RETRY,
                summary=f"is {holder.workflow_id} still running?",
            )
            if status.running:
                return AcquireResult(granted=False, holder=holder)
            return self._grant(
                contender,
                f"previous holder {holder.workflow_id} ended ({status.status}) without releasing the lock",
            )

    @acquire.validator
    def _validate_acquire(self, contender: LockHolder) -> None:
        if not contender.workflow_id or not contender.run_id:
            raise ValueError("a lock holder names its workflow id and run id")

    @workflow.signal
    def release(self, request: ReleaseRequest) -> None:
        if self._holder is not None and (self._holder.workflow_id, self._holder.run_id) == (
            request.workflow_id,
            request.run_id,
        ):
            self._holder = None

    @workflow.query
    def holder(self) -> LockHolder | None:
        return self._holder

    def _grant(self, contender: LockHolder, note: str | None) -> AcquireResult:
        if self._holder is None or not self._holder.same_run(contender):
            stamped = contender.model_copy(update={"since": workflow.now()})
            self._holder = stamped
            self._granted.append(stamped)
        assert self._holder is not None
        return AcquireResult(granted=True, holder=self._holder, note=note)
