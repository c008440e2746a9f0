"""The daily readiness digest: one message about the whole fleet, even when nothing changed.

Alerts speak only of changes, so a service that went not-ready on Monday says nothing more by Friday, a
paused schedule never speaks, and a service nobody scheduled is invisible. The digest is the daily look at
all of them: the fleet is the worker's runbooks directory (a runbook that does not load is listed too), and
for each service its schedule (active, paused, none), the last verdict with its reasons and warnings, and
the checks of the window (how many ran, how many were not ready, how many failed or timed out). Everything
is read from Temporal (visibility and the last check's result): no state store of its own.

It posts once: a retry could post twice, so a failed channel is reported in the result and the worker's
log, and the next day's digest tells the state again.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.heartbeat import beating_async
from activities.readiness_alerts import MARK, post_webhook
from activities.search_attributes import STEP_ATTR
from activities.slack.client import bot_client, call, run_link
from runbooks.loader import load_directory
from runbooks.model import StrictModel

DIGEST_SCHEDULE = "drflow-readiness-digest"
"""Not ``readiness-<name>``: those are the services' schedules, and the digest is no service."""
READ_AT_ONCE = 8  # visibility queries and result reads in flight: a fleet of 500 without a burst
MAX_REASONS = 3  # per service in the message; the webhook body has all of them
VERDICTS = ("not-ready", "degraded", "ready")

ScheduleState = Literal["active", "paused", "none"]


class DigestRequest(StrictModel):
    until: datetime = Field(description="the end of the window: the workflow's time, so a replay agrees")
    window: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    slack_channel: str | None = None
    webhook: str | None = Field(default=None, description="an env:/file: reference to the URL")
    workflow_id: str
    run_id: str


class ServiceDigest(StrictModel):
    service: str
    schedule: ScheduleState
    verdict: str | None = Field(description="of the last completed check, however old; None: never checked")
    checked_at: datetime | None = None
    reasons: list[str] = []
    warnings: list[str] = Field(default=[], description="early-warning codes of the last completed check")
    checks: int = Field(default=0, description="checks started in the window, scheduled or by hand")
    not_ready: int = Field(default=0, description="of those, completed not-ready")
    failed: int = Field(default=0, description="of those, failed, timed out or terminated")


class DigestOutcome(StrictModel):
    since: datetime
    until: datetime
    services: list[ServiceDigest]
    broken_runbooks: list[str] = Field(default=[], description="runbooks that do not load: never checked")
    sent: list[str] = []
    failed: list[str] = []

    def count(self, verdict: str) -> int:
        return sum(1 for s in self.services if s.verdict == verdict)


class ReadinessDigestActivities:
    def __init__(self, client: Client, runbooks_dir: Path) -> None:
        self._client = client
        self._runbooks_dir = runbooks_dir

    @activity.defn(name="readiness_digest")
    async def readiness_digest(self, request: DigestRequest) -> DigestOutcome:
        async with beating_async():
            loaded, problems = load_directory(self._runbooks_dir)
            since = request.until - request.window
            limit = asyncio.Semaphore(READ_AT_ONCE)
            services = await asyncio.gather(
                *(self._service(item.runbook.service, since, limit) for item in loaded)
            )
            outcome = DigestOutcome(
                since=since,
                until=request.until,
                services=sorted(services, key=_order),
                broken_runbooks=sorted({str(problem) for problem in problems}),
            )
            link = run_link(request.workflow_id, request.run_id, activity.info().namespace)
            if request.slack_channel is not None:
                await _send(outcome, "slack", lambda: _post_slack(request.slack_channel or "", outcome, link))
            if request.webhook is not None:
                body = webhook_body(outcome, link)
                await _send(outcome, "webhook", lambda: post_webhook(request.webhook or "", body))
            return outcome

    async def _service(self, service: str, since: datetime, limit: asyncio.Semaphore) -> ServiceDigest:
        async with limit:
            schedule = await self._schedule_state(service)
            runs = f"WorkflowType = 'Readiness' AND DrflowService = '{service}'"
            checks = not_ready = failed = 0
            last: Any = None
            async for execution in self._client.list_workflows(
                f"{runs} AND StartTime >= '{since.isoformat()}'"
            ):
                status = execution.status.name if execution.status else "UNKNOWN"
                checks += 1
                if status == "COMPLETED":
                    last = last or execution  # newest first
                    if execution.typed_search_attributes.get(STEP_ATTR) == "not-ready":
                        not_ready += 1
                elif status != "RUNNING":
                    failed += 1
            digest = ServiceDigest(
                service=service, schedule=schedule, verdict=None, checks=checks, not_ready=not_ready,
                failed=failed,
            )  # fmt: skip
            if last is None:  # nothing completed in the window: the last verdict, however old, says more
                async for execution in self._client.list_workflows(
                    f"{runs} AND ExecutionStatus = 'Completed'", limit=1
                ):
                    last = execution
            if last is None:
                return digest
            return await self._with_last(digest, last)

    async def _with_last(self, digest: ServiceDigest, execution: Any) -> ServiceDigest:
        handle = self._client.get_workflow_handle(execution.id, run_id=execution.run_id, result_type=dict)
        step = execution.typed_search_attributes.get(STEP_ATTR)
        checked_at = execution.close_time or execution.start_time
        try:
            report: dict[str, Any] = await handle.result()
        except Exception as err:  # an unreadable result still has its verdict in visibility
            activity.logger.warning("readiness digest: the result of %s is unreadable: %r", execution.id, err)
            return digest.model_copy(update={"verdict": step, "checked_at": checked_at})
        return digest.model_copy(
            update={
                "verdict": report.get("verdict") or step,
                "checked_at": checked_at,
                "reasons": [str(r) for r in report.get("reasons") or []],
                "warnings": sorted(str(w.get("code")) for w in report.get("warnings") or []),
            }
        )

    async def _schedule_state(self, service: str) -> ScheduleState:
        try:
            described = await self._client.get_schedule_handle(f"readiness-{service}").describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return "none"
            raise
        return "paused" if described.schedule.state.paused else "active"


