"""Escalation and expiry of a Slack-approved gate, on the time-skipping server: 30 minutes in seconds.

The activities are the real ones (BIND, HTTP apps, the Slack stand-in); only the clock skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from tests.support.failover import stateless_service
from tests.support.slack.standin import SlackStandIn, populate, slack_for_worker
from tests.support.slack.workspace import approve_in_slack
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import FailoverRequest


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    with slack_for_worker(monkeypatch) as running:
        yield populate(running)


async def test_unanswered_gate_is_escalated_then_expires_and_the_messages_say_so(
    ts_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, task_queue: str, standin: SlackStandIn
) -> None:
    with stateless_service(tmp_path, dns_world) as service:
        approve_in_slack(tmp_path / f"{service.service}.yaml", extra="  escalate_after: 10m\n")
        async with build_worker(ts_env.client, tmp_path, task_queue=task_queue):
            handle = await ts_env.client.start_workflow(
                FailoverWorkflow.run,
                FailoverRequest(
                    service=service.service, target="region-b", reason="drill", requested_by="alice"
                ),
                id=f"failover-{uuid.uuid4()}",
                task_queue=task_queue,
            )
            report = await handle.result()
            history = await handle.fetch_history()

    assert report.outcome == "expired", report.messages
    [expired] = report.approvals
    assert (expired.decision, expired.by) == ("expired", None)
    assert report.dns_change is None, "nothing changed"
    assert "the failover gate was escalated in Slack after 10m" in report.messages

    # When: the escalation re-post was scheduled 10 minutes after the gate opened (server time, skipped).
    started = history.events[0].event_time.ToDatetime()
    posts = [
        e.event_time.ToDatetime() - started
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "slack_post_gate"
    ]
    assert len(posts) == 2 and posts[0] < timedelta(minutes=1)
    assert timedelta(minutes=10) <= posts[1] < timedelta(minutes=11)

    original, escalation = standin.top_level()
    assert (
        "<!subteam^S0LEADS>" in escalation.edits[0]["text"] and "still waiting" in escalation.edits[0]["text"]
    )
    assert escalation.edits[0]["blocks"][0]["text"]["text"].startswith(":rotating_light: <!subteam^S0LEADS>")
    for message in (original, escalation):
        assert "Expired: nobody approved within 30m" in message.all_text(), "never silently denied"
        assert message.buttons() == {}, "no buttons left on an expired gate"
    [summary] = [m for m in standin.thread(original.ts) if m.broadcast]
    assert "EXPIRED" in summary.all_text()
    assert standin.invalid_blocks == []
