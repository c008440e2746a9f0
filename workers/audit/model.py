"""The audit timeline's records: what a history says about one run, as typed data (and its JSON form)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field

from runbooks.model import StrictModel

FORMAT = "drflow-audit-timeline/1"

RunStatus = Literal[
    "running", "completed", "failed", "canceled", "terminated", "timed-out", "continued-as-new"
]
ActivityStatus = Literal["scheduled", "running", "completed", "failed", "timed-out", "canceled"]


class FailureInfo(StrictModel):
    message: str
    type: str | None = None
    non_retryable: bool | None = None
    causes: list[str] = Field(
        default_factory=list, description="messages of the cause chain, outermost first"
    )


class WorkerInfo(StrictModel):
    identity: str
    build_ids: list[str] = Field(default_factory=list)
    sdk: str | None = None


class ActivityRecord(StrictModel):
    activity_id: str
    name: str
    summary: str | None
    scheduled_event_id: int
    scheduled_at: datetime
    started_at: datetime | None = None
    closed_at: datetime | None = None
    status: ActivityStatus = "scheduled"
    attempts: int = 0
    max_attempts: int | None = None
    worker: str | None = None
    build_id: str | None = None
    retried_after: str | None = Field(default=None, description="the failure of the attempt before the last")
    failure: FailureInfo | None = None
    retry_state: str | None = None
    highlights: list[str] = Field(default_factory=list)
    input: Any = None
    result: Any = None

    @property
    def duration(self) -> timedelta | None:
        return None if self.closed_at is None else self.closed_at - self.scheduled_at


class UpdateRecord(StrictModel):
    update_id: str
    name: str
    accepted_event_id: int
    accepted_at: datetime
    completed_at: datetime | None = None
    client_identity: str | None = None
    by: str | None = None
    channel: str | None = None
    reason: str | None = None
    gate: str | None = None
    decision: str | None = None
    status: Literal["accepted", "completed", "failed"] = "accepted"
    message: str | None = None
    args: Any = None
    person: str | None = Field(default=None, description="the person the report recorded for this answer")
    identity: str | None = Field(default=None, description="ssh-key, slack-gateway or unverified (report)")
    key: str | None = Field(default=None, description="fingerprint of the signing key (report)")
    gateway: str | None = None


class TimerRecord(StrictModel):
    timer_id: str
    started_event_id: int
    started_at: datetime
    seconds: float
    summary: str | None = None
    status: Literal["pending", "fired", "canceled"] = "pending"
    ended_at: datetime | None = None


class SignalRecord(StrictModel):
    event_id: int
    at: datetime
    direction: Literal["received", "sent"]
    name: str
    workflow_id: str | None = Field(default=None, description="the target of a sent signal")
    identity: str | None = None
    status: str = ""
    input: Any = None


class ChildRecord(StrictModel):
    event_id: int
    at: datetime
    workflow_type: str
    workflow_id: str
    run_id: str | None = None
    parent_close_policy: str | None = None
    status: str = "initiated"


class MarkerRecord(StrictModel):
    event_id: int
    at: datetime
    name: str
    detail: str


class SearchAttributeRecord(StrictModel):
    event_id: int
    at: datetime
    values: dict[str, Any]


class TaskProblem(StrictModel):
    event_id: int
    at: datetime
    kind: str
    message: str


class DnsState(StrictModel):
    record: str | None = None
    type: str | None = None
    ttl: int | None = None
    values: list[str] = Field(default_factory=list)


class DnsChangeEvidence(StrictModel):
    at: datetime | None
    before: DnsState
    after: DnsState
    applied: bool | None
    change_id: str | None
    detail: str | None


class FenceEvidence(StrictModel):
    at: datetime | None
    region: str | None
    method: str | None
    fenced: bool | None
    already_fenced: bool | None
    final_lsn: str | None
    actions: list[str]
    errors: list[str]
    proof: str | None = None


class ReplayEvidence(StrictModel):
    at: datetime | None
    reached: bool | None
    replay_lsn: str | None
    waited_ms: float | None


class PromotionEvidence(StrictModel):
    at: datetime | None
    region: str | None
    promoted: bool | None
    already_primary: bool | None
    lsn: str | None
    timeline: int | None
    writable: bool | None
    duration_ms: float | None
    actions: list[str]


class UnfenceEvidence(StrictModel):
    at: datetime | None
    region: str | None
    restored: bool | None
    actions: list[str]


class ReplicationSample(StrictModel):
    at: datetime | None
    step: str | None
    primary_region: str | None
    standby_region: str | None
    primary_lsn: str | None
    standby_replay_lsn: str | None
    lag_bytes: int | None
    lag_seconds: float | None
    primary_reachable: bool | None
    standby_reachable: bool | None
    errors: list[str]


class HealthSample(StrictModel):
    at: datetime | None
    source: Literal["probe", "validation"]
    region: str | None
    check: str | None
    url: str | None
    ok: bool | None
    status: int | None
    latency_ms: float | None
    error: str | None
    required: int | None = None
    attempts: int | None = None
    passed_after_ms: float | None = None


class NameserverEvidence(StrictModel):
    at: datetime | None
    name: str | None
    address: str | None
    port: int | None
    converged: bool | None
    after_ms: float | None
    values: list[str]
    error: str | None


class Evidence(StrictModel):
    dns_changes: list[DnsChangeEvidence] = Field(default_factory=list)
    fences: list[FenceEvidence] = Field(default_factory=list)
    replays: list[ReplayEvidence] = Field(default_factory=list)
    promotions: list[PromotionEvidence] = Field(default_factory=list)
    unfences: list[UnfenceEvidence] = Field(default_factory=list)
    replication: list[ReplicationSample] = Field(default_factory=list)
    health: list[HealthSample] = Field(default_factory=list)
    propagation: list[NameserverEvidence] = Field(default_factory=list)


class Request(StrictModel):
    service: str | None = None
    target: str | None = None
    mode: str | None = None
    reason: str | None = None
    requested_by: str | None = None
    raw: Any = None


class ReportStep(StrictModel):
    name: str
    started_at: datetime | None
    finished_at: datetime | None
    outcome: str
    attempts: int
    detail: str
    error: str | None


class ReportGateRecord(StrictModel):
    """An approval or decision as the workflow's report recorded it (including expiries and skips)."""

    kind: Literal["approval", "decision"]
    subject: str = Field(description="the gate, or the failed step")
    decision: str
    by: str | None
    at: datetime | None
    channel: str | None
    reason: str
    person: str | None = None
    identity: str | None = Field(default=None, description="ssh-key, slack-gateway or unverified")
    key: str | None = Field(default=None, description="fingerprint of the key that signed")
    gateway: str | None = None


