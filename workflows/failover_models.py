"""What a failover takes, shows, decides and reports: typed records, plus pure rendering for UI and CLI.

The input is plain JSON a person types into the Web UI's Start Workflow form. The report is the workflow's
result and the live answer of its ``status`` query; together with the history it is the audit record.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from activities.cloud.preflight import PreflightReport
from activities.database.results import (
    FenceResult,
    PromoteResult,
    ReplicationStatus,
    UnfenceResult,
    WaitForReplayResult,
)
from activities.dns.activities import DnsChangeStatus
from activities.dns.plan import DnsChangePlan, DnsChangeResult
from activities.dns.propagation import PropagationResult
from activities.dns.reader import DnsReadout
from activities.health import HealthProbeResult, HealthValidationResult
from activities.service_lock import LockHolder
from activities.start_input import StartInput
from runbooks.durations import format_duration
from runbooks.model import Gate, StrictModel, drop_unset
from workflows.gate_view import GatePlan, gate_plan_lines, lag_words, loss_at_stake, replication_at_stake

Mode = Literal["planned", "emergency", "drill"]
Channel = Literal["cli", "ui", "slack", "api"]
Outcome = Literal[
    "running", "completed", "no-op", "refused", "not-ready", "rejected", "expired", "aborted", "dry-run"
]
StepOutcome = Literal["running", "ok", "skipped", "failed"]
Decision = Literal["retry", "skip", "abort"]


Identity = Literal["ssh-key", "slack-gateway", "unverified"]
SIGNED_FIELDS = ("signed", "signature")


def _signed_field() -> Any:
    return Field(
        default=None,
        description="the canonical payload that was signed (drflow signs it for you with --as); "
        "docs/approvals.md",
    )


def _signature_field() -> Any:
    return Field(
        default=None,
        description="the armored SSH signature of `signed` (ssh-keygen -Y sign), or the Slack gateway's",
    )


class FailoverRequest(StartInput):
    service: str = Field(min_length=1)
    target: str = Field(min_length=1, description="the region to fail over to")
    reason: str = Field(min_length=1, description="why: shown to approvers and kept in the report")
    requested_by: str | None = Field(default=None, description="who asks; separation of duties needs it")
    mode: Mode = "planned"
    excluded_approvers: list[str] = Field(
        default_factory=list,
        description="approvers unavailable in a drill scenario: someone else must answer",
    )
    dry_run: bool = Field(
        default=False,
        description="plan mode: preflight and the plan only, then stop (no lock, no gate, no change)",
    )
    signed: str | None = _signed_field()
    signature: str | None = _signature_field()

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A real run's request is serialised without ``dry_run``: the same bytes as before the field
        existed, so it stays startable on a worker older than plan mode during a rolling upgrade (only a
        dry run needs a worker that knows it). The same for an unsigned request."""
        return drop_unset(handler(self), "dry_run", *SIGNED_FIELDS)


class ApprovalInput(StrictModel):
    """The body of the ``approve``, ``reject`` and ``accept_data_loss`` Updates."""

    approver: str = Field(min_length=1)
    reason: str = ""
    channel: Channel = "ui"
    gate: Gate | None = Field(default=None, description="defaults to the gate that is open")
    plan_checksum: str | None = Field(
        default=None,
        description="the full checksum of the plan you approve (required with a people file; without "
        "one, if given, it must be the whole checksum)",
    )
    signed: str | None = _signed_field()
    signature: str | None = _signature_field()

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), *SIGNED_FIELDS)


class DecisionInput(StrictModel):
    """The body of the ``decide`` Update, answering a failed step."""

    decision: Decision
    operator: str = Field(min_length=1)
    reason: str = ""
    channel: Channel = "ui"
    step: str | None = Field(default=None, description="if given, the waiting step (refuses stale buttons)")
    signed: str | None = _signed_field()
    signature: str | None = _signature_field()

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), *SIGNED_FIELDS)


class UpdateOutcome(StrictModel):
    accepted: bool
    message: str


IDENTITY_FIELDS = ("person", "identity", "key", "gateway", "signed", "signature", "people_sha256")


