"""A DR drill: what it rehearses, what it measured against the objectives, what should improve."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from activities.start_input import StartInput
from runbooks.model import Runbook, StrictModel, drop_unset
from workflows.failback_models import FailbackReport
from workflows.failover_models import FailoverReport, FailoverRequest, answered_by


class DrillRequest(StartInput):
    service: str = Field(min_length=1)
    target: str | None = Field(default=None, description="region to fail over to; default the first standby")
    reason: str = "scheduled DR drill"
    requested_by: str = "drill-schedule"
    approver_unavailable: str | None = Field(
        default=None, description="scenario: this approver cannot answer, someone else must"
    )


def drill_failover_request(
    request: DrillRequest, runbook: Runbook, *, dry_run: bool = False
) -> FailoverRequest:
    """The failover a drill starts as its child; ``drflow drill run --dry-run`` plans exactly this one."""
    target = request.target or next(r for r in runbook.regions if r != runbook.primary)
    return FailoverRequest(
        service=request.service, target=target, reason=f"DR drill: {request.reason}",
        requested_by=request.requested_by, mode="drill", excluded_approvers=drill_excluded(request),
        dry_run=dry_run,
    )  # fmt: skip


def drill_excluded(request: DrillRequest) -> list[str]:
    return [request.approver_unavailable] if request.approver_unavailable else []


DrillPhase = Literal["failover", "failback", "assessing"]
PHASE_TEXT: dict[str, str] = {
    "failover": "failover running",
    "failback": "failback running (restoring the starting state)",
    "assessing": "assessing the objectives and writing the report",
}


class Finding(StrictModel):
    objective: Literal["rto", "rpo", "restore", "procedure"]
    summary: str
    remediation: str


class DrillReport(StrictModel):
    service: str
    drill_id: str
    scenario: str
    runbook_sha256: str | None
    started_at: datetime
    finished_at: datetime | None = None
    outcome: Literal["running", "passed", "findings", "failed"] = "running"
    phase: DrillPhase | None = Field(
        default=None,
        description="while running: what the drill does now; None once it ended (and in older reports)",
    )
    target: str | None = None
    rto_objective_seconds: float | None = None
    rto_achieved_seconds: float | None = None
    rto_without_approval_seconds: float | None = None
    rpo_objective_seconds: float | None = None
    rpo_achieved_seconds: float | None = None
    restored: bool = False
    failover: FailoverReport | None = None
    failback: FailbackReport | None = None
    findings: list[Finding] = Field(default_factory=list)
    deviations: list[str] = Field(default_factory=list)
    report_files: list[str] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """``phase`` is cleared when the drill ends, so a finished report is written byte for byte as before
        the field existed and older CLIs and workers still decode it."""
        return drop_unset(handler(self), "phase")

    @property
    def restore_checked(self) -> bool:
        """Whether ``restored`` is a verdict: the drill ended (the restore runs before it can), or the
        restore already succeeded. While running, ``restored=False`` only means "not yet"."""
        return self.outcome != "running" or self.restored


def assess_drill(report: DrillReport) -> list[Finding]:
    """Objectives missed become findings with a remediation, never a crash."""
    findings: list[Finding] = []
    failover = report.failover
    if failover is None or failover.outcome != "completed":
        outcome = failover.outcome if failover is not None else "not started"
        findings.append(
            Finding(
                objective="procedure",
                summary=f"the failover did not complete ({outcome})",
                remediation="read the failover's report and decisions; fix the cause and re-run the drill",
            )
        )
    rto, rto_goal = report.rto_achieved_seconds, report.rto_objective_seconds
    if rto is not None and rto_goal is not None and rto > rto_goal:
        waited = failover.approval_wait_seconds if failover is not None else 0.0
        cause = (
            f"approval took {waited:.0f}s of it: page approvers sooner (escalate_after) or let emergency "
            "mode skip the gate"
            if waited > rto / 2
            else "lower the DNS TTL, the propagation budget or the health-check minimum; speed up promotion"
        )
        findings.append(
            Finding(
                objective="rto",
                summary=f"RTO {report.rto_achieved_seconds:.1f}s missed the objective "
                f"{report.rto_objective_seconds:.0f}s",
                remediation=cause,
            )
        )
    rpo, rpo_goal = report.rpo_achieved_seconds, report.rpo_objective_seconds
    if rpo is not None and rpo_goal is not None and rpo > rpo_goal:
        findings.append(
            Finding(
                objective="rpo",
                summary=f"data-loss window {report.rpo_achieved_seconds:.1f}s exceeded the RPO "
                f"{report.rpo_objective_seconds:.0f}s",
                remediation="investigate replication lag (network, standby I/O), consider synchronous "
                "replication for this service",
            )
        )
    if not report.restored:
        findings.append(
            Finding(
                objective="restore",
                summary="the starting state was not restored",
                remediation="run `drflow failback SERVICE --prepare`, then `drflow check SERVICE`",
            )
        )
    return findings


def render_drill(report: DrillReport) -> str:
    """The drill as far as it is known: a running drill says so, and shows no verdict it has not reached
    (restoration, findings) — an empty findings list before the assessment means "not assessed", not "none".
    """
    running = report.outcome == "running"
    lines = [
        f"# DR drill {report.drill_id}: {report.service}: {report.outcome.upper()}",
        "",
        f"- scenario: {report.scenario}",
        f"- runbook sha256: {report.runbook_sha256 or '-'}",
        f"- started {report.started_at:%Y-%m-%d %H:%M:%S} UTC"
        + (f", finished {report.finished_at:%H:%M:%S} UTC" if report.finished_at else ""),
    ]
    if running:
        lines.append(f"- now: {drill_now(report)}")
        lines += [f"- {kind}: {child}" for kind, child in drill_children(report)]
    lines += [
        "",
        "| objective | target | achieved | met |",
        "|---|---|---|---|",
        _row("RTO", report.rto_objective_seconds, report.rto_achieved_seconds),
        _row("RTO without approval wait", report.rto_objective_seconds, report.rto_without_approval_seconds),
        _row("RPO (data-loss window)", report.rpo_objective_seconds, report.rpo_achieved_seconds),
        "",
        f"Starting state restored: {_restored(report)}",
    ]
    for title, run in (("Failover", report.failover), ("Failback", report.failback)):
        if run is None:
            continue
        lines += ["", f"## {title}: {run.outcome}", "", "| step | duration | outcome |", "|---|---|---|"]
        for step in run.steps:
            took = f"{step.duration.total_seconds():.2f}s" if step.duration is not None else "-"
            lines.append(f"| {step.name} | {took} | {step.outcome} |")
        for approval in run.approvals:
            lines.append(
                f"\n- approval {approval.gate}: {approval.decision}{answered_by(approval)} "
                f"at {approval.at:%H:%M:%S} UTC"
            )
    if report.deviations:
        lines += ["", "## Deviations", *[f"- {d}" for d in report.deviations]]
    lines += ["", "## Findings"]
    if running:
        return "\n".join([*lines, "- not assessed yet: the drill is running"])
    lines += [f"- **{f.objective}**: {f.summary}. Remediation: {f.remediation}" for f in report.findings] or [
        "- none: every objective was met"
    ]
    return "\n".join(lines)


def drill_now(report: DrillReport) -> str:
    """What a running drill does now; reports of older runs have no phase and say so by their content."""
    if report.phase is not None:
        return PHASE_TEXT[report.phase]
    if report.failover is None:
        return PHASE_TEXT["failover"]
    return "restoring the starting state" if not report.restored else PHASE_TEXT["assessing"]


def drill_children(report: DrillReport) -> list[tuple[str, str]]:
    """Each child run with its id and state: ended ones by their outcome, the running one as running."""
    children: list[tuple[str, str]] = []
    phase = report.phase
    for kind, run in (("failover", report.failover), ("failback", report.failback)):
        child_id = f"{report.drill_id}-{kind}"
        if run is not None:
            children.append((kind, f"{child_id} {run.outcome}"))
        elif report.outcome == "running" and (phase == kind or (phase is None and kind == "failover")):
            children.append((kind, f"{child_id} running"))
    return children


def _restored(report: DrillReport) -> str:
    if not report.restore_checked:
        return "not checked yet (the drill restores it after its failover)"
    return "yes" if report.restored else "NO"


def _row(name: str, objective: float | None, achieved: float | None) -> str:
    met = "-" if objective is None or achieved is None else ("yes" if achieved <= objective else "NO")
    return f"| {name} | {_seconds(objective)} | {_seconds(achieved)} | {met} |"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"
