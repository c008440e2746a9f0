"""Slack, as the notifier of approval gates: Block Kit gate messages, the progress thread, the summary.

Every function here talks to the Slack Web API through slack-sdk's ``WebClient`` (``SLACK_API_URL`` points
it elsewhere, e.g. at a stand-in). The bot token comes from ``SLACK_BOT_TOKEN`` or the file named by
``SLACK_BOT_TOKEN_FILE`` at the moment of use: it is never an activity input or result, so it never reaches a
history, a log line or a report.

Errors are typed for the workflow's retry policy (``SlackErrorType``): a rate limit is retried after Slack's
``Retry-After``; an unreachable Slack is retried with backoff; a missing token, a bad token or scope, an
unknown channel or a channel the bot is not in is not retried, and says what to fix. The workflow carries on
without Slack when these activities fail: approvals through the CLI and the Web UI never depend on them.

Block Kit is built here, within Slack's limits (``LIMITS``), from typed facts the workflow passes in, so a
better message never changes what a history replays.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.error import URLError
from urllib.parse import quote

from pydantic import Field
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web import SlackResponse
from temporalio import activity
from temporalio.exceptions import ApplicationError

from runbooks.durations import Duration, format_duration
from runbooks.model import Gate, StrictModel

API_URL_ENV = "SLACK_API_URL"
UI_URL_ENV = "DRFLOW_UI_URL"
DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_UI_URL = "http://localhost:8233"
HTTP_TIMEOUT = 10

# Action ids of the gate buttons: the gateway maps each to the workflow's Update of the same name.
ACTION_UPDATES = {
    "drflow_approve": "approve",
    "drflow_reject": "reject",
    "drflow_accept_data_loss": "accept_data_loss",
}
# Action ids of the decision buttons (a failed step waiting for an operator): each is the ``decide`` Update
# with that decision.
DECISION_ACTIONS = {
    "drflow_retry": "retry",
    "drflow_skip": "skip",
    "drflow_abort": "abort",
}

# Slack's documented Block Kit limits, the ones drflow's messages can reach.
LIMITS = {
    "blocks": 50,
    "section_text": 3000,
    "header_text": 150,
    "context_elements": 10,
    "actions_elements": 25,
    "button_text": 75,
    "button_value": 2000,
    "action_id": 255,
    "block_id": 255,
    "confirm_title": 100,
    "confirm_text": 300,
    "confirm_button": 30,
    "message_text": 4000,
}

Decision = Literal["approved", "rejected", "data-loss-accepted", "skipped-in-emergency", "expired"]
StepDecision = Literal["retry", "skip", "abort", "expired"]


class SlackErrorType:
    """``ApplicationError.type`` of a failed Slack call; the first three are retried, the rest are not."""

    RATE_LIMITED = "SlackRateLimited"
    UNAVAILABLE = "SlackUnavailable"
    FAILED = "SlackRequestFailed"
    NOT_CONFIGURED = "SlackNotConfigured"
    AUTH = "SlackAuthFailed"
    CHANNEL = "SlackChannelUnavailable"
    REFUSED = "SlackRequestRefused"


# What no retry can fix: the workflow stops using Slack for the run and says why in the report.
FATAL_ERRORS = frozenset({SlackErrorType.NOT_CONFIGURED, SlackErrorType.AUTH, SlackErrorType.CHANNEL})
NON_RETRYABLE_ERRORS = [*sorted(FATAL_ERRORS), SlackErrorType.REFUSED]

_AUTH_ERRORS = frozenset(
    {"not_authed", "invalid_auth", "account_inactive", "token_revoked", "token_expired", "missing_scope",
     "no_permission", "ekm_access_denied", "not_allowed_token_type"}
)  # fmt: skip
_CHANNEL_ERRORS = frozenset({"channel_not_found", "not_in_channel", "is_archived", "restricted_action"})


# ------------------------------------------------------------------------------------------ secrets
def slack_secret(name: str) -> str | None:
    """``NAME`` from the environment, else the contents of the file named by ``NAME_FILE``; never logged."""
    value = os.environ.get(name)
    if value:
        return value.strip()
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return None
    try:
        text = Path(path).read_text().strip()
    except OSError as err:
        raise ApplicationError(
            f"{name}_FILE names {path}, which cannot be read: {err.strerror or err}",
            type=SlackErrorType.NOT_CONFIGURED,
            non_retryable=True,
        ) from None
    return text or None


def api_url() -> str:
    url = os.environ.get(API_URL_ENV) or DEFAULT_API_URL
    return url if url.endswith("/") else url + "/"


def bot_client() -> WebClient:
    token = slack_secret("SLACK_BOT_TOKEN")
    if token is None:
        raise ApplicationError(
            "SLACK_BOT_TOKEN (or SLACK_BOT_TOKEN_FILE) is not set on the worker: no Slack messages; "
            "approve through the CLI or the Web UI",
            type=SlackErrorType.NOT_CONFIGURED,
            non_retryable=True,
        )
    return WebClient(token=token, base_url=api_url(), timeout=HTTP_TIMEOUT)


def run_link(workflow_id: str, run_id: str, namespace: str) -> str:
    base = (os.environ.get(UI_URL_ENV) or DEFAULT_UI_URL).rstrip("/")
    return f"{base}/namespaces/{quote(namespace, safe='')}/workflows/{quote(workflow_id, safe='')}/{run_id}"


# ------------------------------------------------------------------------------------------- errors
def slack_error(method: str, err: Exception) -> ApplicationError:
    """An operator-facing, typed error for a failed Web API call."""
    if isinstance(err, SlackApiError):
        response = err.response
        code = str(response.get("error") or f"HTTP {response.status_code}")
        if response.status_code == 429 or code == "ratelimited":
            delay = _retry_after(response.headers)
            return ApplicationError(
                f"Slack rate-limited {method}: retrying after {delay}s",
                type=SlackErrorType.RATE_LIMITED,
                next_retry_delay=timedelta(seconds=delay),
            )
        if code in _AUTH_ERRORS:
            needed = response.get("needed")
            hint = f" (needs scope {needed})" if needed else ""
            return ApplicationError(
                f"Slack refused the bot token for {method}: {code}{hint}; check SLACK_BOT_TOKEN and the "
                "app's scopes (infra/slack/manifest.yaml)",
                type=SlackErrorType.AUTH,
                non_retryable=True,
            )
        if code in _CHANNEL_ERRORS:
            fix = (
                "invite the bot to the channel (/invite @drflow)"
                if code == "not_in_channel"
                else "check approvals.slack.channel in the runbook"
            )
            return ApplicationError(
                f"Slack {method}: {code}: {fix}", type=SlackErrorType.CHANNEL, non_retryable=True
            )
        if response.status_code >= 500 or code in ("internal_error", "fatal_error", "service_unavailable"):
            return ApplicationError(f"Slack {method} failed: {code}", type=SlackErrorType.UNAVAILABLE)
        return ApplicationError(
            f"Slack refused {method}: {code}", type=SlackErrorType.REFUSED, non_retryable=True
        )
    if isinstance(err, URLError | OSError | TimeoutError):
        reason = getattr(err, "reason", err)
        return ApplicationError(
            f"Slack {method}: cannot reach {api_url()}: {reason}", type=SlackErrorType.UNAVAILABLE
        )
    return ApplicationError(f"Slack {method} failed: {err}", type=SlackErrorType.FAILED)


def _retry_after(headers: Any) -> int:
    for key, value in dict(headers or {}).items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                return max(1, int(float(raw)))
            except ValueError:
                break
    return 30


def call(method: str, request: Callable[..., SlackResponse], **arguments: Any) -> SlackResponse:
    """``request(**arguments)``, with Slack's failures turned into typed, operator-facing errors."""
    try:
        return request(**arguments)
    except (SlackApiError, SlackClientError, URLError, OSError, TimeoutError) as err:
        raise slack_error(method, err) from None