class IdentityFields(StrictModel):
    """Who answered, proven how: what ``drflow audit verify`` re-checks offline (the key is in the blob)."""

    person: str | None = Field(default=None, description="the person of the people file who answered")
    identity: Identity | None = Field(
        default=None,
        description="ssh-key: signed by the person; slack-gateway: a Slack click attested by a trusted "
        "gateway; unverified: nothing proves who sent it",
    )
    key: str | None = Field(
        default=None, description="fingerprint of the key that signed (person or gateway)"
    )
    gateway: str | None = Field(default=None, description="the attesting Slack gateway")
    signed: str | None = None
    signature: str | None = None
    people_sha256: str | None = Field(default=None, description="digest of the people file that was used")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), *IDENTITY_FIELDS)


class ApprovalRecord(IdentityFields):
    gate: Gate
    decision: Literal["approved", "rejected", "data-loss-accepted", "skipped-in-emergency", "expired"]
    by: str | None
    at: datetime
    channel: Channel | None
    reason: str
    plan_checksum: str | None


class DecisionRecord(IdentityFields):
    step: str
    error: str
    decision: Decision | Literal["expired"]
    by: str | None
    at: datetime
    channel: Channel | None
    reason: str


class RequesterRecord(IdentityFields):
    """Who asked for the run, when a people file is in use: verified by a signed request, or not."""


class QuorumStatus(StrictModel):
    """The open gate's rule (frozen when it opened) and how far it is."""

    gate: Gate
    min_approvals: int
    groups: list[str] = Field(default_factory=list)
    approved_by: list[str] = Field(default_factory=list, description="people, in the order they approved")
    two_person: bool = Field(default=False, description="raised to two: the requester is not verified")

    def missing(self, members: dict[str, set[str]]) -> list[str]:
        """What is still needed, in words; ``members`` maps each required group to its people."""
        needs: list[str] = []
        more = self.min_approvals - len(self.approved_by)
        if more > 0:
            needs.append(f"{more} more approval{'s' if more != 1 else ''}")
        for group in self.groups:
            if not members.get(group, set()) & set(self.approved_by):
                needs.append(f"one of group {group}")
        return needs


class StepRecord(StrictModel):
    name: str
    started_at: datetime
    finished_at: datetime | None = None
    outcome: StepOutcome = "running"
    attempts: int = 1
    detail: str = ""
    error: str | None = None

    @property
    def duration(self) -> timedelta | None:
        return None if self.finished_at is None else self.finished_at - self.started_at


class DatabasePlan(StrictModel):
    provider: str
    source: str
    target: str
    replication: ReplicationStatus


class FailoverPlan(StrictModel):
    service: str
    mode: Mode
    source: str
    target: str
    target_address: str
    dns: DnsChangePlan
    database: DatabasePlan | None
    target_health: list[HealthProbeResult]
    rto: timedelta
    rpo: timedelta
    warnings: list[str]
    checksum: str


class DataLossWindow(StrictModel):
    zero_proven: bool
    bytes: int | None
    seconds: float | None
    within_rpo: bool
    basis: str
    rpo_seconds: float | None = Field(default=None, description="the objective it was judged against")
    rpo_bytes: int | None = Field(default=None, description="the byte objective, when the runbook sets one")


class FinalState(StrictModel):
    dns: DnsReadout | None
    replication: ReplicationStatus | None
    notes: list[str]


class RunReport(StrictModel):
    """What every run that changes things reports: who asked, the steps, the approvals and decisions."""

    service: str
    outcome: Outcome = "running"
    reason: str
    requested_by: str | None
    workflow_id: str
    run_id: str
    runbook_sha256: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    approval_wait_seconds: float = 0.0
    steps: list[StepRecord] = Field(default_factory=list)
    approvals: list[ApprovalRecord] = Field(default_factory=list)
    decisions: list[DecisionRecord] = Field(default_factory=list)
    lock_holder: LockHolder | None = None
    open_gate: Gate | None = None
    waiting_step: str | None = None
    messages: list[str] = Field(default_factory=list)
    requester: RequesterRecord | None = None
    quorum: QuorumStatus | None = Field(default=None, description="the open gate's quorum, when one applies")
    gate_checksum: str | None = Field(
        default=None, description="the full checksum of the plan the open gate shows: what an answer signs"
    )
    waiting_since: datetime | None = Field(
        default=None, description="when the open gate opened or the waiting step failed (drflow status)"
    )

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "requester", "quorum", "gate_checksum", "waiting_since")


