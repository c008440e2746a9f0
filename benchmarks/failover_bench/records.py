"""What one benchmark run measures, on either side, and the constants both sides share."""

from __future__ import annotations

from dataclasses import dataclass, field

TARGET = "region-b"
SOURCE = "region-a"
APPROVER = "bob"
REQUESTER = "alice"

ACTION_KINDS = (
    "start",
    "activity attempts",
    "timers",
    "signals",
    "updates",
    "SA upserts",
    "markers",
    "heartbeats",
)


# ------------------------------------------------------------------------------------------- records
@dataclass
class Hop:
    """One activity of the Failover after approval, as the history shows it (milliseconds)."""

    activity: str
    dispatch_ms: float  # ActivityTaskScheduled -> ActivityTaskStarted (matching hands it to the worker)
    run_ms: float  # ActivityTaskStarted -> ActivityTaskCompleted (execution + result back to the server)
    turnaround_ms: float  # ActivityTaskCompleted -> next WorkflowTaskCompleted (workflow task round trip)
    attempts: int
    heartbeat_timeout_s: float | None


@dataclass
class Irreducible:
    promotion_s: float
    propagation_s: float
    ttl_s: float  # nominal: the TTL the old answer was served with
    health_minimum_s: float  # nominal: interval x (consecutive successes - 1), the slowest check

    @property
    def total_s(self) -> float:
        return self.promotion_s + self.propagation_s + max(self.ttl_s, self.health_minimum_s)


@dataclass
class DrflowRun:
    rto_after_approval_s: float  # client: approve Update sent -> workflow result received
    rto_after_approval_history_s: float  # server: UpdateAccepted event -> WorkflowExecutionCompleted event
    rto_after_approval_report_s: float  # workflow clock: approval record -> report.finished_at
    achieved_rto_s: float  # report.achieved_rto_seconds (start -> finish, approval wait included)
    approval_wait_s: float  # report.approval_wait_seconds
    gate_seen_after_s: float  # client: start_workflow returned -> status query shows the open gate
    approve_round_trip_s: float  # client: execute_update round trip
    irreducible: Irreducible
    ttl_timer_s: float  # report.ttl_wait_seconds: the TTL timer as the workflow measured it
    health_elapsed_s: float
    steps_s: dict[str, float]
    history_events: int
    lock_history_events: int
    failover_actions: dict[str, int]
    lock_actions: dict[str, int]
    heartbeats_measured: int
    heartbeats_estimated: int
    status_queries: int  # the benchmark's polling: billable on Cloud, not part of the failover
    phases_ms: dict[str, float]  # the time after approval, phase by phase (history and client clocks)
    wft_schedule_to_start_ms: list[float]  # workflow tasks after approval: server queue -> worker
    wft_start_to_complete_ms: list[float]  # workflow tasks after approval: worker processing
    hops: list[Hop] = field(default_factory=list)

    @property
    def overhead_s(self) -> float:
        return self.rto_after_approval_s - self.irreducible.total_s

    @property
    def overhead_to_finish_s(self) -> float:
        """The same, to the moment the workflow declared the service recovered (before the lock release)."""
        return self.rto_after_approval_report_s - self.irreducible.total_s

    @property
    def actions_total(self) -> int:
        return sum(self.failover_actions.values()) + sum(self.lock_actions.values())

    def actions_by_kind(self) -> dict[str, int]:
        return {k: self.failover_actions.get(k, 0) + self.lock_actions.get(k, 0) for k in ACTION_KINDS}


@dataclass
class ScriptRun:
    rto_s: float  # "go" (plan computed) -> last step returned
    total_s: float  # including the DNS plan
    irreducible: Irreducible
    health_elapsed_s: float
    steps_s: dict[str, float]

    @property
    def overhead_s(self) -> float:
        return self.rto_s - self.irreducible.total_s


@dataclass
class Run:
    index: int
    order: str
    drflow: DrflowRun
    script: ScriptRun

    @property
    def ratio(self) -> float:
        return self.drflow.rto_after_approval_s / self.script.rto_s


STEP_KEYS = (
    ("fence", "fence"),
    ("wait for", "wait for replay"),
    ("promote", "promote"),
    ("cut DNS", "apply DNS"),
    ("verify propagation", "verify propagation"),
    ("wait out the old TTL", "TTL wait"),
    ("validate health", "validate health"),
)


def step_key(name: str) -> str | None:
    for prefix, key in STEP_KEYS:
        if name.startswith(prefix):
            return key
    return None
