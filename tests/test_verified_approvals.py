"""Approvals by verified people, end to end: real ssh-keygen keys, the real dev server, real BIND and apps.

Each refusal is checked for its message and for nothing changed: the gate stays open, no approval is
recorded, the DNS record still answers the old region.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from activities.approvals.signatures import DecisionPayload, utc_stamp
from activities.dns.reader import DnsQuery, read_dns_record
from tests.support.failover import StatelessService, stateless_service, wait_for_decision, wait_for_gate
from tests.support.sshkeys import SSH_KEYGEN, Key, keygen_sign, make_key
from workers.cli.signing import Signer, sign_decision, sign_request
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import (
    ApprovalInput,
    DecisionInput,
    FailoverReport,
    FailoverRequest,
    render_report,
)

DRFLOW = str(Path(sys.executable).parent / "drflow")
PEOPLE = ("alice", "bob", "carol", "dave", "mallory", "bob-old")


@dataclass
class World:
    env: WorkflowEnvironment
    service: StatelessService
    keys: dict[str, Key]
    task_queue: str

    @property
    def client(self) -> Any:
        return self.env.client

    def signer(self, person: str, key: str | None = None) -> Signer:
        return Signer(person, self.keys[key or person].private)

    async def start(
        self, requester: str = "alice", *, signed: bool = True, **extra: Any
    ) -> WorkflowHandle[Any, Any]:
        request = FailoverRequest(
            service=self.service.service, target="region-b", reason="verified approvals test",
            requested_by=requester, **extra,
        )  # fmt: skip
        if signed:
            text, signature = sign_request(
                self.signer(requester), kind="failover", workflow_id=self.workflow_id,
                service=self.service.service, target="region-b", mode=request.mode, reason=request.reason,
            )  # fmt: skip
            request = request.model_copy(update={"signed": text, "signature": signature})
        return await self.client.start_workflow(
            FailoverWorkflow.run, request, id=self.workflow_id, task_queue=self.task_queue
        )

    @property
    def workflow_id(self) -> str:
        return f"failover-{self.service.service}"

    async def served(self) -> list[list[str]]:
        readout = await read_dns_record(
            DnsQuery(record=self.service.record, type="A", zone="drflow.test.",
                     nameservers=self.service.dns.nameservers)
        )  # fmt: skip
        return [a.values for a in readout.answers]


def people_yaml(keys: dict[str, Key]) -> str:
    def person(name: str, groups: list[str], extra: str = "") -> str:
        return (
            f"  - name: {name}\n    keys: [{keys[name].public_line}]\n    slack: [U0{name.upper()}]\n"
            f"    groups: {json.dumps(groups)}\n{extra}"
        )

    bob_keys = (
        f"  - name: bob\n    keys: [{keys['bob'].public_line}, {keys['bob-old'].public_line}]\n"
        f"    revoked_keys: [{keys['bob-old'].fingerprint}]\n    slack: [U0BOB]\n    groups: [sre]\n"
    )
    return (
        "people:\n" + person("alice", ["sre"]) + bob_keys + person("carol", ["dba"]) + person("dave", ["dba"])
    )


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    folder = tmp_path_factory.mktemp("keys")
    return {name: make_key(folder, name) for name in PEOPLE}


@pytest.fixture
def service(tmp_path: Path, dns_world: NamedPair, keys: dict[str, Key]) -> Iterator[StatelessService]:
    (tmp_path / "people.yaml").write_text(people_yaml(keys))
    with stateless_service(tmp_path, dns_world) as service:
        yield service


def set_approvals(service: StatelessService, extra: str, approvers: str = "bob, carol") -> None:
    """Replace the runbook's approvals block (the last one in the template) with people-file rules."""
    path = service.runbooks / f"{service.service}.yaml"
    text = path.read_text()
    head = text[: text.index("approvals:\n")]
    path.write_text(head + f"approvals:\n  approvers: [{approvers}]\n" + extra)


async def world_for(
    env: WorkflowEnvironment, service: StatelessService, keys: dict[str, Key], task_queue: str
) -> World:
    return World(env, service, keys, task_queue)


async def refused(handle: WorkflowHandle[Any, Any], update: str, answer: Any) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update(update, answer)
    cause = caught.value.cause
    return str(getattr(cause, "message", cause))


