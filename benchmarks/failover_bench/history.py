"""Billable actions and timings read from the Failover's and ServiceLock's histories, and heartbeats.

Heartbeats never reach a history: they are counted from the dev server's own request metrics and
cross-checked with an estimate from the SDK's throttling.
"""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from collections.abc import Sequence

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent

from workflows.failover_models import FailoverReport
from workflows.run_state import HEARTBEAT

from .records import Hop

# The SDK (sdk-core) sends an activity's first heartbeat at once, then at most one per throttle interval:
# 80% of the heartbeat timeout, or 30 s (default_heartbeat_throttle_interval) when there is none. Details
# still buffered when the activity completes are dropped: the completion carries the outcome.
THROTTLE_WITH_TIMEOUT_S = 0.8 * HEARTBEAT.total_seconds()
THROTTLE_WITHOUT_TIMEOUT_S = 30.0


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
