"""How the CLI shows a run, whatever its workflow type: the report model, its Markdown, its live lines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecution, WorkflowQueryFailedError
from temporalio.service import RPCError

from activities.search_attributes import KIND_ATTR, SERVICE_ATTR, STEP_ATTR
from workflows.drill_models import DrillReport, drill_now, render_drill
from workflows.failback_models import FailbackReport, failback_gate_plan, render_failback
from workflows.failover_models import (
    FailoverReport,
    RunReport,
    answer_command,
    failover_gate_plan,
    gate_text,
    progress_lines,
    render_report,
)


@dataclass(frozen=True)
class RunView:
    report_type: type[Any]
    render: Callable[[Any], str]
    progress: Callable[[Any], list[tuple[str, str]]]


def _failover_progress(report: FailoverReport) -> list[tuple[str, str]]:
    return progress_lines(report, gate_text(failover_gate_plan(report)))


def _failback_progress(report: FailbackReport) -> list[tuple[str, str]]:
    lines = progress_lines(report, gate_text(failback_gate_plan(report)))
    for stage in report.stages:
        result = stage.analysis
        if result is None or stage.outcome == "running":
            continue
        split = ", ".join(f"{region} {share:.0%}" for region, share in sorted(result.split.items()))
        why = f" ({'; '.join(result.reasons)})" if result.reasons else ""
        lines.append(
            (
                f"stage {stage.percent} {stage.outcome}",
                f"  analysis at {stage.percent}%: {stage.outcome}{why}; {result.requests} requests, "
                f"errors {result.error_rate:.1%}, split {split}",
            )
        )
    return lines


def _drill_progress(report: DrillReport) -> list[tuple[str, str]]:
    lines = []
    if report.target is not None:
        lines.append((f"target {report.target}", f"drill of {report.service} → {report.target}"))
    if report.outcome == "running":
        lines.append((f"now {drill_now(report)}", f"… {drill_now(report)}"))
    if report.failover is not None:
        lines.append((f"failover {report.failover.outcome}", f"failover: {report.failover.outcome}"))
    if report.failback is not None:
        lines.append((f"failback {report.failback.outcome}", f"failback: {report.failback.outcome}"))
    return lines


VIEWS: dict[str, RunView] = {
    "Failover": RunView(FailoverReport, render_report, _failover_progress),
    "Failback": RunView(FailbackReport, render_failback, _failback_progress),
    "Drill": RunView(DrillReport, render_drill, _drill_progress),
}


def view_for(workflow_type: str) -> RunView:
    try:
        return VIEWS[workflow_type]
    except KeyError:
        known = ", ".join(VIEWS)
        raise ValueError(f"{workflow_type} runs have no live report here (known: {known})") from None


# Every running failover or failback, the kinds with gates and decisions (a drill's children included); the
# status query, not DrflowStep, has the last word: a run of an older release kept "awaiting-approval" after
# its promote gate and never said "awaiting-decision".
WAITING_QUERY = "ExecutionStatus = 'Running' AND DrflowKind IN ('failover', 'failback')"
WAITING_STEPS = {"awaiting-approval": "a gate", "awaiting-decision": "a decision"}
QUERY_TIMEOUT = timedelta(seconds=10)


@dataclass(frozen=True)
class WaitingRun:
    """A run that waits for a person: what for, since when, and the command that answers it.

    ``command`` is None when no worker answered the status query: the run still waits (DrflowStep says
    so), but only a running worker can take the answer.
    """

    workflow_id: str
    service: str
    kind: str
    waits_for: str
    since: datetime
    command: str | None


async def waiting_runs(client: Client, service: str | None = None) -> list[WaitingRun]:
    """The runs at an open gate or a failed step, oldest wait first: found by visibility, then queried."""
    executions = [
        e
        async for e in client.list_workflows(WAITING_QUERY)
        if e.workflow_type in ("Failover", "Failback")
        and (service is None or e.typed_search_attributes.get(SERVICE_ATTR) == service)
    ]
    found = await asyncio.gather(*(_waiting(client, e) for e in executions))
    return sorted((run for run in found if run is not None), key=lambda run: run.since)


async def _waiting(client: Client, execution: WorkflowExecution) -> WaitingRun | None:
    attributes = execution.typed_search_attributes
    service = attributes.get(SERVICE_ATTR) or "?"
    kind = attributes.get(KIND_ATTR) or execution.workflow_type.lower()
    try:
        report: RunReport = await client.get_workflow_handle(execution.id).query(
            "status", result_type=VIEWS[execution.workflow_type].report_type, rpc_timeout=QUERY_TIMEOUT
        )
    except (RPCError, WorkflowQueryFailedError):  # no worker answers: trust the attribute, say so
        step = attributes.get(STEP_ATTR)
        if step is None or step not in WAITING_STEPS:
            return None
        return WaitingRun(execution.id, service, kind, WAITING_STEPS[step], execution.start_time, None)
    command = answer_command(report)
    if command is None:
        return None
    waits_for = (
        f"gate {report.open_gate}" if report.open_gate is not None else f"decision on {report.waiting_step}"
    )
    since = report.waiting_since or execution.start_time
    return WaitingRun(execution.id, report.service, kind, waits_for, since, command)


async def waiting_children(client: Client, drill: DrillReport) -> list[WaitingRun]:
    """The runs of this drill (its failover, its failback) that wait for a person: ``waiting_runs`` narrowed
    to the drill's child ids, so a drill shows what the operator must answer without a visibility query."""
    prefix = f"{drill.drill_id}-"
    return [run for run in await waiting_runs(client, drill.service) if run.workflow_id.startswith(prefix)]


def waiting_line(run: WaitingRun) -> tuple[str, str]:
    """One keyed line per wait (a new gate is a new line): what waits, and what to type to answer it."""
    answer = run.command or "no worker answers its status query: start one (drflow worker), then answer it"
    return (
        f"waits {run.workflow_id} {run.waits_for}",
        f"… {run.workflow_id} ({run.kind}) waiting for {run.waits_for}: {answer}",
    )
