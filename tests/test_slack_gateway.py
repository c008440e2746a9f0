"""Slack approvals end to end: the real gateway, real signed clicks, real failovers on the dev server.

The failover is the DB-less one of ``stateless_service()`` (real BIND record, real HTTP apps) with a runbook
approved in Slack; Slack is the local stand-in (Web API, response_urls, a Socket Mode websocket).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.faults.proxy import ProxyFaultSpec, TcpFaultProxy
from tests.support.failover import StatelessService, stateless_service, wait_for_decision, wait_for_gate
from tests.support.slack.standin import Message, SlackStandIn, populate, signed, slack_for_worker
from tests.support.slack.workspace import (
    APP_TOKEN,
    BOT_TOKEN,
    SIGNING_SECRET,
    approve_in_slack,
    decoded_history,
)
from workers.gateway import GatewayConfig
from workers.gateway.server import RunningGateway, running_gateway
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest


@dataclass
class World:
    env: WorkflowEnvironment
    service: StatelessService
    task_queue: str
    slack: SlackStandIn

    async def start(self) -> WorkflowHandle[Any, FailoverReport]:
        return await self.env.client.start_workflow(
            FailoverWorkflow.run,
            FailoverRequest(
                service=self.service.service,
                target="region-b",
                reason="region-a degraded",
                requested_by="alice",
            ),
            id=f"failover-{self.service.service}-{uuid.uuid4().hex[:6]}",
            task_queue=self.task_queue,
        )

    async def gate_message(self, workflow_id: str) -> Message:
        """The gate message of that run, once Slack has it (its buttons name the run)."""

        def find() -> Message | None:
            return next(
                (m for m in self.slack.top_level() if m.buttons() and workflow_id in json.dumps(m.buttons())),
                None,
            )

        found: Message = await asyncio.to_thread(self.slack.wait_for, find)
        return found


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    with slack_for_worker(monkeypatch) as running:
        yield populate(running)


def world_fixture(channel: str = "C0DRFLOW", propagation: str = "10s") -> Any:
    @pytest_asyncio.fixture
    async def fixture(
        dev_env: WorkflowEnvironment,
        tmp_path: Path,
        dns_world: NamedPair,
        task_queue: str,
        standin: SlackStandIn,
    ) -> AsyncIterator[World]:
        with stateless_service(tmp_path, dns_world, ttl=1, propagation=propagation) as service:
            approve_in_slack(tmp_path / f"{service.service}.yaml", channel=channel)
            async with build_worker(dev_env.client, tmp_path, task_queue=task_queue):
                yield World(dev_env, service, task_queue, standin)

    return fixture


world = world_fixture()
world_without_channel = world_fixture(channel="C0GONE")
world_quick_propagation = world_fixture(propagation="2s")


@pytest_asyncio.fixture
async def gateway(world: World) -> AsyncIterator[RunningGateway]:
    config = GatewayConfig(
        mode="http", port=0, signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN, api_url=world.slack.api_url
    )
    async with running_gateway(world.env.client, config) as running:
        yield running


async def send(gateway: RunningGateway, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False) as http:
        return await http.post(f"{gateway.url}/slack/actions", content=body, headers=headers)


async def click(
    gateway: RunningGateway, world: World, message: Message, action: str, user: str
) -> httpx.Response:
    body, headers = signed(world.slack.block_actions(message, action, user))
    return await send(gateway, body, headers)


async def updates_accepted(handle: WorkflowHandle[Any, Any]) -> list[str]:
    history = await handle.fetch_history()
    return [
        e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id
        for e in history.events
        if e.HasField("workflow_execution_update_accepted_event_attributes")
    ]


async def ephemeral(world: World, count: int) -> dict[str, Any]:
    """The ``count``-th ephemeral message (1-based), once the stand-in has it."""
    await asyncio.to_thread(world.slack.wait_for, lambda: len(world.slack.ephemerals) >= count, 10)
    return world.slack.ephemerals[count - 1]


# ----------------------------------------------------------------------------------------------- HTTP
async def test_approve_click_resumes_the_failover_and_the_message_says_who_and_when(
    world: World, gateway: RunningGateway
) -> None:
    # The first post meets Slack's 429: the activity is retried after Retry-After (1 s).
    world.slack.rate_limit("chat.postMessage", 1, retry_after=1)
    handle = await world.start()
    message = await world.gate_message(handle.id)
    shown = message.all_text()
    assert "region-a → region-b" in shown and "127.0.2.1" in shown, "the plan and its DNS diff"
    assert "TTL vs RTO" in shown and "region-a degraded" in shown and "<@U01ALICE>" in shown
    assert f"/workflows/{handle.id}/" in shown, "the link to the run in the Temporal UI"

    started = time.monotonic()
    response = await click(gateway, world, message, "drflow_approve", "U02BOB")
    assert response.status_code == 200 and time.monotonic() - started < 1.0
    report = await handle.result()

    assert report.outcome == "completed", report.messages
    [approval] = report.approvals
    assert (approval.gate, approval.decision, approval.by, approval.channel) == (
        "failover", "approved", "U02BOB", "slack",
    )  # fmt: skip
    updated = world.slack.messages[message.ts]
    assert updated.edits and updated.buttons() == {}, "updated in place: the buttons are gone"
    assert f"Approved by <@U02BOB> at {approval.at:%H:%M:%S} UTC" in updated.all_text()

    thread = world.slack.thread(message.ts)
    lines = [m.text for m in thread if not m.broadcast]
    assert lines[0].startswith("✓ preflight")
    assert any(line.startswith("✓ cut DNS over to 127.0.2.1") for line in lines)
    assert any(line.startswith("✓ validate health") for line in lines)
    assert all(not line.startswith("…") for line in lines), (
        "every running line was edited when its step ended"
    )
    [summary] = [m for m in thread if m.broadcast]
    assert "COMPLETED" in summary.all_text() and "Achieved RTO" in summary.all_text()

    assert world.slack.ephemerals == [] and world.slack.invalid_blocks == []
    history = decoded_history((await handle.fetch_history()).to_json_dict())
    for secret in (BOT_TOKEN, SIGNING_SECRET, APP_TOKEN):
        assert secret not in history and secret not in report.model_dump_json()


async def test_refused_clicks_reach_only_the_clicker_and_change_nothing(
    world: World, gateway: RunningGateway
) -> None:
    handle = await world.start()
    message = await world.gate_message(handle.id)
    slack = world.slack

    # A forged request: not Slack's signature. Refused, and its payload is not trusted enough to answer.
    forged = slack.block_actions(message, "drflow_approve", "U02BOB")
    response = await send(gateway, *signed(forged, secret="not-the-signing-secret"))
    assert (response.status_code, response.text) == (401, "invalid X-Slack-Signature")

    stale = slack.block_actions(message, "drflow_approve", "U02BOB")
    response = await send(gateway, *signed(stale, timestamp=int(time.time()) - 6 * 60))
    assert response.status_code == 401
    assert "more than 5 minutes" in (await ephemeral(world, 1))["text"]

    outsider = slack.block_actions(message, "drflow_approve", "U09MALLORY")
    body, headers = signed(outsider)
    assert (await send(gateway, body, headers)).status_code == 200
    refusal = await ephemeral(world, 2)
    assert (
        refusal["response_type"] == "ephemeral"
        and refusal["path"] == "/" + outsider["response_url"].split("/", 3)[3]
    )
    assert (
        f"you are not an approver for {world.service.service} (approvers: <@U02BOB>, members of <!subteam^S0ONCALL>)"
        in refusal["text"]
    )

    response = await send(gateway, body, headers)  # the same bytes again
    assert (response.status_code, response.text) == (401, "replayed request (signature seen before)")
    assert "replayed request" in (await ephemeral(world, 3))["text"]

    # alice asked for this failover; in Slack she is U01ALICE, a member of the on-call group.
    assert (await click(gateway, world, message, "drflow_approve", "U01ALICE")).status_code == 200
    assert "separation of duties: you requested this failover" in (await ephemeral(world, 4))["text"]

    report = await handle.query(FailoverWorkflow.status)
    assert report.open_gate == "failover" and report.approvals == [] and report.outcome == "running"
    assert await updates_accepted(handle) == []
    assert world.slack.messages[message.ts].edits == [], "the gate message is untouched"
    assert len(slack.ephemerals) == 4, "nothing for the forged request"

    # A double click by an approver: one Update, one approval.
    first, second = await asyncio.gather(
        click(gateway, world, message, "drflow_approve", "U03CAROL"),
        click(gateway, world, message, "drflow_approve", "U03CAROL"),
    )
    assert (first.status_code, second.status_code) == (200, 200)
    report = await handle.result()
    assert report.outcome == "completed"
    assert [(a.decision, a.by) for a in report.approvals] == [("approved", "U03CAROL")]
    accepted = await updates_accepted(handle)
    assert accepted == [f"slack:C0DRFLOW:{message.ts}:U03CAROL:drflow_approve"]
    assert len(slack.ephemerals) == 4, "the double click is silent: the second click is the same Update"
    assert slack.invalid_blocks == []


async def test_a_failed_step_asks_slack_for_a_decision_and_abort_by_an_approver_ends_the_run(
    world_quick_propagation: World, dns_world: NamedPair
) -> None:
    world = world_quick_propagation
    config = GatewayConfig(
        mode="http", port=0, signing_secret=SIGNING_SECRET, bot_token=BOT_TOKEN, api_url=world.slack.api_url
    )
    await asyncio.to_thread(dns_world.stop_secondary)  # propagation cannot converge: the step fails
    try:
        async with running_gateway(world.env.client, config) as gateway:
            handle = await world.start()
            gate = await world.gate_message(handle.id)
            assert (await click(gateway, world, gate, "drflow_approve", "U02BOB")).status_code == 200
            waiting = await wait_for_decision(world.env.client, handle.id)
            assert waiting.waiting_step == "verify propagation"

            def decision_message() -> Message | None:
                return next(
                    (m for m in world.slack.top_level() if "drflow_abort" in m.buttons()),
                    None,
                )

            message: Message = await asyncio.to_thread(world.slack.wait_for, decision_message)
            assert set(message.buttons()) == {"drflow_retry", "drflow_skip", "drflow_abort"}, (
                "verify propagation may be skipped"
            )
            shown = message.all_text()
            assert "verify propagation" in shown and "ns2.drflow.test." in shown, "the step and its error"
            assert f"/workflows/{handle.id}/" in shown

            # Not an approver: refused, to the clicker alone, and nothing changes.
            assert (await click(gateway, world, message, "drflow_abort", "U09MALLORY")).status_code == 200
            refusal = await ephemeral(world, 1)
            assert refusal["response_type"] == "ephemeral"
            assert f"you are not an approver for {world.service.service}" in refusal["text"]
            assert (await handle.query(FailoverWorkflow.status)).waiting_step == "verify propagation"
            assert world.slack.messages[message.ts].edits == []

            assert (await click(gateway, world, message, "drflow_abort", "U03CAROL")).status_code == 200
            report = await handle.result()
    finally:
        await asyncio.to_thread(dns_world.start_secondary)
        await asyncio.to_thread(dns_world.wait_in_sync)

    assert report.outcome == "aborted", report.messages
    assert [(d.step, d.decision, d.by, d.channel) for d in report.decisions] == [
        ("verify propagation", "abort", "U03CAROL", "slack")
    ]
    accepted = await updates_accepted(handle)
    assert f"slack:C0DRFLOW:{message.ts}:U03CAROL:drflow_abort" in accepted
    updated = world.slack.messages[message.ts]
    assert updated.edits and updated.buttons() == {}, "updated in place: the buttons are gone"
    assert f"Aborted by <@U03CAROL> at {report.decisions[0].at:%H:%M:%S} UTC" in updated.all_text()
    assert len(world.slack.ephemerals) == 1 and world.slack.invalid_blocks == []


async def test_slack_failures_never_block_approval_from_the_cli(world_without_channel: World) -> None:
    world = world_without_channel  # the runbook names a channel Slack does not know
    handle = await world.start()
    await wait_for_gate(world.env.client, handle.id)
    outcome = await handle.execute_update(
        FailoverWorkflow.approve, ApprovalInput(approver="bob", reason="Slack is down", channel="cli")
    )
    assert outcome.accepted
    report = await handle.result()
    assert report.outcome == "completed"
    assert any(
        "channel_not_found" in note and "approvals continue through the CLI and the Web UI" in note
        for note in report.messages
    ), report.messages
    assert world.slack.top_level() == []


@pytest.mark.faults
async def test_slack_hanging_through_a_whole_failover_never_holds_its_steps_or_its_approval(
    dev_env: WorkflowEnvironment,
    tmp_path: Path,
    dns_world: NamedPair,
    task_queue: str,
    standin: SlackStandIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slack's API behind the fault proxy, blackholed: connections open, nothing answers (the worst kind of
    down). The gate opens, the CLI approves, every step runs; Slack's failures are notes in the report."""
    host, _, port = standin.base_url.removeprefix("http://").partition(":")
    with TcpFaultProxy(host, int(port)) as proxy:
        monkeypatch.setenv("SLACK_API_URL", f"http://{proxy.address}/api/")
        proxy.set_fault(ProxyFaultSpec(mode="blackhole"))
        with stateless_service(tmp_path, dns_world, ttl=1, propagation="10s") as service:
            approve_in_slack(tmp_path / f"{service.service}.yaml", channel="C0DRFLOW")
            async with build_worker(dev_env.client, tmp_path, task_queue=task_queue):
                world = World(dev_env, service, task_queue, standin)
                started = time.monotonic()
                handle = await world.start()
                await wait_for_gate(dev_env.client, handle.id, timeout=90)
                gate_open = time.monotonic() - started
                outcome = await handle.execute_update(
                    FailoverWorkflow.approve,
                    ApprovalInput(approver="bob", reason="Slack hangs", channel="cli"),
                )
                assert outcome.accepted
                approved = time.monotonic()
                report = await asyncio.wait_for(handle.result(), 600)
                closed = time.monotonic() - approved
    assert report.outcome == "completed", report.messages
    assert all(step.outcome == "ok" for step in report.steps), [(s.name, s.outcome) for s in report.steps]
    assert any("Slack" in note for note in report.messages), report.messages
    assert any("not caught up 15s after the run ended" in note for note in report.messages), report.messages
    assert standin.top_level() == [], "nothing reached Slack"
    print(
        f"gate open after {gate_open:.1f}s; run closed {closed:.1f}s after the approval; RTO {report.achieved_rto_seconds}"
    )