# ------------------------------------------------------------------------------------------- models
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


# ---------------------------------------------------------------------------------------- Block Kit
def escape(text: str) -> str:
    """Slack's three control characters; mentions are added by the renderer, never taken from input."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, LIMITS["section_text"])}}


def _code_section(label: str, code: str) -> dict[str, Any]:
    room = LIMITS["section_text"] - len(label) - 12
    return _section(f"*{escape(label)}*\n```{clip(escape(code), room)}```")


def _plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": clip(text, limit), "emoji": True}


def _confirm(title: str, text: str, confirm: str) -> dict[str, Any]:
    return {
        "title": _plain(title, LIMITS["confirm_title"]),
        "text": {"type": "mrkdwn", "text": clip(text, LIMITS["confirm_text"])},
        "confirm": _plain(confirm, LIMITS["confirm_button"]),
        "deny": _plain("Cancel", LIMITS["confirm_button"]),
    }


def button_value(facts: GateFacts) -> str:
    """Workflow id, run id, gate and plan checksum: the gateway needs nothing else to send the Update."""
    value = json.dumps(
        {"w": facts.workflow_id, "r": facts.run_id, "g": facts.gate, "c": (facts.plan_checksum or "")[:16]},
        separators=(",", ":"),
    )
    if len(value) > LIMITS["button_value"]:
        raise ApplicationError(
            f"workflow id too long for a Slack button ({len(value)} > {LIMITS['button_value']} characters)",
            type=SlackErrorType.REFUSED,
            non_retryable=True,
        )
    return value


def _checked_value(value: str) -> str:
    if len(value) > LIMITS["button_value"]:
        raise ApplicationError(
            f"workflow id too long for a Slack button ({len(value)} > {LIMITS['button_value']} characters)",
            type=SlackErrorType.REFUSED,
            non_retryable=True,
        )
    return value


def decision_button_value(facts: DecisionFacts) -> str:
    """Workflow id, run id and the failed step: the gateway sends ``decide`` to that run."""
    return _checked_value(
        json.dumps(
            {"w": facts.workflow_id, "r": facts.run_id, "s": clip(facts.step, 200)}, separators=(",", ":")
        )
    )


def _buttons(facts: GateFacts) -> dict[str, Any]:
    value = button_value(facts)
    what = f"{facts.kind} of {facts.service}"
    if facts.gate == "data-loss":
        first = {
            "type": "button",
            "action_id": "drflow_accept_data_loss",
            "text": _plain("Approve with data loss", LIMITS["button_text"]),
            "style": "danger",
            "value": value,
            "confirm": _confirm(
                "Accept data loss?",
                f"The {what} continues although the standby lacks recent writes (see *Data loss*). "
                "Your name is kept in the audit record.",
                "Accept data loss",
            ),
        }
    else:
        first = {
            "type": "button",
            "action_id": "drflow_approve",
            "text": _plain("Approve", LIMITS["button_text"]),
            "style": "primary",
            "value": value,
            "confirm": _confirm(
                f"Approve the {facts.gate} gate?",
                f"The {what} continues with the plan shown (checksum `{(facts.plan_checksum or '-')[:16]}`).",
                "Approve",
            ),
        }
    reject = {
        "type": "button",
        "action_id": "drflow_reject",
        "text": _plain("Reject", LIMITS["button_text"]),
        "value": value,
        "confirm": _confirm(
            f"Reject the {facts.gate} gate?",
            f"The {what} stops here; what is safe to undo is undone.",
            "Reject",
        ),
    }
    return {"type": "actions", "block_id": "drflow_gate", "elements": [first, reject]}


def who(by: str | None, channel: str | None) -> str:
    if by is None:
        return "nobody"
    if channel == "slack":
        return f"<@{escape(by)}>"
    return f"{escape(by)} (via {escape(channel or '?')})"


def status_text(status: GateStatus) -> str:
    at = status.at.strftime("%H:%M:%S")
    reason = f": {escape(status.reason)}" if status.reason else ""
    if status.decision == "approved":
        return f":white_check_mark: Approved by {who(status.by, status.channel)} at {at} UTC"
    if status.decision == "rejected":
        return f":x: Rejected by {who(status.by, status.channel)} at {at} UTC{reason}"
    if status.decision == "data-loss-accepted":
        return f":warning: Data loss accepted by {who(status.by, status.channel)} at {at} UTC{reason}"
    if status.decision == "expired":
        within = format_duration(status.timeout) if status.timeout is not None else "the approval timeout"
        return f":hourglass: Expired: nobody approved within {within} (at {at} UTC)"
    return f":fast_forward: Passed without approval at {at} UTC: emergency run{reason}"


def decision_status_text(status: DecisionStatus) -> str:
    at = status.at.strftime("%H:%M:%S")
    reason = f": {escape(status.reason)}" if status.reason and status.channel != "slack" else ""
    by = who(status.by, status.channel)
    if status.decision == "retry":
        return f":repeat: Retried by {by} at {at} UTC{reason}"
    if status.decision == "skip":
        return f":fast_forward: Skipped by {by} at {at} UTC{reason}"
    if status.decision == "abort":
        return f":octagonal_sign: Aborted by {by} at {at} UTC{reason}"
    within = format_duration(status.timeout) if status.timeout is not None else "the approval timeout"
    return f":hourglass: Aborted: nobody decided within {within} (at {at} UTC)"


def _decision_buttons(facts: DecisionFacts) -> dict[str, Any]:
    value = decision_button_value(facts)
    what = f"{facts.kind} of {facts.service}"
    step = clip(facts.step, 120)
    elements: list[dict[str, Any]] = [
        {
            "type": "button",
            "action_id": "drflow_retry",
            "text": _plain("Retry", LIMITS["button_text"]),
            "style": "primary",
            "value": value,
        }
    ]
    if facts.skippable:
        elements.append(
            {
                "type": "button",
                "action_id": "drflow_skip",
                "text": _plain("Skip", LIMITS["button_text"]),
                "value": value,
                "confirm": _confirm(
                    "Skip this step?",
                    f"The {what} continues without `{escape(step)}` succeeding; the failure stays in the "
                    "record.",
                    "Skip",
                ),
            }
        )
    elements.append(
        {
            "type": "button",
            "action_id": "drflow_abort",
            "text": _plain("Abort", LIMITS["button_text"]),
            "style": "danger",
            "value": value,
            "confirm": _confirm(
                f"Abort the {facts.kind}?",
                f"The {what} stops here; what is safe to undo is undone.",
                "Abort",
            ),
        }
    )
    return {"type": "actions", "block_id": "drflow_decision", "elements": elements}


def decision_blocks(request: DecisionMessageRequest, link: str) -> list[dict[str, Any]]:
    facts = request.facts
    attempts = f" (attempt {facts.attempts})" if facts.attempts > 1 else ""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(f"{facts.title}: a step failed", LIMITS["header_text"])},
        _section(f"*Step:* `{escape(clip(facts.step, 200))}`{attempts} failed; the run waits for a decision"),
        _code_section("Error", facts.error or "(no message)"),
    ]
    within = (
        f" · No decision within {format_duration(request.timeout)} aborts the run"
        if request.timeout is not None
        else ""
    )
    skip = "" if facts.skippable else " · this step cannot be skipped"
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": clip(
                        f"<{link}|Open the run in the Temporal UI> · "
                        f"Who may decide: {approvers_text(request.approvers)}{skip}{within}",
                        LIMITS["section_text"],
                    ),
                }
            ],
        }
    )
    if request.status is None:
        blocks.append(_decision_buttons(facts))
    else:
        blocks.append(_section(decision_status_text(request.status)))
    return blocks


def decision_text(request: DecisionMessageRequest) -> str:
    facts = request.facts
    if request.status is not None:
        return clip(
            f"{facts.title}: {facts.step}: {decision_status_text(request.status)}", LIMITS["message_text"]
        )
    return clip(f"{facts.title}: {facts.step} failed, decision needed", LIMITS["message_text"])


def approvers_text(approvers: Approvers) -> str:
    people = [
        f"@{escape(approvers.names[u])}" if u in approvers.names else f"`{u}`" for u in approvers.user_ids
    ]
    if approvers.usergroup:
        people.append(f"members of <!subteam^{escape(approvers.usergroup)}>")
    return ", ".join(people) or "nobody in Slack (approve through the CLI)"


def gate_blocks(request: GateMessageRequest, link: str) -> list[dict[str, Any]]:
    facts = request.facts
    blocks: list[dict[str, Any]] = []
    if request.escalation is not None and request.status is None:
        mention = " ".join(request.escalation.mention)
        blocks.append(
            _section(
                f":rotating_light: {mention} still waiting for approval after "
                f"{format_duration(request.escalation.after)}"
            )
        )
    blocks.append({"type": "header", "text": _plain(facts.title, LIMITS["header_text"])})
    asker = (
        f"<@{escape(facts.requested_by_slack)}>"
        if facts.requested_by_slack
        else escape(facts.requested_by or "unknown (separation of duties cannot be checked)")
    )
    blocks.append(_section(f"*Gate:* `{facts.gate}`\n*Requested by* {asker}\n*Why:* {escape(facts.reason)}"))
    room = LIMITS["blocks"] - len(blocks) - 3  # context, actions or status, and one spare
    for fact in facts.facts[:room]:
        if fact.code:
            blocks.append(_code_section(fact.label, fact.text))
        else:
            blocks.append(_section(f"*{escape(fact.label)}*\n{escape(fact.text)}"))
    checksum = f"plan `{facts.plan_checksum[:16]}` · " if facts.plan_checksum else ""
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": clip(
                        f"{checksum}<{link}|Open the run in the Temporal UI> · "
                        f"Approvers: {approvers_text(request.approvers)}",
                        LIMITS["section_text"],
                    ),
                }
            ],
        }
    )
    if request.status is None:
        blocks.append(_buttons(facts))
    else:
        blocks.append(_section(status_text(request.status)))
    return blocks


def gate_text(request: GateMessageRequest) -> str:
    """The notification text (and what screen readers get)."""
    facts = request.facts
    if request.status is not None:
        return clip(f"{facts.title}: {status_text(request.status)}", LIMITS["message_text"])
    prefix = ""
    if request.escalation is not None:
        prefix = " ".join(request.escalation.mention) + " still waiting: "
    return clip(f"{prefix}{facts.title}: approval needed at the {facts.gate} gate", LIMITS["message_text"])


def summary_blocks(request: SummaryRequest, link: str) -> list[dict[str, Any]]:
    body = "\n".join(f"• {escape(line)}" for line in request.lines)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(request.title, LIMITS["header_text"])},
    ]
    if body:
        blocks.append(_section(body))
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"<{link}|The run in the Temporal UI>"}]}
    )
    return blocks


# ------------------------------------------------------------------------------------------ activities
def _link(facts: GateFacts) -> str:
    return run_link(facts.workflow_id, facts.run_id, activity.info().namespace)


@activity.defn(name="slack_resolve_approvers")
def resolve_approvers(request: ResolveApproversRequest) -> SlackDirectory:
    """The user group's members (``usergroups.users.list``) and the listed approvers' display names.

    A name that cannot be read is reported and left out (the id is shown instead); a group that cannot be
    read fails the activity, because its members are who may approve.
    """
    client = bot_client()
    members: list[str] | None = None
    if request.usergroup:
        response = call(
            "usergroups.users.list",
            client.usergroups_users_list,
            usergroup=request.usergroup,
            include_disabled=False,
        )
        members = [str(user) for user in response.get("users") or []]
    names: dict[str, str] = {}
    problems: list[str] = []
    for user_id in dict.fromkeys(request.user_ids):
        try:
            user = call("users.info", client.users_info, user=user_id).get("user") or {}
        except ApplicationError as err:
            if err.type in FATAL_ERRORS or err.type == SlackErrorType.RATE_LIMITED:
                raise
            problems.append(f"{user_id}: {err.message}")
            continue
        profile = user.get("profile") or {}
        name = profile.get("display_name") or profile.get("real_name") or user.get("real_name")
        names[user_id] = str(name or user.get("name") or user_id)
    return SlackDirectory(members=members, names=names, problems=problems)


@activity.defn(name="slack_post_gate")
def post_gate(request: GateMessageRequest) -> PostedMessage:
    """Post the gate message (or its escalation re-post) with the buttons; returns where it is."""
    client = bot_client()
    blocks = gate_blocks(request, _link(request.facts))
    response = call(
        "chat.postMessage",
        client.chat_postMessage,
        channel=request.channel,
        text=gate_text(request),
        blocks=blocks,
        unfurl_links=False,
    )
    return PostedMessage(channel=str(response["channel"]), ts=str(response["ts"]))


@activity.defn(name="slack_update_gate")
def update_gate(request: GateMessageRequest) -> UpdatedMessages:
    """Edit the gate's messages in place: the status replaces the buttons. A deleted message is skipped."""
    client = bot_client()
    blocks = gate_blocks(request, _link(request.facts))
    text = gate_text(request)
    updated: list[str] = []
    missing: list[str] = []
    for ts in request.messages:
        try:
            call("chat.update", client.chat_update, channel=request.channel, ts=ts, text=text, blocks=blocks)
        except ApplicationError as err:
            if err.type == SlackErrorType.REFUSED and "message_not_found" in err.message:
                missing.append(ts)
                continue
            raise
        updated.append(ts)
    return UpdatedMessages(channel=request.channel, updated=updated, missing=missing)


