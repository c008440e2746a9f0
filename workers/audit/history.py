"""Reading a recorded history: the JSON files it is kept in, and its events' payloads as plain data.

Payloads are decoded as plain JSON, never validated against today's models: a history recorded weeks ago by
an older drflow must still render after the models have moved on.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType, RetryState
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import PayloadConverter

from workers.audit.model import FailureInfo

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


def event_summary(event: HistoryEvent) -> str | None:
    """The summary the workflow gave this start, activity or timer (its user metadata), if any."""
    if not event.HasField("user_metadata") or not event.user_metadata.HasField("summary"):
        return None
    value = decode_payload(event.user_metadata.summary)
    return value if isinstance(value, str) else None


def event_details(event: HistoryEvent) -> str | None:
    """The details the workflow gave this start (its user metadata), if any."""
    if not event.HasField("user_metadata") or not event.user_metadata.HasField("details"):
        return None
    value = decode_payload(event.user_metadata.details)
    return value if isinstance(value, str) else None


def failure_info(failure: Failure) -> FailureInfo:
    """A failure and the messages of its chain of causes, as the audit shows them."""
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


def event_time(event: HistoryEvent) -> datetime:
    """When the server recorded the event, in UTC."""
    return event.event_time.ToDatetime(tzinfo=UTC)


def retry_state(state: int) -> str | None:
    """A retry state in words (``maximum attempts reached``); None when the event carries none."""
    if not state:
        return None
    return RetryState.Name(state).removeprefix("RETRY_STATE_").lower().replace("_", " ")  # type: ignore[arg-type]


def event_name(event: HistoryEvent) -> str:
    """The event type without its prefix (``ACTIVITY_TASK_STARTED``)."""
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")


def enum_name(field: Any, value: int) -> str:
    """A parent close policy in words, from the enum of the proto field that holds it."""
    return str(field.enum_type.values_by_number[value].name).removeprefix("PARENT_CLOSE_POLICY_").lower()


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


def _indexed_id(path: Path) -> str | None:
    index = path.parent / "index.json"
    try:
        ids = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = ids.get(path.name) if isinstance(ids, dict) else None
    return found if isinstance(found, str) else None
