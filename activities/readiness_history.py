"""The service's recent readiness checks, read back from Temporal: the series a lag trend is drawn from.

Temporal already keeps every check's report as its result, so the trend needs no store of its own: the
last completed ``Readiness`` runs of the service (``DrflowService``), scheduled or by hand, within a window.
Only what a trend needs comes back (time, verdict, lag per pair), so the history stays small.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError

from runbooks.model import StrictModel

PAST_CHECKS = 6  # with the current one: enough points for a slope, few enough to read every 15 minutes


class PastChecksRequest(StrictModel):
    service: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    run_id: str = Field(description="the asking run, left out")
    since: datetime
    limit: int = Field(default=PAST_CHECKS, ge=1, le=50)


class PastLag(StrictModel):
    primary_region: str
    standby_region: str
    lag_seconds: float | None


class PastCheck(StrictModel):
    checked_at: datetime
    verdict: str
    lags: list[PastLag]


class PastChecks(StrictModel):
    checks: list[PastCheck] = Field(description="newest first")
    unreadable: int = Field(default=0, description="runs whose result could not be read or decoded")


class ReadinessHistoryActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="readiness_past_checks")
    async def past_checks(self, request: PastChecksRequest) -> PastChecks:
        # The service name is pattern-checked above: it cannot break out of the quoted literal.
        query = (
            f"WorkflowType = 'Readiness' AND DrflowService = '{request.service}' "
            f"AND ExecutionStatus = 'Completed' AND StartTime >= '{request.since.isoformat()}'"
        )
        found: list[PastCheck] = []
        unreadable = 0
        async for execution in self._client.list_workflows(query, limit=request.limit + 1):
            if execution.run_id == request.run_id or len(found) >= request.limit:
                continue
            handle = self._client.get_workflow_handle(execution.id, run_id=execution.run_id, result_type=dict)
            try:
                check = _past_check(await handle.result())
            except (WorkflowFailureError, ValueError, KeyError, TypeError):
                check = None
            if check is None:
                unreadable += 1
            else:
                found.append(check)
        return PastChecks(checks=found, unreadable=unreadable)


def _past_check(report: dict[str, Any]) -> PastCheck | None:
    if not isinstance(report, dict) or "checked_at" not in report:
        return None
    return PastCheck(
        checked_at=report["checked_at"],
        verdict=str(report.get("verdict")),
        lags=[
            PastLag(
                primary_region=str(r["primary_region"]),
                standby_region=str(r["standby_region"]),
                lag_seconds=r.get("lag_seconds"),
            )
            for r in report.get("replication") or []
        ],
    )