def signed_answer(
    world: World, report: FailoverReport, person: str, *, key: str | None = None, channel: str = "cli",
    **changes: Any,
) -> ApprovalInput:  # fmt: skip
    fields: dict[str, Any] = {
        "workflow_id": report.workflow_id, "run_id": report.run_id, "gate": report.open_gate,
        "decision": "approve", "plan_checksum": report.gate_checksum,
    }  # fmt: skip
    fields.update(changes)
    text, signature = sign_decision(world.signer(person, key), **fields)
    return ApprovalInput(
        approver=person, channel=channel, plan_checksum=report.gate_checksum, signed=text, signature=signature
    )  # type: ignore[arg-type]


async def unchanged(world: World, handle: WorkflowHandle[Any, Any]) -> FailoverReport:
    report: FailoverReport = await handle.query(FailoverWorkflow.status)
    assert report.open_gate == "failover" and report.outcome == "running"
    assert report.dns_change is None
    assert (await world.served())[0] == ["127.0.1.1"], "the primary nameserver still answers region-a"
    return report


async def test_only_a_listed_unrevoked_key_bound_to_this_run_gate_and_plan_passes_the_gate(
    dev_env: WorkflowEnvironment, service: StatelessService, keys: dict[str, Key], task_queue: str
) -> None:
    set_approvals(service, "", "sre, carol")  # alice (sre) may approve, but not her own run
    world = await world_for(dev_env, service, keys, task_queue)
    async with build_worker(dev_env.client, service.runbooks, task_queue=task_queue):
        handle = await world.start("alice")
        report = await wait_for_gate(dev_env.client, handle.id)
        assert report.requester is not None and report.requester.identity == "ssh-key"
        assert report.requester.person == "alice" and report.requester.key == keys["alice"].fingerprint
        checksum = report.gate_checksum
        assert checksum is not None and len(checksum) == 64
        assert report.quorum is not None and report.quorum.min_approvals == 1

        unsigned = ApprovalInput(approver="bob", channel="ui", plan_checksum=checksum)
        message = await refused(handle, "approve", unsigned)
        assert "requires verified approvers" in message and f"--plan {checksum}" in message
        # A Web UI user claiming the CLI channel changes nothing: unsigned is unsigned.
        assert "requires verified approvers" in await refused(
            handle, "approve", unsigned.model_copy(update={"channel": "cli"})
        )

        good = signed_answer(world, report, "bob")
        cases: dict[str, ApprovalInput] = {
            "key-not-listed": signed_answer(world, report, "bob", key="mallory"),
            "key-revoked": signed_answer(world, report, "bob", key="bob-old"),
            "unknown-person": signed_answer(world, report, "mallory"),
            "bad-signature": good.model_copy(update={"signed": good.signed.replace('"approve"', '"reject"')}),  # type: ignore[union-attr]
            "another run": signed_answer(world, report, "bob", run_id="another-run"),
            "another gate": signed_answer(world, report, "bob", gate="data-loss"),
            "another decision": signed_answer(world, report, "bob", decision="reject"),
            "an older plan": signed_answer(world, report, "bob", plan_checksum="0" * 64),
            "expired": _expired(world, report, "bob"),
            "signed by another": good.model_copy(update={"approver": "carol"}),
            "self-approval": signed_answer(world, report, "alice"),
            "not an approver": signed_answer(world, report, "dave"),
            "slack channel": good.model_copy(update={"channel": "slack"}),
        }
        expect = {
            "key-not-listed": "refused (key-not-listed)",
            "key-revoked": "refused (key-revoked)",
            "unknown-person": "refused (unknown-person)",
            "bad-signature": "refused (bad-signature)",
            "another run": "signed for run_id 'another-run'",
            "another gate": "signed for gate 'data-loss'",
            "another decision": "signed for decision 'reject'",
            # signed or not, a checksum this run never showed is wrong, not "a plan that changed"
            "an older plan": f"refused (payload-mismatch): wrong checksum: {'0' * 64} is not a plan of this run; the current plan is {checksum}",
            "expired": "refused (outside-window)",
            "signed by another": "signed for person 'bob', but this is person 'carol'",
            "self-approval": "separation of duties: alice requested this failover",
            "not an approver": "dave is not an approver",
            "slack channel": "channel slack needs the gateway's attestation",
        }
        for case, answer in cases.items():
            message = await refused(handle, "approve", answer)
            assert expect[case] in message, (case, message)
        report = await unchanged(world, handle)
        assert report.approvals == []

        # The operator's path: the CLI signs with --key and the full checksum.
        address = dev_env.client.service_client.config.target_host
        prefix = await asyncio.to_thread(
            cli, "approve", handle.id, "--as", "bob", "--key", str(keys["bob"].private), "--plan", checksum[:12],
            "--address", address, "--reason", "go", "--runbooks", str(service.runbooks),
        )  # fmt: skip
        assert prefix.returncode != 0 and "give the whole plan checksum" in prefix.stderr, prefix
        done = await asyncio.to_thread(
            cli, "approve", handle.id, "--as", "bob", "--key", str(keys["bob"].private), "--plan", checksum,
            "--address", address, "--reason", "go", "--runbooks", str(service.runbooks),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "failover gate approved by bob" in done.stdout
        final: FailoverReport = await handle.result()
    assert final.outcome == "completed", final.messages
    [approval] = final.approvals
    assert (approval.person, approval.identity, approval.key) == ("bob", "ssh-key", keys["bob"].fingerprint)
    assert approval.channel == "cli" and approval.plan_checksum == checksum
    assert approval.people_sha256 is not None
    assert f"approved by bob via cli (signed, key {keys['bob'].fingerprint})" in render_report(final)
    # Offline: anyone can check the recorded signature with OpenSSH alone.
    assert approval.signed is not None and approval.signature is not None
    assert keygen_verify(service.runbooks, "bob", approval.signed, approval.signature, "drflow-approval")


def _expired(world: World, report: FailoverReport, person: str) -> ApprovalInput:
    payload = DecisionPayload(
        workflow_id=report.workflow_id, run_id=report.run_id, gate=report.open_gate, decision="approve",
        plan_checksum=report.gate_checksum, person=person,
        signed_at=utc_stamp(datetime.now(UTC) - timedelta(minutes=15)),
    )  # fmt: skip
    text = payload.canonical()
    return ApprovalInput(
        approver=person, channel="cli", plan_checksum=report.gate_checksum, signed=text.decode(),
        signature=keygen_sign(world.keys[person], text),
    )  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [DRFLOW]
    if "--runbooks" in args:
        i = args.index("--runbooks")
        command += ["--runbooks", args[i + 1]]
        args = args[:i] + args[i + 2 :]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, check=False)


