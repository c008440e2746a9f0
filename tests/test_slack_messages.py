"""The Slack activities against the stand-in: Block Kit within Slack's limits, typed errors, the thread.

Activities run in ``ActivityEnvironment`` (no worker); the stand-in checks tokens and refuses invalid blocks
like Slack does, so "it posted" means Slack would have accepted it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.errors import SlackErrorType
from activities.slack.activities import (
    post_decision,
    post_gate,
    post_summary,
    resolve_approvers,
    sync_progress,
    update_decision,
    update_gate,
)
from activities.slack.blocks import LIMITS, decision_blocks, decision_text, gate_blocks
from activities.slack.models import (
    Approvers,
    DecisionFacts,
    DecisionMessageRequest,
    DecisionStatus,
    Escalation,
    Fact,
    GateFacts,
    GateMessageRequest,
    GateStatus,
    ProgressLine,
    ProgressRequest,
    ResolveApproversRequest,
    SummaryRequest,
)
from tests.support.slack.block_kit import block_kit_problems
from tests.support.slack.standin import SlackStandIn, slack_for_worker
from tests.support.slack.workspace import BOT_TOKEN

A = TypeVar("A")
R = TypeVar("R")


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    with slack_for_worker(monkeypatch) as running:
        running.world.usergroups = {"S0ONCALL": ["U01ALICE", "U03CAROL"]}
        running.world.users = {"U02BOB": "Bob", "U01ALICE": "Alice"}
        yield running


def facts(gate: str = "failover", **changes: object) -> GateFacts:
    base = GateFacts(
        service="checkout",
        kind="failover",
        workflow_id="failover-checkout",
        run_id="0f3c5c1e-run",
        gate=gate,
        title="Failover checkout: us-east-1 → us-west-2 (planned)",
        reason="us-east-1 degraded <script> & friends",
        requested_by="alice",
        requested_by_slack="U01ALICE",
        facts=[
            Fact(
                label="DNS change",
                text="- checkout.example.com. 30 IN A 203.0.113.10\n+ checkout.example.com. 30 IN A 198.51.100.20",
                code=True,
            ),
            Fact(label="Replication lag vs RPO", text="12 bytes / 0.3s behind; RPO 30s: within the RPO"),
        ],
        plan_checksum="ab" * 32,
    )
    return base.model_copy(update=changes)


def request(gate_facts: GateFacts, **changes: object) -> GateMessageRequest:
    base = GateMessageRequest(
        channel="C0DRFLOW",
        facts=gate_facts,
        approvers=Approvers(user_ids=["U02BOB"], names={"U02BOB": "Bob"}, usergroup="S0ONCALL"),
    )
    return base.model_copy(update=changes)


def run(activity: Callable[[A], R], arg: A) -> R:
    return ActivityEnvironment().run(activity, arg)


def test_gate_message_carries_plan_people_link_and_buttons_within_block_kit_limits(
    standin: SlackStandIn,
) -> None:
    posted = run(post_gate, request(facts()))
    message = standin.messages[posted.ts]
    assert standin.invalid_blocks == []
    text = message.all_text()
    assert "198.51.100.20" in text and "RPO 30s" in text
    assert "<@U01ALICE>" in text, "who asked, as a mention"
    assert "&lt;script&gt; &amp; friends" in text, "input is escaped, never interpreted by Slack"
    assert "http://localhost:8233/namespaces/default/workflows/failover-checkout/0f3c5c1e-run" in text
    assert set(message.buttons()) == {"drflow_approve", "drflow_reject"}
    value = json.loads(message.buttons()["drflow_approve"]["value"])
    assert value == {"w": "failover-checkout", "r": "0f3c5c1e-run", "g": "failover", "c": "ab" * 32}


def test_data_loss_gate_offers_approve_with_data_loss() -> None:
    blocks = gate_blocks(request(facts("data-loss")), "http://ui")
    [actions] = [b for b in blocks if b["type"] == "actions"]
    labels = {e["action_id"]: e["text"]["text"] for e in actions["elements"]}
    assert labels == {"drflow_accept_data_loss": "Approve with data loss", "drflow_reject": "Reject"}
    assert actions["elements"][0]["confirm"]["title"]["text"] == "Accept data loss?"


def test_the_unfenced_gate_offers_only_reject_and_says_how_to_override_with_a_typed_reason(
    standin: SlackStandIn,
) -> None:
    posted = run(post_gate, request(facts("unfenced")))
    message = standin.messages[posted.ts]
    assert standin.invalid_blocks == []
    assert set(message.buttons()) == {"drflow_reject"}, "a button carries no typed reason"
    text = message.all_text()
    assert "fence is NOT confirmed" in text and "drflow approve failover-checkout --as" in text, text


def test_huge_plans_are_clipped_to_slack_limits() -> None:
    many = [Fact(label=f"warning {i}", text="x" * 5000) for i in range(80)]
    huge = facts(
        title="T" * 400,
        reason="r" * 5000,
        facts=[Fact(label="DNS change", text="+ line\n" * 2000, code=True), *many],
        workflow_id="w" * 900,
    )
    for status in (
        None,
        GateStatus(
            decision="rejected", by="U02BOB", channel="slack", at=datetime.now(UTC), reason="no" * 3000
        ),
    ):
        blocks = gate_blocks(
            request(
                huge,
                status=status,
                escalation=Escalation(after=timedelta(minutes=10), mention=["<!subteam^S0LEADS>"]),
            ),
            "http://ui/" + "x" * 100,
        )
        assert block_kit_problems(blocks) == []
        assert len(blocks) <= LIMITS["blocks"]


def test_answer_replaces_the_buttons_in_place(standin: SlackStandIn) -> None:
    posted = run(post_gate, request(facts()))
    at = datetime(2026, 11, 26, 12, 3, 7, tzinfo=UTC)
    status = GateStatus(decision="approved", by="U02BOB", channel="slack", at=at)
    run(update_gate, request(facts(), status=status, messages=[posted.ts]))
    message = standin.messages[posted.ts]
    assert len(message.edits) == 1 and message.buttons() == {}
    assert "Approved by <@U02BOB> at 12:03:07 UTC" in message.all_text()
    expired = GateStatus(decision="expired", by=None, channel=None, at=at, timeout=timedelta(minutes=30))
    run(update_gate, request(facts(), status=expired, messages=[posted.ts]))
    assert "Expired: nobody approved within 30m" in standin.messages[posted.ts].all_text()
    assert standin.invalid_blocks == []


def decision(skippable: bool = True, **changes: object) -> DecisionMessageRequest:
    base = DecisionMessageRequest(
        channel="C0DRFLOW",
        facts=DecisionFacts(
            service="checkout",
            kind="failover",
            workflow_id="failover-checkout",
            run_id="0f3c5c1e-run",
            title="Failover checkout: us-east-1 → us-west-2",
            step="verify propagation",
            error="ns2.example.com. did not answer <in time> & gave up",
            attempts=2,
            skippable=skippable,
        ),
        approvers=Approvers(user_ids=["U02BOB"], names={"U02BOB": "Bob"}, usergroup="S0ONCALL"),
        timeout=timedelta(minutes=30),
    )
    return base.model_copy(update=changes)


def test_decision_message_offers_retry_skip_abort_and_is_decided_in_place(standin: SlackStandIn) -> None:
    posted = run(post_decision, decision())
    message = standin.messages[posted.ts]
    assert standin.invalid_blocks == []
    assert list(message.buttons()) == ["drflow_retry", "drflow_skip", "drflow_abort"]
    value = json.loads(message.buttons()["drflow_abort"]["value"])
    assert value == {"w": "failover-checkout", "r": "0f3c5c1e-run", "s": "verify propagation"}
    text = message.all_text()
    assert "verify propagation" in text and "attempt 2" in text
    assert "&lt;in time&gt; &amp; gave up" in text, "the error is escaped"
    assert "No decision within 30m aborts the run" in text
    assert "confirm" in message.buttons()["drflow_abort"] and "confirm" in message.buttons()["drflow_skip"]

    at = datetime(2026, 11, 26, 12, 3, 7, tzinfo=UTC)
    retried = DecisionStatus(decision="retry", by="U02BOB", channel="slack", at=at, reason="Slack: @bob")
    run(update_decision, decision(status=retried, messages=[posted.ts]))
    assert standin.messages[posted.ts].buttons() == {}
    assert "Retried by <@U02BOB> at 12:03:07 UTC" in standin.messages[posted.ts].all_text()
    aborted = DecisionStatus(decision="abort", by="carol", channel="cli", at=at, reason="ns2 is down")
    run(update_decision, decision(status=aborted, messages=[posted.ts]))
    assert "Aborted by carol (via cli) at 12:03:07 UTC: ns2 is down" in standin.messages[posted.ts].all_text()
    assert standin.invalid_blocks == []


def test_a_step_that_cannot_be_skipped_has_no_skip_button() -> None:
    blocks = decision_blocks(decision(skippable=False), "http://ui")
    [actions] = [b for b in blocks if b["type"] == "actions"]
    assert [e["action_id"] for e in actions["elements"]] == ["drflow_retry", "drflow_abort"]
    assert "cannot be skipped" in json.dumps(blocks)


def test_huge_decision_messages_are_clipped_to_slack_limits() -> None:
    huge = decision().facts.model_copy(
        update={"title": "T" * 400, "step": "s" * 3000, "error": "e\n" * 5000, "workflow_id": "w" * 900}
    )
    at = datetime.now(UTC)
    for status in (
        None,
        DecisionStatus(decision="skip", by="U02BOB", channel="slack", at=at, reason="r" * 5000),
        DecisionStatus(decision="abort", by="x" * 3000, channel="api", at=at, reason="r" * 5000),
        DecisionStatus(decision="expired", by=None, channel=None, at=at, timeout=timedelta(minutes=30)),
    ):
        request_ = decision(status=status).model_copy(update={"facts": huge})
        blocks = decision_blocks(request_, "http://ui/" + "x" * 100)
        assert block_kit_problems(blocks, decision_text(request_)) == []
        assert len(blocks) <= LIMITS["blocks"]
        assert len(decision_text(request_)) <= LIMITS["message_text"]


def test_rate_limit_is_retryable_after_slacks_retry_after(standin: SlackStandIn) -> None:
    standin.rate_limit("chat.postMessage", 1, retry_after=7)
    with pytest.raises(ApplicationError) as raised:
        run(post_gate, request(facts()))
    err = raised.value
    assert err.type == SlackErrorType.RATE_LIMITED and not err.non_retryable
    assert err.next_retry_delay == timedelta(seconds=7)
    assert "retrying after 7s" in err.message


@pytest.mark.parametrize(
    ("world_change", "error_type", "hint"),
    [
        ("missing", SlackErrorType.CHANNEL, "check approvals.slack.channel"),
        ("not_in_channel", SlackErrorType.CHANNEL, "invite the bot"),
        ("bad_token", SlackErrorType.AUTH, "check SLACK_BOT_TOKEN"),
        ("no_token", SlackErrorType.NOT_CONFIGURED, "SLACK_BOT_TOKEN"),
    ],
)
def test_configuration_errors_are_not_retried_and_say_what_to_fix(
    standin: SlackStandIn, monkeypatch: pytest.MonkeyPatch, world_change: str, error_type: str, hint: str
) -> None:
    if world_change == "missing":
        standin.world.channels = set()
    elif world_change == "not_in_channel":
        standin.world.not_in_channel = {"C0DRFLOW"}
    elif world_change == "bad_token":
        monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-wrong")
    else:
        monkeypatch.delenv("SLACK_BOT_TOKEN")
    with pytest.raises(ApplicationError) as raised:
        run(post_gate, request(facts()))
    assert raised.value.type == error_type and raised.value.non_retryable
    assert hint in raised.value.message
    assert BOT_TOKEN not in raised.value.message


def test_token_can_come_from_a_file(
    standin: SlackStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "bot-token"
    token_file.write_text(BOT_TOKEN + "\n")
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    monkeypatch.setenv("SLACK_BOT_TOKEN_FILE", str(token_file))
    posted = run(post_gate, request(facts()))
    assert posted.ts in standin.messages
    assert standin.calls_of("chat.postMessage")[0].token == BOT_TOKEN


def test_approvers_resolve_to_group_members_and_display_names(standin: SlackStandIn) -> None:
    directory = run(
        resolve_approvers, ResolveApproversRequest(usergroup="S0ONCALL", user_ids=["U02BOB", "U0GONE"])
    )
    assert directory.members == ["U01ALICE", "U03CAROL"]
    assert directory.names == {"U02BOB": "Bob"}
    assert directory.problems == ["U0GONE: Slack refused users.info: user_not_found"]
    with pytest.raises(ApplicationError) as raised:
        run(resolve_approvers, ResolveApproversRequest(usergroup="S0NOSUCH", user_ids=[]))
    assert "no_such_subteam" in raised.value.message and raised.value.non_retryable


def test_progress_lines_are_posted_once_then_edited_and_survive_a_short_rate_limit(
    standin: SlackStandIn,
) -> None:
    parent = run(post_gate, request(facts()))
    thread_ts = parent.ts
    first = run(sync_progress, ProgressRequest(channel="C0DRFLOW", thread_ts=thread_ts, lines=[
        ProgressLine(key="preflight", text="✓ preflight (0.20s)"), ProgressLine(key="fence", text="… fence region-a"),
    ]))  # fmt: skip
    assert first.error is None
    posted = {line.key: line.ts for line in first.lines}
    standin.rate_limit("chat.update", 1, retry_after=1)
    second = run(sync_progress, ProgressRequest(channel="C0DRFLOW", thread_ts=thread_ts, lines=[
        ProgressLine(key="fence", text="✓ fence region-a (0.12s)", ts=posted["fence"]),
    ]))  # fmt: skip
    assert second.error is None
    thread = standin.thread(thread_ts)
    assert [m.text for m in thread] == ["✓ preflight (0.20s)", "✓ fence region-a (0.12s)"]
    assert len(standin.calls_of("chat.update")) == 2, "one 429, then the edit"


def test_progress_failure_part_way_reports_what_was_done(standin: SlackStandIn) -> None:
    parent = run(post_gate, request(facts()))
    standin.rate_limit("chat.postMessage", 1, retry_after=60)  # too long to wait inline
    result = run(sync_progress, ProgressRequest(channel="C0DRFLOW", thread_ts=parent.ts, lines=[
        ProgressLine(key="preflight", text="✓ preflight"),
    ]))  # fmt: skip
    assert result.lines == [] and result.error_type == SlackErrorType.RATE_LIMITED


def test_summary_goes_to_the_thread_and_the_channel(standin: SlackStandIn) -> None:
    parent = run(post_gate, request(facts()))
    posted = run(post_summary, SummaryRequest(
        channel="C0DRFLOW", thread_ts=parent.ts, title="Failover checkout: us-east-1 → us-west-2: COMPLETED",
        outcome="completed", lines=["Achieved RTO 41.2s (objective 5m)", "Achieved RPO: no data lost"],
        workflow_id="failover-checkout", run_id="r1",
    ))  # fmt: skip
    message = standin.messages[posted.ts]
    assert message.thread_ts == parent.ts and message.broadcast
    assert "Achieved RTO 41.2s" in message.all_text()
    assert standin.invalid_blocks == []


def test_the_app_manifest_asks_for_exactly_the_scopes_drflow_uses() -> None:
    import yaml

    manifest = yaml.safe_load(
        (Path(__file__).parent.parent / "infra" / "slack" / "manifest.yaml").read_text()
    )
    assert set(manifest["oauth_config"]["scopes"]["bot"]) == {
        "chat:write", "chat:write.public", "usergroups:read", "users:read",
    }  # fmt: skip
    assert "user" not in manifest["oauth_config"]["scopes"], "no user-token scopes"
    settings = manifest["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["interactivity"]["request_url"].endswith("/slack/actions")
    assert settings["socket_mode_enabled"] in (True, False)