# ---------------------------------------------------------------------------------------- Socket Mode
async def test_socket_mode_clicks_approve_and_refuse_like_http(world: World) -> None:
    slack = world.slack
    with slack.socket_mode():
        config = GatewayConfig(mode="socket", port=0, app_token=APP_TOKEN, api_url=slack.api_url)
        async with running_gateway(world.env.client, config) as running:
            assert running.listener is not None and running.listener.connected
            async with httpx.AsyncClient(trust_env=False) as http:
                health = await http.get(f"{running.url}/healthz")
            assert health.json() == {"status": "ok", "mode": "socket"}
            assert slack.calls_of("apps.connections.open")[0].token == APP_TOKEN

            handle = await world.start()
            message = await world.gate_message(handle.id)

            for user, expected in (
                ("U09MALLORY", f"you are not an approver for {world.service.service}"),
                ("U01ALICE", "separation of duties: you requested this failover"),
            ):
                envelope = slack.send_interactive(slack.block_actions(message, "drflow_approve", user))
                assert await asyncio.to_thread(slack.acks[envelope].wait, 5), "envelope acknowledged"
                assert expected in (await ephemeral(world, len(slack.ephemerals) + 1))["text"]
            assert await updates_accepted(handle) == []

            envelope = slack.send_interactive(slack.block_actions(message, "drflow_approve", "U02BOB"))
            assert await asyncio.to_thread(slack.acks[envelope].wait, 5)
            report = await handle.result()

    assert report.outcome == "completed"
    assert [(a.by, a.channel) for a in report.approvals] == [("U02BOB", "slack")]
    assert "Approved by <@U02BOB>" in slack.messages[message.ts].all_text()
    assert len(slack.ephemerals) == 2 and slack.invalid_blocks == []
