"""The stand-in's workspace as tests know it: its ids and secrets, and the runbook approvals naming its people.

``standin.populate`` creates the people; ``decoded_history`` lets a test check the secrets never reach a
Temporal history.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

BOT_TOKEN = "xoxb-standin-bot-token-0123456789"
APP_TOKEN = "xapp-1-standin-app-token-0123456789"
SIGNING_SECRET = "standin-signing-secret-0123456789abcdef"
TEAM = "T0DRFLOW"
APP_ID = "A0DRFLOW"


PLAIN_APPROVALS = "approvals:\n  approvers: [bob, carol]\n  separation_of_duties: true\n  timeout: 30m\n"
SLACK_APPROVALS = """\
approvals:
  approvers: [bob, carol]
  slack:
    channel: {channel}
    approvers: [U02BOB]
    usergroup: S0ONCALL
    escalation_group: S0LEADS
    identities: {{U01ALICE: alice, U02BOB: bob}}
  separation_of_duties: true
  timeout: 30m
{extra}"""


def approve_in_slack(runbook: Path, channel: str = "C0DRFLOW", extra: str = "") -> None:
    """Give a tests/support/failover.py runbook Slack approvals: U02BOB by id; alice and carol (U03CAROL)
    as members of the on-call group S0ONCALL; alice is U01ALICE in Slack (she requests the failovers)."""
    text = runbook.read_text()
    assert text.count(PLAIN_APPROVALS) == 1, "tests/support/failover.py RUNBOOK changed its approvals"
    runbook.write_text(text.replace(PLAIN_APPROVALS, SLACK_APPROVALS.format(channel=channel, extra=extra)))


def decoded_history(history_json: dict[str, Any]) -> str:
    """A history as text with every payload decoded, to search it for what must never be there."""
    parts: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "data" and isinstance(value, str):
                    try:
                        parts.append(base64.b64decode(value).decode("utf-8", "replace"))
                    except ValueError:
                        parts.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, str):
            parts.append(node)

    walk(history_json)
    return "\n".join(parts)