def keygen_verify(runbooks: Path, person: str, message: str, signature: str, namespace: str) -> bool:
    from runbooks.people import load_people_file

    signers = runbooks / "allowed_signers"
    signers.write_text(load_people_file(runbooks / "people.yaml").allowed_signers())
    sig = runbooks / "answer.sig"
    sig.write_text(signature)
    done = subprocess.run(
        [SSH_KEYGEN, "-Y", "verify", "-f", str(signers), "-I", person, "-n", namespace, "-s", str(sig)],
        input=message.encode(), capture_output=True, check=False,
    )  # fmt: skip
    return done.returncode == 0


async def test_an_unsigned_request_needs_two_distinct_verified_approvers(
    dev_env: WorkflowEnvironment, service: StatelessService, keys: dict[str, Key], task_queue: str
) -> None:
    world = await world_for(dev_env, service, keys, task_queue)
    async with build_worker(dev_env.client, service.runbooks, task_queue=task_queue):
        handle = await world.start("alice", signed=False)
        report = await wait_for_gate(dev_env.client, handle.id)
        assert report.requester is not None and report.requester.identity == "unverified"
        assert report.quorum is not None and (report.quorum.min_approvals, report.quorum.two_person) == (
            2,
            True,
        )
        assert "two-person rule" in render_report(report)
        first = await handle.execute_update(FailoverWorkflow.approve, signed_answer(world, report, "bob"))
        assert "still needed: 1 more approval" in first.message, first
        again = await refused(handle, "approve", signed_answer(world, report, "bob"))
        assert "bob already approved the failover gate; still needed: 1 more approval" in again
        report = await unchanged(world, handle)
        assert [a.person for a in report.approvals] == ["bob"] and report.quorum is not None
        assert report.quorum.approved_by == ["bob"]
        await handle.execute_update(FailoverWorkflow.approve, signed_answer(world, report, "carol"))
        final: FailoverReport = await handle.result()
    assert final.outcome == "completed", final.messages
    assert [(a.person, a.decision) for a in final.approvals] == [("bob", "approved"), ("carol", "approved")]


