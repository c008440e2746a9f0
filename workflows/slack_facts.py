"""What Slack shows of a run, as plain text and typed facts: pure functions of its report and runbook.

The gate and decision facts, the progress thread's step lines and the summary's lines. No I/O and no clock,
so the workflow that calls them stays deterministic; rendering them into Block Kit happens in the activities
(``activities.slack.blocks``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.slack.models import DecisionFacts, Fact, GateFacts
    from runbooks.durations import format_duration
    from runbooks.model import Gate, Runbook
    from workflows.failover_models import STEP_MARK, MoveReport, RunReport, StepRecord, move_at_stake


def step_line(step: StepRecord) -> str:
    took = f" ({step.duration.total_seconds():.2f}s)" if step.duration is not None else ""
    retries = f" after {step.attempts} attempts" if step.attempts > 1 else ""
    detail = f": {step.detail}" if step.detail else ""
    error = f": {step.error}" if step.error and step.outcome != "ok" else ""
    return f"{STEP_MARK[step.outcome]} {step.name}{took}{retries}{detail}{error}"


def decision_facts(
    report: RunReport, kind: str, step: str, error: str, attempts: int, skippable: bool
) -> DecisionFacts:
    """The facts of the message of a failed step waiting for a decision."""
    plan: Any = getattr(report, "plan", None)
    title = f"{kind.capitalize()} {report.service}"
    source, target = getattr(plan, "source", None), getattr(plan, "target", None)
    if source is not None and target is not None:
        title += f": {source} → {target}"
    return DecisionFacts(
        service=report.service,
        kind=kind,
        workflow_id=report.workflow_id,
        run_id=report.run_id,
        title=title,
        step=step,
        error=error,
        attempts=attempts,
        skippable=skippable,
    )


def gate_facts(
    report: RunReport,
    runbook: Runbook,
    kind: str,
    gate: Gate,
    checksum: str | None,
    requester: str | None,
    *,
    with_plan: bool = True,
) -> GateFacts:
    """The facts of the gate message, from any run whose report has a move plan (failover, failback).

    Plans differ by kind (a failback has canary stages, no warnings): every part is optional here.
    """
    plan: Any = getattr(report, "plan", None) if with_plan else None
    title = f"{kind.capitalize()} {report.service}"
    facts: list[Fact] = []
    if plan is not None:
        mode = getattr(plan, "mode", None)
        title += f": {plan.source} → {plan.target}" + (f" ({mode})" if mode else "")
        facts += _plan_facts(plan, runbook, mode)
    data_loss = report.data_loss if isinstance(report, MoveReport) else None
    if plan is not None and isinstance(report, MoveReport) and gate != "data-loss":
        # The same words as the status view's gate (workflows/gate_view.py): what the gate puts at stake.
        at_stake = move_at_stake(
            report.model_copy(update={"open_gate": gate}),
            getattr(plan, "database", None),
            getattr(plan, "rpo", runbook.objectives.rpo),
            zero_loss=getattr(plan, "mode", None) != "emergency",
        )
        facts.append(Fact(label="Data at stake", text="\n".join(at_stake)))
    if gate == "data-loss" and data_loss is not None:
        facts.append(
            Fact(
                label="Data loss",
                text=f"{data_loss.basis}. The RPO guard stopped the run: passing this gate accepts losing "
                "these writes.",
            )
        )
    return GateFacts(
        service=report.service,
        kind=kind,
        workflow_id=report.workflow_id,
        run_id=report.run_id,
        gate=gate,
        title=title,
        reason=report.reason,
        requested_by=report.requested_by,
        requested_by_slack=requester,
        facts=facts,
        plan_checksum=checksum,
    )


def _plan_facts(plan: Any, runbook: Runbook, mode: str | None) -> list[Fact]:
    facts: list[Fact] = []
    dns = getattr(plan, "dns", None)
    if dns is not None:
        facts.append(Fact(label="DNS change", text=str(dns.markdown()), code=True))
    db = getattr(plan, "database", None)
    if db is not None:
        fence = (
            f"{db.source}: best effort within seconds (the region may be gone); what could not be done "
            "is recorded"
            if mode == "emergency"
            else f"{db.source}: stop writes, then wait until {db.target} has replayed the final LSN "
            "(zero data loss, proven)"
        )
        facts.append(Fact(label="Fencing", text=fence))
        facts.append(Fact(label="Promotion", text=f"promote {db.target} ({db.provider})"))
        rpo = getattr(plan, "rpo", runbook.objectives.rpo)
        facts.append(Fact(label="Replication lag vs RPO", text=lag_text(db.replication, rpo)))
    stages = getattr(plan, "stages", None)
    if stages:
        facts.append(Fact(label="Canary stages", text=" → ".join(f"{s}%" for s in stages)))
    if dns is not None:
        facts.append(Fact(label="TTL vs RTO", text=ttl_text(dns.current.ttl, runbook)))
    warnings = getattr(plan, "warnings", None)
    if warnings:
        facts.append(Fact(label="Warnings", text="\n".join(f"• {w}" for w in warnings)))
    return facts


def lag_text(replication: Any, rpo: timedelta) -> str:
    seconds, lag_bytes = replication.lag_seconds, replication.lag_bytes
    if seconds is None or lag_bytes is None:
        return f"unknown (primary unreachable); RPO {format_duration(rpo)}"
    verdict = "within the RPO" if seconds <= rpo.total_seconds() else "EXCEEDS the RPO"
    return f"{lag_bytes} bytes / {seconds:.1f}s behind; RPO {format_duration(rpo)}: {verdict}"


def ttl_text(ttl: int | None, runbook: Runbook) -> str:
    rto = runbook.objectives.rto
    served = timedelta(seconds=ttl) if ttl is not None else timedelta(seconds=runbook.dns.ttl)
    budget = served + runbook.dns.propagation_budget + runbook.health_minimum
    verdict = "fits" if budget <= rto else "EXCEEDS"
    return (
        f"served TTL {format_duration(served)} + propagation budget "
        f"{format_duration(runbook.dns.propagation_budget)} + health minimum "
        f"{format_duration(runbook.health_minimum)} = {format_duration(budget)}: {verdict} the RTO "
        f"{format_duration(rto)}"
    )


def summary_lines(report: RunReport, runbook: Runbook) -> list[str]:
    lines: list[str] = []
    if isinstance(report, MoveReport):
        if report.achieved_rto_seconds is not None:
            lines.append(
                f"Achieved RTO {report.achieved_rto_seconds:.1f}s (objective "
                f"{format_duration(runbook.objectives.rto)}; "
                f"approval wait {report.approval_wait_seconds:.1f}s)"
            )
        window = report.data_loss
        rpo = format_duration(runbook.objectives.rpo)
        if window is not None and window.zero_proven:
            lines.append(f"Achieved RPO: no data lost (proven by the LSNs; objective {rpo})")
        elif window is not None:
            amount = f"{window.bytes if window.bytes is not None else '?'} bytes"
            age = f"{window.seconds:.1f}s" if window.seconds is not None else "? s"
            lines.append(f"Achieved RPO: up to {amount} / {age} of writes lost (objective {rpo})")
        elif report.fence is None and report.outcome == "completed":
            lines.append(f"Achieved RPO: no database moved (objective {rpo})")
    for record in report.approvals:
        by = f" by {record.by} via {record.channel}" if record.by else ""
        lines.append(f"{record.gate} gate: {record.decision}{by} at {record.at:%H:%M:%S} UTC")
    lines += report.messages[-5:]
    return lines
