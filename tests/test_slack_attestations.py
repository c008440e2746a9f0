"""Slack clicks attested by the gateway's key, verified by the workflow against the people file.

Real pieces throughout: ed25519 keys made by ``/usr/bin/ssh-keygen``, the gateway over HTTP with Slack's
signed requests (the stand-in), the dev server, and the DB-less failover of ``stateless_service()``. Most
tests stop at the gate (a refusal, then a rejection), so only two of them cut DNS over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.approvals.attestations import ATTESTATION_NAMESPACE, GatewaySigner
from activities.approvals.requests import REQUEST_NAMESPACE, RequestPayload
from activities.approvals.signatures import utc_stamp
from runbooks.people import load_people_file
from tests.support.failover import StatelessService, stateless_service, wait_for_gate
from tests.support.slack.standin import Message, SlackStandIn, populate, signed, slack_for_worker
from tests.support.slack.workspace import PLAIN_APPROVALS, SIGNING_SECRET
from tests.support.sshkeys import SSH_KEYGEN, Key, keygen_sign, make_key
from workers.gateway import GatewayConfig, GatewayConfigError
from workers.gateway.approvals import ApprovalGateway
from workers.gateway.server import RunningGateway, running_gateway
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverReport, FailoverRequest

GATEWAY = "test-gateway"
PEOPLE = {"alice": ("U01ALICE", "sre"), "bob": ("U02BOB", "sre"), "carol": ("U03CAROL", "dba")}
APPROVALS = """\
approvals:
  approvers: [alice, bob, carol]
  people: {people}
  slack:
    channel: C0DRFLOW
    approvers: [U02BOB, U03CAROL]
  separation_of_duties: true
  timeout: 30m
{extra}"""


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    directory = tmp_path_factory.mktemp("attestation-keys")
    return {name: make_key(directory, name) for name in [*PEOPLE, GATEWAY, "rogue"]}


def write_people(path: Path, keys: dict[str, Key]) -> Path:
    people = {
        "people": [
            {"name": name, "keys": [keys[name].public_line], "slack": [slack], "groups": [group]}
            for name, (slack, group) in PEOPLE.items()
        ],
        "gateways": [{"name": GATEWAY, "key": keys[GATEWAY].public_line}],
    }
    path.write_text(json.dumps(people, indent=2))  # JSON is YAML
    return path


@dataclass
class World:
    env: WorkflowEnvironment
    service: StatelessService
    task_queue: str
    slack: SlackStandIn
    keys: dict[str, Key]
    gateway: RunningGateway

    async def start(
        self, mode: str = "planned", excluded: list[str] | None = None
    ) -> WorkflowHandle[Any, FailoverReport]:
        """A failover requested by alice, her request signed with her key (so no two-person rule)."""
        workflow_id = f"failover-{self.service.service}-{uuid.uuid4().hex[:6]}"
        reason = "region-a degraded"
        payload = RequestPayload(
            kind="failover", workflow_id=workflow_id, service=self.service.service, target="region-b",
            mode=mode, reason=reason, person="alice", signed_at=utc_stamp(datetime.now(UTC)),
        )  # fmt: skip
        message = payload.canonical()
        request = FailoverRequest(
            service=self.service.service, target="region-b", reason=reason, requested_by="alice",
            mode=mode, excluded_approvers=excluded or [], signed=message.decode(),
            signature=keygen_sign(self.keys["alice"], message, REQUEST_NAMESPACE),
        )  # fmt: skip
        handle = await self.env.client.start_workflow(
            FailoverWorkflow.run, request, id=workflow_id, task_queue=self.task_queue
        )
        await wait_for_gate(self.env.client, handle.id)
        return handle

    async def gate_message(self, workflow_id: str) -> Message:
        def find() -> Message | None:
            return next(
                (m for m in self.slack.top_level() if m.buttons() and workflow_id in json.dumps(m.buttons())),
                None,
            )

        found: Message = await asyncio.to_thread(self.slack.wait_for, find)
        return found

    async def click(self, message: Message, action: str, user: str) -> None:
        body, headers = signed(self.slack.block_actions(message, action, user))
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.post(f"{self.gateway.url}/slack/actions", content=body, headers=headers)
        assert response.status_code == 200, response.text

    async def ephemeral(self, count: int) -> str:
        await asyncio.to_thread(self.slack.wait_for, lambda: len(self.slack.ephemerals) >= count, 10)
        return str(self.slack.ephemerals[count - 1]["text"])

    async def shown(self, ts: str, text: str) -> str:
        """The message's text once it shows ``text`` (the mirror edits it in the background)."""
        await asyncio.to_thread(self.slack.wait_for, lambda: text in self.slack.messages[ts].all_text(), 15)
        return self.slack.messages[ts].all_text()

    def signer(self, name: str = GATEWAY) -> GatewaySigner:
        return GatewaySigner(name, self.keys[name].private.read_text())


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlackStandIn]:
    with slack_for_worker(monkeypatch) as running:
        yield populate(running)