async def test_a_runbook_can_refuse_an_unsigned_request_before_anything_changes(
    dev_env: WorkflowEnvironment, service: StatelessService, keys: dict[str, Key], task_queue: str
) -> None:
    set_approvals(service, "  unverified_requester: refuse\n")
    world = await world_for(dev_env, service, keys, task_queue)
    async with build_worker(dev_env.client, service.runbooks, task_queue=task_queue):
        handle = await world.start("alice", signed=False)
        final: FailoverReport = await handle.result()
        assert final.outcome == "refused"
        assert any("requires a signed request" in m for m in final.messages), final.messages
        assert final.plan is None and final.dns_change is None
        assert (await world.served())[0] == ["127.0.1.1"]
        # A request whose signed text was altered is not signed: refused the same way, saying why.
        text, signature = sign_request(
            world.signer("alice"), kind="failover", workflow_id=world.workflow_id,
            service=service.service, target="region-b", mode="planned", reason="verified approvals test",
        )  # fmt: skip
        request = FailoverRequest(
            service=service.service, target="region-b", reason="verified approvals test", requested_by="alice",
            signed=text.replace("verified approvals test", "something else"), signature=signature,
        )  # fmt: skip
        final = await dev_env.client.execute_workflow(
            FailoverWorkflow.run, request, id=world.workflow_id, task_queue=task_queue
        )
    assert final.outcome == "refused"
    assert any("refused (bad-signature)" in m for m in final.messages), final.messages
    assert final.requester is not None and final.requester.identity == "unverified"


async def test_quorum_needs_each_group_and_any_rejection_vetoes(
    dev_env: WorkflowEnvironment, service: StatelessService, keys: dict[str, Key], task_queue: str
) -> None:
    set_approvals(service, "  quorum:\n    failover: {min_approvals: 2, groups: [dba]}\n", "sre, dba")
    world = await world_for(dev_env, service, keys, task_queue)
    async with build_worker(dev_env.client, service.runbooks, task_queue=task_queue):
        handle = await world.start("alice")
        report = await wait_for_gate(dev_env.client, handle.id)
        assert report.quorum is not None and report.quorum.groups == ["dba"]
        vote = await handle.execute_update(FailoverWorkflow.approve, signed_answer(world, report, "bob"))
        assert "still needed: 1 more approval, one of group dba" in vote.message, vote
        report = await unchanged(world, handle)
        assert "Needs 2 distinct approvers, including one of each group: dba; approved so far: bob" in (
            render_report(report)
        )
        veto = signed_answer(world, report, "carol", decision="reject")
        await handle.execute_update(
            FailoverWorkflow.reject, veto.model_copy(update={"reason": "not during the sale"})
        )
        final: FailoverReport = await handle.result()
    assert final.outcome == "rejected"
    assert [(a.person, a.decision) for a in final.approvals] == [("bob", "approved"), ("carol", "rejected")]
    assert final.dns_change is None and (await world.served())[0] == ["127.0.1.1"]


