"""Block Kit: the gate, decision and summary messages, built within Slack's limits (``LIMITS``).

Built at the moment of posting from the typed facts the workflow passes in, so a better message never
changes what a history replays. Every text from a run is escaped; mentions are added here, never taken from
input.
"""

from __future__ import annotations

import json
from typing import Any

from temporalio.exceptions import ApplicationError

from activities.errors import SlackErrorType
from activities.slack.models import (
    Approvers,
    DecisionFacts,
    DecisionMessageRequest,
    DecisionStatus,
    GateFacts,
    GateMessageRequest,
    GateStatus,
    GateVotes,
    SummaryRequest,
)
from runbooks.durations import format_duration

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
    """Workflow id, run id, gate and the FULL plan checksum: what the gateway attests the person saw.

    Buttons posted before this carry a 16-character prefix; the gateway never attests such a click.
    """
    value = json.dumps(
        {"w": facts.workflow_id, "r": facts.run_id, "g": facts.gate, "c": facts.plan_checksum or ""},
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
    # Overriding an unconfirmed fence needs a typed reason, which a button cannot carry: Reject only.
    elements = [reject] if facts.gate == "unfenced" else [first, reject]
    return {"type": "actions", "block_id": "drflow_gate", "elements": elements}


def who(by: str | None, channel: str | None, person: str | None = None) -> str:
    """The person by name when the people file knows them; else the Slack mention or the typed name."""
    if person is not None:
        return f"{escape(person)} (via {'Slack' if channel == 'slack' else escape(channel or '?')})"
    if by is None:
        return "nobody"
    if channel == "slack":
        return f"<@{escape(by)}>"
    return f"{escape(by)} (via {escape(channel or '?')})"


def votes_text(votes: GateVotes, open_gate: bool) -> str:
    """Quorum progress: "approved by bob (1 of 2) · still needed: one of group dba"."""
    names = ", ".join(escape(name) for name in votes.approved_by) or "nobody"
    count = f"({len(votes.approved_by)} of {votes.min_approvals})"
    if not open_gate:
        return f"Approvals: {names} {count}"
    still = f" · still needed: {escape(', '.join(votes.missing))}" if votes.missing else ""
    return f":ballot_box_with_check: Approved by {names} {count}{still}"


def status_text(status: GateStatus) -> str:
    at = status.at.strftime("%H:%M:%S")
    reason = f": {escape(status.reason)}" if status.reason else ""
    by = who(status.by, status.channel, status.person)
    if status.decision == "approved":
        return f":white_check_mark: Approved by {by} at {at} UTC"
    if status.decision == "rejected":
        return f":x: Rejected by {by} at {at} UTC{reason}"
    if status.decision == "data-loss-accepted":
        return f":warning: Data loss accepted by {by} at {at} UTC{reason}"
    if status.decision == "expired":
        within = format_duration(status.timeout) if status.timeout is not None else "the approval timeout"
        return f":hourglass: Expired: nobody approved within {within} (at {at} UTC)"
    return f":fast_forward: Passed without approval at {at} UTC: emergency run{reason}"


def decision_status_text(status: DecisionStatus) -> str:
    at = status.at.strftime("%H:%M:%S")
    reason = f": {escape(status.reason)}" if status.reason and status.channel != "slack" else ""
    by = who(status.by, status.channel, status.person)
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
    room = LIMITS["blocks"] - len(blocks) - 4  # context, votes, actions or status, and one spare
    for fact in facts.facts[:room]:
        if fact.code:
            blocks.append(_code_section(fact.label, fact.text))
        else:
            blocks.append(_section(f"*{escape(fact.label)}*\n{escape(fact.text)}"))
    checksum = f"plan `{facts.plan_checksum}` · " if facts.plan_checksum else ""  # whole: what --plan takes
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
        if facts.gate == "unfenced":
            blocks.append(
                _section(
                    ":no_entry: *The old primary's fence is NOT confirmed*: promoting may leave two "
                    "primaries. Approving needs a typed reason, so it is not a button: "
                    f"`drflow approve {escape(facts.workflow_id)} --as <you> --reason "
                    '"how it was stopped"` or the Web UI\'s approve Update.'
                )
            )
        if request.votes is not None:
            blocks.append(_section(votes_text(request.votes, open_gate=True)))
        blocks.append(_buttons(facts))
    else:
        blocks.append(_section(status_text(request.status)))
        if request.votes is not None:
            blocks.append(_section(votes_text(request.votes, open_gate=False)))
    return blocks


def gate_text(request: GateMessageRequest) -> str:
    """The notification text (and what screen readers get)."""
    facts = request.facts
    if request.status is not None:
        return clip(f"{facts.title}: {status_text(request.status)}", LIMITS["message_text"])
    prefix = ""
    if request.escalation is not None:
        prefix = " ".join(request.escalation.mention) + " still waiting: "
    votes = f" ({votes_text(request.votes, open_gate=True)})" if request.votes is not None else ""
    return clip(
        f"{prefix}{facts.title}: approval needed at the {facts.gate} gate{votes}", LIMITS["message_text"]
    )


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
