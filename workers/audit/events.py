"""One pass over a workflow history's events: the records they make (activities, Updates, timers, signals,
children, markers, search attributes, workers) and every event's label in plain words.

The pass only collects; ``workers.audit.timeline`` assembles the records into the run's ``Timeline``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from workers.audit.evidence import HIGHLIGHTS
from workers.audit.evidence import as_str as _str
from workers.audit.evidence import get_path as _get
from workers.audit.formatting import step_name, timer_name
from workers.audit.history import (
    decode_payload,
    decode_payloads,
    enum_name,
    event_name,
    event_summary,
    event_time,
    failure_info,
    retry_state,
)
from workers.audit.model import (
    ActivityRecord,
    ChildRecord,
    EventLabel,
    FailureInfo,
    MarkerRecord,
    RunStatus,
    SearchAttributeRecord,
    SignalRecord,
    TaskProblem,
    TimerRecord,
    UpdateRecord,
    WorkerInfo,
)


class EventPass:
    """Records and labels collected in one pass over the events; ``build`` runs the pass. Pure."""

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
    def build(self) -> EventPass:
        for event in self.events:
            self._event(event)
        return self

    def _event(self, event: HistoryEvent) -> None:
        eid, at, kind = event.event_id, event_time(event), event.event_type
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
            name = event_name(event).lower().replace("_", " ")
            self._label(eid, name, name)

    def _task_problem(self, event: HistoryEvent) -> None:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
            attrs = event.workflow_task_failed_event_attributes
            message = attrs.failure.message if attrs.HasField("failure") else ""
            problem = TaskProblem(
                event_id=event.event_id, at=event_time(event), kind="workflow task failed", message=message
            )
        else:
            problem = TaskProblem(
                event_id=event.event_id,
                at=event_time(event),
                kind="workflow task timed out",
                message="no worker completed the workflow task in time",
            )
        self.task_problems.append(problem)
        self._label(event.event_id, problem.kind, f"{problem.kind}: {problem.message}")

    def _activity_scheduled(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_scheduled_event_attributes
        summary = event_summary(event)
        record = ActivityRecord(
            activity_id=attrs.activity_id,
            name=attrs.activity_type.name,
            summary=summary,
            scheduled_event_id=event.event_id,
            scheduled_at=event_time(event),
            max_attempts=attrs.retry_policy.maximum_attempts or None
            if attrs.HasField("retry_policy")
            else None,
            input=decode_payloads(attrs.input),
        )
        self.activities[event.event_id] = record
        self._label(
            event.event_id,
            f"activity {step_name(record)}",
            f"the run schedules activity {step_name(record)}",
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
        at = event_time(event)
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
                "retry_state": retry_state(attrs.retry_state),
            }
            label = "fails"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT:
            update = {
                "closed_at": at,
                "status": "timed-out",
                "failure": failure_info(attrs.failure),
                "retry_state": retry_state(attrs.retry_state),
            }
            label = "times out"
        elif kind == EventType.EVENT_TYPE_ACTIVITY_TASK_CANCELED:
            update = {"closed_at": at, "status": "canceled"}
            label = "is canceled"
        else:
            label = "is asked to cancel"
        self.activities[scheduled] = record.model_copy(update=update)
        self._label(event.event_id, f"activity {step_name(record)}", f"activity {step_name(record)} {label}")

    def _update(self, event: HistoryEvent) -> None:
        at = event_time(event)
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
        at = event_time(event)
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            attrs = event.timer_started_event_attributes
            record = TimerRecord(
                timer_id=attrs.timer_id,
                started_event_id=event.event_id,
                started_at=at,
                seconds=attrs.start_to_fire_timeout.ToTimedelta().total_seconds(),
                summary=event_summary(event),
            )
            self.timers[record.timer_id] = record
            self._label(
                event.event_id,
                f"timer {timer_name(record)}",
                f"the run starts a timer {timer_name(record)}",
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
        self._label(event.event_id, f"timer {timer_name(known)}", f"timer {timer_name(known)} is {status}")

    def _external_signal(self, event: HistoryEvent) -> None:
        at = event_time(event)
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
        at = event_time(event)
        if event.event_type == EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
            attrs = event.start_child_workflow_execution_initiated_event_attributes
            policy = attrs.parent_close_policy
            record = ChildRecord(
                event_id=event.event_id,
                at=at,
                workflow_type=attrs.workflow_type.name,
                workflow_id=attrs.workflow_id,
                parent_close_policy=(
                    enum_name(attrs.DESCRIPTOR.fields_by_name["parent_close_policy"], policy)
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
        status = event_name(event).lower().replace("_", " ").replace("child workflow execution ", "")
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
            MarkerRecord(event_id=event.event_id, at=event_time(event), name=attrs.marker_name, detail=detail)
        )
        marker = f"version marker {detail}" if patch else f"marker {attrs.marker_name}"
        self._label(event.event_id, marker, f"the run records {marker}")

    def _close(self, event: HistoryEvent) -> None:
        kind = event.event_type
        self.closed_at = event_time(event)
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
