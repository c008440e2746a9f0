"""The audit timeline of one run, built from its Temporal workflow history alone.

Every drflow activity returns its before/after state and every person's decision arrives as an Update, so
the history is a complete record: who asked and why, each step with its times, attempts and the results
that matter (DNS before/after, fencing and the final LSN, promotion, replication lag, health samples,
propagation per nameserver), every accepted Update with identity, channel and reason, timers, signals,
worker identity and code version, and the final report with the achieved RTO/RPO against the objectives.

Reading and decoding the history is ``workers.audit.history``, the pass over its events
``workers.audit.events``; this module assembles what they found into the ``Timeline`` and its chronology.
"""

from __future__ import annotations

from temporalio.client import WorkflowHistory

from workers.audit.events import EventPass
from workers.audit.evidence import as_str as _str
from workers.audit.evidence import evidence_of, objectives_of, outcome_of
from workers.audit.evidence import get_path as _get
from workers.audit.formatting import format_span, identity_words, step_name, timer_name
from workers.audit.history import decode_payloads, event_details, event_summary, event_time
from workers.audit.model import Entry, EventLabel, ReportGateRecord, Request, Timeline, UpdateRecord

__all__ = ["EventLabel", "Timeline", "build_timeline", "event_labels"]

VALIDATOR_NOTE = (
    "Updates refused by their validator (an approver who is not listed, the requester approving their own "
    "failover, a stale plan checksum, no open gate) change nothing and are not written to the history; only "
    "accepted Updates appear here."
)


def _assemble(records: EventPass) -> Timeline:
    start = records.start
    if start is None:
        raise ValueError("the history has no WorkflowExecutionStarted event: it is not a workflow history")
    attrs = start.workflow_execution_started_event_attributes
    raw_input = decode_payloads(attrs.input)
    activities = sorted(records.activities.values(), key=lambda a: a.scheduled_event_id)
    objectives = objectives_of(activities)
    outcome = outcome_of(records.result, objectives)
    request = Request(
        service=_str(_get(raw_input, "service")),
        target=_str(_get(raw_input, "target")),
        mode=_str(_get(raw_input, "mode")),
        reason=_str(_get(raw_input, "reason")),
        requested_by=_str(_get(raw_input, "requested_by")),
        raw=raw_input,
    )
    notes = []
    if any(
        a.name in ("approve", "reject", "accept_data_loss", "decide") for a in records.updates.values()
    ) or (attrs.workflow_type.name == "Failover"):
        notes.append(VALIDATOR_NOTE)
    if records.status == "running":
        notes.append("the run was still open when this history was read: the record is incomplete")
    timeline = Timeline(
        workflow_type=attrs.workflow_type.name,
        workflow_id=attrs.workflow_id or records.history.workflow_id,
        run_id=records.history.run_id,
        task_queue=attrs.task_queue.name or None,
        parent_workflow_id=attrs.parent_workflow_execution.workflow_id or None,
        status=records.status,
        started_at=event_time(start),
        closed_at=records.closed_at,
        history_events=len(records.events),
        started_by=attrs.identity or None,
        static_summary=event_summary(start),
        static_details=event_details(start),
        request=request,
        objectives=objectives,
        outcome=outcome,
        failure=records.failure,
        workers=sorted(records.workers.values(), key=lambda w: w.identity),
        activities=activities,
        updates=_with_identities(
            sorted(records.updates.values(), key=lambda u: u.accepted_event_id), outcome.gate_records
        ),
        timers=sorted(records.timers.values(), key=lambda t: t.started_event_id),
        signals=records.signals,
        children=sorted(records.children.values(), key=lambda c: c.event_id),
        markers=records.markers,
        search_attributes=records.search_attributes,
        task_problems=records.task_problems,
        evidence=evidence_of(activities),
        entries=[],
        notes=notes,
    )
    return timeline.model_copy(update={"entries": _entries(timeline)})


def _with_identities(updates: list[UpdateRecord], records: list[ReportGateRecord]) -> list[UpdateRecord]:
    """Each answering Update with who the report says it was from, and how that was proven.

    The report records answers in the order their Updates were accepted (a vote at once, a gate's last
    answer as the gate closes); expiries and emergency skips are not Updates and are left out.
    """
    answered = [r for r in records if r.decision not in ("expired", "skipped-in-emergency")]
    gates = iter(r for r in answered if r.kind == "approval")
    steps = iter(r for r in answered if r.kind == "decision")
    paired = []
    for u in updates:
        record = None
        if u.status != "failed" and u.name in ("approve", "reject", "accept_data_loss"):
            record = next(gates, None)
        elif u.status != "failed" and u.name == "decide":
            record = next(steps, None)
        if record is not None and record.identity is not None:
            u = u.model_copy(
                update={
                    "person": record.person,
                    "identity": record.identity,
                    "key": record.key,
                    "gateway": record.gateway,
                }
            )
        paired.append(u)
    return paired


