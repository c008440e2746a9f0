"""SIEM export: one JSON event per line (NDJSON), a flat, versioned schema a SIEM can index without drflow.

Built from the redacted timeline, so it holds exactly what the report holds and no secret. Each event:
``schema_version``, ``event_id`` (stable: ``<workflow id>/<run id>/<history event id>``, so re-exporting
the same run deduplicates), ``time``, ``actor``, ``action``, ``resource``, ``outcome`` and ``run``; an
approval or operator decision adds ``approval`` (person, identity, key fingerprint, gateway, channel).
``docs/audit-event.schema.json`` is ``event_schema()``; a test validates a real export against it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final, Literal

from pydantic import Field

from runbooks.model import StrictModel
from workers.audit.model import ActivityRecord, Timeline, UpdateRecord
from workers.audit.render import redact_timeline

SCHEMA_VERSION: Final = "1"
ANSWERS: Final = ("approve", "reject", "accept_data_loss", "decide")
Outcome = Literal["success", "failure", "unknown"]
ACTION_PATTERN: Final = r"^(run\.(start|close)|(activity|update)\.[A-Za-z0-9_]+|signal\.[A-Za-z0-9_.-]+)$"


class Actor(StrictModel):
    type: Literal["person", "client", "worker"] = Field(
        description="person: named in the run; client: the Temporal client identity; worker: drflow itself"
    )
    id: str | None = Field(description="the person's name, the client identity, or the worker identity")


class Resource(StrictModel):
    type: Literal["service", "workflow"]
    id: str = Field(description="the service (runbook name), else the workflow id")
    target: str | None = Field(default=None, description="the region failed over to, when there is one")


class Run(StrictModel):
    workflow_id: str
    run_id: str
    workflow_type: str
    status: str = Field(description="the run's final status: completed, failed, ...")


class Approval(StrictModel):
    subject: str | None = Field(description="the gate, or the failed step a decision answers")
    decision: str | None
    person: str | None = Field(description="the person of the people file the answer counted for")
    identity: str | None = Field(description="how it was proven: ssh-key, slack-gateway or unverified")
    key_fingerprint: str | None = Field(description="SHA256:... of the key that signed it")
    gateway: str | None = Field(description="the Slack gateway that attested a click")
    channel: str | None = Field(description="cli, ui, slack or api")
    reason: str | None


class AuditEvent(StrictModel):
    """One line of ``drflow audit export --format ndjson``."""

    schema_version: Literal["1"] = SCHEMA_VERSION
    event_id: str = Field(description="<workflow id>/<run id>/<history event id>: stable across exports")
    time: datetime
    actor: Actor
    action: str = Field(
        pattern=ACTION_PATTERN,
        description="run.start, run.close, activity.<name>, update.<name> (approve, reject, ...), signal.<n>",
    )
    resource: Resource
    outcome: Outcome
    run: Run
    history_event_id: int = Field(ge=1)
    detail: str | None = Field(default=None, description="what happened, in words (redacted)")
    approval: Approval | None = None


def event_schema() -> dict[str, Any]:
    """The JSON Schema of one event (``docs/audit-event.schema.json``)."""
    schema = AuditEvent.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "drflow-audit-event/1",
        **schema,
    }


ACTIVITY_OUTCOMES: Final[dict[str, Outcome]] = {
    "completed": "success",
    "failed": "failure",
    "timed_out": "failure",
    "canceled": "failure",
}
UPDATE_OUTCOMES: Final[dict[str, Outcome]] = {"completed": "success", "failed": "failure"}


def _activity_outcome(activity: ActivityRecord) -> Outcome:
    return ACTIVITY_OUTCOMES.get(activity.status, "unknown")


def _update_outcome(update: UpdateRecord) -> Outcome:
    return UPDATE_OUTCOMES.get(update.status, "unknown")


def audit_events(timeline: Timeline) -> list[AuditEvent]:
    """The run's events in history order: its start, every activity, Update and signal, its close."""
    t = redact_timeline(timeline)
    run = Run(workflow_id=t.workflow_id, run_id=t.run_id, workflow_type=t.workflow_type, status=t.status)
    resource = (
        Resource(type="service", id=t.request.service, target=t.request.target)
        if t.request.service
        else Resource(type="workflow", id=t.workflow_id)
    )

    def event(event_id: int, **fields: Any) -> AuditEvent:
        return AuditEvent(
            event_id=f"{t.workflow_id}/{t.run_id}/{event_id}",
            history_event_id=event_id,
            run=run,
            resource=resource,
            **fields,
        )

    requester = (
        Actor(type="person", id=t.request.requested_by)
        if t.request.requested_by
        else Actor(type="client", id=t.started_by)
    )
    events = [
        event(
            1,
            time=t.started_at,
            actor=requester,
            action="run.start",
            outcome="success",
            detail=t.request.reason,
        ),
    ]
    for a in t.activities:
        events.append(
            event(
                a.scheduled_event_id,
                time=a.closed_at or a.scheduled_at,
                actor=Actor(type="worker", id=a.worker),
                action=f"activity.{a.name}",
                outcome=_activity_outcome(a),
                detail="; ".join(a.highlights) or a.summary,
            )
        )
    for u in t.updates:
        person = u.person or u.by
        approval = None
        if u.name in ANSWERS:
            approval = Approval(
                subject=u.gate,
                decision=u.decision,
                person=u.person or u.by,
                identity=u.identity,
                key_fingerprint=u.key,
                gateway=u.gateway,
                channel=u.channel,
                reason=u.reason,
            )
        actor = Actor(type="person", id=person) if person else Actor(type="client", id=u.client_identity)
        events.append(
            event(
                u.accepted_event_id,
                time=u.completed_at or u.accepted_at,
                actor=actor,
                action=f"update.{u.name}",
                outcome=_update_outcome(u),
                detail=u.message,
                approval=approval,
            )
        )
    for s in t.signals:
        if s.direction == "received":
            events.append(
                event(
                    s.event_id,
                    time=s.at,
                    actor=Actor(type="client", id=s.identity),
                    action=f"signal.{s.name}",
                    outcome="success",
                    detail=s.status or None,
                )
            )
    if t.closed_at is not None:
        closed: Outcome = "success" if t.status == "completed" else "failure"
        words = t.outcome.outcome or t.status
        events.append(
            event(
                t.history_events,
                time=t.closed_at,
                actor=Actor(type="worker", id=None),
                action="run.close",
                outcome=closed,
                detail=words if t.failure is None else f"{words}: {t.failure.message}",
            )
        )
    return sorted(events, key=lambda e: e.history_event_id)


def render_ndjson(timeline: Timeline) -> str:
    return "".join(
        json.dumps(e.model_dump(mode="json"), ensure_ascii=False, sort_keys=True) + "\n"
        for e in audit_events(timeline)
    )
