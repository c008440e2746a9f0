"""What the workflow passes to the Slack activities and gets back: typed facts, never Block Kit.

These shapes are recorded in histories (and are ``extra="forbid"``): a field renamed or removed here breaks
the replay of every run that used it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from runbooks.durations import Duration
from runbooks.model import Gate, StrictModel, drop_unset

Decision = Literal["approved", "rejected", "data-loss-accepted", "skipped-in-emergency", "expired"]
StepDecision = Literal["retry", "skip", "abort", "expired"]


class Fact(StrictModel):
    """One labelled part of a gate message; ``code`` renders the text as a code block (a DNS diff)."""

    label: str
    text: str
    code: bool = False


class GateFacts(StrictModel):
    """What an approver needs to decide, as plain text; rendering (and escaping) happens here."""

    service: str
    kind: str
    workflow_id: str
    run_id: str
    gate: Gate
    title: str
    reason: str
    requested_by: str | None
    requested_by_slack: str | None = Field(
        default=None, description="the requester's Slack user id, if known"
    )
    facts: list[Fact] = Field(default_factory=list)
    plan_checksum: str | None = None


class Approvers(StrictModel):
    user_ids: list[str] = Field(default_factory=list)
    names: dict[str, str] = Field(default_factory=dict, description="display names by Slack user id")
    usergroup: str | None = None


class GateStatus(StrictModel):
    decision: Decision
    by: str | None
    channel: str | None
    at: datetime
    reason: str = ""
    timeout: Duration | None = None
    person: str | None = Field(default=None, description="the person of the people file who answered")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "person")


class GateVotes(StrictModel):
    """A quorum gate's approvals so far (people, in order) and, while it is open, what is still needed."""

    approved_by: list[str]
    min_approvals: int
    missing: list[str] = Field(default_factory=list)


class Escalation(StrictModel):
    after: Duration
    mention: list[str] = Field(description="Slack mentions: <!subteam^S…> or <@U…>")


class GateMessageRequest(StrictModel):
    channel: str
    facts: GateFacts
    approvers: Approvers
    status: GateStatus | None = None
    escalation: Escalation | None = None
    messages: list[str] = Field(default_factory=list, description="ts of the messages to edit in place")
    votes: GateVotes | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        """Without votes, the same payload as before quorum (an older worker reads it)."""
        return drop_unset(handler(self), "votes")


class DecisionFacts(StrictModel):
    """A failed step waiting for an operator: what failed, and whether it may be skipped."""

    service: str
    kind: str
    workflow_id: str
    run_id: str
    title: str
    step: str
    error: str
    attempts: int = 1
    skippable: bool = False


class DecisionStatus(StrictModel):
    decision: StepDecision
    by: str | None
    channel: str | None
    at: datetime
    reason: str = ""
    timeout: Duration | None = None
    person: str | None = Field(default=None, description="the person of the people file who decided")

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        return drop_unset(handler(self), "person")


class DecisionMessageRequest(StrictModel):
    channel: str
    facts: DecisionFacts
    approvers: Approvers
    status: DecisionStatus | None = None
    timeout: Duration | None = Field(default=None, description="no decision within it aborts the run")
    messages: list[str] = Field(default_factory=list, description="ts of the messages to edit in place")


class PostedMessage(StrictModel):
    channel: str
    ts: str


class UpdatedMessages(StrictModel):
    channel: str
    updated: list[str]
    missing: list[str] = Field(default_factory=list, description="deleted in Slack meanwhile")


class ResolveApproversRequest(StrictModel):
    usergroup: str | None
    user_ids: list[str]


class SlackDirectory(StrictModel):
    members: list[str] | None = Field(description="the user group's members; None when there is no group")
    names: dict[str, str]
    problems: list[str] = Field(default_factory=list)


class SlackUsersRequest(StrictModel):
    user_ids: list[str]


SlackUserState = Literal["active", "deactivated", "not-found"]


class SlackUsers(StrictModel):
    """Which approvers' Slack accounts could click a button today (readiness)."""

    states: dict[str, SlackUserState]
    problems: list[str] = Field(default_factory=list, description="ids Slack could not tell about, and why")


class ProgressLine(StrictModel):
    key: str
    text: str
    ts: str | None = Field(default=None, description="set once posted: the line is then edited in place")


class ProgressRequest(StrictModel):
    channel: str
    thread_ts: str
    lines: list[ProgressLine]


class ProgressResult(StrictModel):
    """Lines posted or edited (with their ts); on a failure part way, what was done and the error."""

    lines: list[ProgressLine]
    error: str | None = None
    error_type: str | None = None


class SummaryRequest(StrictModel):
    channel: str
    thread_ts: str
    title: str
    outcome: str
    lines: list[str]
    workflow_id: str
    run_id: str