def _entries(t: Timeline) -> list[Entry]:
    entries = [
        Entry(
            event_id=1,
            at=t.started_at,
            kind="start",
            text=f"{t.workflow_type} started by {t.started_by or 'unknown client'}"
            + (
                f": {t.request.service} → {t.request.target}"
                if t.request.service and t.request.target
                else ""
            ),
        )
    ]
    for a in t.activities:
        took = f" in {format_span(a.duration)}" if a.duration is not None else ""
        attempts = f", {a.attempts} attempts" if a.attempts > 1 else ""
        status = {"completed": "done", "running": "running", "scheduled": "waiting for a worker"}.get(
            a.status, a.status
        )
        text = f"activity {step_name(a)}: {status}{took}{attempts}"
        if a.failure is not None:
            text += f": {a.failure.message}"
        entries.append(Entry(event_id=a.scheduled_event_id, at=a.scheduled_at, kind="activity", text=text))
    for u in t.updates:
        what = u.decision or u.gate or ""
        text = f"Update {u.name}{f' {what}' if what else ''}"
        text += (f" by {u.by}" if u.by else "") + (f" via {u.channel}" if u.channel else "")
        text += f" [{identity_words(u.identity, u.key, u.gateway)}]" if u.identity else ""
        text += f" (client {u.client_identity})" if u.client_identity else ""
        text += f": {u.reason}" if u.reason else ""
        text += f" → {u.status}" + (f": {u.message}" if u.message else "")
        entries.append(Entry(event_id=u.accepted_event_id, at=u.accepted_at, kind="update", text=text))
    for tm in t.timers:
        ended = f" at {tm.ended_at:%H:%M:%S.%f}"[:-3] if tm.ended_at else ""
        entries.append(
            Entry(
                event_id=tm.started_event_id,
                at=tm.started_at,
                kind="timer",
                text=f"timer {timer_name(tm)}: {tm.status}{ended}",
            )
        )
    for s in t.signals:
        where = (
            f" to {s.workflow_id}" if s.direction == "sent" else (f" from {s.identity}" if s.identity else "")
        )
        entries.append(
            Entry(
                event_id=s.event_id,
                at=s.at,
                kind="signal",
                text=f"signal {s.name} {s.direction}{where}: {s.status}",
            )
        )
    for c in t.children:
        policy = f", parent close policy {c.parent_close_policy}" if c.parent_close_policy else ""
        entries.append(
            Entry(
                event_id=c.event_id,
                at=c.at,
                kind="child",
                text=f"child {c.workflow_type} {c.workflow_id}: {c.status}{policy}",
            )
        )
    for m in t.markers:
        entries.append(
            Entry(event_id=m.event_id, at=m.at, kind="marker", text=f"marker {m.name}: {m.detail}")
        )
    for sa in t.search_attributes:
        shown = ", ".join(f"{k}={v}" for k, v in sa.values.items())
        entries.append(
            Entry(
                event_id=sa.event_id, at=sa.at, kind="search-attributes", text=f"search attributes: {shown}"
            )
        )
    for p in t.task_problems:
        entries.append(
            Entry(event_id=p.event_id, at=p.at, kind="workflow-task", text=f"{p.kind}: {p.message}")
        )
    if t.closed_at is not None:
        close = f"run {t.status}"
        if t.outcome.outcome or t.outcome.verdict:
            close += f": {t.outcome.outcome or t.outcome.verdict}"
        if t.failure is not None:
            close += f": {t.failure.message}"
        entries.append(Entry(event_id=t.history_events, at=t.closed_at, kind="close", text=close))
    return sorted(entries, key=lambda e: e.event_id)


# ----------------------------------------------------------------------------------------- public API
def build_timeline(history: WorkflowHistory) -> Timeline:
    """The audit timeline of the run whose history this is. Pure: no server, no clock."""
    return _assemble(EventPass(history).build())


def event_labels(history: WorkflowHistory) -> dict[int, EventLabel]:
    """Every event id in plain words: its step (``activity db_fence (fence region-a (planned))``) and what
    happened (``the run schedules activity ...``)."""
    return EventPass(history).build().labels
