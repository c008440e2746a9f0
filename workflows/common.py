"""Names shared by workflows, workers and the CLI: task queue, search attributes, retry defaults."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy, SearchAttributeKey

TASK_QUEUE = "drflow"

SERVICE_ATTR = SearchAttributeKey.for_keyword("DrflowService")
KIND_ATTR = SearchAttributeKey.for_keyword("DrflowKind")
STEP_ATTR = SearchAttributeKey.for_keyword("DrflowStep")
SEARCH_ATTRIBUTES = (SERVICE_ATTR, KIND_ATTR, STEP_ATTR)

# Infrastructure hiccups (worker restart, transient network) are retried with backoff; an activity that
# reports a definite outcome (a failing health check, a refused runbook) returns or fails non-retryably.
INFRA_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
)
