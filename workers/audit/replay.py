"""Replay a recorded history against today's workflow code, and say in plain words where it decides otherwise.

Temporal's ``Replayer`` re-runs the workflow code over the history; a nondeterminism error means the code
now issues different commands. Temporal's own sentence names the mismatch but not always the event (an
activity type mismatch names no event id), so the first diverging event is found by replaying ever longer
prefixes of the history, then mapped to the step it belongs to. An interceptor records the activities the
code schedules, which says what the code does now at that point.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.worker import (
    Interceptor,
    Replayer,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from activities.codec import converter_from_env
from runbooks.model import StrictModel
from workers.audit.timeline import event_labels
from workflows.runner import workflow_runner

_EVENT = re.compile(r"HistoryEvent\(id: (\d+), (\w+)")
_MACHINE = re.compile(r"Nondeterminism error: (.+?) machine does not handle this event")
_ACTIVITY_TYPE = re.compile(
    r"Activity type of scheduled event '([^']*)' does not match activity type of activity command '([^']*)'"
)
_ACTIVITY_ID = re.compile(
    r"Activity id of scheduled event '([^']*)' does not match activity id of activity command '([^']*)'"
)
_NO_COMMAND = re.compile(r"No command scheduled for event")
_MESSAGE = re.compile(r'message: "((?:[^"\\]|\\.)*)"')

# What a Temporal command machine name means the code now does.
_COMMANDS = {
    "Activity": "schedules an activity",
    "Local activity": "runs a local activity",
    "Timer": "starts a timer (a sleep or a wait with a timeout)",
    "Complete workflow": "ends the run (returns its result)",
    "Fail workflow": "fails the run",
    "Cancel workflow": "cancels the run",
    "Continue as new workflow": "continues as new",
    "Upsert search attributes": "sets search attributes",
    "Modify workflow properties": "changes workflow properties (memo)",
    "Child workflow": "starts a child workflow",
    "Signal external WF": "signals another workflow",
    "Cancel external WF": "asks another workflow to cancel",
    "Patch": "records a version marker (workflow.patched)",
    "Update": "handles an Update",
}


class ReplayVerdict(StrictModel):
    reproduced: bool
    workflow_type: str
    workflow_id: str
    run_id: str
    history_events: int
    event_id: int | None = None
    event_type: str | None = None
    step: str | None = None
    history_says: str | None = None
    code_does: str | None = None
    temporal_error: str | None = None

    def lines(self) -> list[str]:
        what = f"{self.workflow_type} {self.workflow_id} (run {self.run_id}, {self.history_events} events)"
        if self.reproduced:
            return [f"reproduced: today's code makes the recorded decisions of {what}"]
        lines = [f"diverged: today's code decides differently for {what}"]
        if self.event_id is not None:
            lines.append(
                f"  first divergence at event {self.event_id} ({self.event_type}), step: {self.step}"
            )
        if self.history_says:
            lines.append(f"  the history says: {self.history_says}")
        if self.code_does:
            lines.append(f"  the code now:     {self.code_does}")
        lines.append(
            "  a run still open at this point would fail its next workflow task; guard the change with "
            "workflow.patched() (docs/versioning.md)"
        )
        if self.temporal_error:
            lines.append(f"  Temporal: {self.temporal_error}")
        return lines


# ------------------------------------------------------------------------------------ the recorder
@dataclass
class _Scheduled:
    activities: list[tuple[str, str | None]] = field(default_factory=list)


class _Recorder(Interceptor):
    """Records, in order, the activities the replayed code schedules (name and summary)."""

    def __init__(self) -> None:
        self.scheduled = _Scheduled()

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor]:
        scheduled = self.scheduled

        class Outbound(WorkflowOutboundInterceptor):
            def start_activity(self, input: StartActivityInput) -> workflow.ActivityHandle[Any]:
                scheduled.activities.append((input.activity, input.summary))
                return super().start_activity(input)

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                super().init(Outbound(outbound))

        return Inbound


# -------------------------------------------------------------------------------------- replaying
_QUIET: Runtime | None = None


def _runtime() -> Runtime:
    """A runtime that keeps the core's own "failing workflow task" warnings off the operator's terminal."""
    global _QUIET
    if _QUIET is None:
        _QUIET = Runtime(
            telemetry=TelemetryConfig(
                logging=LoggingConfig(filter=TelemetryFilter(core_level="ERROR", other_level="ERROR"))
            )
        )
    return _QUIET


async def _replay(
    history: WorkflowHistory, workflows: Sequence[type]
) -> tuple[BaseException | None, _Recorder]:
    recorder = _Recorder()
    replayer = Replayer(
        workflows=list(workflows),
        data_converter=converter_from_env(),  # an encrypted history replays with the same keys
        interceptors=[recorder],
        runtime=_runtime(),
        workflow_runner=workflow_runner(),
    )
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return result.replay_failure, recorder


def _prefix(history: WorkflowHistory, count: int) -> WorkflowHistory:
    return WorkflowHistory(history.workflow_id, list(history.events)[:count])


async def _first_failing_prefix(history: WorkflowHistory, workflows: Sequence[type]) -> int:
    """The length of the shortest history prefix that no longer replays: its last event diverges."""
    low, high = 1, len(history.events)  # the whole history fails; find the smallest failing length
    while low < high:
        middle = (low + high) // 2
        failure, _ = await _replay(_prefix(history, middle), workflows)
        if failure is None:
            low = middle + 1
        else:
            high = middle
    return low


def _core_sentence(error: BaseException) -> str:
    text = str(error)
    found = _MESSAGE.search(text)
    sentence = found.group(1) if found else text
    return sentence.replace('\\"', '"')


async def replay_history(history: WorkflowHistory, workflows: Sequence[type] | None = None) -> ReplayVerdict:
    """Replay ``history`` against ``workflows`` (default: every workflow the drflow worker runs)."""
    if workflows is None:
        from workers.worker import WORKFLOWS

        workflows = WORKFLOWS
    events = list(history.events)
    if not events or events[0].event_type != EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
        raise ValueError(
            "the history does not start with WorkflowExecutionStarted: it is not a workflow history"
        )
    started = events[0].workflow_execution_started_event_attributes
    verdict = ReplayVerdict(
        reproduced=True,
        workflow_type=started.workflow_type.name,
        workflow_id=started.workflow_id or history.workflow_id,
        run_id=history.run_id,
        history_events=len(events),
    )
    failure, recorder = await _replay(history, workflows)
    if failure is None:
        return verdict
    return verdict.model_copy(update=await _explain(history, workflows, failure, recorder))


async def _explain(
    history: WorkflowHistory, workflows: Sequence[type], failure: BaseException, recorder: _Recorder
) -> dict[str, Any]:
    sentence = _core_sentence(failure)
    events = list(history.events)
    labels = event_labels(history)
    named = _EVENT.search(sentence)
    if named:
        event_id = int(named.group(1))
    else:
        event_id = await _first_failing_prefix(history, workflows)
        _, recorder = await _replay(_prefix(history, event_id), workflows)
    event = events[event_id - 1] if 0 < event_id <= len(events) else None
    event_type = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_") if event is not None else None
    label = labels.get(event_id)
    step = label.step if label else "an event the code does not expect"
    history_says = label.text if label else "the history ends here"
    code_does = _what_the_code_does(sentence, events, event_id, recorder)
    if "Nondeterminism" not in sentence and not named:
        code_does = f"fails while replaying: {sentence}"
    return {
        "reproduced": False,
        "event_id": event_id,
        "event_type": event_type,
        "step": step,
        "history_says": history_says,
        "code_does": code_does,
        "temporal_error": sentence,
    }


def _what_the_code_does(sentence: str, events: list[Any], event_id: int, recorder: _Recorder) -> str:
    before = sum(
        1 for e in events[: event_id - 1] if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    )
    code_activities = recorder.scheduled.activities

    def activity_here() -> str:
        if before < len(code_activities):
            name, summary = code_activities[before]
            return f"activity {name}" + (f" ({summary})" if summary else "")
        return "an activity"

    if match := _ACTIVITY_TYPE.search(sentence):
        return f"schedules {activity_here()} instead of {match.group(1)}"
    if _ACTIVITY_ID.search(sentence):
        return f"schedules its activities in a different order: {activity_here()} comes here"
    if _NO_COMMAND.search(sentence):
        return "issues no command here: it skips this step, or ends or waits before reaching it"
    if match := _MACHINE.search(sentence):
        machine = match.group(1)
        does = _COMMANDS.get(machine, f"issues a {machine} command")
        if machine == "Activity":
            return f"schedules {activity_here()} where the history has no activity"
        return f"{does} here instead"
    return f"issues different commands ({sentence})"
