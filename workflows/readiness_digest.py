"""ReadinessDigest: the fleet's readiness once a day, on a Temporal Schedule (``drflow readiness digest``).

Orchestration only: one activity reads the fleet from Temporal and posts; the window ends at the workflow's
own time, so a replay asks for the same window. One attempt: a retry could post the digest twice.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.readiness_digest import DigestOutcome, DigestRequest, ReadinessDigestActivities
    from runbooks.durations import Duration
    from runbooks.model import StrictModel
    from workflows.common import HEARTBEAT


class DigestInput(StrictModel):
    """The schedule's input, plain JSON as the Web UI's start form takes it."""

    slack_channel: str | None = Field(default=None, description="a Slack channel id, e.g. C0123456789")
    webhook: str | None = Field(
        default=None, pattern=r"^(env|file):.+", description="an env:/file: reference to the webhook URL"
    )
    window: Duration = Field(default=timedelta(hours=24), description="the checks counted, back from now")


@workflow.defn(name="ReadinessDigest")
class ReadinessDigestWorkflow:
    @workflow.run
    async def run(self, request: DigestInput) -> DigestOutcome:
        info = workflow.info()
        return await workflow.execute_activity_method(
            ReadinessDigestActivities.readiness_digest,
            DigestRequest(
                until=workflow.now(),
                window=request.window,
                slack_channel=request.slack_channel,
                webhook=request.webhook,
                workflow_id=info.workflow_id,
                run_id=info.run_id,
            ),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=HEARTBEAT,
            retry_policy=RetryPolicy(maximum_attempts=1),
            summary="read the fleet's readiness and post the digest",
        )
