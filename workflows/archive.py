"""ArchiveRun: the Archive step at the end of every drflow workflow, as its own small workflow.

A run cannot archive its own history while it is still running (the history is complete only once it has
closed), so each drflow workflow ends with ``start_archive``: one activity that starts ``ArchiveRun`` for the
run (id ``archive-<workflow id>-<run id>``), whose activity waits for the run to close, then archives it.
A failing archive (S3 down, a full disk) therefore never changes the outcome of a failover; it is retried
on its own.

Why not a child workflow with ``ParentClosePolicy.ABANDON``: Temporal's time-skipping test server stops
skipping time for good once a parent closes while a child of it still runs (both ABANDON and TERMINATE),
which would hang every later timer test of a session. A run started by an activity has no parent, and the
activity lets the worker decide (``DRFLOW_ARCHIVE=off``) without making the workflow read its environment.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.archive import (
        ArchiveActivities,
        ArchiveRequest,
        ArchiveResult,
        StartArchiveRequest,
        archive_workflow_id,
    )
    from activities.errors import ErrorType
    from activities.search_attributes import SERVICE_ATTR
    from workflows.common import HEARTBEAT, INFRA_RETRY

__all__ = [
    "ARCHIVE_PATCH",
    "ArchiveRunWorkflow",
    "archive_workflow_id",
    "begin_archive",
    "finish_archive",
    "start_archive",
]

ARCHIVE_PATCH = "archive-at-end"
# The run closes a moment after it starts its archive; a run that stays open longer is retried with backoff
# for about a day before the archive gives up and says so in its own failure.
ARCHIVE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=5),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    maximum_attempts=150,
    non_retryable_error_types=[ErrorType.RUN_NOT_FOUND, ErrorType.ARCHIVE_REFUSED],
)


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


def begin_archive(kind: str) -> workflow.ActivityHandle[Any] | None:
    """Schedule the start of the calling run's archive now, without waiting (ArchiveRun waits for the close).

    Scheduling is synchronous, so a run can issue it in the same workflow task as its last other command
    (the lock release) and finish one round trip sooner. Guarded by ``workflow.patched``, so histories
    recorded before runs archived themselves replay unchanged.
    """
    if not workflow.patched(ARCHIVE_PATCH):
        return None
    info = workflow.info()
    request = StartArchiveRequest(
        archive=ArchiveRequest(workflow_id=info.workflow_id, run_id=info.run_id, kind=kind),
        task_queue=info.task_queue,
        service=info.typed_search_attributes.get(SERVICE_ATTR),
    )
    return workflow.start_activity_method(
        ArchiveActivities.start_archive_run,
        request,
        start_to_close_timeout=timedelta(seconds=30),
        heartbeat_timeout=HEARTBEAT,
        retry_policy=INFRA_RETRY,
        summary=f"start the archive of this run ({kind})",
    )


async def finish_archive(handle: workflow.ActivityHandle[Any] | None) -> None:
    """Never fails the run: if the archive cannot even be started, the run says so in its log and ends as
    it would have (``drflow audit archive WORKFLOW_ID`` archives it later)."""
    if handle is None:
        return
    try:
        await handle
    except ActivityError as err:
        workflow.logger.warning(
            "the archive of %s could not be started: %s", workflow.info().workflow_id, err
        )


async def start_archive(kind: str) -> None:
    """Start the archive of the calling run as its last step."""
    await finish_archive(begin_archive(kind))