async def test_unsigned_answers_under_record_are_people_too_and_reported_unverified(
    dev_env: WorkflowEnvironment, service: StatelessService, keys: dict[str, Key], task_queue: str
) -> None:
    set_approvals(service, "  unsigned: record\n", "bob, carol, dave")
    world = await world_for(dev_env, service, keys, task_queue)
    async with build_worker(dev_env.client, service.runbooks, task_queue=task_queue):
        handle = await world.start("Carol", signed=False, mode="drill", excluded_approvers=["U0BOB"])
        report = await wait_for_gate(dev_env.client, handle.id)
        checksum = report.gate_checksum
        assert checksum is not None and report.requester is not None
        assert report.requester.person == "carol" and report.requester.identity == "unverified"
        assert report.quorum is not None and report.quorum.min_approvals == 1, "no two-person rule: record"

        def ui(approver: str, channel: str = "ui", plan: str | None = checksum) -> ApprovalInput:
            return ApprovalInput(approver=approver, channel=channel, plan_checksum=plan)  # type: ignore[arg-type]

        cases = {
            "no checksum": (
                ui("dave", plan=None),
                f"must carry the full checksum of the plan it approves: {checksum}",
            ),
            "a prefix": (ui("dave", plan=checksum[:1]), "give the whole plan checksum, not a prefix"),
            "a wrong checksum": (
                ui("dave", plan="0" * 64),
                f"wrong checksum: {'0' * 64} is not a plan of this run; the current plan is {checksum}",
            ),
            "self, other case": (ui("carol"), "separation of duties: carol requested this failover"),
            "self, through Slack": (ui("U0CAROL", "slack"), "separation of duties: carol requested"),
            "unmapped Slack id": (ui("U0NOBODY", "slack"), "your Slack account is not in the people file"),
            "excluded by Slack id, as a name": (
                ui("bob", "cli"),
                "bob is unavailable in this drill's scenario",
            ),
            "excluded, through Slack": (ui("U0BOB", "slack"), "bob is unavailable in this drill's scenario"),
            "excluded, in the UI": (ui("Bob"), "bob is unavailable in this drill's scenario"),
            "excluded, signed": (
                signed_answer(world, report, "bob"),
                "bob is unavailable in this drill's scenario",
            ),
            "not in the file": (ui("mallory"), "'mallory' is not a person of the people file"),
        }
        for case, (answer, expected) in cases.items():
            message = await refused(handle, "approve", answer)
            assert expected in message, (case, message)
        await unchanged(world, handle)
        outcome = await handle.execute_update(FailoverWorkflow.approve, ui("Dave"))
        assert "identity not verified" in outcome.message
        final: FailoverReport = await handle.result()
    assert final.outcome == "completed", final.messages
    [approval] = final.approvals
    assert (approval.person, approval.identity, approval.signed) == ("dave", "unverified", None)
    assert "approved by dave via ui (identity not verified)" in render_report(final)


async def test_a_failed_step_is_decided_only_by_a_signed_approver_bound_to_that_step(
    dev_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, keys: dict[str, Key], task_queue: str
) -> None:
    (tmp_path / "people.yaml").write_text(people_yaml(keys))
    with stateless_service(tmp_path, dns_world) as service:
        world = await world_for(dev_env, service, keys, task_queue)
        async with build_worker(dev_env.client, service.runbooks, task_queue=task_queue):
            handle = await world.start("alice")
            report = await wait_for_gate(dev_env.client, handle.id)
            await handle.execute_update(FailoverWorkflow.approve, signed_answer(world, report, "bob"))
            service.region_b.behaviour.status = 500  # health as users see it fails after the cutover
            waiting = await wait_for_decision(dev_env.client, handle.id, timeout=120)
            step = waiting.waiting_step
            assert step == "validate health", waiting.steps

            def decision(person: str, **changes: Any) -> DecisionInput:
                fields: dict[str, Any] = {
                    "workflow_id": waiting.workflow_id, "run_id": waiting.run_id, "failed_step": step,
                    "decision": "abort",
                }  # fmt: skip
                fields.update(changes)
                text, signature = sign_decision(world.signer(person), **fields)
                return DecisionInput(
                    decision="abort",
                    operator=person,
                    channel="cli",
                    step=step,
                    signed=text,
                    signature=signature,
                )

            cases = {
                "unsigned": (
                    DecisionInput(decision="abort", operator="carol", channel="ui"),
                    "requires verified approvers",
                ),
                "another step": (
                    decision("carol", failed_step="verify propagation"),
                    "signed for failed_step",
                ),
                "another decision": (decision("carol", decision="retry"), "signed for decision 'retry'"),
                "not an approver": (decision("dave"), "dave is not an approver"),
            }
            for case, (answer, expected) in cases.items():
                message = await refused(handle, "decide", answer)
                assert expected in message, (case, message)
            still: FailoverReport = await handle.query(FailoverWorkflow.status)
            assert still.waiting_step == step and still.decisions == []
            service.region_b.behaviour.status = 200
            await handle.execute_update(
                FailoverWorkflow.decide,
                decision("carol", decision="retry").model_copy(update={"decision": "retry"}),
            )
            final: FailoverReport = await handle.result()
    assert final.outcome == "completed", final.messages
    [record] = final.decisions
    assert (record.decision, record.person, record.identity) == ("retry", "carol", "ssh-key")
    assert record.key == keys["carol"].fingerprint


