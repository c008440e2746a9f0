"""Shared by workflows, workers and the CLI: task queue, retry defaults, loading a runbook, tagging a run.

The search attributes themselves live in ``activities.search_attributes`` (activities start workflows too).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.errors import ErrorType
    from activities.runbook import LoadedPeople, LoadPeopleRequest, LoadRunbookRequest, RunbookActivities
    from activities.search_attributes import KIND_ATTR, SERVICE_ATTR, STEP_ATTR
    from runbooks.loader import LoadedRunbook
    from runbooks.model import Runbook

TASK_QUEUE = "drflow"

# Infrastructure hiccups (worker restart, transient network) are retried with backoff; an activity that
# reports a definite outcome (a failing health check, a refused runbook) returns or fails non-retryably.
INFRA_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)
# Every activity a run awaits is called with this heartbeat timeout and heartbeats (activities/heartbeat.py):
# a worker killed mid-activity costs about this long, never the whole start-to-close timeout. Activity
# options are not commands a replay compares, so changing them needs no patch (docs/versioning.md).
HEARTBEAT = timedelta(seconds=10)


async def load_runbook(service: str) -> LoadedRunbook:
    """Load the service's runbook; an unknown service or an invalid runbook fails the workflow, saying why."""
    try:
        return await workflow.execute_activity_method(
            RunbookActivities.load_runbook,
            LoadRunbookRequest(service=service),
            start_to_close_timeout=timedelta(seconds=30),
            heartbeat_timeout=HEARTBEAT,
            retry_policy=INFRA_RETRY,
            summary=f"load runbook {service}",
        )
    except ActivityError as err:
        cause = err.cause
        if isinstance(cause, ApplicationError) and cause.type in (
            ErrorType.UNKNOWN_SERVICE,
            ErrorType.INVALID_RUNBOOK,
        ):
            raise ApplicationError(cause.message, type=cause.type, non_retryable=True) from None
        raise


async def load_people(runbook: Runbook) -> LoadedPeople:
    """The people file for the runbook the run holds, pinned in the history; a file that cannot be used
    fails the activity without retries (ActivityError): the caller decides what that means."""
    return await workflow.execute_activity_method(
        RunbookActivities.load_people,
        LoadPeopleRequest(service=runbook.service, approvals=runbook.approvals),
        start_to_close_timeout=timedelta(seconds=30),
        heartbeat_timeout=HEARTBEAT,
        retry_policy=INFRA_RETRY,
        summary="load the people file",
    )


def tag_run(service: str, kind: str, step: str) -> None:
    """Set the search attributes a starter did not (a run started from the Web UI form).

    Each upsert is a billable action on Temporal Cloud; the branch depends only on the start event, so
    replaying any history takes the same branch.
    """
    if workflow.info().typed_search_attributes.get(SERVICE_ATTR) is None:
        workflow.upsert_search_attributes(
            [SERVICE_ATTR.value_set(service), KIND_ATTR.value_set(kind), STEP_ATTR.value_set(step)]
        )
