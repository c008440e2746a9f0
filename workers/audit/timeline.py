"""The audit timeline of one run, built from its Temporal workflow history alone.

Every drflow activity returns its before/after state and every person's decision arrives as an Update, so
the history is a complete record: who asked and why, each step with its times, attempts and the results
that matter (DNS before/after, fencing and the final LSN, promotion, replication lag, health samples,
propagation per nameserver), every accepted Update with identity, channel and reason, timers, signals,
worker identity and code version, and the final report with the achieved RTO/RPO against the objectives.

Payloads are decoded as plain JSON, never validated against today's models: a history recorded weeks ago by
an older drflow must still render after the models have moved on.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType, RetryState
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import PayloadConverter

from workers.audit.evidence import HIGHLIGHTS, evidence_of, objectives_of, outcome_of
from workers.audit.evidence import as_str as _str
from workers.audit.evidence import get_path as _get
from workers.audit.model import (
    ActivityRecord,
    ChildRecord,
    Entry,
    EventLabel,
    FailureInfo,
    MarkerRecord,
    Request,
    RunStatus,
    SearchAttributeRecord,
    SignalRecord,
    TaskProblem,
    Timeline,
    TimerRecord,
    UpdateRecord,
    WorkerInfo,
)

__all__ = ["EventLabel", "Timeline", "build_timeline", "event_labels", "format_span", "read_history_file"]

VALIDATOR_NOTE = (
    "Updates refused by their validator (an approver who is not listed, the requester approving their own "
    "failover, a stale plan checksum, no open gate) change nothing and are not written to the history; only "
    "accepted Updates appear here."
)


# --------------------------------------------------------------------------------------------- decoding
_CONVERTER: PayloadConverter = pydantic_data_converter.payload_converter


def decode_payload(payload: Payload) -> Any:
    """A payload as plain JSON data; something readable in its place when it cannot be decoded."""
    encoding = payload.metadata.get("encoding", b"").decode(errors="replace")
    try:
        value = _CONVERTER.from_payload(payload)
    except (KeyError, ValueError, TypeError, RuntimeError):
        return f"<undecodable {encoding or 'unknown'} payload, {len(payload.data)} bytes>"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes of {encoding}>"
    return value


def decode_payloads(payloads: Payloads) -> Any:
    values = [decode_payload(p) for p in payloads.payloads]
    return values[0] if len(values) == 1 else (values or None)


def _summary(event: HistoryEvent) -> str | None:
    if not event.HasField("user_metadata") or not event.user_metadata.HasField("summary"):
        return None
    value = decode_payload(event.user_metadata.summary)
    return value if isinstance(value, str) else None


def _details(event: HistoryEvent) -> str | None:
    if not event.HasField("user_metadata") or not event.user_metadata.HasField("details"):
        return None
    value = decode_payload(event.user_metadata.details)
    return value if isinstance(value, str) else None


def failure_info(failure: Failure) -> FailureInfo:
    causes: list[str] = []
    cause = failure.cause if failure.HasField("cause") else None
    while cause is not None:
        causes.append(cause.message)
        cause = cause.cause if cause.HasField("cause") else None
    app = failure.application_failure_info if failure.HasField("application_failure_info") else None
    return FailureInfo(
        message=failure.message,
        type=(app.type or None) if app is not None else None,
        non_retryable=app.non_retryable if app is not None else None,
        causes=causes,
    )


def _when(event: HistoryEvent) -> datetime:
    return event.event_time.ToDatetime(tzinfo=UTC)


def _retry_state(state: int) -> str | None:
    if not state:
        return None
    return RetryState.Name(state).removeprefix("RETRY_STATE_").lower().replace("_", " ")  # type: ignore[arg-type]


def _event_name(event: HistoryEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


# ---------------------------------------------------------------------------------------- the builder
class _Builder:
    def __init__(self, history: WorkflowHistory) -> None:
        self.history = history
        self.events = list(history.events)
        self.activities: dict[int, ActivityRecord] = {}  # by scheduled event id
        self.activity_events: dict[int, int] = {}  # started/closed event id -> scheduled event id
        self.updates: dict[str, UpdateRecord] = {}
        self.timers: dict[str, TimerRecord] = {}
        self.signals: list[SignalRecord] = []
        self.children: dict[int, ChildRecord] = {}
        self.markers: list[MarkerRecord] = []
        self.search_attributes: list[SearchAttributeRecord] = []
        self.task_problems: list[TaskProblem] = []
        self.workers: dict[str, WorkerInfo] = {}
        self.labels: dict[int, EventLabel] = {}
        self.result: Any = None
        self.failure: FailureInfo | None = None
        self.status: RunStatus = "running"
        self.closed_at: datetime | None = None
        self.start: HistoryEvent | None = None

    def _label(self, event_id: int, step: str, text: str) -> None:
        self.labels[event_id] = EventLabel(step=step, text=text)

    # -- workers
    def _worker(self, identity: str, build_id: str = "", sdk: str | None = None) -> None:
        if not identity:
            return
        known = self.workers.get(identity, WorkerInfo(identity=identity))
        build_ids = known.build_ids + ([build_id] if build_id and build_id not in known.build_ids else [])
        self.workers[identity] = known.model_copy(update={"build_ids": build_ids, "sdk": sdk or known.sdk})

    # -- the pass over the events
    def build(self) -> _Builder:
        for event in self.events:
            self._event(event)
        return self

    def _event(self, event: HistoryEvent) -> None:
        eid, at, kind = event.event_id, _when(event), event.event_type
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            self.start = event
            self._label(eid, "the start of the run", "the run starts")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            attrs = event.workflow_task_started_event_attributes
            self._worker(attrs.identity, attrs.worker_version.build_id)
            self._label(eid, "a workflow task", f"a workflow task starts on worker {attrs.identity}")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            wtc = event.workflow_task_completed_event_attributes
            sdk = (
                f"{wtc.sdk_metadata.sdk_name} {wtc.sdk_metadata.sdk_version}"
                if wtc.sdk_metadata.sdk_name
                else None
            )
            build = wtc.worker_version.build_id or wtc.deployment_version.build_id
            self._worker(wtc.identity, build, sdk)
            self._label(eid, "a workflow task", "a workflow task completes (the code's decisions follow)")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
            self._label(eid, "a workflow task", "a workflow task is scheduled")
        elif kind in (
            EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED,
            EventType.EVENT_TYPE_WORKFLOW_TASK_TIMED_OUT,
        ):
            self._task_problem(event)
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            self._activity_scheduled(event)
        elif kind in _ACTIVITY_FOLLOW_UPS:
            self._activity_follow_up(event)
        elif kind in (
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
        ):
            self._update(event)
        elif kind in (
            EventType.EVENT_TYPE_TIMER_STARTED,
            EventType.EVENT_TYPE_TIMER_FIRED,
            EventType.EVENT_TYPE_TIMER_CANCELED,
        ):
            self._timer(event)
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
            sig = event.workflow_execution_signaled_event_attributes
            self.signals.append(
                SignalRecord(
                    event_id=eid,
                    at=at,
                    direction="received",
                    name=sig.signal_name,
                    identity=sig.identity or None,
                    status="received",
                    input=decode_payloads(sig.input),
                )
            )
            self._label(eid, f"signal {sig.signal_name}", f"signal {sig.signal_name} is received")
        elif kind in (
            EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
            EventType.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_SIGNALED,
            EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED,
        ):
            self._external_signal(event)
        elif kind in _CHILD_EVENTS:
            self._child(event)
        elif kind == EventType.EVENT_TYPE_MARKER_RECORDED:
            self._marker(event)
        elif kind == EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
            fields = event.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
            values = {name: decode_payload(fields[name]) for name in sorted(fields)}
            self.search_attributes.append(SearchAttributeRecord(event_id=eid, at=at, values=values))
            shown = ", ".join(f"{k}={v}" for k, v in values.items())
            self._label(eid, f"search attributes {shown}", f"the run sets search attributes {shown}")
        elif kind in _CLOSE_EVENTS:
            self._close(event)
        else:
            name = _event_name(event).lower().replace("_", " ")
            self._label(eid, name, name)

    def _task_problem(self, event: HistoryEvent) -> None:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            message = attrs.failure.message if attrs.HasField("failure") else ""
            problem = TaskProblem(
                event_id=event.event_id, at=_when(event), kind="workflow task failed", message=message
            )
        else:
            problem = TaskProblem(
                event_id=event.event_id,
                at=_when(event),
                kind="workflow task timed out",
                message="no worker completed the workflow task in time",
            )
        self.task_problems.append(problem)
        self._label(event.event_id, problem.kind, f"{problem.kind}: {problem.message}")

    def _activity_scheduled(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_scheduled_event_attributes
        summary = _summary(event)
        record = ActivityRecord(
            activity_id=attrs.activity_id,
            name=attrs.activity_type.name,
            summary=summary,
            scheduled_event_id=event.event_id,
            scheduled_at=_when(event),
            max_attempts=attrs.retry_policy.maximum_attempts or None
            if attrs.HasField("retry_policy")
            else None,
            input=decode_payloads(attrs.input),
        )
        self.activities[event.event_id] = record
        self._label(
            event.event_id,
            f"activity {_step_name(record)}",
            f"the run schedules activity {_step_name(record)}",
        )

    def _activity_follow_up(self, event: HistoryEvent) -> None:
        kind = event.event_type
        field = _ACTIVITY_FOLLOW_UPS[kind]
        attrs = getattr(event, field)
        scheduled = attrs.scheduled_event_id
        record = self.activities.get(scheduled)
        if record is None:
            return
        self.activity_events[event.event_id] = scheduled
        update: dict[str, Any] = {}
        at = _when(event)
        if kind == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            update = {
                "started_at": at,
                "status": "running",
                "attempts": attrs.attempt,
                "worker": attrs.identity or None,
                "build_id": attrs.worker_version.build_id or None,
                "retried_after": attrs.last_failure.message if attrs.HasField("last_failure") else None,
            }
            self._worker(attrs.identity, attrs.worker_version.build_id)
            label = "starts"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            result = decode_payloads(attrs.result)
            extract = HIGHLIGHTS.get(record.name)
            highlights = extract(record.input, result) if extract else []
            update = {"closed_at": at, "status": "completed", "result": result, "highlights": highlights}
            label = "completes"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            update = {
                "closed_at": at,
                "status": "failed",
                "failure": failure_info(attrs.failure),
                "retry_state": _retry_state(attrs.retry_state),
            }
            label = "fails"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            update = {
                "closed_at": at,
                "status": "timed-out",
                "failure": failure_info(attrs.failure),
                "retry_state": _retry_state(attrs.retry_state),
            }
            label = "times out"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED:
            update = {"closed_at": at, "status": "canceled"}
            label = "is canceled"
        else:
            label = "is asked to cancel"
        self.activities[scheduled] = record.model_copy(update=update)
        self._label(
            event.event_id, f"activity {_step_name(record)}", f"activity {_step_name(record)} {label}"
        )

    def _update(self, event: HistoryEvent) -> None:
        at = _when(event)
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            attrs = event.workflow_execution_update_accepted_event_attributes
            request = attrs.accepted_request
            args = decode_payloads(request.input.args)
            record = UpdateRecord(
                update_id=request.meta.update_id,
                name=request.input.name,
                accepted_event_id=event.event_id,
                accepted_at=at,
                client_identity=request.meta.identity or None,
                by=_str(_get(args, "approver")) or _str(_get(args, "operator")),
                channel=_str(_get(args, "channel")),
                reason=_str(_get(args, "reason")),
                gate=_str(_get(args, "gate")),
                decision=_str(_get(args, "decision")),
                args=args,
            )
            self.updates[record.update_id] = record
            who = record.by or record.client_identity
            self._label(
                event.event_id,
                f"Update {record.name} by {who}",
                f"the run accepts Update {record.name} by {who}",
            )
            return
        done = event.workflow_execution_update_completed_event_attributes
        known = self.updates.get(done.meta.update_id)
        if known is None:
            return
        if done.outcome.HasField("failure"):
            update: dict[str, Any] = {
                "completed_at": at,
                "status": "failed",
                "message": done.outcome.failure.message,
            }
        else:
            value = decode_payloads(done.outcome.success)
            message = _str(_get(value, "message")) or (value if isinstance(value, str) else None)
            update = {"completed_at": at, "status": "completed", "message": message}
        self.updates[known.update_id] = known.model_copy(update=update)
        self._label(event.event_id, f"Update {known.name} by {known.by}", f"Update {known.name} completes")

    def _timer(self, event: HistoryEvent) -> None:
        at = _when(event)
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            attrs = event.timer_started_event_attributes
            record = TimerRecord(
                timer_id=attrs.timer_id,
                started_event_id=event.event_id,
                started_at=at,
                seconds=attrs.start_to_fire_timeout.ToTimedelta().total_seconds(),
                summary=_summary(event),
            )
            self.timers[record.timer_id] = record
            self._label(
                event.event_id,
                f"timer {_timer_name(record)}",
                f"the run starts a timer {_timer_name(record)}",
            )
            return
        fired = event.event_type == EventType.EVENT_TYPE_TIMER_FIRED
        timer_id = (
            event.timer_fired_event_attributes.timer_id
            if fired
            else event.timer_canceled_event_attributes.timer_id
        )
        known = self.timers.get(timer_id)
        if known is None:
            return
        status: Literal["fired", "canceled"] = "fired" if fired else "canceled"
        self.timers[timer_id] = known.model_copy(update={"status": status, "ended_at": at})
        self._label(event.event_id, f"timer {_timer_name(known)}", f"timer {_timer_name(known)} is {status}")

    def _external_signal(self, event: HistoryEvent) -> None:
        at = _when(event)
        if event.event_type == EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED:
            attrs = event.signal_external_workflow_execution_initiated_event_attributes
            self.signals.append(
                SignalRecord(
                    event_id=event.event_id,
                    at=at,
                    direction="sent",
                    name=attrs.signal_name,
                    workflow_id=attrs.workflow_execution.workflow_id,
                    status="sent",
                    input=decode_payloads(attrs.input),
                )
            )
            target = attrs.workflow_execution.workflow_id
            self._label(
                event.event_id,
                f"signal {attrs.signal_name} to {target}",
                f"the run sends signal {attrs.signal_name} to {target}",
            )
            return
        ok = event.event_type == EventType.EVENT_TYPE_EXTERNAL_WORKFLOW_EXECUTION_SIGNALED
        initiated = (
            event.external_workflow_execution_signaled_event_attributes.initiated_event_id
            if ok
            else event.signal_external_workflow_execution_failed_event_attributes.initiated_event_id
        )
        for index, signal in enumerate(self.signals):
            if signal.event_id == initiated:
                status = "delivered" if ok else "failed: the target workflow was not found"
                self.signals[index] = signal.model_copy(update={"status": status})
                self._label(
                    event.event_id,
                    f"signal {signal.name} to {signal.workflow_id}",
                    f"signal {signal.name} to {signal.workflow_id}: {status}",
                )

    def _child(self, event: HistoryEvent) -> None:
        at = _when(event)
        if event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            attrs = event.start_child_workflow_execution_initiated_event_attributes
            policy = attrs.parent_close_policy
            record = ChildRecord(
                event_id=event.event_id,
                at=at,
                workflow_type=attrs.workflow_type.name,
                workflow_id=attrs.workflow_id,
                parent_close_policy=(
                    _enum_name(attrs.DESCRIPTOR.fields_by_name["parent_close_policy"], policy)
                    if policy
                    else None
                ),
            )
            self.children[event.event_id] = record
            child = f"child workflow {record.workflow_type} {record.workflow_id}"
            self._label(event.event_id, child, f"the run starts {child}")
            return
        field = _CHILD_EVENTS[event.event_type]
        attrs = getattr(event, field)
        initiated = attrs.initiated_event_id
        known = self.children.get(initiated)
        if known is None:
            return
        status = _event_name(event).lower().replace("_", " ").replace("child workflow execution ", "")
        update: dict[str, Any] = {"status": status}
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            update["run_id"] = attrs.workflow_execution.run_id
        self.children[initiated] = known.model_copy(update=update)
        self._label(
            event.event_id,
            f"child workflow {known.workflow_id}",
            f"child workflow {known.workflow_id}: {status}",
        )

    def _marker(self, event: HistoryEvent) -> None:
        attrs = event.marker_recorded_event_attributes
        details = {name: decode_payloads(attrs.details[name]) for name in sorted(attrs.details)}
        data = details.get("patch-data") or details.get("patch_data")  # the key Core writes, and older SDKs
        patch = _str(_get(data, "id"))
        if attrs.marker_name == "core_patch" and patch:
            detail = f"workflow.patched({patch!r})" + (" (deprecated)" if _get(data, "deprecated") else "")
        else:
            detail = ", ".join(f"{k}={v}" for k, v in details.items())
        self.markers.append(
            MarkerRecord(event_id=event.event_id, at=_when(event), name=attrs.marker_name, detail=detail)
        )
        marker = f"version marker {detail}" if patch else f"marker {attrs.marker_name}"
        self._label(event.event_id, marker, f"the run records {marker}")

    def _close(self, event: HistoryEvent) -> None:
        kind = event.event_type
        self.closed_at = _when(event)
        if kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED:
            self.status = "completed"
            self.result = decode_payloads(event.workflow_execution_completed_event_attributes.result)
            self._label(event.event_id, "the end of the run", "the run completes")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED:
            self.status = "failed"
            self.failure = failure_info(event.workflow_execution_failed_event_attributes.failure)
            self._label(event.event_id, "the end of the run", "the run fails")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED:
            attrs = event.workflow_execution_terminated_event_attributes
            self.status = "terminated"
            by = f" by {attrs.identity}" if attrs.identity else ""
            self.failure = FailureInfo(message=f"terminated{by}: {attrs.reason or 'no reason given'}")
            self._label(event.event_id, "the end of the run", "the run is terminated")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT:
            self.status = "timed-out"
            self.failure = FailureInfo(message="the run exceeded its execution or run timeout")
            self._label(event.event_id, "the end of the run", "the run times out")
        elif kind == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED:
            self.status = "canceled"
            self.failure = FailureInfo(message="the run was canceled")
            self._label(event.event_id, "the end of the run", "the run is canceled")
        else:
            self.status = "continued-as-new"
            self._label(event.event_id, "the end of the run", "the run continues as new")

    # -- assembling
    def timeline(self) -> Timeline:
        start = self.start
        if start is None:
            raise ValueError(
                "the history has no WorkflowExecutionStarted event: it is not a workflow history"
            )
        attrs = start.workflow_execution_started_event_attributes
        raw_input = decode_payloads(attrs.input)
        activities = sorted(self.activities.values(), key=lambda a: a.scheduled_event_id)
        objectives = objectives_of(activities)
        outcome = outcome_of(self.result, objectives)
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
            a.name in ("approve", "reject", "accept_data_loss", "decide") for a in self.updates.values()
        ) or (attrs.workflow_type.name == "Failover"):
            notes.append(VALIDATOR_NOTE)
        if self.status == "running":
            notes.append("the run was still open when this history was read: the record is incomplete")
        timeline = Timeline(
            workflow_type=attrs.workflow_type.name,
            workflow_id=attrs.workflow_id or self.history.workflow_id,
            run_id=self.history.run_id,
            task_queue=attrs.task_queue.name or None,
            parent_workflow_id=attrs.parent_workflow_execution.workflow_id or None,
            status=self.status,
            started_at=_when(start),
            closed_at=self.closed_at,
            history_events=len(self.events),
            started_by=attrs.identity or None,
            static_summary=_summary(start),
            static_details=_details(start),
            request=request,
            objectives=objectives,
            outcome=outcome,
            failure=self.failure,
            workers=sorted(self.workers.values(), key=lambda w: w.identity),
            activities=activities,
            updates=sorted(self.updates.values(), key=lambda u: u.accepted_event_id),
            timers=sorted(self.timers.values(), key=lambda t: t.started_event_id),
            signals=self.signals,
            children=sorted(self.children.values(), key=lambda c: c.event_id),
            markers=self.markers,
            search_attributes=self.search_attributes,
            task_problems=self.task_problems,
            evidence=evidence_of(activities),
            entries=[],
            notes=notes,
        )
        return timeline.model_copy(update={"entries": _entries(timeline)})


_ACTIVITY_FOLLOW_UPS: dict[int, str] = {
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "activity_task_started_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "activity_task_completed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: "activity_task_failed_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: "activity_task_timed_out_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED: "activity_task_canceled_event_attributes",
    EventType.EVENT_TYPE_ACTIVITY_TASK_CANCEL_REQUESTED: "activity_task_cancel_requested_event_attributes",
}
_CHILD_EVENTS: dict[int, str] = {
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED: (
        "start_child_workflow_execution_initiated_event_attributes"
    ),
    EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_FAILED: (
        "start_child_workflow_execution_failed_event_attributes"
    ),
    **{
        getattr(EventType, f"EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_{kind}"): (
            f"child_workflow_execution_{kind.lower()}_event_attributes"
        )
        for kind in ("STARTED", "COMPLETED", "FAILED", "CANCELED", "TIMED_OUT", "TERMINATED")
    },
}
_CLOSE_EVENTS = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    }
)


def _enum_name(field: Any, value: int) -> str:
    return str(field.enum_type.values_by_number[value].name).removeprefix("PARENT_CLOSE_POLICY_").lower()


def _step_name(record: ActivityRecord) -> str:
    return f"{record.name} ({record.summary})" if record.summary else record.name


def _timer_name(record: TimerRecord) -> str:
    return f"of {record.seconds:g}s" + (f" ({record.summary})" if record.summary else "")


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
        took = f" in {_span(a.duration)}" if a.duration is not None else ""
        attempts = f", {a.attempts} attempts" if a.attempts > 1 else ""
        status = {"completed": "done", "running": "running", "scheduled": "waiting for a worker"}.get(
            a.status, a.status
        )
        text = f"activity {_step_name(a)}: {status}{took}{attempts}"
        if a.failure is not None:
            text += f": {a.failure.message}"
        entries.append(Entry(event_id=a.scheduled_event_id, at=a.scheduled_at, kind="activity", text=text))
    for u in t.updates:
        what = u.decision or u.gate or ""
        text = f"Update {u.name}{f' {what}' if what else ''}"
        text += (f" by {u.by}" if u.by else "") + (f" via {u.channel}" if u.channel else "")
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
                text=f"timer {_timer_name(tm)}: {tm.status}{ended}",
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


def _span(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


# ----------------------------------------------------------------------------------------- public API
def build_timeline(history: WorkflowHistory) -> Timeline:
    """The audit timeline of the run whose history this is. Pure: no server, no clock."""
    return _Builder(history).build().timeline()


def event_labels(history: WorkflowHistory) -> dict[int, EventLabel]:
    """Every event id in plain words: its step (``activity db_fence (fence region-a (planned))``) and what
    happened (``the run schedules activity ...``)."""
    return _Builder(history).build().labels


def read_history_file(path: Path, workflow_id: str | None = None) -> WorkflowHistory:
    """A history as ``WorkflowHistory.to_json()`` or ``temporal workflow show --output json`` writes it.

    Neither format names the workflow id, which matters where a workflow derives ids from its own (a
    drill's children): give it, or keep an ``index.json`` (file name → workflow id) beside the files.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable JSON history ({err})") from err
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not events or not isinstance(events[0], dict):
        raise ValueError(f"{path}: no history events (expected {{'events': [...]}})")
    workflow_id = (
        workflow_id
        or events[0].get("workflowExecutionStartedEventAttributes", {}).get("workflowId")
        or _indexed_id(path)
        or path.stem
    )
    try:
        return WorkflowHistory.from_json(workflow_id, data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path}: not a Temporal history: {err}") from err


def format_span(value: timedelta) -> str:
    return _span(value)


def _indexed_id(path: Path) -> str | None:
    index = path.parent / "index.json"
    try:
        ids = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = ids.get(path.name) if isinstance(ids, dict) else None
    return found if isinstance(found, str) else None
