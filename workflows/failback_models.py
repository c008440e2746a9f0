"""What a failback takes and reports: the home region's return, stage by stage."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from activities.database.results import PrepareStandbyResult
from activities.dns.plan import DnsChangePlan
from activities.start_input import StartInput
from activities.traffic.activities import SetWeightsResult
from activities.traffic.analysis import CanaryResult
from runbooks.durations import format_duration
from runbooks.model import StrictModel, drop_unset
from workflows.failover_models import (
    STEP_MARK,
    DatabasePlan,
    MoveReport,
    answered_by,
    cli_command,
    gate_lines,
    move_at_stake,
)
from workflows.gate_view import GatePlan, lag_words


class FailbackRequest(StartInput):
    service: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    requested_by: str | None = None
    home: str | None = Field(
        default=None, description="the region traffic returns to; default the runbook's primary"
    )
    prepare: bool = Field(
        default=False,
        description="re-sync the home database as a standby first (pg_rewind) when it is not one",
    )
    mode: Literal["planned", "drill"] = "planned"
    excluded_approvers: list[str] = Field(default_factory=list, description="unavailable in a drill scenario")
    dry_run: bool = Field(
        default=False,
        description="plan mode: preflight and the plan only, then stop (no lock, no gate, no change)",
    )
    signed: str | None = Field(default=None, description="the signed request (drflow failback --as)")
    signature: str | None = Field(default=None, description="its armored SSH signature")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "dry_run", "signed", "signature")


class StageRecord(StrictModel):
    percent: int
    weights: SetWeightsResult | None = None
    analysis: CanaryResult | None = None
    outcome: Literal["running", "passed", "failed", "rolled-back"] = "running"


class FailbackPlan(StrictModel):
    """Shaped like a failover plan (source → target), so the same moves apply; target is the home region."""

    service: str
    mode: Literal["planned", "drill"]
    source: str
    target: str
    target_address: str
    dns: DnsChangePlan
    database: DatabasePlan | None
    rpo: timedelta
    stages: list[int]
    database_last: bool = Field(
        default=False, description="the database switches after the last canary stage, before DNS"
    )
    checksum: str

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Database first is serialised as before the field existed, so previous workers decode the plan."""
        return drop_unset(handler(self), "database_last")


class FailbackReport(MoveReport):
    home: str
    source: str | None = None
    mode: Literal["planned", "drill"] = "planned"
    plan: FailbackPlan | None = None
    prepared: PrepareStandbyResult | None = None
    resynced: PrepareStandbyResult | None = None
    stages: list[StageRecord] = Field(default_factory=list)


