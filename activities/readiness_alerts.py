"""Readiness alerts that do not cry wolf: a message when a scheduled check's verdict or warnings change.

The previous state is the last completed run of the same schedule (``TemporalScheduledById``), read from
Temporal itself: no state store of our own, and a check someone ran by hand in between does not swallow
the change. Nothing is sent when nothing changed. A channel that fails (Slack down, a webhook refusing) is
reported in the result and never fails the check: the verdict matters more than its announcement.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import Field
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.secrets import resolve_secret
from activities.slack.client import bot_client, call, run_link
from runbooks.model import StrictModel

WEBHOOK_TIMEOUT = 10.0
MARK = {"ready": "READY", "degraded": "DEGRADED", "not-ready": "NOT READY"}


class AlertFinding(StrictModel):
    code: str
    message: str


class AlertRequest(StrictModel):
    service: str
    schedule_id: str = Field(description="the schedule whose previous run is the baseline")
    workflow_id: str
    run_id: str
    verdict: str
    reasons: list[str]
    warnings: list[AlertFinding]
    slack_channel: str | None = None
    webhook: str | None = Field(default=None, description="an env:/file: reference to the URL")


class AlertOutcome(StrictModel):
    changed: bool
    previous_verdict: str | None = None
    sent: list[str] = []
    failed: list[str] = []


class ReadinessAlertActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="readiness_alert")
    async def readiness_alert(self, request: AlertRequest) -> AlertOutcome:
        """Compare with the schedule's previous check; on a change, tell each configured channel once."""
        previous = await self._previous(request)
        before = None if previous is None else (previous["verdict"], _codes(previous))
        now = (request.verdict, sorted(w.code for w in request.warnings))
        if before == now or (before is None and request.verdict == "ready" and not request.warnings):
            return AlertOutcome(changed=False, previous_verdict=None if before is None else before[0])
        link = run_link(request.workflow_id, request.run_id, activity.info().namespace)
        resolved = sorted(set(before[1]) - set(now[1])) if before is not None else []
        outcome = AlertOutcome(changed=True, previous_verdict=None if before is None else before[0])
        if request.slack_channel is not None:
            self._send(outcome, "slack", lambda: _post_slack(request, before, resolved, link))
        if request.webhook is not None:
            body = _webhook_body(request, before, resolved, link)
            self._send(outcome, "webhook", lambda: post_webhook(request.webhook or "", body))
        return outcome

    async def _previous(self, request: AlertRequest) -> dict[str, Any] | None:
        query = (
            f"WorkflowType = 'Readiness' AND TemporalScheduledById = '{request.schedule_id}' "
            "AND ExecutionStatus = 'Completed'"
        )
        async for execution in self._client.list_workflows(query, limit=5):
            if execution.run_id == request.run_id:
                continue
            handle = self._client.get_workflow_handle(execution.id, run_id=execution.run_id, result_type=dict)
            result: dict[str, Any] = await handle.result()
            return result
        return None

    @staticmethod
    def _send(outcome: AlertOutcome, channel: str, send: Any) -> None:
        try:
            send()
            outcome.sent.append(channel)
        except Exception as err:  # no channel's failure may fail the check
            message = err.message if isinstance(err, ApplicationError) else type(err).__name__
            activity.logger.warning("readiness alert through %s failed: %s", channel, message)
            outcome.failed.append(f"{channel}: {message}")


def _codes(report: dict[str, Any]) -> list[str]:
    return sorted(str(w.get("code")) for w in report.get("warnings") or [])


def title(request: AlertRequest, before: tuple[str, list[str]] | None) -> str:
    now = MARK.get(request.verdict, request.verdict)
    if before is None:
        return f"Readiness of {request.service}: {now} (first scheduled check)"
    was = MARK.get(before[0], before[0])
    if before[0] == request.verdict:
        return f"Readiness of {request.service}: {now}, warnings changed"
    return f"Readiness of {request.service}: {was} → {now}"


def alert_text(
    request: AlertRequest, before: tuple[str, list[str]] | None, resolved: list[str], link: str
) -> str:
    lines = [title(request, before)]
    lines += [f"• {reason}" for reason in request.reasons]
    previous = set(before[1]) if before is not None else set()
    lines += [f"• early warning: {w.message}" for w in request.warnings if w.code not in previous]
    lines += [f"• still: {w.message}" for w in request.warnings if w.code in previous]
    lines += [f"• resolved: {code}" for code in resolved]
    lines.append(f"Run: {link}")
    return "\n".join(lines)


def _post_slack(
    request: AlertRequest, before: tuple[str, list[str]] | None, resolved: list[str], link: str
) -> None:
    client = bot_client()
    text = alert_text(request, before, resolved, link)
    call("chat.postMessage", client.chat_postMessage, "alerts.slack_channel (or approvals.slack.channel)",
         channel=request.slack_channel, text=text, unfurl_links=False)  # fmt: skip


def _webhook_body(
    request: AlertRequest, before: tuple[str, list[str]] | None, resolved: list[str], link: str
) -> dict[str, Any]:
    return {
        "service": request.service,
        "verdict": request.verdict,
        "previous_verdict": None if before is None else before[0],
        "reasons": request.reasons,
        "warnings": [w.model_dump() for w in request.warnings],
        "resolved": resolved,
        "title": title(request, before),
        "link": link,
    }


def post_webhook(reference: str, body: dict[str, Any]) -> None:
    url = resolve_secret(reference)  # the URL often carries a token: a reference, never in a message
    try:
        response = httpx.post(url, json=body, timeout=WEBHOOK_TIMEOUT)
    except httpx.HTTPError as err:
        raise ApplicationError(f"the webhook could not be reached ({type(err).__name__})") from None
    if response.status_code >= 300:
        raise ApplicationError(f"the webhook answered HTTP {response.status_code}")
