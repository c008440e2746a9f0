"""A Slack interaction payload as a click on one of drflow's buttons, and the Update it becomes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from activities.slack.blocks import ACTION_UPDATES, DECISION_ACTIONS
from workflows.failover_models import ApprovalInput, DecisionInput

Answer = ApprovalInput | DecisionInput


@dataclass(frozen=True)
class Click:
    """One button click, as the gateway needs it."""

    update: str
    action_id: str
    workflow_id: str
    run_id: str | None
    gate: str | None
    plan_checksum: str | None
    user_id: str
    user_name: str
    channel_id: str | None
    message_ts: str | None
    trigger_id: str | None
    response_url: str | None
    decision: str | None = None
    step: str | None = None

    @property
    def update_id(self) -> str:
        """The interaction's identity: the same person pressing the same button of the same message.

        Slack's ``trigger_id`` differs between two clicks, so it would deduplicate only a redelivery; this id
        also makes a double click one Update (the second returns the first's result).
        """
        where = self.message_ts or self.trigger_id or "-"
        return f"slack:{self.channel_id or '-'}:{where}:{self.user_id}:{self.action_id}"

    @property
    def target(self) -> str:
        """What the click answers, for logs and refusals: the gate or the failed step."""
        return f"step {self.step!r}" if self.update == "decide" else f"gate {self.gate}"

    def answer(self) -> Answer:
        name = f"@{self.user_name}" if self.user_name else self.user_id
        if self.update == "decide":
            return DecisionInput(
                decision=self.decision,  # validated by the model: retry, skip or abort
                operator=self.user_id,
                reason=f"Slack: {name}",
                channel="slack",
                step=self.step or None,
            )
        reason = (
            f"accepted in Slack by {name} after the data-loss confirmation"
            if self.update == "accept_data_loss"
            else f"Slack: {name}"
        )
        return ApprovalInput(
            approver=self.user_id,
            reason=reason,
            channel="slack",
            gate=self.gate,  # validated by the model: a gate name
            plan_checksum=self.plan_checksum or None,
        )


class NotOurs(ValueError):
    """A payload that is not a click on one of drflow's buttons (or whose button value is not drflow's)."""


def parse_click(payload: Mapping[str, Any]) -> Click:
    if payload.get("type") != "block_actions":
        raise NotOurs(f"payload type {payload.get('type')!r}")
    action = next(
        (
            a
            for a in payload.get("actions") or []
            if a.get("action_id") in ACTION_UPDATES or a.get("action_id") in DECISION_ACTIONS
        ),
        None,
    )
    if action is None:
        raise NotOurs("no drflow action")
    try:
        value = json.loads(action.get("value") or "")
        workflow_id = str(value["w"])
    except (ValueError, KeyError, TypeError) as err:
        raise NotOurs(f"button value is not drflow's: {err}") from None
    user = payload.get("user") or {}
    container = payload.get("container") or {}
    channel = payload.get("channel") or {}
    message = payload.get("message") or {}
    if not user.get("id"):
        raise NotOurs("no user in the payload")
    action_id = str(action["action_id"])
    decision = DECISION_ACTIONS.get(action_id)
    return Click(
        update="decide" if decision is not None else ACTION_UPDATES[action_id],
        action_id=action_id,
        workflow_id=workflow_id,
        run_id=value.get("r") or None,
        gate=value.get("g") or None,
        plan_checksum=value.get("c") or None,
        user_id=str(user["id"]),
        user_name=str(user.get("username") or user.get("name") or ""),
        channel_id=channel.get("id") or container.get("channel_id"),
        message_ts=container.get("message_ts") or message.get("ts"),
        trigger_id=payload.get("trigger_id"),
        response_url=payload.get("response_url"),
        decision=decision,
        step=value.get("s") or None,
    )


@dataclass(frozen=True)
class ClickOutcome:
    accepted: bool
    message: str