def world_fixture(extra: str = "") -> Any:
    @pytest_asyncio.fixture
    async def fixture(
        dev_env: WorkflowEnvironment,
        tmp_path: Path,
        dns_world: NamedPair,
        task_queue: str,
        standin: SlackStandIn,
        keys: dict[str, Key],
        monkeypatch: pytest.MonkeyPatch,
    ) -> AsyncIterator[World]:
        people = write_people(tmp_path / "people.yaml", keys)
        with stateless_service(tmp_path, dns_world, ttl=1, propagation="2s") as service:
            runbook = tmp_path / f"{service.service}.yaml"
            text = runbook.read_text()
            assert text.count(PLAIN_APPROVALS) == 1
            runbook.write_text(text.replace(PLAIN_APPROVALS, APPROVALS.format(people=people, extra=extra)))
            # The gateway's key as operators configure it: a secret reference, here a file.
            monkeypatch.setenv("DRFLOW_GATEWAY_KEY", f"file:{keys[GATEWAY].private}")
            monkeypatch.setenv("DRFLOW_GATEWAY_NAME", GATEWAY)
            monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
            config = GatewayConfig.from_env("http", "127.0.0.1", 0)
            assert config.signer is not None and "PRIVATE KEY" not in repr(config)
            config = GatewayConfig(**{**config.__dict__, "api_url": standin.api_url})
            async with (
                build_worker(dev_env.client, tmp_path, task_queue=task_queue),
                running_gateway(dev_env.client, config) as gateway,
            ):
                yield World(dev_env, service, task_queue, standin, keys, gateway)

    return fixture


world = world_fixture()
quorum_world = world_fixture("  quorum: {failover: {min_approvals: 2}}\n")


async def status(handle: WorkflowHandle[Any, FailoverReport]) -> FailoverReport:
    report: FailoverReport = await handle.query("status", result_type=FailoverReport)
    return report


async def reject(world: World, handle: WorkflowHandle[Any, FailoverReport], message: Message) -> None:
    """End a run at its gate: bob rejects (attested too), nothing changed."""
    await world.click(message, "drflow_reject", "U02BOB")
    report = await handle.result()
    assert report.outcome == "rejected", report.messages
    assert report.dns_change is None


async def test_a_mapped_slack_user_approves_by_click_attested_by_the_gateway(world: World) -> None:
    handle = await world.start()
    message = await world.gate_message(handle.id)
    checksum = (await status(handle)).gate_checksum
    assert checksum is not None and len(checksum) == 64
    assert json.loads(message.buttons()["drflow_approve"]["value"])["c"] == checksum, "the full checksum"

    await world.click(message, "drflow_approve", "U02BOB")
    report = await handle.result()

    assert report.outcome == "completed", report.messages
    [approval] = report.approvals
    assert (approval.decision, approval.by, approval.person, approval.channel) == (
        "approved", "bob", "bob", "slack",
    )  # fmt: skip
    assert (approval.identity, approval.gateway, approval.key) == (
        "slack-gateway", GATEWAY, world.keys[GATEWAY].fingerprint,
    )  # fmt: skip
    assert approval.signed is not None and '"slack_user":"U02BOB"' in approval.signed
    assert f'"plan_checksum":"{checksum}"' in approval.signed
    assert f'"run_id":"{handle.result_run_id}"' in approval.signed
    assert "Approved by bob (via Slack)" in await world.shown(message.ts, "Approved by")
    assert world.slack.ephemerals == [] and world.slack.invalid_blocks == []


async def test_refusals_of_slack_clicks_change_nothing(world: World) -> None:
    """Unmapped Slack user, self-approval by the requester: each refused to the clicker, gate still open."""
    handle = await world.start()
    message = await world.gate_message(handle.id)

    await world.click(message, "drflow_approve", "U09MALLORY")
    assert "not in the people file" in await world.ephemeral(1)
    await world.click(message, "drflow_approve", "U01ALICE")
    refusal = await world.ephemeral(2)
    assert "separation of duties" in refusal and "alice requested this failover" in refusal

    report = await status(handle)
    assert report.open_gate == "failover" and report.approvals == []
    await reject(world, handle, message)