@activity.defn(name="slack_post_decision")
def post_decision(request: DecisionMessageRequest) -> PostedMessage:
    """Post the message of a failed step with the Retry / Skip / Abort buttons; returns where it is."""
    client = bot_client()
    link = run_link(request.facts.workflow_id, request.facts.run_id, activity.info().namespace)
    response = call(
        "chat.postMessage",
        client.chat_postMessage,
        channel=request.channel,
        text=decision_text(request),
        blocks=decision_blocks(request, link),
        unfurl_links=False,
    )
    return PostedMessage(channel=str(response["channel"]), ts=str(response["ts"]))


@activity.defn(name="slack_update_decision")
def update_decision(request: DecisionMessageRequest) -> UpdatedMessages:
    """Edit the decision message in place: who decided replaces the buttons. A deleted message is skipped."""
    client = bot_client()
    link = run_link(request.facts.workflow_id, request.facts.run_id, activity.info().namespace)
    blocks = decision_blocks(request, link)
    text = decision_text(request)
    updated: list[str] = []
    missing: list[str] = []
    for ts in request.messages:
        try:
            call("chat.update", client.chat_update, channel=request.channel, ts=ts, text=text, blocks=blocks)
        except ApplicationError as err:
            if err.type == SlackErrorType.REFUSED and "message_not_found" in err.message:
                missing.append(ts)
                continue
            raise
        updated.append(ts)
    return UpdatedMessages(channel=request.channel, updated=updated, missing=missing)


