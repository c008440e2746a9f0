"""`drflow audit verify` re-checks every signature of a run, offline, from its history alone.

One real failover in people mode on the dev server: alice signs the request, bob signs an approval that
is a vote (quorum three), dave answers unsigned (recorded as not verified), carol signs the reject. Every
signature is made by the real ``ssh-keygen -Y sign``. The tampering tests change the stored history the
way someone editing the evidence would, and the check must name the approval that no longer holds.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from activities.approvals.attestations import GatewaySigner
from activities.approvals.requests import REQUEST_NAMESPACE, RequestPayload
from activities.approvals.signatures import DecisionPayload, utc_stamp
from activities.approvals.signing import sign
from tests.support.failover import stateless_service, wait_for_gate
from tests.support.sshkeys import Key, make_key
from workers.audit.archive import ArchiveConfig, archive_history
from workers.audit.model import UpdateRecord
from workers.audit.render import render_markdown
from workers.audit.signatures import SignatureAudit, check_signatures, signatures_of
from workers.audit.timeline import build_timeline
from workers.sandbox.named import NamedPair
from workers.worker import build_worker
from workflows.failover import FailoverWorkflow
from workflows.failover_models import ApprovalInput, FailoverRequest

DRFLOW = str(Path(sys.executable).parent / "drflow")
PEOPLE = ("alice", "bob", "carol", "dave", "erin")


def drflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DRFLOW, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ))


def people_yaml(keys: dict[str, Key]) -> str:
    entries = "".join(f"  - name: {name}\n    keys: [{keys[name].public_line}]\n" for name in PEOPLE)
    return f"people:\n{entries}"


class Run:
    """The recorded run and what the tests compare it with."""

    def __init__(self, history: WorkflowHistory, keys: dict[str, Key], checksum: str) -> None:
        self.history, self.keys, self.checksum = history, keys, checksum

    def edited(self, change: Callable[[dict[str, Any]], None], path: Path) -> Path:
        """The history as JSON with its final report changed by ``change``, written to ``path``."""
        data = copy.deepcopy(self.history.to_json_dict())
        (closed,) = [e for e in data["events"] if "workflowExecutionCompletedEventAttributes" in e]
        payload = closed["workflowExecutionCompletedEventAttributes"]["result"]["payloads"][0]
        report = json.loads(base64.b64decode(payload["data"]))
        change(report)
        payload["data"] = base64.b64encode(json.dumps(report).encode()).decode()
        path.write_text(json.dumps(data))
        return path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def run(
    dev_env: WorkflowEnvironment, dns_world: NamedPair, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Run]:
    base = tmp_path_factory.mktemp("signed-run")
    keys = {name: make_key(base, name) for name in PEOPLE}
    runbooks = base / "runbooks"
    runbooks.mkdir()
    (runbooks / "people.yaml").write_text(people_yaml(keys))
    task_queue = f"drflow-test-{uuid.uuid4()}"
    with stateless_service(runbooks, dns_world) as service:
        file = runbooks / f"{service.service}.yaml"
        file.write_text(
            file.read_text().replace("approvers: [bob, carol]", "approvers: [bob, carol, dave]")
            + "  unsigned: record\n  quorum: {failover: {min_approvals: 3}}\n"
        )
        workflow_id = f"failover-{uuid.uuid4().hex[:8]}"
        request = RequestPayload(
            kind="failover", workflow_id=workflow_id, service=service.service, target="region-b",
            mode="planned", reason="signed drill", person="alice", signed_at=utc_stamp(datetime.now(UTC)),
        )  # fmt: skip
        start = FailoverRequest(
            service=service.service, target="region-b", reason="signed drill", requested_by="alice",
            signed=request.canonical().decode(),
            signature=sign(request.canonical(), keys["alice"].private, namespace=REQUEST_NAMESPACE),
        )  # fmt: skip
        async with build_worker(dev_env.client, runbooks, task_queue=task_queue):
            handle = await dev_env.client.start_workflow(
                FailoverWorkflow.run, start, id=workflow_id, task_queue=task_queue
            )
            gate = await wait_for_gate(dev_env.client, workflow_id)
            checksum = gate.gate_checksum
            assert checksum is not None

            def signed(person: str, decision: str, reason: str) -> ApprovalInput:
                payload = DecisionPayload(
                    workflow_id=workflow_id, run_id=gate.run_id, gate="failover", decision=decision,  # type: ignore[arg-type]
                    plan_checksum=checksum, person=person, signed_at=utc_stamp(datetime.now(UTC)),
                )  # fmt: skip
                return ApprovalInput(
                    approver=person, reason=reason, channel="cli", plan_checksum=checksum,
                    signed=payload.canonical().decode(), signature=sign(payload, keys[person].private),
                )  # fmt: skip

            vote = await handle.execute_update(
                FailoverWorkflow.approve, signed("bob", "approve", "looks right")
            )
            assert "still needed" in vote.message, vote.message
            unsigned = ApprovalInput(approver="dave", reason="from the UI", plan_checksum=checksum)
            await handle.execute_update(FailoverWorkflow.approve, unsigned)
            await handle.execute_update(FailoverWorkflow.reject, signed("carol", "reject", "not today"))
            report = await handle.result()
            assert report.outcome == "rejected", report.messages
            history = await handle.fetch_history()
    yield Run(history, keys, checksum)


def test_a_signed_run_verifies_and_lists_every_approval_with_its_key(run: Run, tmp_path: Path) -> None:
    audit = signatures_of(run.history)
    assert audit.ok, audit.lines()
    assert [(c.kind, c.subject, c.decision, c.person, c.identity, c.key, c.status) for c in audit.checks] == [
        ("request", run.history.workflow_id, "requested", "alice", "ssh-key", run.keys["alice"].fingerprint, "verified"),
        ("approval", "failover", "approved", "bob", "ssh-key", run.keys["bob"].fingerprint, "verified"),
        ("approval", "failover", "approved", "dave", "unverified", None, "unverified"),
        ("approval", "failover", "rejected", "carol", "ssh-key", run.keys["carol"].fingerprint, "verified"),
    ]  # fmt: skip
    file = tmp_path / "history.json"
    file.write_text(json.dumps(run.history.to_json_dict()))
    cli = drflow("audit", "verify", str(file))
    assert cli.returncode == 0, cli.stdout + cli.stderr
    lines = cli.stdout.splitlines()
    assert lines[0].startswith("signatures OK:") and "3 verified, 1 not proven, 0 failed" in lines[0]
    bob = f"approval failover: approved by bob (ssh-key {run.keys['bob'].fingerprint}, via cli, event "
    assert any(bob in line for line in lines), lines
    assert any("approval failover: approved by dave (identity not verified, via ui" in line for line in lines)
    carol = f"approval failover: rejected by carol (ssh-key {run.keys['carol'].fingerprint}, via cli"
    assert any(carol in line for line in lines), lines


def test_an_archive_keeps_the_signatures_verifiable(run: Run, tmp_path: Path) -> None:
    """Redaction must leave signed payloads byte for byte: the archive's own check and the signatures'."""
    result = archive_history(run.history, "failover", ArchiveConfig(location=str(tmp_path)))
    cli = drflow("audit", "verify", result.location)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.startswith(f"OK: {result.location}")
    assert "signatures OK:" in cli.stdout and "3 verified" in cli.stdout
    # The whole store: the chain, then the signed answers inside each archive, with their keys.
    store = drflow("audit", "verify", "--store", str(tmp_path))
    assert store.returncode == 0, store.stdout + store.stderr
    assert "chain OK:" in store.stdout and "signatures OK:" in store.stdout
    assert f"ssh-key {run.keys['carol'].fingerprint}" in store.stdout


def _approval(person: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def find(report: dict[str, Any]) -> dict[str, Any]:
        (record,) = [a for a in report["approvals"] if a.get("person") == person]
        return record

    return find


@pytest.mark.parametrize(
    ("case", "change", "expected"),
    [
        (
            "decision",
            lambda r: _approval("carol")(r).update(
                signed=_approval("carol")(r)["signed"].replace('"decision":"reject"', '"decision":"approve"')
            ),
            "the signature does not verify (bad-signature)",
        ),
        (
            "plan checksum",
            lambda r: _approval("carol")(r).update(
                signed=_approval("carol")(r)["signed"].replace(r["plan"]["checksum"], "0" * 64)
            ),
            "the signature does not verify (bad-signature)",
        ),
        (
            "recorded decision",
            lambda r: _approval("carol")(r).update(decision="approved"),
            "the signed payload says decision 'reject', the record 'approve'",
        ),
    ],
)
def test_tampering_with_a_record_fails_naming_the_approval(
    run: Run, tmp_path: Path, case: str, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    cli = drflow("audit", "verify", str(run.edited(change, tmp_path / "history.json")))
    assert cli.returncode == 1, cli.stdout
    assert cli.stdout.startswith("signatures FAILED:"), cli.stdout
    (failed,) = [line for line in cli.stdout.splitlines() if line.lstrip().startswith("FAILED")]
    assert "approval failover: " in failed and " by carol (ssh-key " in failed, failed
    assert expected in failed, failed


def test_another_persons_signature_in_a_record_fails(run: Run, tmp_path: Path) -> None:
    def swap(report: dict[str, Any]) -> None:
        bob, carol = _approval("bob")(report), _approval("carol")(report)
        carol["signature"] = bob["signature"]

    audit_file = run.edited(swap, tmp_path / "history.json")
    cli = drflow("audit", "verify", str(audit_file))
    assert cli.returncode == 1, cli.stdout
    (failed,) = [line for line in cli.stdout.splitlines() if line.lstrip().startswith("FAILED")]
    assert "approval failover: rejected by carol" in failed and "bad-signature" in failed, failed

    def swap_both(report: dict[str, Any]) -> None:  # payload and signature: bob's, claimed for carol
        bob, carol = _approval("bob")(report), _approval("carol")(report)
        carol.update(signed=bob["signed"], signature=bob["signature"])

    cli = drflow("audit", "verify", str(run.edited(swap_both, tmp_path / "both.json")))
    assert cli.returncode == 1, cli.stdout
    (failed,) = [line for line in cli.stdout.splitlines() if line.lstrip().startswith("FAILED")]
    assert "by carol" in failed and f"signed with key {run.keys['bob'].fingerprint}" in failed, failed


def test_a_record_claiming_a_key_for_an_unsigned_answer_fails(run: Run, tmp_path: Path) -> None:
    """dave answered unsigned: a record upgraded to ssh-key afterwards has nothing to stand on."""

    def upgrade(report: dict[str, Any]) -> None:
        _approval("dave")(report).update(identity="ssh-key", key=run.keys["dave"].fingerprint)

    cli = drflow("audit", "verify", str(run.edited(upgrade, tmp_path / "history.json")))
    assert cli.returncode == 1, cli.stdout
    (failed,) = [line for line in cli.stdout.splitlines() if line.lstrip().startswith("FAILED")]
    assert "approved by dave" in failed and "records no signed payload and signature" in failed, failed


def test_the_timeline_shows_each_approvers_key_and_channel(run: Run) -> None:
    timeline = build_timeline(run.history)
    answers = [(u.name, u.person, u.identity, u.key, u.channel) for u in timeline.updates]
    assert answers == [
        ("approve", "bob", "ssh-key", run.keys["bob"].fingerprint, "cli"),
        ("approve", "dave", "unverified", None, "ui"),
        ("reject", "carol", "ssh-key", run.keys["carol"].fingerprint, "cli"),
    ]
    text = render_markdown(timeline)
    assert f"| bob | cli | ssh-key {run.keys['bob'].fingerprint} |" in text, text
    assert "| dave | ui | identity not verified |" in text
    assert f"Update reject by carol via cli [ssh-key {run.keys['carol'].fingerprint}]" in text


# --------------------------------------------------------------------------- pure: no Temporal at all
def _update(name: str, event_id: int, args: dict[str, Any]) -> UpdateRecord:
    at = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
    return UpdateRecord(
        update_id=f"u{event_id}", name=name, accepted_event_id=event_id, accepted_at=at,
        status="completed", args=args,
    )  # fmt: skip


def test_a_slack_attestation_and_a_signed_decision_check_without_a_server(tmp_path: Path) -> None:
    gateway_key, erin = make_key(tmp_path, "gateway"), make_key(tmp_path, "erin")
    gateway = GatewaySigner("slack-prod", gateway_key.private.read_text())
    now = datetime.now(UTC)
    checksum = "a" * 64
    click_signed, click_signature = gateway.attest(
        workflow_id="wf", run_id="run", decision="approve", slack_user="U02ERIN", now=now,
        gate="failover", plan_checksum=checksum,
    )  # fmt: skip
    step = DecisionPayload(
        workflow_id="wf", run_id="run", failed_step="promote", decision="retry", person="erin",
        signed_at=utc_stamp(now),
    )  # fmt: skip
    step_signature = sign(step, erin.private)
    approval = {
        "gate": "failover", "decision": "approved", "by": "erin", "channel": "slack", "reason": "",
        "plan_checksum": checksum, "person": "erin", "identity": "slack-gateway",
        "key": gateway_key.fingerprint, "gateway": "slack-prod", "signed": click_signed,
        "signature": click_signature,
    }  # fmt: skip
    decision = {
        "step": "promote", "error": "timeout", "decision": "retry", "by": "erin", "channel": "cli",
        "reason": "", "person": "erin", "identity": "ssh-key", "key": erin.fingerprint,
        "signed": step.canonical().decode(), "signature": step_signature,
    }  # fmt: skip
    updates = [
        _update("approve", 40, {"approver": "U02ERIN", "channel": "slack", "signed": click_signed,
                                "signature": click_signature}),
        _update("decide", 60, {"operator": "erin", "decision": "retry", "signed": step.canonical().decode(),
                               "signature": step_signature}),
    ]  # fmt: skip

    def audit(report: dict[str, Any]) -> SignatureAudit:
        return check_signatures(
            workflow_id="wf", run_id="run", workflow_type="Failover", request={}, updates=updates,
            report=report,
        )  # fmt: skip

    good = audit({"approvals": [approval], "decisions": [decision]})
    assert good.ok, good.lines()
    assert [c.line() for c in good.checks] == [
        f"  ok       approval failover: approved by erin (Slack click attested by gateway slack-prod "
        f"{gateway_key.fingerprint}, via slack, event 40)",
        f"  ok       decision promote: retry by erin (ssh-key {erin.fingerprint}, via cli, event 60)",
    ]
    claimed = audit({"approvals": [{**approval, "gateway": "slack-test"}], "decisions": [decision]})
    assert not claimed.ok
    assert (
        "the signed payload says gateway 'slack-prod', the record 'slack-test'" in claimed.checks[0].problems
    )
    other_run = audit({"approvals": [approval], "decisions": [{**decision, "step": "fence"}]})
    assert other_run.checks[1].problems == [
        "the signed payload says failed_step 'promote', the record 'fence'"
    ]
    lost = audit({"approvals": [approval], "decisions": []})
    assert not lost.ok and lost.problems == ["Update decide (event 60) has no record in the report"]
