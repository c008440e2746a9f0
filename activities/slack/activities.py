"""The Slack activities: post and edit the gate and decision messages, the progress thread, the summary.

The workflow carries on without Slack when these fail: approvals through the CLI and the Web UI never depend
on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import SlackErrorType
from activities.slack.blocks import (
    LIMITS,
    clip,
    decision_blocks,
    decision_text,
    gate_blocks,
    gate_text,
    summary_blocks,
)
from activities.slack.client import FATAL_ERRORS, bot_client, call, run_link
from activities.slack.models import (
    DecisionMessageRequest,
    GateFacts,
    GateMessageRequest,
    PostedMessage,
    ProgressLine,
    ProgressRequest,
    ProgressResult,
    ResolveApproversRequest,
    SlackDirectory,
    SlackUsers,
    SlackUsersRequest,
    SlackUserState,
    SummaryRequest,
    UpdatedMessages,
)


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


@activity.defn(name="slack_check_users")
def check_users(request: SlackUsersRequest) -> SlackUsers:
    """Is each approver's Slack account still there (``users.info``)? A deactivated account (``deleted``)
    cannot click, and Slack answers ``user_not_found`` for an id of another workspace or a typo. A
    rate limit or an outage is a problem of that id, never a failed check."""
    client = bot_client()
    states: dict[str, SlackUserState] = {}
    problems: list[str] = []
    for user_id in dict.fromkeys(request.user_ids):
        try:
            user = call("users.info", client.users_info, user=user_id).get("user") or {}
        except ApplicationError as err:
            if err.type in FATAL_ERRORS:
                raise
            if err.type == SlackErrorType.REFUSED and err.message.endswith(": user_not_found"):
                states[user_id] = "not-found"
            else:
                problems.append(f"{user_id}: {err.message}")
            continue
        states[user_id] = "deactivated" if user.get("deleted") else "active"
    return SlackUsers(states=states, problems=problems)


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
    check_users,
    post_gate,
    update_gate,
    sync_progress,
    post_summary,
    post_decision,
    update_decision,
]