async def test_people_rules_without_a_people_file_refuse_the_run_before_anything_changes(
    dev_env: WorkflowEnvironment, tmp_path: Path, dns_world: NamedPair, keys: dict[str, Key], task_queue: str
) -> None:
    with stateless_service(tmp_path, dns_world) as service:  # no people.yaml beside the runbook
        set_approvals(service, "  quorum:\n    failover: {min_approvals: 2}\n")
        world = await world_for(dev_env, service, keys, task_queue)
        async with build_worker(dev_env.client, service.runbooks, task_queue=task_queue):
            handle = await world.start("alice", signed=False)
            final: FailoverReport = await handle.result()
    assert final.outcome == "refused" and final.plan is None and final.dns_change is None
    assert any("approvals.quorum need a people file, and there is none" in m for m in final.messages), (
        final.messages
    )


def test_without_plan_the_cli_asks_on_a_terminal_and_refuses_in_a_script(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 3 a.m. path: `drflow approve RUN --as bob` shows the open gate's checksum and asks."""
    from workers.cli.common import Failure
    from workers.cli.failover import _GateAnswer

    checksum = "ab" * 32
    report = type("Report", (), {"open_gate": "failover", "workflow_id": "failover-x"})()
    answer = _GateAnswer("approve", "bob", "go", None, None, None, Path("."))
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(Failure, match=f"pass --plan {checksum}"):
        answer._plan_for(report, checksum)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr("click.confirm", lambda *_, **__: True)
    assert answer._plan_for(report, checksum) == checksum
    assert f"The failover gate shows plan {checksum}" in capsys.readouterr().out
    monkeypatch.setattr("click.confirm", lambda *_, **__: False)
    with pytest.raises(Failure, match="not answered"):
        answer._plan_for(report, checksum)
    rejecting = _GateAnswer("reject", "bob", "no", None, None, None, Path("."))
    assert rejecting._plan_for(report, checksum) == checksum, "rejecting needs no typed checksum"


def test_a_checksum_is_called_stale_only_when_this_run_showed_it_and_wrong_otherwise() -> None:
    """The pure rule behind both validators: shown plans are remembered, replaced ones are stale."""
    from workflows.approval_rules import checksum_refusal, remember_shown

    first, second, third = "a1" * 32, "b2" * 32, "c3" * 32
    opened = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)
    later = opened + timedelta(minutes=7)
    shown = remember_shown((), "failback", first, opened)
    assert remember_shown(shown, "promote", first, later) == shown, (
        "the same plan at the next gate is current"
    )
    shown = remember_shown(shown, "failback-100", second, later)
    assert [(p.checksum, p.replaced_by) for p in shown] == [(first, second), (second, None)]

    assert checksum_refusal(second, second, shown) is None
    assert checksum_refusal(first, second, shown) == (
        f"stale: that plan ({first}) was replaced by {second} at 2026-12-02 14:07:00 UTC; "
        "read it (drflow status) and answer again"
    )
    assert checksum_refusal(third, second, shown) == (
        f"wrong checksum: {third} is not a plan of this run; the current plan is {second}"
    )
    assert checksum_refusal(second[:12], second, shown) == (
        f"give the whole plan checksum, not a prefix: the current plan is {second}"
    )
    # Replaced twice: the oldest names what replaced it and what is current now.
    shown = remember_shown(shown, "failback-100", third, later + timedelta(minutes=1))
    refusal = checksum_refusal(first, third, shown)
    assert refusal is not None and refusal.startswith(f"stale: that plan ({first}) was replaced by {second}")
    assert f"(the current plan is {third})" in refusal
    # A plan shown again becomes current again, not stale.
    shown = remember_shown(shown, "failback-100", first, later + timedelta(minutes=2))
    assert checksum_refusal(first, first, shown) is None
    assert checksum_refusal(third, first, shown) is not None and "stale" in str(
        checksum_refusal(third, first, shown)
    )
