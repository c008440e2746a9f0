"""Failover benchmark: drflow on Temporal against the same steps as a plain Python script, same sandbox.

Run by hand from the repository root (never from the tests):

    .venv/bin/python benchmarks/failover.py --runs 5

Each run builds two fresh sandboxes (BIND pair, PostgreSQL primary + streaming standby, region apps, on free
ports): one for a drflow failover, one for the script. For drflow it also starts a fresh Temporal dev server
(SQLite file by default, ``--memory`` for in-memory) and an in-process worker
(``workers.worker.build_worker``), starts a planned failover of sandbox-app to region-b, polls the ``status``
query and approves the gate with the ``approve`` Update as soon as it opens. The approval wait is reported
apart and is not part of the RTO comparison.

Figures (seconds unless said otherwise):

- RTO after approval: from sending the approve Update until the workflow's result reached the client (the
  operator's view). The script's equivalent: from "go" (the DNS plan is computed, which is what the operator
  approves) until the last step returned.
- Irreducible waits: promotion (``PromoteResult.duration_ms``) + propagation
  (``PropagationResult.elapsed_ms``) + max(served TTL, health minimum). The TTL wait and health validation
  run concurrently, so only the longer of the two is on the critical path; the TTL and the health minimum
  (interval x (consecutive successes - 1)) are the nominal values: any time a timer or a probe takes beyond
  them is not irreducible.
- Overhead: RTO after approval - irreducible (the same formula for the script, from its own measurements).
- Billable actions per failover: from the Failover's history and the ServiceLock's history (start, activity
  attempts, timers, signals sent and received, Updates, search-attribute upserts, markers), plus heartbeats
  that reached the server, counted by the dev server's own request metrics (``--metrics-port``) and
  cross-checked with an estimate from the SDK's throttling (see ``estimate_heartbeats``).

Targets are reported (PASS / MISS), never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities import database
from activities.dns_providers import (
    ApplyDnsChangeRequest,
    PlanDnsChangeRequest,
    apply_dns_change,
    plan_dns_change,
)
from activities.dns_reader import DnsQuery
from activities.health import HealthValidationRequest, ValidatedProbe, validate_health
from activities.propagation import PropagationRequest, verify_propagation
from activities.service_lock import lock_workflow_id
from runbooks.model import Runbook
from tests.support.sandbox import SandboxWorld, sandbox_world
from tests.support.temporal import venv_binary
from workers.sandbox.named import free_port
from workers.worker import build_worker
from workflows.common import SEARCH_ATTRIBUTES, run_attributes
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest
from workflows.moves import REPLAY_WAIT_PLANNED
from workflows.moves import probes as _probes
from workflows.run_control import HEARTBEAT

TARGET = "region-b"
SOURCE = "region-a"
APPROVER = "bob"
REQUESTER = "alice"

OVERHEAD_TARGET_S = 0.300
RTO_RATIO_TARGET = 1.05
ACTIONS_TARGET = 25

# The SDK (sdk-core) sends an activity's first heartbeat at once, then at most one per throttle interval:
# 80% of the heartbeat timeout, or 30 s (default_heartbeat_throttle_interval) when there is none. Details
# still buffered when the activity completes are dropped: the completion carries the outcome.
THROTTLE_WITH_TIMEOUT_S = 0.8 * HEARTBEAT.total_seconds()
THROTTLE_WITHOUT_TIMEOUT_S = 30.0

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


# ------------------------------------------------------------------------------------------- helpers
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


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """The dev server prints a banner on the stdout it inherits: send it to /dev/null."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        into[key] = time.monotonic() - started