async def test_attestations_by_an_untrusted_key_or_replayed_elsewhere_are_refused(world: World) -> None:
    handle = await world.start()
    message = await world.gate_message(handle.id)
    report = await status(handle)
    checksum = report.gate_checksum
    assert checksum is not None
    run_id = handle.result_run_id
    assert run_id is not None

    # A gateway the people file does not trust (its own key, claiming the trusted gateway's name).
    rogue = GatewaySigner(GATEWAY, world.keys["rogue"].private.read_text())
    config = GatewayConfig(signing_secret=SIGNING_SECRET, api_url=world.slack.api_url, signer=rogue)
    rogue_gateway = ApprovalGateway(world.env.client, config)
    try:
        payload = world.slack.block_actions(message, "drflow_approve", "U02BOB")
        outcome = await rogue_gateway.handle_payload(payload)
    finally:
        await rogue_gateway.aclose()
    assert outcome is not None and not outcome.accepted
    assert "no trusted gateway of the people file" in outcome.message

    # Genuine attestations of bob's click, replayed onto another gate and from another run.
    signer = world.signer()
    now = datetime.now(UTC)
    other_run = str(uuid.uuid4())
    elsewhere = {
        "signed for gate 'promote', but this is gate 'failover'": dict(run_id=run_id, gate="promote"),
        f"signed for run_id '{other_run}', but this is run_id '{run_id}'": dict(
            run_id=other_run, gate="failover"
        ),
    }
    for what, binding in elsewhere.items():
        text, signature = signer.attest(
            workflow_id=handle.id, decision="approve", slack_user="U02BOB", now=now,
            plan_checksum=checksum, **binding,  # type: ignore[arg-type]
        )  # fmt: skip
        answer = ApprovalInput(
            approver="U02BOB", channel="slack", gate="failover", plan_checksum=checksum, signed=text,
            signature=signature,
        )  # fmt: skip
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("approve", answer, id=f"replay-{what}")
        assert f"refused (payload-mismatch): {what}" in str(refused.value.cause)

    report = await status(handle)
    assert report.open_gate == "failover" and report.approvals == []
    await reject(world, handle, message)


async def test_a_drill_excluded_person_cannot_answer_from_slack(world: World) -> None:
    handle = await world.start(mode="drill", excluded=["bob"])
    message = await world.gate_message(handle.id)

    await world.click(message, "drflow_approve", "U02BOB")
    assert "bob is unavailable in this drill's scenario" in await world.ephemeral(1)
    report = await status(handle)
    assert report.open_gate == "failover" and report.approvals == []

    await world.click(message, "drflow_reject", "U03CAROL")
    report = await handle.result()
    assert report.outcome == "rejected" and report.approvals[-1].person == "carol"


async def test_a_quorum_of_two_shows_progress_in_slack_and_counts_a_person_once(
    quorum_world: World,
) -> None:
    world = quorum_world
    handle = await world.start()
    message = await world.gate_message(handle.id)

    await world.click(message, "drflow_approve", "U02BOB")
    shown = await world.shown(message.ts, "1 of 2")
    assert "Approved by bob (1 of 2) · still needed: 1 more approval" in shown
    assert "drflow_approve" in world.slack.messages[message.ts].buttons(), "still open: buttons stay"
    report = await status(handle)
    assert report.open_gate == "failover" and [a.person for a in report.approvals] == ["bob"]
    assert report.quorum is not None and report.quorum.approved_by == ["bob"]

    # Bob again (a fresh attestation, another Update): refused, his vote counts once.
    checksum = report.gate_checksum
    assert checksum is not None and handle.result_run_id is not None
    text, signature = world.signer().attest(
        workflow_id=handle.id, run_id=handle.result_run_id, decision="approve", slack_user="U02BOB",
        now=datetime.now(UTC), gate="failover", plan_checksum=checksum,
    )  # fmt: skip
    again = ApprovalInput(
        approver="U02BOB", channel="slack", gate="failover", plan_checksum=checksum, signed=text,
        signature=signature,
    )  # fmt: skip
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update("approve", again, id="bob-again")
    assert "bob already approved the failover gate; still needed: 1 more approval" in str(refused.value.cause)

    await world.click(message, "drflow_approve", "U03CAROL")
    report = await handle.result()
    assert report.outcome == "completed", report.messages
    assert [(a.person, a.identity) for a in report.approvals] == [
        ("bob", "slack-gateway"), ("carol", "slack-gateway"),
    ]  # fmt: skip
    final = await world.shown(message.ts, "Approved by carol")
    assert "Approved by carol (via Slack)" in final and "Approvals: bob, carol (2 of 2)" in final
    assert world.slack.invalid_blocks == []


