"""ArchiveRun: the Archive step at the end of every drflow workflow, as its own small workflow.

A run cannot archive its own history while it is still running (the history is complete only once it has
closed), so each drflow workflow starts ``ArchiveRun`` as an abandoned child as its very last act
(``start_archive``); the child's activity waits for the parent to close, then archives. A failing archive
(S3 down, a full disk) therefore never changes the outcome of a failover; it is retried on its own.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    from activities.archive import (
        ARCHIVE_REFUSED,
        RUN_NOT_FOUND,
        ArchiveActivities,
        ArchiveRequest,
    )
    from workers.audit.archive import ArchiveResult
    from workflows.common import KIND_ATTR, SERVICE_ATTR

__all__ = ["ARCHIVE_PATCH", "ArchiveRunWorkflow", "archive_workflow_id", "start_archive"]

ARCHIVE_PATCH = "archive-at-end"
# The run closes a moment after it starts its archive; a run that stays open longer (a continued wait) is
# retried with backoff for about a day before the archive gives up and says so in its own failure.
ARCHIVE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=150,
    non_retryable_error_types=[RUN_NOT_FOUND, ARCHIVE_REFUSED],
)


def archive_workflow_id(workflow_id: str, run_id: str) -> str:
    return f"archive-{workflow_id}-{run_id}"


@workflow.defn(name="ArchiveRun")
class ArchiveRunWorkflow:
    @workflow.run
    async def run(self, request: ArchiveRequest) -> ArchiveResult:
        return await workflow.execute_activity_method(
            ArchiveActivities.archive_run,
            request,
            start_to_close_timeout=timedelta(seconds=request.wait_seconds + 300),
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=ARCHIVE_RETRY,
            summary=f"archive {request.workflow_id} once it has closed",
        )


async def start_archive(kind: str) -> None:
    """Start the ArchiveRun child for the calling run; call it as the workflow's very last step.

    Abandoned (``ParentClosePolicy.ABANDON``): the child outlives its parent and archives it once closed.
    Guarded by ``workflow.patched``, so histories recorded before runs archived themselves replay unchanged
    (no child where the history has none).
    """
    if not workflow.patched(ARCHIVE_PATCH):
        return
    info = workflow.info()
    attributes = [SearchAttributePair(KIND_ATTR, "archive")]
    service = info.typed_search_attributes.get(SERVICE_ATTR)
    if service is not None:
        attributes.append(SearchAttributePair(SERVICE_ATTR, service))
    # Already started (by an earlier attempt of this run's last task): the archive is on its way.
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await workflow.start_child_workflow(
            ArchiveRunWorkflow.run,
            ArchiveRequest(workflow_id=info.workflow_id, run_id=info.run_id, kind=kind),
            id=archive_workflow_id(info.workflow_id, info.run_id),
            task_queue=info.task_queue,
            parent_close_policy=ParentClosePolicy.ABANDON,
            search_attributes=TypedSearchAttributes(attributes),
            static_summary=f"Archive the audit record of {info.workflow_id}",
        )