def render_failback(report: FailbackReport) -> str:
    lines = [
        f"## Failback {report.service} {report.source or '?'} → {report.home}: {report.outcome.upper()}",
        "",
        f"{report.mode} · requested by {report.requested_by or 'unknown'} · {report.reason}",
        "",
    ]
    for step in report.steps:
        took = f" ({step.duration.total_seconds():.2f}s)" if step.duration is not None else ""
        detail = f": {step.detail}" if step.detail else ""
        lines.append(f"- {STEP_MARK[step.outcome]} {step.name}{took}{detail}")
        if step.error and step.outcome in ("failed", "skipped"):
            lines.append(f"  - error: {step.error}")
    if report.stages:
        lines += ["", "### Canary",
                  "| stage | weights | requests | errors | writes failed | p95 | split | result |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for stage in report.stages:
            weights = stage.weights.after.describe() if stage.weights else "-"
            result = stage.analysis
            if result is None:
                lines.append(f"| {stage.percent}% | {weights} | - | - | - | - | - | {stage.outcome} |")
                continue
            split = ", ".join(f"{r} {share:.0%}" for r, share in sorted(result.split.items()))
            p95 = f"{result.p95_ms:.0f} ms" if result.p95_ms is not None else "-"
            why = f": {'; '.join(result.reasons)}" if result.reasons else ""
            writes = f"{result.write_errors} of {result.write_requests}" if result.write_requests else "-"
            lines.append(
                f"| {stage.percent}% | {weights} | {result.requests} | {result.error_rate:.1%} | {writes} | "
                f"{p95} | {split} | {stage.outcome}{why} |"
            )
    if report.open_gate is not None:
        lines += gate_lines(report, failback_gate_plan(report))
    if report.waiting_step is not None:
        lines += [
            "",
            f"### Step `{report.waiting_step}` failed: waiting for an operator decision",
            f"CLI: `{cli_command(report.workflow_id, 'decide')}`",
        ]
    if report.approvals:
        lines += ["", "### Approvals"]
        for approval in report.approvals:
            when = f"{approval.at:%H:%M:%S} UTC"
            what = f"{approval.decision}{answered_by(approval)}"
            lines.append(f"- {approval.gate}: {what} at {when}. {approval.reason}".rstrip())
    if report.data_loss is not None:
        loss = "none (proven)" if report.data_loss.zero_proven else "see basis"
        lines += ["", f"**Data loss at switchover**: {loss}. {report.data_loss.basis}"]
    if report.achieved_rto_seconds is not None:
        lines += ["", f"**Duration**: {report.achieved_rto_seconds:.1f}s "
                  f"(approval wait {report.approval_wait_seconds:.1f}s)"]  # fmt: skip
    if report.messages:
        lines += ["", "### Notes", *[f"- {m}" for m in report.messages]]
    if report.plan is not None and report.outcome == "dry-run":
        lines += ["", render_failback_plan(report.plan)]
    return "\n".join(lines)


def render_failback_plan(plan: FailbackPlan) -> str:
    """The plan a failback's approval gate binds to (its checksum), as a dry run prints it."""
    lines = [
        f"## Plan: fail {plan.service} back {plan.source} → {plan.target} ({plan.mode})",
        "",
        "**DNS**",
        "```diff",
        plan.dns.markdown(),
        "```",
    ]
    if plan.database is not None:
        lag = lag_words(plan.database.replication)
        when = (
            "after the last canary stage (100 %), before DNS" if plan.database_last else "before the canary"
        )
        lines += [
            "",
            f"**Database** ({plan.database.provider}), {when}: fence {plan.source}, "
            f"wait for replay to its final LSN, promote {plan.target}, re-sync {plan.source} as its standby",
            f"- replication lag now: {lag}; RPO {format_duration(plan.rpo)}",
        ]
    canary = ", ".join(f"{s}%" for s in plan.stages)
    rollback = (
        "a failed analysis rolls back by itself (the database has not moved yet)"
        if plan.database is None or plan.database_last
        else "a failed analysis after the switch asks a person unless the runbook's policy is roll-back"
    )
    lines += [
        "",
        f"**Traffic**: canary stages {canary} to {plan.target}, an approval before 100 %; {rollback}",
        "",
        f"plan checksum `{plan.checksum}`",
    ]
    return "\n".join(lines)


def failback_gate_plan(report: FailbackReport) -> GatePlan | None:
    """What the open gate of a failback approves (``failback``, ``failback-100``, or a gate of the database
    switch): the rest of the plan from this gate on, through the same renderer as a failover's gates."""
    plan, gate = report.plan, report.open_gate
    if plan is None or gate is None:
        return None
    db = plan.database
    moved = report.promotion is not None
    switch = (
        None
        if db is None or moved
        else f"database switch ({db.provider}): fence {plan.source}, wait until {plan.target} has replayed "
        f"its final LSN, promote {plan.target}, re-sync {plan.source} as its standby"
    )
    steps: list[str] = []
    if gate == "failback":
        if switch is not None and not plan.database_last:
            steps.append(switch)
        if plan.stages != [100]:
            stages = " → ".join(f"{s}%" for s in plan.stages)
            steps.append(
                f"canary: {plan.target}'s weight {stages}, each stage judged by an analysis window; "
                "the failback-100 gate asks again before 100 %"
            )
        else:
            steps.append(f"all traffic to {plan.target} (no canary stages)")
    elif gate == "failback-100":
        passed = ", ".join(f"{s.percent}% {s.outcome}" for s in report.stages) or "none"
        steps.append(f"the last stage: {plan.target} 100 %, {plan.source} 0 % (canary so far: {passed})")
    else:
        steps.append(f"go on with the database switch to {plan.target}")
    if switch is not None and plan.database_last and gate in ("failback", "failback-100"):
        steps.append(switch)
    steps += [
        f"DNS: {plan.dns.record} → {plan.dns.desired.describe()} (the diff below)",
        "propagation on every authoritative nameserver, the old TTL waited out while the health checks pass",
        f"a write committed on the database DNS points at ({plan.target}) before the run ends completed",
    ]
    return GatePlan(
        title=f"Gate {gate} of failback {plan.service} {plan.source} → {plan.target} ({plan.mode})",
        approves=steps,
        dns=plan.dns,
        at_stake=move_at_stake(report, db, plan.rpo, zero_loss=True),
        checksum=report.gate_checksum or plan.checksum,
    )