class Objectives(StrictModel):
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    rto: str | None = Field(default=None, description="as the runbook wrote it")
    rpo: str | None = None
    source: str | None = None


class Outcome(StrictModel):
    outcome: str | None = None
    verdict: str | None = None
    reasons: list[str] = Field(default_factory=list)
    achieved_rto_seconds: float | None = None
    rto_met: bool | None = None
    approval_wait_seconds: float | None = None
    zero_loss_proven: bool | None = None
    data_loss_bytes: int | None = None
    data_loss_seconds: float | None = None
    rpo_met: bool | None = None
    data_loss_basis: str | None = None
    runbook_sha256: str | None = None
    steps: list[ReportStep] = Field(default_factory=list)
    gate_records: list[ReportGateRecord] = Field(default_factory=list)
    messages: list[str] = Field(default_factory=list)


class EventLabel(StrictModel):
    """What one history event is, in plain words: the step it belongs to and what happened."""

    step: str
    text: str


class Entry(StrictModel):
    """One line of the chronological timeline."""

    event_id: int
    at: datetime
    kind: str
    text: str


class Timeline(StrictModel):
    format: str = FORMAT
    workflow_type: str
    workflow_id: str
    run_id: str
    task_queue: str | None
    parent_workflow_id: str | None = None
    status: RunStatus
    started_at: datetime
    closed_at: datetime | None
    history_events: int
    started_by: str | None = Field(description="identity of the client that started the run")
    static_summary: str | None = None
    static_details: str | None = None
    request: Request
    objectives: Objectives
    outcome: Outcome
    failure: FailureInfo | None = None
    workers: list[WorkerInfo]
    activities: list[ActivityRecord]
    updates: list[UpdateRecord]
    timers: list[TimerRecord]
    signals: list[SignalRecord]
    children: list[ChildRecord]
    markers: list[MarkerRecord]
    search_attributes: list[SearchAttributeRecord]
    task_problems: list[TaskProblem]
    evidence: Evidence
    entries: list[Entry]
    notes: list[str]

    @property
    def duration(self) -> timedelta | None:
        return None if self.closed_at is None else self.closed_at - self.started_at