def _order(digest: ServiceDigest) -> tuple[int, str]:
    """Worst first: not ready, degraded, never checked, ready; then by name."""
    rank = {"not-ready": 0, "degraded": 1, None: 2, "ready": 3}
    return rank.get(digest.verdict, 2), digest.service


def digest_text(outcome: DigestOutcome, link: str) -> str:
    total = len(outcome.services)
    counts = (
        " · ".join(f"{outcome.count(v)} {MARK[v].lower()}" for v in VERDICTS if outcome.count(v))
        or "no verdicts yet"
    )
    hours = (outcome.until - outcome.since).total_seconds() / 3600
    services = f"{total} service{'' if total == 1 else 's'}"
    lines = [f"Readiness digest, {outcome.until:%Y-%m-%d %H:%M} UTC: {services} · {counts}"]
    for digest in outcome.services:
        if digest.verdict in ("not-ready", "degraded"):
            since = f" (last check {digest.checked_at:%Y-%m-%d %H:%M} UTC)" if digest.checked_at else ""
            lines.append(f"• {digest.service}: {MARK[digest.verdict]}{since}")
            lines += [f"    - {reason}" for reason in digest.reasons[:MAX_REASONS]]
            if len(digest.reasons) > MAX_REASONS:
                lines.append(f"    - and {len(digest.reasons) - MAX_REASONS} more")
        elif digest.warnings:
            lines.append(f"• {digest.service}: READY, early warnings {', '.join(digest.warnings)}")
    unscheduled = [d.service for d in outcome.services if d.schedule == "none"]
    paused = [d.service for d in outcome.services if d.schedule == "paused"]
    silent = [d.service for d in outcome.services if d.schedule == "active" and d.checks == 0]
    never = [d.service for d in outcome.services if d.verdict is None]
    failing = [f"{d.service} ({d.failed})" for d in outcome.services if d.failed]
    flapping = [f"{d.service} ({d.not_ready} of {d.checks})" for d in outcome.services if d.not_ready]
    if flapping:
        lines.append(f"Not ready in the last {hours:g}h: {', '.join(flapping)}")
    if failing:
        lines.append(f"Checks that did not finish in the last {hours:g}h: {', '.join(failing)}")
    if silent:
        lines.append(
            f"Scheduled but no check in the last {hours:g}h: {', '.join(silent)} (is a worker polling?)"
        )
    if paused:
        lines.append(f"Schedule paused: {', '.join(paused)}")
    if unscheduled:
        lines.append(f"Not scheduled: {', '.join(unscheduled)} (drflow readiness schedule --all)")
    if never:
        lines.append(f"Never checked: {', '.join(never)}")
    if outcome.broken_runbooks:
        lines.append(f"Runbooks that do not load, never checked: {len(outcome.broken_runbooks)}")
        lines += [f"    - {problem}" for problem in outcome.broken_runbooks[:MAX_REASONS]]
    lines.append(f"Run: {link}")
    return "\n".join(lines)


def webhook_body(outcome: DigestOutcome, link: str) -> dict[str, Any]:
    body: dict[str, Any] = outcome.model_dump(mode="json", exclude={"sent", "failed"})
    body["counts"] = {v: outcome.count(v) for v in VERDICTS}
    body["title"] = digest_text(outcome, link).splitlines()[0]
    body["link"] = link
    return body


async def _send(outcome: DigestOutcome, channel: str, send: Any) -> None:
    try:
        await asyncio.to_thread(send)  # slack-sdk and httpx here are blocking: off the event loop
        outcome.sent.append(channel)
    except Exception as err:  # a channel's failure never fails the digest's other channel
        message = err.message if isinstance(err, ApplicationError) else type(err).__name__
        activity.logger.warning("readiness digest through %s failed: %s", channel, message)
        outcome.failed.append(f"{channel}: {message}")


def _post_slack(channel: str, outcome: DigestOutcome, link: str) -> None:
    client = bot_client()
    call("chat.postMessage", client.chat_postMessage, "the digest's channel (--channel)", channel=channel,
         text=digest_text(outcome, link), unfurl_links=False)  # fmt: skip