def frontend_requests(metrics_port: int) -> Counter[str]:
    """Requests the dev server's frontend served, by operation (its Prometheus ``service_latency_count``)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if not line.startswith("service_latency_count{") or 'service_name="frontend"' not in line:
            continue
        found = re.search(r'operation="([^"]+)"', line)
        if found:
            counts[found.group(1)] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def event_name(event: HistoryEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def event_seconds(event: HistoryEvent) -> float:
    return float(event.event_time.ToNanoseconds()) / 1e9


def history_actions(events: Sequence[HistoryEvent]) -> dict[str, int]:
    """Billable actions a history shows (heartbeats are not in histories: counted apart)."""
    names = Counter(event_name(e) for e in events)
    attempts = sum(
        e.activity_task_started_event_attributes.attempt or 1
        for e in events
        if event_name(e) == "ACTIVITY_TASK_STARTED"
    )
    return {
        "start": names["WORKFLOW_EXECUTION_STARTED"],
        "activity attempts": attempts,
        "timers": names["TIMER_STARTED"],
        "signals": names["SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED"]
        + names["WORKFLOW_EXECUTION_SIGNALED"],
        "updates": names["WORKFLOW_EXECUTION_UPDATE_ACCEPTED"] + names["WORKFLOW_EXECUTION_UPDATE_REJECTED"],
        "SA upserts": names["UPSERT_WORKFLOW_SEARCH_ATTRIBUTES"],
        "markers": names["MARKER_RECORDED"] + names["START_CHILD_WORKFLOW_EXECUTION_INITIATED"],
    }


def activity_hops(events: Sequence[HistoryEvent], after: float) -> list[Hop]:
    """Activities scheduled at or after ``after`` (seconds): dispatch, run and workflow-task turnaround."""
    by_id = {e.event_id: e for e in events}
    started: dict[int, HistoryEvent] = {}
    closed: dict[int, HistoryEvent] = {}
    for e in events:
        name = event_name(e)
        if name == "ACTIVITY_TASK_STARTED":
            started[e.activity_task_started_event_attributes.scheduled_event_id] = e
        elif name == "ACTIVITY_TASK_COMPLETED":
            closed[e.activity_task_completed_event_attributes.scheduled_event_id] = e
        elif name == "ACTIVITY_TASK_FAILED":
            closed[e.activity_task_failed_event_attributes.scheduled_event_id] = e
    wft_done = [event_seconds(e) for e in events if event_name(e) == "WORKFLOW_TASK_COMPLETED"]
    hops = []
    for scheduled_id, start in started.items():
        scheduled = by_id[scheduled_id]
        if event_seconds(scheduled) < after or scheduled_id not in closed:
            continue
        attrs = scheduled.activity_task_scheduled_event_attributes
        done = event_seconds(closed[scheduled_id])
        next_wft = min((t for t in wft_done if t >= done), default=done)
        heartbeat = attrs.heartbeat_timeout.ToTimedelta().total_seconds() or None
        hops.append(
            Hop(
                activity=attrs.activity_type.name,
                dispatch_ms=(event_seconds(start) - event_seconds(scheduled)) * 1000,
                run_ms=(done - event_seconds(start)) * 1000,
                turnaround_ms=(next_wft - done) * 1000,
                attempts=start.activity_task_started_event_attributes.attempt or 1,
                heartbeat_timeout_s=heartbeat,
            )
        )
    return hops


def workflow_tasks(events: Sequence[HistoryEvent], accepted_id: int) -> tuple[list[float], list[float]]:
    """Workflow tasks from the one that accepted the Update on, in ms: (scheduled->started, ->completed)."""
    by_id = {e.event_id: e for e in events}
    done = [e for e in events if event_name(e) == "WORKFLOW_TASK_COMPLETED"]
    # The acceptance is written right after the completion of the task that ran the handler.
    first = max(e.event_id for e in done if e.event_id < accepted_id)
    queued: list[float] = []
    processing: list[float] = []
    for e in done:
        if e.event_id < first:
            continue
        attrs = e.workflow_task_completed_event_attributes
        scheduled, started = by_id[attrs.scheduled_event_id], by_id[attrs.started_event_id]
        queued.append((event_seconds(started) - event_seconds(scheduled)) * 1000)
        processing.append((event_seconds(e) - event_seconds(started)) * 1000)
    return queued, processing


def phases(events: Sequence[HistoryEvent], approve_sent: float, result_received: float) -> dict[str, float]:
    """Where the time after approval goes (ms); client and server clocks are the same host's wall clock."""
    accepted = next(e for e in events if event_name(e) == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED")
    first_activity = next(
        e for e in events if event_name(e) == "ACTIVITY_TASK_SCHEDULED" and e.event_id > accepted.event_id
    )
    completed = next(e for e in events if event_name(e) == "WORKFLOW_EXECUTION_COMPLETED")
    last_work = max(
        event_seconds(e)
        for e in events
        if event_name(e) in ("TIMER_FIRED", "ACTIVITY_TASK_COMPLETED") and e.event_id > accepted.event_id
    )
    return {
        "approve sent → UpdateAccepted": (event_seconds(accepted) - approve_sent) * 1000,
        "UpdateAccepted → first activity scheduled": (event_seconds(first_activity) - event_seconds(accepted))
        * 1000,
        "first activity scheduled → last timer/activity done": (last_work - event_seconds(first_activity))
        * 1000,
        "→ WorkflowExecutionCompleted (finish, lock release, final upsert)": (
            event_seconds(completed) - last_work
        )
        * 1000,
        "→ result at the client": (result_received - event_seconds(completed)) * 1000,
    }


def estimate_heartbeats(report: FailoverReport, hops: Sequence[Hop]) -> int:
    """Heartbeats that reach the server, from the SDK's throttling and what each activity reported.

    An activity that heartbeats at least once sends 1 + floor(duration / throttle) heartbeats; which
    activities heartbeat at all follows from their code: the fence while it stops a server, the promotion
    while it promotes, wait-for-replay when the first poll has not reached the LSN, propagation after each
    polling round, health validation after each probe. The preflight activities never heartbeat.
    """
    run_s = {h.activity: h.run_ms / 1000 for h in hops}

    def sent(activity: str, throttle: float) -> int:
        return 1 + int(run_s.get(activity, 0.0) // throttle)

    count = 0
    if report.fence is not None and not report.fence.already_fenced:
        count += sent("db_fence", THROTTLE_WITHOUT_TIMEOUT_S)
    if report.replay is not None and report.replay.waited_ms >= 50:  # polls every 100 ms
        count += sent("db_wait_for_replay", THROTTLE_WITH_TIMEOUT_S)
    if report.promotion is not None and report.promotion.promoted:
        count += sent("db_promote", THROTTLE_WITHOUT_TIMEOUT_S)
    if report.propagation is not None:
        count += sent("dns_verify_propagation", THROTTLE_WITH_TIMEOUT_S)
    if report.health is not None:
        count += sent("validate_health", THROTTLE_WITH_TIMEOUT_S)
    return count


def validated_probes(runbook: Runbook) -> list[ValidatedProbe]:
    """What the workflow's health validation checks on the target (the same construction)."""
    checks = {c.name: c for c in runbook.checks_for(TARGET)}
    return [
        ValidatedProbe(
            probe=p,
            consecutive_successes=checks[p.check].consecutive_successes,
            interval=checks[p.check].interval,
        )
        for p in _probes(runbook, TARGET, serving=True)
    ]


def health_budget(runbook: Runbook) -> timedelta:
    return max(runbook.health_minimum * 3, timedelta(seconds=30))


# --------------------------------------------------------------------------------------- drflow run
async def start_dev_server(database_file: Path | None, metrics_port: int) -> WorkflowEnvironment:
    with quiet_stdout():
        return await WorkflowEnvironment.start_local(
            dev_server_existing_path=venv_binary("temporal"),
            search_attributes=list(SEARCH_ATTRIBUTES),
            data_converter=pydantic_data_converter,
            dev_server_database_filename=str(database_file) if database_file else None,
            dev_server_log_level="error",
            dev_server_extra_args=["--metrics-port", str(metrics_port)],
        )


async def wait_for_gate(client: Client, workflow_id: str, poll: float) -> tuple[FailoverReport, int]:
    handle = client.get_workflow_handle(workflow_id)
    queries = 0
    async with asyncio.timeout(120):
        while True:
            queries += 1
            try:
                report: FailoverReport | None = await handle.query("status", result_type=FailoverReport)
            except (WorkflowQueryFailedError, RPCError):  # before the first workflow task
                report = None
            if report is not None and report.open_gate == "failover":
                return report, queries
            if report is not None and report.outcome != "running":
                raise RuntimeError(
                    f"the failover ended as {report.outcome} before its gate: {report.messages}"
                )
            await asyncio.sleep(poll)


async def run_drflow(memory: bool, poll: float) -> DrflowRun:
    with sandbox_world() as world, tempfile.TemporaryDirectory(prefix="drflow-bench-") as scratch:
        metrics_port = free_port()
        env = await start_dev_server(None if memory else Path(scratch) / "temporal.db", metrics_port)
        try:
            return await _drive_failover(env, world, metrics_port, poll)
        finally:
            await env.shutdown()


async def _drive_failover(
    env: WorkflowEnvironment, world: SandboxWorld, metrics_port: int, poll: float
) -> DrflowRun:
    client = env.client
    task_queue = f"drflow-bench-{uuid.uuid4().hex[:8]}"
    request = FailoverRequest(
        service=world.service, target=TARGET, reason="benchmark", requested_by=REQUESTER, mode="planned"
    )
    async with build_worker(client, world.runbooks, task_queue=task_queue):
        before = frontend_requests(metrics_port)
        handle = await client.start_workflow(
            FailoverWorkflow.run,
            request,
            id=f"failover-bench-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            search_attributes=run_attributes(request.service, "failover", "preflight"),  # as the CLI does
        )
        started = time.monotonic()
        _, queries = await wait_for_gate(client, handle.id, poll)
        gate_seen = time.monotonic()
        approve_sent = time.time()
        await handle.execute_update(
            FailoverWorkflow.approve, ApprovalInput(approver=APPROVER, reason="benchmark", channel="api")
        )
        approved = time.monotonic()
        report = await handle.result()
        ended = time.monotonic()
        result_received = time.time()
        if report.outcome != "completed":
            raise RuntimeError(f"the failover ended as {report.outcome}: {report.messages}")
        lock = client.get_workflow_handle(lock_workflow_id(world.service))
        async with asyncio.timeout(30):
            await lock.result()  # it ends once released
        history = await handle.fetch_history()
        lock_history = await lock.fetch_history()
        after = frontend_requests(metrics_port)

    events = list(history.events)
    accepted = next(e for e in events if event_name(e) == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED")
    completed = next(e for e in events if event_name(e) == "WORKFLOW_EXECUTION_COMPLETED")
    hops = activity_hops(events, event_seconds(accepted))
    wfts = workflow_tasks(events, accepted.event_id)
    heartbeats = sum(
        after[op] - before[op] for op in ("RecordActivityTaskHeartbeat", "RecordActivityTaskHeartbeatById")
    )
    runbook = world.runbook
    assert report.promotion is not None and report.propagation is not None and report.health is not None
    assert report.plan is not None and report.finished_at is not None and report.achieved_rto_seconds
    approval = next(a for a in report.approvals if a.decision == "approved")
    failover_actions = history_actions(events) | {"heartbeats": heartbeats}
    steps: dict[str, float] = {}
    for step in report.steps:
        key = step_key(step.name)
        if key is not None and step.duration is not None:
            steps[key] = step.duration.total_seconds()
    return DrflowRun(
        rto_after_approval_s=ended - gate_seen,
        rto_after_approval_history_s=event_seconds(completed) - event_seconds(accepted),
        rto_after_approval_report_s=(report.finished_at - approval.at).total_seconds(),
        achieved_rto_s=report.achieved_rto_seconds,
        approval_wait_s=report.approval_wait_seconds,
        gate_seen_after_s=gate_seen - started,
        approve_round_trip_s=approved - gate_seen,
        irreducible=Irreducible(
            promotion_s=report.promotion.duration_ms / 1000,
            propagation_s=report.propagation.elapsed_ms / 1000,
            ttl_s=float(report.plan.dns.current.ttl or runbook.dns.ttl),
            health_minimum_s=runbook.health_minimum.total_seconds(),
        ),
        ttl_timer_s=report.ttl_wait_seconds or 0.0,
        health_elapsed_s=report.health.elapsed_ms / 1000,
        steps_s=steps,
        history_events=len(events),
        lock_history_events=len(lock_history.events),
        failover_actions=failover_actions,
        lock_actions=history_actions(list(lock_history.events)) | {"heartbeats": 0},
        heartbeats_measured=heartbeats,
        heartbeats_estimated=estimate_heartbeats(report, hops),
        status_queries=queries,
        phases_ms=phases(events, approve_sent, result_received),
        wft_schedule_to_start_ms=wfts[0],
        wft_start_to_complete_ms=wfts[1],
        hops=hops,
    )


# --------------------------------------------------------------------------------------- script run
async def run_script(ttl_then_health: bool) -> ScriptRun:
    """What a user would otherwise write: the same activity functions, called in order, no Temporal.

    ``ActivityEnvironment`` gives the functions that heartbeat an activity context (heartbeats go nowhere).
    By default the TTL wait and health validation run concurrently, as in the workflow; with
    ``ttl_then_health`` the script sleeps out the TTL first, as a naive sequential script would.
    """
    with sandbox_world() as world:
        runbook = world.runbook
        assert runbook.database is not None
        dns = runbook.dns
        address = runbook.regions[TARGET].address
        env = ActivityEnvironment()
        steps: dict[str, float] = {}
        began = time.monotonic()
        plan = await env.run(plan_dns_change, PlanDnsChangeRequest(dns=dns, target_address=address))
        go = time.monotonic()  # what the operator approves is computed: from here on it is the failover
        with timed(steps, "fence"):
            fence = env.run(
                database.fence,
                database.DatabaseFenceRequest(database=runbook.database, region=SOURCE, mode="planned"),
            )
        if not fence.fenced or fence.final_lsn is None:
            raise RuntimeError(f"the script could not fence {SOURCE}: {fence.errors}")
        with timed(steps, "wait for replay"):
            replay = env.run(
                database.wait_for_replay,
                database.ReplayRequest(
                    database=runbook.database,
                    region=TARGET,
                    position=fence.final_lsn,
                    timeout_seconds=REPLAY_WAIT_PLANNED.total_seconds(),
                ),
            )
        if not replay.reached:
            raise RuntimeError(f"{TARGET} did not replay {fence.final_lsn}")
        with timed(steps, "promote"):
            promotion = env.run(
                database.promote, database.DatabasePromoteRequest(database=runbook.database, region=TARGET)
            )
        with timed(steps, "apply DNS"):
            await env.run(apply_dns_change, ApplyDnsChangeRequest(dns=dns, plan=plan))
        query = DnsQuery(record=dns.record, type=dns.type, zone=dns.zone, nameservers=dns.nameservers)
        with timed(steps, "verify propagation"):
            propagation = await env.run(
                verify_propagation,
                PropagationRequest(
                    query=query, expected=[address], timeout_seconds=dns.propagation_budget.total_seconds()
                ),
            )
        ttl = float(plan.current.ttl or dns.ttl)

        async def ttl_wait() -> None:
            with timed(steps, "TTL wait"):
                await asyncio.sleep(ttl)

        async def health_check() -> float:
            with timed(steps, "validate health"):
                result = await env.run(
                    validate_health,
                    HealthValidationRequest(probes=validated_probes(runbook), timeout=health_budget(runbook)),
                )
            return result.elapsed_ms / 1000

        if ttl_then_health:
            await ttl_wait()
            health_elapsed = await health_check()
        else:
            _, health_elapsed = await asyncio.gather(ttl_wait(), health_check())
        ended = time.monotonic()
        return ScriptRun(
            rto_s=ended - go,
            total_s=ended - began,
            irreducible=Irreducible(
                promotion_s=promotion.duration_ms / 1000,
                propagation_s=propagation.elapsed_ms / 1000,
                ttl_s=ttl,
                health_minimum_s=runbook.health_minimum.total_seconds(),
            ),
            health_elapsed_s=health_elapsed,
            steps_s=steps,
        )


# ------------------------------------------------------------------------------------------- output
def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths))
    rule += "|"
    return "\n".join([line(cells[0]), rule, *[line(r) for r in cells[1:]]])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(runs: Sequence[Run], args: argparse.Namespace) -> None:
    def s(x: float) -> str:
        return f"{x:.3f}"

    def ms(x: float) -> str:
        return f"{x * 1000:.0f}"

    rows: list[list[object]] = []
    for r in runs:
        d, c = r.drflow, r.script
        rows.append(
            [
                f"run {r.index} ({r.order})",
                s(d.rto_after_approval_s),
                s(d.irreducible.total_s),
                ms(d.overhead_s),
                s(d.rto_after_approval_report_s),
                ms(d.overhead_to_finish_s),
                s(c.rto_s),
                s(c.irreducible.total_s),
                ms(c.overhead_s),
                f"{r.ratio:.3f}",
                s(d.achieved_rto_s),
                s(d.approval_wait_s),
                d.history_events,
                d.lock_history_events,
                d.actions_total,
            ]
        )
    med = {
        "rto": median([r.drflow.rto_after_approval_s for r in runs]),
        "irr": median([r.drflow.irreducible.total_s for r in runs]),
        "ovh": median([r.drflow.overhead_s for r in runs]),
        "fin": median([r.drflow.rto_after_approval_report_s for r in runs]),
        "fovh": median([r.drflow.overhead_to_finish_s for r in runs]),
        "srto": median([r.script.rto_s for r in runs]),
        "sirr": median([r.script.irreducible.total_s for r in runs]),
        "sovh": median([r.script.overhead_s for r in runs]),
        "ratio": median([r.ratio for r in runs]),
        "ach": median([r.drflow.achieved_rto_s for r in runs]),
        "wait": median([r.drflow.approval_wait_s for r in runs]),
        "hist": median([r.drflow.history_events for r in runs]),
        "lock": median([r.drflow.lock_history_events for r in runs]),
        "act": median([r.drflow.actions_total for r in runs]),
    }
    rows.append(
        [
            "**median**",
            s(med["rto"]),
            s(med["irr"]),
            ms(med["ovh"]),
            s(med["fin"]),
            ms(med["fovh"]),
            s(med["srto"]),
            s(med["sirr"]),
            ms(med["sovh"]),
            f"{med['ratio']:.3f}",
            s(med["ach"]),
            s(med["wait"]),
            f"{med['hist']:g}",
            f"{med['lock']:g}",
            f"{med['act']:g}",
        ]
    )
    print("\n## RTO and overhead (s; overhead in ms)\n")
    print(
        table(
            [
                "run",
                "drflow RTO after approval",
                "irreducible",
                "overhead ms",
                "to finish (report)",
                "overhead to finish ms",
                "script RTO",
                "script irreducible",
                "script overhead ms",
                "drflow/script",
                "achieved_rto_seconds",
                "approval wait",
                "history events",
                "lock history events",
                "actions",
            ],
            rows,
        )
    )

    print("\n## Irreducible waits, median (s)\n")
    irr_rows: list[list[object]] = []
    for label, attribute in (
        ("promotion (PromoteResult.duration_ms)", "promotion_s"),
        ("propagation (PropagationResult.elapsed_ms)", "propagation_s"),
        ("served TTL (nominal)", "ttl_s"),
        ("health minimum (nominal)", "health_minimum_s"),
        ("irreducible = promotion + propagation + max(TTL, health minimum)", "total_s"),
    ):
        irr_rows.append(
            [
                label,
                s(median([getattr(r.drflow.irreducible, attribute) for r in runs])),
                s(median([getattr(r.script.irreducible, attribute) for r in runs])),
            ]
        )
    irr_rows.append(
        [
            "TTL timer as measured by the workflow (ttl_wait_seconds)",
            s(median([r.drflow.ttl_timer_s for r in runs])),
            "-",
        ]
    )
    irr_rows.append(
        [
            "health validation elapsed (HealthValidationResult.elapsed_ms)",
            s(median([r.drflow.health_elapsed_s for r in runs])),
            s(median([r.script.health_elapsed_s for r in runs])),
        ]
    )
    print(table(["wait", "drflow", "script"], irr_rows))

    print("\n## Steps after approval, median (s): drflow report step records vs the script's timers\n")
    step_rows = []
    for _, key in STEP_KEYS:
        dv = [r.drflow.steps_s[key] for r in runs if key in r.drflow.steps_s]
        sv = [r.script.steps_s[key] for r in runs if key in r.script.steps_s]
        if dv and sv:
            step_rows.append([key, s(median(dv)), s(median(sv)), ms(median(dv) - median(sv))])
    step_rows.append(
        [
            "approve round trip (client execute_update)",
            s(median([r.drflow.approve_round_trip_s for r in runs])),
            "-",
            "-",
        ]
    )
    print(table(["step", "drflow", "script", "delta ms"], step_rows))

    print("\n## Billable actions per failover (Failover + ServiceLock histories; heartbeats: server)\n")
    act_rows = []
    for r in runs:
        kinds = r.drflow.actions_by_kind()
        act_rows.append(
            [
                f"run {r.index}",
                *[kinds[k] for k in ACTION_KINDS],
                r.drflow.actions_total,
                r.drflow.heartbeats_estimated,
                r.drflow.status_queries,
            ]
        )
    act_rows.append(
        [
            "**median**",
            *[f"{median([r.drflow.actions_by_kind()[k] for r in runs]):g}" for k in ACTION_KINDS],
            f"{med['act']:g}",
            f"{median([r.drflow.heartbeats_estimated for r in runs]):g}",
            f"{median([r.drflow.status_queries for r in runs]):g}",
        ]
    )
    headers = ["run", *ACTION_KINDS, "total", "heartbeats (estimate)", "status queries (not counted)"]
    print(table(headers, act_rows))
    last = runs[len(runs) // 2].drflow
    print(f"\nrun {runs[len(runs) // 2].index}, Failover vs ServiceLock:")
    print(
        table(
            ["workflow", *ACTION_KINDS, "total"],
            [
                [name, *[actions.get(k, 0) for k in ACTION_KINDS], sum(actions.values())]
                for name, actions in (("Failover", last.failover_actions), ("ServiceLock", last.lock_actions))
            ],
        )
    )

    print(f"\n## Activity hops after approval, run {runs[len(runs) // 2].index} (ms, from the history)\n")
    print(
        table(
            [
                "activity",
                "scheduled→started",
                "started→completed",
                "completed→next WFT completed",
                "attempts",
                "heartbeat timeout",
            ],
            [
                [
                    h.activity,
                    f"{h.dispatch_ms:.0f}",
                    f"{h.run_ms:.0f}",
                    f"{h.turnaround_ms:.0f}",
                    h.attempts,
                    f"{h.heartbeat_timeout_s:g}s" if h.heartbeat_timeout_s else "-",
                ]
                for h in last.hops
            ],
        )
    )
    print(
        "\nscheduled→started is 0: the SDK asks for eager activity execution (same task queue, free slot) "
        "and the dev server grants it, so the activity task comes back in the workflow task's completion "
        "response; "
        "started→completed then includes the hand-over to the worker's thread pool and the completion report."
    )

    print("\n## Where the time after approval goes, median over runs (ms)\n")
    names = list(runs[0].drflow.phases_ms)
    phase_rows = [[n, f"{median([r.drflow.phases_ms[n] for r in runs]):.0f}"] for n in names]
    print(table(["phase", "median ms"], phase_rows))
    queued = [x for r in runs for x in r.drflow.wft_schedule_to_start_ms]
    worked = [x for r in runs for x in r.drflow.wft_start_to_complete_ms]
    counts = [len(r.drflow.wft_schedule_to_start_ms) for r in runs]
    print(
        f"\nworkflow tasks after approval: {median(counts):g} per run; scheduled→started median "
        f"{median(queued):.1f} ms (max {max(queued):.1f}), started→completed (worker) median "
        f"{median(worked):.1f} ms (max {max(worked):.1f})"
    )

    print("\n## Targets (reported, never asserted)\n")
    print(
        table(
            ["target", "figure (median)", "result"],
            [
                [
                    "overhead ≤ 300 ms",
                    f"{med['ovh'] * 1000:.0f} ms (to the workflow's finish: {med['fovh'] * 1000:.0f} ms)",
                    verdict(med["ovh"] <= OVERHEAD_TARGET_S),
                ],
                [
                    "drflow RTO within 5% of the script's",
                    f"ratio {med['ratio']:.3f} (ratio of medians {med['rto'] / med['srto']:.3f})",
                    verdict(med["ratio"] <= RTO_RATIO_TARGET),
                ],
                [
                    f"≤ {ACTIONS_TARGET} billable actions per failover",
                    f"{med['act']:g}",
                    verdict(med["act"] <= ACTIONS_TARGET),
                ],
            ],
        )
    )
    print(
        f"\ndev server: {'in memory' if args.memory else 'SQLite file'}; {os.cpu_count()} cores; "
        f"script: {'TTL, then health' if args.script_ttl_then_health else 'TTL wait and health concurrently'}"
    )


# --------------------------------------------------------------------------------------------- main
async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="failovers of each kind (default 5)")
    parser.add_argument("--memory", action="store_true", help="dev server in memory instead of a SQLite file")
    parser.add_argument(
        "--poll", type=float, default=0.05, help="status query interval while waiting for the gate"
    )
    parser.add_argument(
        "--script-ttl-then-health",
        action="store_true",
        help="the script sleeps out the TTL, then validates health (default: concurrently, as drflow does)",
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)

    runs: list[Run] = []
    for index in range(1, args.runs + 1):
        drflow_first = index % 2 == 1  # alternate, so that warm-up or drift favours neither
        order = "drflow first" if drflow_first else "script first"
        print(f"run {index}/{args.runs} ({order}) ...", flush=True)
        if drflow_first:
            drflow_run = await run_drflow(args.memory, args.poll)
            script_run = await run_script(args.script_ttl_then_health)
        else:
            script_run = await run_script(args.script_ttl_then_health)
            drflow_run = await run_drflow(args.memory, args.poll)
        run = Run(index, order, drflow_run, script_run)
        runs.append(run)
        print(
            f"  drflow {drflow_run.rto_after_approval_s:.3f}s after approval "
            f"(overhead {drflow_run.overhead_s * 1000:.0f} ms, {drflow_run.actions_total} actions); "
            f"script {script_run.rto_s:.3f}s (overhead {script_run.overhead_s * 1000:.0f} ms)",
            flush=True,
        )
    report(runs, args)
    if args.json is not None:
        payload: list[dict[str, Any]] = [
            {
                **asdict(r),
                "ratio": r.ratio,
                "drflow_overhead_s": r.drflow.overhead_s,
                "script_overhead_s": r.script.overhead_s,
                "drflow_actions_total": r.drflow.actions_total,
            }
            for r in runs
        ]
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