MAX_INLINE_WAIT = 10
# Well inside the workflow's start-to-close timeout (30 s): a timed-out attempt would be retried whole and
# post its lines again, so the activity returns what it did before that can happen.
PROGRESS_BUDGET = 15.0  # + one call of at most HTTP_TIMEOUT (10 s)


@activity.defn(name="slack_sync_progress")
def sync_progress(request: ProgressRequest) -> ProgressResult:
    """Post new lines into the thread and edit changed ones; never posts a line twice.

    Each line is its own message, so a retry of the whole activity could duplicate the ones already
    posted: instead of failing part way, this waits out a short rate limit inline and otherwise returns
    what it did with the error, and the workflow asks again later.
    """
    client = bot_client()
    done: list[ProgressLine] = []
    pending = list(request.lines)
    error: ApplicationError | None = None
    deadline = time.monotonic() + PROGRESS_BUDGET
    while pending:
        line = pending[0]
        if time.monotonic() > deadline:
            error = ApplicationError(
                f"Slack is slow: {len(pending)} progress lines left for later",
                type=SlackErrorType.UNAVAILABLE,
            )
            break
        try:
            if line.ts is None:
                response = call(
                    "chat.postMessage",
                    client.chat_postMessage,
                    channel=request.channel,
                    thread_ts=request.thread_ts,
                    text=line.text,
                )
                done.append(line.model_copy(update={"ts": str(response["ts"])}))
            else:
                call("chat.update", client.chat_update, channel=request.channel, ts=line.ts, text=line.text)
                done.append(line)
        except ApplicationError as err:
            delay = err.next_retry_delay
            if (
                err.type == SlackErrorType.RATE_LIMITED
                and delay is not None
                and delay.total_seconds() <= MAX_INLINE_WAIT
                and time.monotonic() + delay.total_seconds() < deadline
            ):
                time.sleep(delay.total_seconds())
                continue  # the same line again
            error = err
            break
        pending.pop(0)
    return ProgressResult(
        lines=done,
        error=None if error is None else error.message,
        error_type=None if error is None else error.type,
    )


@activity.defn(name="slack_post_summary")
def post_summary(request: SummaryRequest) -> PostedMessage:
    """The final summary in the thread, also shown in the channel."""
    client = bot_client()
    link = run_link(request.workflow_id, request.run_id, activity.info().namespace)
    response = call(
        "chat.postMessage",
        client.chat_postMessage,
        channel=request.channel,
        thread_ts=request.thread_ts,
        reply_broadcast=True,
        text=clip(request.title, LIMITS["message_text"]),
        blocks=summary_blocks(request, link),
        unfurl_links=False,
    )
    return PostedMessage(channel=str(response["channel"]), ts=str(response["ts"]))


SLACK_ACTIVITIES: list[Callable[..., Any]] = [
    resolve_approvers,
    post_gate,
    update_gate,
    sync_progress,
    post_summary,
    post_decision,
    update_decision,
]