def test_ssh_keygen_verifies_a_gateway_attestation_with_the_people_files_allowed_signers(
    tmp_path: Path, keys: dict[str, Key]
) -> None:
    people = load_people_file(write_people(tmp_path / "people.yaml", keys))
    (tmp_path / "allowed_signers").write_text(people.allowed_signers())
    signer = GatewaySigner(GATEWAY, keys[GATEWAY].private.read_text())
    text, signature = signer.attest(
        workflow_id="failover-svc", run_id="0f3c5c1e-run", decision="approve", slack_user="U02BOB",
        now=datetime.now(UTC), gate="failover", plan_checksum="ab" * 32,
    )  # fmt: skip
    (tmp_path / "attestation.sig").write_text(signature)
    verify = [
        SSH_KEYGEN, "-Y", "verify", "-f", str(tmp_path / "allowed_signers"), "-I", f"gateway:{GATEWAY}",
        "-n", ATTESTATION_NAMESPACE, "-s", str(tmp_path / "attestation.sig"),
    ]  # fmt: skip
    done = subprocess.run(verify, input=text.encode(), capture_output=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f'Good "{ATTESTATION_NAMESPACE}" signature for gateway:{GATEWAY}' in done.stdout.decode()
    # A person's identity does not accept the gateway's signature.
    done = subprocess.run(
        [*verify[:5], "bob", *verify[6:]], input=text.encode(), capture_output=True, check=False
    )
    assert done.returncode != 0


async def test_gateway_key_settings_are_checked_at_start_and_without_a_key_answers_are_unverified(
    dev_env: WorkflowEnvironment,
    keys: dict[str, Key],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SLACK_SIGNING_SECRET", SIGNING_SECRET)
    for name in ("DRFLOW_GATEWAY_KEY", "DRFLOW_GATEWAY_NAME"):
        monkeypatch.delenv(name, raising=False)
    unsigned = GatewayConfig.from_env("http", "127.0.0.1", 0)
    assert unsigned.signer is None
    with caplog.at_level(logging.INFO, logger="drflow.gateway"):
        await ApprovalGateway(dev_env.client, unsigned).aclose()
    assert [r.message for r in caplog.records if "unsigned" in r.message] == [
        "no gateway key (DRFLOW_GATEWAY_KEY, DRFLOW_GATEWAY_NAME): Slack answers are sent unsigned, so runs "
        "with a people file record them as unverified or refuse them"
    ]

    monkeypatch.setenv("DRFLOW_GATEWAY_KEY", f"file:{keys[GATEWAY].private}")
    with pytest.raises(GatewayConfigError, match="DRFLOW_GATEWAY_NAME is not"):
        GatewayConfig.from_env("http", "127.0.0.1", 0)
    monkeypatch.setenv("DRFLOW_GATEWAY_NAME", GATEWAY)
    key_text = keys[GATEWAY].private.read_text()
    monkeypatch.setenv("DRFLOW_GATEWAY_KEY", key_text)
    with pytest.raises(GatewayConfigError, match="secret reference") as inline:
        GatewayConfig.from_env("http", "127.0.0.1", 0)
    assert "PRIVATE KEY" not in str(inline.value), "the error never repeats the value"

    monkeypatch.setenv("DRFLOW_GATEWAY_KEY", f"file:{keys[GATEWAY].private}.pub")
    with pytest.raises(GatewayConfigError, match="not an unencrypted OpenSSH private key"):
        GatewayConfig.from_env("http", "127.0.0.1", 0)

    monkeypatch.setenv("DRFLOW_GATEWAY_KEY", "env:GATEWAY_KEY_TEXT")
    monkeypatch.setenv("GATEWAY_KEY_TEXT", key_text)
    config = GatewayConfig.from_env("http", "127.0.0.1", 0)
    assert config.signer is not None and config.signer.name == GATEWAY
    assert keys[GATEWAY].public_line.startswith(config.signer.public_key_line)
    assert key_text not in repr(config) and "PRIVATE KEY" not in repr(config)