class MoveReport(RunReport):
    """The fields the moves (workflows/moves.py) fill, in every run that moves data or traffic."""

    fence: FenceResult | None = None
    replay: WaitForReplayResult | None = None
    data_loss: DataLossWindow | None = None
    promotion: PromoteResult | None = None
    compensation: UnfenceResult | None = None
    unfenced_promotion: str | None = Field(
        default=None,
        description="set when a person promoted although the old primary's fence was not confirmed: "
        "who and why",
    )
    dns_change: DnsChangeResult | None = None
    dns_sync: DnsChangeStatus | None = None
    propagation: PropagationResult | None = None
    ttl_wait_seconds: float | None = None
    health: HealthValidationResult | None = None
    achieved_rto_seconds: float | None = None


class FailoverReport(MoveReport):
    target: str
    source: str | None = None
    mode: Mode
    provider_checks: list[PreflightReport] = Field(default_factory=list)
    plan: FailoverPlan | None = None
    final_state: FinalState | None = None


def plan_checksum(
    service: str, mode: Mode, source: str, target: str, dns: DnsChangePlan, database: DatabasePlan | None
) -> str:
    """What an approver approves: the DNS change (by its own checksum), the regions and the database move."""
    payload = {
        "service": service,
        "mode": mode,
        "source": source,
        "target": target,
        "dns": dns.checksum,
        "database": None if database is None else [database.provider, database.source, database.target],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def render_plan(plan: FailoverPlan) -> str:
    lines = [
        f"## Plan: fail over {plan.service} {plan.source} → {plan.target} ({plan.mode})",
        "",
        "**DNS**",
        "```diff",
        plan.dns.markdown(),
        "```",
    ]
    if plan.database is not None:
        lag = lag_words(plan.database.replication)
        lines += [
            "",
            f"**Database** ({plan.database.provider}): fence {plan.database.source}, "
            f"{'wait for replay to its final LSN, ' if plan.mode != 'emergency' else ''}"
            f"promote {plan.database.target}",
            f"- replication lag now: {lag}; RPO {format_duration(plan.rpo)}",
        ]
    ttl = plan.dns.current.ttl
    lines += [
        "",
        f"**Objectives**: RTO {format_duration(plan.rto)}, RPO {format_duration(plan.rpo)}; "
        f"current TTL {ttl if ttl is not None else '-'}s",
    ]
    if plan.warnings:
        lines += ["", "**Warnings**", *[f"- {w}" for w in plan.warnings]]
    lines += ["", f"plan checksum `{plan.checksum}`"]
    return "\n".join(lines)


STEP_MARK = {"running": "…", "ok": "✓", "skipped": "↷", "failed": "✗"}


def identity_words(record: IdentityFields) -> str:
    """How an answer was proven, for reports and the timeline ('' for records older than the people file)."""
    if record.identity == "ssh-key":
        return f"signed, key {record.key}"
    if record.identity == "slack-gateway":
        return f"Slack click attested by {record.gateway}, key {record.key}"
    if record.identity == "unverified":
        return "identity not verified"
    return ""


def answered_by(record: ApprovalRecord | DecisionRecord) -> str:
    """' by bob via cli (signed, key SHA256:…)': who answered, where, and how that is known."""
    if not record.by:
        return ""
    how = identity_words(record)
    return f" by {record.by} via {record.channel}" + (f" ({how})" if how else "")


def cli_command(workflow_id: str, update: str, checksum: str | None = None) -> str:
    """The command that sends this Update (``approve``, ``accept_data_loss``, ``decide``...): one spelling
    for every view and every refusal that tells a person what to type."""
    if update == "decide":
        return f'drflow decide {workflow_id} retry|skip|abort --as <you> --reason "..."'
    plan = f" --plan {checksum}" if checksum else ""
    return f'drflow {update.replace("_", "-")} {workflow_id} --as <you>{plan} --reason "..."'


def gate_wait_summary(
    workflow_id: str, gate: Gate, checksum: str | None, timeout: timedelta, then: str = "the run ends expired"
) -> str:
    """The label of a gate's timer on the Web UI's Timeline, the tab a run's page opens on (without it the
    wait reads ``1 (30m)``): the command first, since the UI cuts long labels."""
    update = "accept_data_loss" if gate == "data-loss" else "approve"
    command = cli_command(workflow_id, update, checksum)
    return f"awaiting approval of gate {gate}: {command} (after {format_duration(timeout)} {then})"


def decision_wait_summary(workflow_id: str, step: str, timeout: timedelta) -> str:
    """The label of a failed step's wait on the Timeline."""
    return (
        f"awaiting a decision, step {step} failed: {cli_command(workflow_id, 'decide')} (after "
        f"{format_duration(timeout)} unanswered the run aborts, or asks again once the data has moved)"
    )


def answer_command(report: RunReport) -> str | None:
    """The exact command that answers what the run waits for (open gate or failed step), if anything."""
    if report.open_gate is not None:
        update = "accept_data_loss" if report.open_gate == "data-loss" else "approve"
        return cli_command(report.workflow_id, update, report.gate_checksum)
    if report.waiting_step is not None:
        return cli_command(report.workflow_id, "decide")
    return None


def gate_lines(report: RunReport, plan: GatePlan | None = None) -> list[str]:
    """The open gate: what it approves (``plan``), the exact command to answer it (with the full plan
    checksum) and the quorum so far. Every kind of run renders its gates through here."""
    if report.open_gate is None:
        return []
    update = "accept_data_loss" if report.open_gate == "data-loss" else "approve"
    lines = ["", f"### Waiting for approval: gate `{report.open_gate}`"]
    if plan is not None:
        lines += [*gate_plan_lines(plan), ""]
    lines.append(f"CLI: `{answer_command(report)}`")
    if report.requester is None:  # string approvers: the Web UI's Send Update passes a gate too
        lines.append(
            f"Web UI: More Actions → Send an Update `{update}` with "
            '`{"approver": "<you>", "reason": "..."}`'
        )
    quorum = report.quorum
    if quorum is not None and (quorum.min_approvals > 1 or quorum.groups):
        groups = f", including one of each group: {', '.join(quorum.groups)}" if quorum.groups else ""
        done = ", ".join(quorum.approved_by) or "nobody yet"
        why = " (two-person rule: the request is not signed)" if quorum.two_person else ""
        lines.append(f"Needs {quorum.min_approvals} distinct approvers{groups}{why}; approved so far: {done}")
    if report.open_gate == "unfenced":
        lines.append(
            "The old primary's fence is NOT confirmed: promoting now may leave two primaries that both "
            "accept writes. Approve only after fencing it another way (network, power), with a reason."
        )
    return lines


def move_at_stake(
    report: MoveReport, database: DatabasePlan | None, rpo: timedelta, zero_loss: bool
) -> list[str]:
    """The data an open gate of a move puts at stake, as far as the run knows it by then."""
    gate = report.open_gate
    if gate == "unfenced":
        source = database.source if database is not None else "the old primary"
        return [
            f"the fence of {source} is NOT confirmed: if it still takes writes after the promotion, the "
            "service has two primaries and those writes are lost or conflict"
        ]
    if report.data_loss is not None:
        return [loss_at_stake(report.data_loss)]
    if database is None:
        return ["no database moves: only where traffic goes changes"]
    return [
        replication_at_stake(database.replication, database.source, database.target, rpo, zero_loss=zero_loss)
    ]


def failover_gate_plan(report: FailoverReport) -> GatePlan | None:
    """What the open gate of a failover approves: the rest of the plan from this gate on."""
    plan, gate = report.plan, report.open_gate
    if plan is None or gate is None:
        return None
    db = plan.database
    steps: list[str] = []
    if db is not None and gate == "failover":
        steps.append(
            f"fence {db.source} ({db.provider}), "
            + ("best effort (emergency)" if plan.mode == "emergency" else f"then wait until {db.target} "
               "has replayed its final LSN")
        )  # fmt: skip
    if db is not None:
        promote = f"promote {db.target}, proven by a write"
        if gate == "data-loss":
            promote = f"accept the loss below and {promote}"
        elif gate == "unfenced":
            promote = f"{promote} although the fence of {db.source} is not confirmed"
        steps.append(promote)
    steps += [
        f"DNS: {plan.dns.record} → {plan.dns.desired.describe()} (the diff below)",
        "propagation on every authoritative nameserver, the old TTL waited out while the health checks pass",
    ]
    return GatePlan(
        title=f"Gate {gate} of failover {plan.service} {plan.source} → {plan.target} ({plan.mode})",
        approves=steps,
        dns=plan.dns,
        at_stake=move_at_stake(report, db, plan.rpo, zero_loss=plan.mode != "emergency"),
        checksum=report.gate_checksum or plan.checksum,
        warnings=list(plan.warnings),
        objectives=f"RTO {format_duration(plan.rto)}, RPO {format_duration(plan.rpo)}; current TTL "
        f"{plan.dns.current.ttl if plan.dns.current.ttl is not None else '-'}s",
    )


def gate_text(plan: GatePlan | None) -> str | None:
    """The gate plan as one block of text, for the CLI's live view (``--wait``, ``status --follow``)."""
    return None if plan is None else "\n".join(gate_plan_lines(plan)).strip()


def render_report(report: FailoverReport) -> str:
    """Markdown for the UI's current details and the CLI's status view."""
    title = f"## Failover {report.service} {report.source or '?'} → {report.target}: {report.outcome.upper()}"
    lines = [
        title,
        "",
        f"{report.mode} · requested by {report.requested_by or 'unknown'} · {report.reason}",
        "",
    ]
    for step in report.steps:
        took = f" ({step.duration.total_seconds():.2f}s)" if step.duration is not None else ""
        retries = f" after {step.attempts} attempts" if step.attempts > 1 else ""
        detail = f": {step.detail}" if step.detail else ""
        lines.append(f"- {STEP_MARK[step.outcome]} {step.name}{took}{retries}{detail}")
        if step.error and step.outcome in ("failed", "skipped"):
            lines.append(f"  - error: {step.error}")
    if report.open_gate is not None:
        lines += gate_lines(report, failover_gate_plan(report))
    if report.waiting_step is not None:
        lines += [
            "",
            f"### Step `{report.waiting_step}` failed: waiting for an operator decision",
            f"CLI: `{answer_command(report)}`",
        ]
    if report.approvals:
        lines += ["", "### Approvals"]
        for a in report.approvals:
            lines.append(
                f"- {a.gate}: {a.decision}{answered_by(a)} at {a.at:%H:%M:%S} UTC. {a.reason}".rstrip()
            )
    if report.data_loss is not None:
        dl = report.data_loss
        amount = (
            "none (proven)"
            if dl.zero_proven
            else f"{dl.bytes if dl.bytes is not None else '?'} bytes, "
            + (f"{dl.seconds:.1f}s" if dl.seconds is not None else "? s")
        )
        objective = ""
        if dl.rpo_seconds is not None:
            objective = f" Objective: RPO {dl.rpo_seconds:g}s" + (
                f" and {dl.rpo_bytes} bytes." if dl.rpo_bytes is not None else "."
            )
        lines += ["", f"**Data-loss window at promotion**: {amount}. {dl.basis}{objective}"]
    if report.unfenced_promotion is not None:
        lines += ["", f"**Promoted without a confirmed fence**: {report.unfenced_promotion}"]
    if report.achieved_rto_seconds is not None:
        lines += [
            "",
            f"**Achieved RTO**: {report.achieved_rto_seconds:.1f}s "
            f"(approval wait {report.approval_wait_seconds:.1f}s)",
        ]
    if report.messages:
        lines += ["", "### Notes", *[f"- {m}" for m in report.messages]]
    if report.plan is not None and report.outcome == "dry-run":
        lines += ["", render_plan(report.plan)]
    return "\n".join(lines)


def progress_lines(report: RunReport, plan_text: str | None = None) -> list[tuple[str, str]]:
    """(key, line) pairs for a live view: a follower prints each key once, as things happen."""
    lines: list[tuple[str, str]] = []
    for step in report.steps:
        lines.append((f"start {step.name} {step.attempts}", f"… {step.name}"))
        if step.outcome != "running":
            took = f" ({step.duration.total_seconds():.2f}s)" if step.duration is not None else ""
            detail = f": {step.detail}" if step.detail else ""
            error = f": {step.error}" if step.error and step.outcome != "ok" else ""
            key = f"end {step.name} {step.attempts} {step.outcome}"
            lines.append((key, f"{STEP_MARK[step.outcome]} {step.name}{took}{detail}{error}"))
    if report.open_gate is not None:
        lines.append(
            (
                f"gate {report.open_gate} {len(report.approvals)}",
                (f"\n{plan_text}\n\n" if plan_text else "")
                + f"waiting for approval of the {report.open_gate} gate: {answer_command(report)}",
            )
        )
    for approval in report.approvals:
        lines.append(
            (
                f"approval {approval.gate} {approval.at}",
                f"  {approval.gate}: {approval.decision}{answered_by(approval)}",
            )
        )
    if report.waiting_step is not None:
        lines.append(
            (
                f"decide {report.waiting_step} {len(report.decisions)}",
                f"{report.waiting_step} failed; decide: {cli_command(report.workflow_id, 'decide')}",
            )
        )
    return lines
